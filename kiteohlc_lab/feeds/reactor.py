"""One Twisted reactor per process, running for the life of the process in a daemon thread.

Twisted's reactor cannot be restarted once stopped (``ReactorNotRestartable``, pykiteconnect #80), which
is what breaks a notebook after ``KiteTicker.stop()``. So the reactor is started here once, never stopped,
and every stream start/stop only opens and closes sockets on it. ``KiteTicker.connect()`` starts the
reactor only when it is not running, so calling it inside the reactor thread is safe.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_thread: threading.Thread | None = None
_running = threading.Event()


def _reactor() -> Any:
    from twisted.internet import reactor  # installs the default reactor on first import

    return reactor


def ensure_reactor(timeout: float = 10.0) -> Any:
    """Start the process-wide reactor thread if needed and return the reactor.

    Raises ``RuntimeError`` if someone already stopped the reactor for good (``KiteTicker.stop()``).
    """
    global _thread
    reactor = _reactor()
    if _running.is_set() and reactor.running:
        return reactor
    with _lock:
        if reactor.running:  # started by someone else (e.g. KiteTicker.connect(threaded=True))
            _running.set()
            return reactor
        if getattr(reactor, "_stopped", False) and getattr(reactor, "_startedBefore", False):
            raise RuntimeError(
                "the Twisted reactor of this process was stopped (KiteTicker.stop()?) and cannot be "
                "restarted; restart the kernel"
            )
        if _thread is None or not _thread.is_alive():
            _running.clear()
            reactor.callWhenRunning(_running.set)
            _thread = threading.Thread(
                target=reactor.run,
                kwargs={"installSignalHandlers": False},
                name="kiteohlc-reactor",
                daemon=True,
            )
            _thread.start()
    if not _running.wait(timeout):
        raise RuntimeError(f"the Twisted reactor did not start within {timeout} s")
    return reactor


def in_reactor_thread() -> bool:
    """True when called on the reactor thread."""
    from twisted.python import threadable

    return bool(threadable.isInIOThread())


def call_in_reactor(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Schedule ``fn(*args, **kwargs)`` on the reactor thread and return at once."""
    reactor = ensure_reactor()
    if in_reactor_thread():
        fn(*args, **kwargs)
    else:
        reactor.callFromThread(fn, *args, **kwargs)


def call_in_reactor_wait(fn: Callable[..., T], *args: Any, timeout: float = 10.0, **kwargs: Any) -> T:
    """Run ``fn`` on the reactor thread and wait for its result (or exception) up to ``timeout`` s.

    Raises ``TimeoutError`` if the reactor did not get to it in time.
    """
    reactor = ensure_reactor()
    if in_reactor_thread():
        return fn(*args, **kwargs)
    fut: Future = Future()

    def run() -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            fut.set_exception(exc)

    reactor.callFromThread(run)
    try:
        return fut.result(timeout)
    except TimeoutError:
        fut.cancel()
        raise TimeoutError(f"the reactor thread did not run {getattr(fn, '__name__', fn)} within {timeout} s")
