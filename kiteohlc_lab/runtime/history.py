"""HistoryService: one queue and one thread for a session's fetches of Kite's historical candles.

The long-running side jobs that talk to Kite's historical API go through here, so they share one
thread (and Kite's 3 requests/s limit is met in one place): the gap repair of long buckets
(``core.repair.Repairs``: a bucket is fetched whole once it is over and settled, ``REPAIR_SETTLE_S``)
and backfill (``runtime.launch.start_backfill``). A job is a function with an optional ``ready()``
(polled; it runs once that is true, jobs in submission order) and ``cancelled()`` (its stream ended:
dropped unrun). Jobs report their own errors (to their stream); an exception escaping one is logged
and the next runs.

The thread starts with the first job and ends once the queue has been empty for ``idle_exit``
seconds (the next job starts it again), so a session with no history work holds no thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("kiteohlc_lab.history")


@dataclass(frozen=True)
class Job:
    run: Callable[[], Any]
    ready: Callable[[], bool] | None = None  # None: now
    cancelled: Callable[[], bool] | None = None  # None: never
    what: str = ""  # for the log


class HistoryService:
    """See the module docstring. ``submit(run, ready=, cancelled=, what=)``; ``stop()``; ``status()``."""

    def __init__(self, name: str = "kiteohlc-history", poll: float = 0.25, idle_exit: float = 1.0) -> None:
        self.name = name
        self.poll = float(poll)  # seconds between two looks at jobs not ready yet
        self.idle_exit = float(idle_exit)  # seconds of an empty queue before the thread ends
        self._q: queue.SimpleQueue = queue.SimpleQueue()  # submitted, not yet taken by the thread
        self._lock = threading.Lock()  # guards _thread and the counters
        self._thread: threading.Thread | None = None  # the one worker, None while idle
        self._stopped = threading.Event()  # stop(): jobs still queued are dropped
        self.ran = 0  # jobs run
        self.dropped = 0  # jobs cancelled (their stream ended) or dropped at stop()
        self.waiting = 0  # jobs queued or waiting for ready()

    def submit(self, run: Callable[[], Any], *, ready: Callable[[], bool] | None = None,
               cancelled: Callable[[], bool] | None = None, what: str = "") -> None:
        """Run ``run()`` on the service thread once ``ready()`` (default: now), unless ``cancelled()``."""
        with self._lock:
            self._stopped.clear()
            self.waiting += 1
            self._q.put(Job(run, ready, cancelled, what))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Drop what waits and end the thread (a job running now finishes first)."""
        self._stopped.set()
        with self._lock:
            t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)

    def status(self) -> dict:
        with self._lock:
            return {"waiting": self.waiting, "ran": self.ran, "dropped": self.dropped,
                    "running": self._thread is not None}

    def _take(self, pending: list[Job], block: float) -> None:
        try:
            pending.append(self._q.get(timeout=block) if block > 0 else self._q.get_nowait())
            while True:
                pending.append(self._q.get_nowait())
        except queue.Empty:
            pass

    def _run(self) -> None:
        pending: list[Job] = []
        idle_since = time.monotonic()
        while True:
            self._take(pending, self.poll)
            if self._stopped.is_set():
                self._count(dropped=len(pending))
                pending = []
            for job in list(pending):
                if self._stopped.is_set():
                    break
                if job.cancelled is not None and job.cancelled():
                    pending.remove(job)
                    self._count(dropped=1)
                    continue
                if job.ready is not None and not job.ready():
                    continue
                pending.remove(job)
                try:
                    job.run()
                except Exception:  # noqa: BLE001 - jobs report their own errors; the next one runs
                    log.warning("history job %s failed", job.what or job.run, exc_info=True)
                self._count(ran=1)
            if pending:
                idle_since = time.monotonic()
                continue
            if time.monotonic() - idle_since < self.idle_exit and not self._stopped.is_set():
                continue
            with self._lock:  # idle: end, unless a job came in meanwhile
                if self._q.empty():
                    self._thread = None
                    return
            idle_since = time.monotonic()

    def _count(self, ran: int = 0, dropped: int = 0) -> None:
        with self._lock:
            self.ran += ran
            self.dropped += dropped
            self.waiting -= ran + dropped
