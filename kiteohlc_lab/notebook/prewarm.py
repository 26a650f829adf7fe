"""What the first magics will import, loaded on a thread of its own at ``%load_ext`` while the
user types the next cell; each magic waits for the part it needs before it imports anything.

The thread imports in the order a stream does (the package's API, pyarrow, redis, pandas: ~0.5 s;
then a live stream's feed, kiteconnect's HTTP client, websocket and Twisted modules: ~0.35 s), but
not ``twisted.internet.reactor``, whose import installs a reactor: the kernel's choice of reactor
stays open until a live stream starts. A magic's own imports never run beside the thread's (two
threads importing intertwined packages can each hold a module the other waits for, which Python
answers with a deadlock error): the magic waits for the thread to pass what it needs. The thread
ends with the full garbage collection its imports' objects made due.
"""

from __future__ import annotations

import gc
import importlib
import threading

REPLAY = ("kiteohlc_lab.api", "pyarrow.parquet", "pyarrow.csv", "redis", "pandas")
LIVE = ("requests", "twisted.internet.posixbase", "twisted.internet.tcp", "twisted.internet.ssl",
        "autobahn.twisted.websocket")
PREWARM = REPLAY + LIVE


class Prewarm:
    """The imports of ``names`` on the thread "kiteohlc-prewarm", started at once."""

    def __init__(self, names: tuple[str, ...] = PREWARM) -> None:
        self.names = names
        self._done = 0
        self._cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="kiteohlc-prewarm", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for name in self.names:
                try:
                    importlib.import_module(name)
                except Exception:  # noqa: BLE001 - the real import says why, where it is needed
                    pass
                with self._cond:
                    self._done += 1
                    self._cond.notify_all()
            # the full collection these imports' objects have made due, now rather than in the
            # next cell: it fell in the middle of a first replay (1M ticks: 78-87 ms of 0.42-0.45 s)
            gc.collect()
        finally:
            with self._cond:
                self._done = len(self.names)
                self._cond.notify_all()

    def wait(self, upto: str | None = None, timeout: float = 120.0) -> bool:
        """Until the thread has imported ``upto`` (a name of ``names``; None: all of them)."""
        k = len(self.names) if upto is None or upto not in self.names else self.names.index(upto) + 1
        with self._cond:
            return self._cond.wait_for(lambda: self._done >= k, timeout)


_CURRENT: Prewarm | None = None


def start() -> Prewarm:
    """Start the imports (once per process: a second ``%load_ext`` finds them done or going)."""
    global _CURRENT
    if _CURRENT is None:
        _CURRENT = Prewarm()
    return _CURRENT


def wait(upto: str | None = REPLAY[-1]) -> None:
    """What a magic calls first: the thread's imports up to ``upto`` done (nothing without one)."""
    if _CURRENT is not None:
        _CURRENT.wait(upto)
