"""Shared fixtures: an isolated data_dir and environment per test, and a fresh Manager.

``need(condition, reason)`` is the one way a test says it needs a service or tool (Redis, the
``redis-server`` binary, Chromium, mypy/ruff, starlette/httpx): it skips when the condition is false,
and fails under ``CI=true`` (``.ci/run``), where everything must be installed. The only opt-in tests
are the real-MongoDB ones (``KITEOHLC_TEST_MONGO_URI``): they skip everywhere when it is unset.
"""

from __future__ import annotations

import importlib
import os
import socket
from types import ModuleType
from typing import Any

import pytest


def on_ci() -> bool:
    return os.environ.get("CI") == "true"


def need(condition: Any, reason: str) -> None:
    """Skip the test (or module) unless ``condition``; under ``CI=true`` fail instead of skipping."""
    if condition:
        return
    if on_ci():
        pytest.fail(f"{reason} (CI=true: a missing service or tool is a failure, not a skip)",
                    pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def need_import(name: str, reason: str | None = None) -> ModuleType:
    """``pytest.importorskip`` through :func:`need`: the module, or a skip (a failure on CI)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        need(False, reason or f"{name} is not installed ({exc})")
        raise  # not reached


def needs(condition: Any, reason: str) -> pytest.MarkDecorator:
    """Decorator/``pytestmark`` form of :func:`need`, checked when the test is set up."""
    return pytest.mark.needs(bool(condition), reason=reason)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs(condition, reason): a service or tool the test needs "
                                       "(skips when missing; fails under CI=true)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs"):
        need(mark.args[0], mark.kwargs["reason"])


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

settings.register_profile("ci", max_examples=250, deadline=None)
settings.register_profile("thorough", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
