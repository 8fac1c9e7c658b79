"""Whether a tracking store can be used, found out in seconds before any work: an MLflow server
answers on ``/health``, a SQLite file's folder can be written, a PostgreSQL server's driver is
installed and its port answers. MLflow itself would retry for minutes or fail at the end of a run."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from ecomp.errors import TrackingError


def check_reachable(uri: str, timeout: float) -> None:
    """Raise :class:`TrackingError` within ``timeout`` seconds if ``uri`` cannot be used."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                if r.status != 200:
                    raise TrackingError(f"tracking.uri={uri!r}: server answered {r.status} on /health")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(f"tracking.uri={uri!r}: MLflow server unreachable ({reason}); "
                                f"start it or use a sqlite:/// URI") from None
    elif uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"tracking.uri={uri!r}: cannot create {path.parent} ({exc})") from None
        if not os.access(path.parent, os.W_OK):
            raise TrackingError(f"tracking.uri={uri!r}: folder {path.parent} is not writable")
    elif uri.startswith(("postgresql:", "postgresql+")):
        _check_postgres(uri, timeout)
    elif "://" not in uri or uri.startswith("file:"):
        raise TrackingError(f"tracking.uri={uri!r}: MLflow 3 needs a database or server URI "
                            f"(sqlite:///path/to/mlflow.db or http://host:port), not a file store")


# The driver module each PostgreSQL URI scheme needs (MLflow 3 serves a plain postgresql:// through psycopg 3).
POSTGRES_DRIVERS = {"postgresql": "psycopg", "postgresql+psycopg": "psycopg", "postgresql+psycopg2": "psycopg2"}


def _check_postgres(uri: str, timeout: float) -> None:
    """The driver is installed and the server answers (in ``timeout`` seconds, not after retries)."""
    import importlib.util
    import socket
    from urllib.parse import urlsplit

    scheme = uri.split("://", 1)[0]
    module = POSTGRES_DRIVERS.get(scheme)
    if module is None:
        raise TrackingError(f"tracking.uri={uri!r}: unknown PostgreSQL driver {scheme!r}; use "
                            f"{' or '.join(s + '://' for s in POSTGRES_DRIVERS)}")
    if importlib.util.find_spec(module) is None:
        raise TrackingError(f"tracking.uri={uri!r}: the PostgreSQL driver ({module}) is not installed; "
                            f"pip install -e '.[postgres]'")
    parts = urlsplit(uri)
    if parts.hostname and not parts.hostname.startswith("/"):
        try:
            socket.create_connection((parts.hostname, parts.port or 5432), timeout=timeout).close()
        except OSError as exc:
            raise TrackingError(f"tracking.uri={uri!r}: PostgreSQL server unreachable ({exc})") from None
