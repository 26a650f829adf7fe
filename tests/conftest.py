"""Shared fixtures: an isolated data_dir and environment per test, and a fresh Manager."""

from __future__ import annotations

import os
import socket

import pytest


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No credentials, no servers configured, data under a temp dir: the embedded default."""
    for name in list(os.environ):
        if name.startswith(("KITEOHLC_", "KITE_")) and name != "KITEOHLC_TEST_MONGO_URI":
            monkeypatch.delenv(name, raising=False)
    data = tmp_path / "kiteohlc"
    monkeypatch.setenv("KITEOHLC_DATA_DIR", str(data))
    monkeypatch.chdir(tmp_path)
    yield data
    from kiteohlc_lab import api

    api.reset()


def redis_available(url: str = "redis://127.0.0.1:6379/0") -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=80)
settings.register_profile("thorough", max_examples=1500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
