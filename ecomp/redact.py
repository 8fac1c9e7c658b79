"""Passwords out of text: :func:`mask` replaces the password of every URI in a text by ``***``.

It sits at the bottom of the package (errors use it), so that a password given in a URI is
masked wherever the tool writes a URI or an error line: run params, the logged config, the
sweep's name and note, log and error lines (:mod:`ecomp.app.credentials` keeps it off the
command line in the first place).
"""

from __future__ import annotations

import re

MASK = "***"
# scheme://user:password@ (the password may be empty); user and password percent-encoded
USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][\w+.-]*://)(?P<user>[^/\s:@'\"]*):(?P<password>[^@\s/'\"]*)@")
_QUERY = re.compile(r"(?i)(?P<key>[?&]password=)(?P<password>[^&\s'\"]*)")


def mask(text: str) -> str:
    """``text`` with every URI password replaced by ``***`` (``postgresql://u:***@host/db``)."""
    text = USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _QUERY.sub(lambda m: f"{m['key']}{MASK}", text)
