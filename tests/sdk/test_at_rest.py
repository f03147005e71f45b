"""How the suite's upstream keys are stored: encrypted when `make test-sdk` runs it with
SDK_ENCRYPTION_KEY (its second pass), in plain text otherwise. Every other test of the
suite runs in both passes, so the SDKs see the same proxy either way."""

from __future__ import annotations

import os
import sqlite3

from conftest import OPENAI_KEYS


def test_keys_at_rest_are_as_configured(rotator):
    db = sqlite3.connect(rotator.log_path.parent / "db.sqlite")
    values = [v for (v,) in db.execute("SELECT key_value FROM api_keys")]
    db.close()
    assert values
    if os.environ.get("SDK_ENCRYPTION_KEY"):
        assert all(v.startswith("v1:") for v in values), values[:3]
        assert not any(k in values for k in OPENAI_KEYS)
    else:
        assert OPENAI_KEYS[0] in values
