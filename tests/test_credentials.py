"""A password in a tracking URI is masked wherever the tool writes a URI, and taken off the command line."""

from __future__ import annotations

import os

import pytest

from ecomp.app.credentials import take_password, take_passwords
from ecomp.redact import mask
from ecomp.errors import ConfigError


def test_mask_hides_passwords_in_uris_and_leaves_the_rest():
    assert mask("postgresql://ecomp:s3cr%40t@db:5432/mlflow") == "postgresql://ecomp:***@db:5432/mlflow"
    assert mask("run.py -m tracking.uri=http://me:pw@host:5000 seed=1") == \
        "run.py -m tracking.uri=http://me:***@host:5000 seed=1"
    assert mask("postgresql://db/mlflow?user=u&password=pw&sslmode=require") == \
        "postgresql://db/mlflow?user=u&password=***&sslmode=require"
    for plain in ("sqlite:////tmp/a:b/mlflow.db", "postgresql://ecomp@127.0.0.1:5432/db", "http://127.0.0.1:5000"):
        assert mask(plain) == plain


def test_take_password_moves_it_into_the_clients_variables():
    assert take_password("postgresql+psycopg://ecomp:s3cr%40t@db:5432/mlflow") == \
        ("postgresql+psycopg://ecomp@db:5432/mlflow", {"PGPASSWORD": "s3cr@t"})
    assert take_password("https://me:pw@host/") == \
        ("https://host/", {"MLFLOW_TRACKING_USERNAME": "me", "MLFLOW_TRACKING_PASSWORD": "pw"})
    assert take_password("sqlite:////tmp/x.db") == ("sqlite:////tmp/x.db", {})


def test_take_passwords_rewrites_only_uri_overrides(monkeypatch):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    argv = ["-m", "seed=1,2", "tracking.uri='postgresql://u:pw@h/db'", "fitness=121"]
    assert take_passwords(argv) == ["-m", "seed=1,2", "tracking.uri='postgresql://u@h/db'", "fitness=121"]
    assert os.environ["PGPASSWORD"] == "pw"
    with pytest.raises(ConfigError, match=r"u:\*\*\*@h.*different passwords") as err:
        take_passwords(["tracking.uri=postgresql://u:a@h/db,postgresql://u:b@h/db2"])
    assert ":a@" not in str(err.value) and ":b@" not in str(err.value)
