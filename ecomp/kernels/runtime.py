"""Process-level settings that make the many short-lived CPU tensors of a run cheap.

glibc returns every freed block above its ``mmap`` threshold to the kernel, so the
next allocation of that size page-faults all of it in again, which for a
generation's temporaries of a few MB costs as much as the arithmetic done on them. :func:`keep_freed_memory` raises the ``mmap`` threshold to
glibc's ceiling (32 MiB) and stops heap trimming, so freed temporaries are reused
from the heap instead. It changes speed only, never a result, and it does nothing
off glibc. Peak memory is unchanged (what was freed is reused, not added to).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024          # glibc's ceiling on 64-bit
_TRIM_THRESHOLD = 1024 * 1024 * 1024
_done = False


def keep_freed_memory() -> bool:
    """Once per process: keep freed blocks below 32 MiB in the heap (glibc). True if applied."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):            # not glibc (musl, ...): leave the allocator alone
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    if not ok:
        log.debug("mallopt refused the thresholds; allocator left as it was")
    _done = ok
    return ok
