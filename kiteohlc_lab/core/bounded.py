"""Bounded helpers of the runtime: an error log that keeps its last N entries, and the worker
thread that runs ``on_candle`` callbacks off the stream threads with a bounded backlog.

Nothing here knows about streams or stores; ``runtime.Manager`` owns one of each.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Callable, Iterable

log = logging.getLogger("kiteohlc_lab")


class ErrorLog(list):
    """A list that keeps only its last ``maxlen`` entries; ``total`` counts every entry appended.

    It stays a ``list`` (readers index and iterate it as before). A reader that remembers how far it
    read keeps ``total`` instead of ``len()``: ``log.since(seen)`` gives the entries appended after
    ``seen`` (those still kept) and the new mark.
    """

    def __init__(self, maxlen: int = 1000) -> None:
        super().__init__()
        self.maxlen = max(1, int(maxlen))
        self.total = 0
        self._lock = threading.Lock()

    def append(self, item: Any) -> None:  # stream threads append concurrently
        with self._lock:
            super().append(item)
            self.total += 1
            extra = len(self) - self.maxlen
            if extra > 0:
                del self[:extra]

    def extend(self, items: Iterable[Any]) -> None:
        for item in items:
            self.append(item)

    @property
    def dropped(self) -> int:
        """Entries appended that are no longer kept."""
        return self.total - len(self)

    def since(self, seen: int) -> tuple[list[Any], int]:
        """(entries appended after the first ``seen`` ever appended, still kept; new ``seen``)."""
        with self._lock:
            first = self.total - len(self)  # the "total" number of the oldest entry kept
            return list(self[max(0, int(seen) - first):]), self.total


class CallbackWorker:
    """Runs ``call(fn, candle)`` for queued jobs, in order, on one daemon thread.

    ``submit`` never blocks: jobs beyond ``maxsize`` queued are dropped and counted. A stream thread
    that submits to an idle worker may give it up to ``grace`` seconds to finish (``wait_idle``), so
    a quick callback has seen a candle about when ``candles()`` shows it; a worker that is behind
    (a slow callback) is never waited for.
    """

    def __init__(self, call: Callable[[Callable, Any], Any], maxsize: int = 10_000,
                 name: str = "kiteohlc-callbacks") -> None:
        self._call = call
        self.maxsize = max(1, int(maxsize))
        self._q: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._busy = False
        self._stop = False
        self.called = 0
        self.dropped = 0
        self.max_backlog = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        """Jobs queued or running now."""
        return len(self._q) + int(self._busy)

    def submit(self, jobs: list[tuple[Callable, Any]]) -> bool:
        """Queue ``(fn, candle)`` jobs; True when the worker was idle (nothing queued or running)."""
        with self._cv:
            idle = not self._q and not self._busy
            room = self.maxsize - len(self._q)
            if room < len(jobs):
                self.dropped += len(jobs) - max(room, 0)
                jobs = jobs[: max(room, 0)]
            self._q.extend(jobs)
            self.max_backlog = max(self.max_backlog, self.backlog)
            if jobs:
                self._cv.notify_all()
        return idle

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Until nothing is queued or running (True), or ``timeout`` seconds (False)."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._q and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._q or self._stop)
                if not self._q:
                    return
                fn, candle = self._q.popleft()
                self._busy = True
            try:
                self._call(fn, candle)
            except BaseException as exc:  # noqa: BLE001 - the worker never dies
                log.warning("on_candle worker: %s", exc)
            finally:
                with self._cv:
                    self._busy = False
                    self.called += 1
                    self._cv.notify_all()

    def stop(self, timeout: float = 2.0) -> None:
        """Run what is queued for up to ``timeout`` seconds, then end the thread (the rest dropped)."""
        self.wait_idle(timeout)
        with self._cv:
            self.dropped += len(self._q)
            self._q.clear()
            self._stop = True
            self._cv.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def status(self) -> dict:
        return {"queued": self.backlog, "called": self.called, "dropped": self.dropped,
                "max_backlog": self.max_backlog, "limit": self.maxsize}
