"""Passwords in tracking URIs never reach the store, a folder or a log line.

Two guards:

* :func:`take_passwords` runs on ``run.py``'s command line before Hydra sees it: the
  password of a ``tracking.uri=postgresql://user:pw@host/db`` (or ``http://user:pw@host``)
  override moves into the environment variable its client reads (``PGPASSWORD`` for libpq,
  ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` for an MLflow server), so the
  composed config, Hydra's output folders and their ``.hydra/*.yaml`` files, the sweep's
  parent run and every job only ever hold the URI without it. Joblib workers inherit the
  environment; Ray nodes do not (set the variable, or ``~/.pgpass``, on each node).
* :func:`ecomp.redact.mask` replaces any password left in a text (a URI given to the Python
  API, an error message) by ``***`` wherever the tool writes a URI.
"""

from __future__ import annotations

import os
from urllib.parse import unquote

from ecomp.errors import ConfigError
from ecomp.redact import USERINFO, mask

# the environment variables each scheme's client reads its credentials from
_ENV = {"postgresql": (None, "PGPASSWORD"), "http": ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"),
        "https": ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
_URI_KEYS = ("tracking.uri=", "+tracking.uri=", "++tracking.uri=")


def take_password(uri: str) -> tuple[str, dict[str, str]]:
    """``uri`` without its password, and the environment variables that carry it instead.
    A scheme whose client reads no variable keeps its URI (and :func:`mask` hides it)."""
    m = USERINFO.search(uri)
    if m is None or m.start() != 0:
        return uri, {}
    scheme = m["scheme"][:-3].split("+")[0].lower()
    if scheme not in _ENV:
        return uri, {}
    user_var, password_var = _ENV[scheme]
    env = {password_var: unquote(m["password"])}
    if scheme in ("http", "https"):              # an MLflow server takes both from the environment
        env[user_var] = unquote(m["user"])
        rest = m["scheme"]
    else:                                        # libpq: the user stays in the URI, the password goes
        rest = f"{m['scheme']}{m['user']}@" if m["user"] else m["scheme"]
    return rest + uri[m.end():], env


def take_passwords(argv: list[str]) -> list[str]:
    """``argv`` with the password of every ``tracking.uri=`` override moved into this process's
    environment (see the module's docstring). One store's password per command: two different
    ones for the same variable are a :class:`ConfigError`."""
    out, taken = [], {}
    for arg in argv:
        key = next((k for k in _URI_KEYS if arg.startswith(k)), None)
        if key is None:
            out.append(arg)
            continue
        values = []
        for uri in arg[len(key):].split(","):
            quote = uri[:1] if uri[:1] in "'\"" and uri.endswith(uri[:1]) and len(uri) > 1 else ""
            bare, env = take_password(uri[len(quote):len(uri) - len(quote)] if quote else uri)
            for var, value in env.items():
                if taken.get(var, value) != value:
                    raise ConfigError(f"invalid config: tracking.uri={mask(arg[len(key):])!r}: stores with different "
                                      f"passwords in one command; give each its password in ~/.pgpass instead")
                taken[var] = value
            values.append(f"{quote}{bare}{quote}")
        out.append(key + ",".join(values))
    os.environ.update(taken)
    return out
