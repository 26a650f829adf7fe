"""A bounded on-disk queue of writes, and ``Resilient``: a store wrapper that spools while down.

When Redis or MongoDB is unreachable (or goes away mid-stream) the stream thread must keep going:
``Resilient.write`` never raises a connection error, logs ONE warning when the store goes down (and
one when it is back), appends the write to the spool, and probes for recovery at most every
``retry_interval`` seconds (not per call). Once the store answers again the spool is replayed in
order, then new writes go straight through again. The spool is a small SQLite file under
``data_dir/spool/``, so writes spooled by a kernel that died are replayed by the next session.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import threading
import time
from typing import Any, Callable

import numpy as np

from ..core.candles import CandleBatch
from ..errors import StoreError

log = logging.getLogger("kiteohlc_lab.stores")

_ARRAYS = ("token", "start", "open", "high", "low", "close", "volume", "oi", "ticks")


# -- encoding -------------------------------------------------------------------------------------
def encode_batch(b: CandleBatch) -> dict:
    d: dict[str, Any] = {"tf": b.tf, "closed": b.closed}
    for k in _ARRAYS:
        d[k] = getattr(b, k).tolist()
    d["amended"] = None if b.amended is None else b.amended.tolist()
    return d


def decode_batch(d: dict) -> CandleBatch:
    ints = ("token", "start", "ticks")
    arrays = [np.array(d[k], np.int64 if k in ints else np.float64) for k in _ARRAYS]
    amended = None if d.get("amended") is None else np.array(d["amended"], bool)
    return CandleBatch(d["tf"], *arrays, bool(d["closed"]), amended)


# -- the spool ------------------------------------------------------------------------------------
class Spool:
    """Bounded FIFO of JSON payloads in one SQLite file.

    When ``max_entries`` or ``max_bytes`` would be exceeded the OLDEST entries are dropped and
    counted in ``dropped`` (persisted in the file).

    The file is made by the first ``push``: a store that never goes down has none (opening it at
    every start, for nothing, was 3-18 ms of a replay's store start-up); one left by an earlier
    process is opened at once, so what it holds is replayed.
    """

    def __init__(self, path: str | os.PathLike, max_entries: int = 200_000,
                 max_bytes: int = 512 * 1024 * 1024) -> None:
        self.path = str(path)
        self.max_entries, self.max_bytes = int(max_entries), int(max_bytes)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._n = self._bytes = self.dropped = 0
        self._closed = False
        if os.path.exists(self.path):
            self._open()

    def _open(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"spool {self.path!r} is closed")
        if self._db is not None:
            return self._db
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        db = self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False,
                                        isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS q (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                   "kind TEXT NOT NULL, payload TEXT NOT NULL, size INTEGER NOT NULL)")
        db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER)")
        n, size = db.execute("SELECT count(*), ifnull(sum(size), 0) FROM q").fetchone()
        self._n, self._bytes = int(n), int(size)
        row = db.execute("SELECT v FROM meta WHERE k = 'dropped'").fetchone()
        self.dropped = int(row[0]) if row else 0
        return db

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        return self._bytes

    def push(self, kind: str, payload: Any) -> int:
        """Append one entry; returns how many old entries were dropped to make room."""
        text = json.dumps(payload, separators=(",", ":"))
        size = len(text)
        with self._lock:
            db = self._open()
            dropped = 0
            db.execute("BEGIN IMMEDIATE")
            try:
                while self._n and (self._n + 1 > self.max_entries
                                   or self._bytes + size > self.max_bytes):
                    k = max(1, min(self._n, self._n + 1 - self.max_entries))
                    rows = db.execute(
                        "SELECT id, size FROM q ORDER BY id LIMIT ?", (k,)).fetchall()
                    db.execute("DELETE FROM q WHERE id <= ?", (rows[-1][0],))
                    self._n -= len(rows)
                    self._bytes -= sum(r[1] for r in rows)
                    dropped += len(rows)
                db.execute("INSERT INTO q (kind, payload, size) VALUES (?, ?, ?)",
                           (kind, text, size))
                if dropped:
                    self.dropped += dropped
                    db.execute("INSERT INTO meta (k, v) VALUES ('dropped', ?) "
                               "ON CONFLICT (k) DO UPDATE SET v = excluded.v", (self.dropped,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._n += 1
            self._bytes += size
            return dropped

    def peek(self, n: int = 100) -> list[tuple[int, str, Any]]:
        """The oldest ``n`` entries as ``(id, kind, payload)``, oldest first."""
        with self._lock:
            db = self._db
            if db is None:
                return []
            rows = db.execute(
                "SELECT id, kind, payload FROM q ORDER BY id LIMIT ?", (int(n),)).fetchall()
        return [(i, k, json.loads(p)) for i, k, p in rows]

    def remove(self, entry_id: int) -> None:
        """Remove every entry up to and including ``entry_id``."""
        with self._lock:
            db = self._db
            if db is None:
                return
            n, size = db.execute(
                "SELECT count(*), ifnull(sum(size), 0) FROM q WHERE id <= ?", (entry_id,)).fetchone()
            db.execute("DELETE FROM q WHERE id <= ?", (entry_id,))
            self._n -= int(n)
            self._bytes -= int(size)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._db is not None:
                self._db.close()


# -- the wrapper ----------------------------------------------------------------------------------
def transient_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning "the server is not reachable now" (spool and retry), not a bug."""
    errs: list[type[BaseException]] = [OSError, sqlite3.OperationalError]
    try:
        import redis.exceptions as rex

        errs += [rex.ConnectionError, rex.TimeoutError]
    except ImportError:  # pragma: no cover
        pass
    # pymongo's only once it is loaded (a MongoHistory imports it before it is wrapped): importing it
    # for a Redis store alone costs a third of a second at every start
    if "pymongo" in sys.modules:
        import pymongo.errors as pex

        errs += [pex.ConnectionFailure, pex.ServerSelectionTimeoutError, pex.NetworkTimeout]
    return tuple(errs)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class Resilient:
    """Wrap a ``HistoryStore`` or ``LiveStore`` so writes survive the server going away.

    Parameters
    ----------
    store : the store to wrap (``RedisLive``, ``MongoHistory``, ``SQLiteHistory``).
    spool : a ``Spool`` (one per wrapped store).
    retry_interval : seconds between recovery probes while the store is down.
    max_drain : spooled writes replayed per ``write`` call (keeps one call short); ``flush()``
        replays everything.

    Reads are passed through; a read that cannot reach the server raises ``StoreError`` (one line),
    except ``load_states`` which returns ``{}`` (continuity is best effort).
    """

    def __init__(self, store: Any, spool: Spool, retry_interval: float = 1.5,
                 max_drain: int = 2000, clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.spool = store, spool
        self.retry_interval = float(retry_interval)
        self.max_drain = int(max_drain)
        self._clock = clock
        self._lock = threading.RLock()
        self._errors = transient_errors()
        self._down = False
        self._error: str | None = None
        self._next_probe = 0.0
        self._replayed = 0
        self._dropped_logged = False
        self.name = getattr(store, "name", type(store).__name__)
        self._kind = "live" if hasattr(store, "load_states") else "history"

    # -- writes -----------------------------------------------------------------------------------
    def write(self, *args: Any) -> None:
        """Write through, or spool when the store is down. Never raises a connection error."""
        with self._lock:
            if self._down and self._clock() < self._next_probe:
                self._push(args)
                return
            if len(self.spool) and not self._drain(self.max_drain):
                self._push(args)
                return
            if len(self.spool):  # drained only part of a long spool: keep order
                self._push(args)
                return
            try:
                self.store.write(*args)
            except self._errors as exc:
                self._went_down(exc)
                self._push(args)
                return
            self._came_back()

    def flush(self) -> bool:
        """Replay the whole spool now (ignores the probe interval). True when it is empty."""
        with self._lock:
            ok = self._drain(None)
            if ok:
                self._came_back()
            return ok and not len(self.spool)

    def _encode(self, args: tuple) -> Any:
        if self._kind == "history":
            return encode_batch(args[0])
        forming, closed, states = args
        return {"forming": [encode_batch(b) for b in forming],
                "closed": [encode_batch(b) for b in closed],
                "states": {str(k): v for k, v in states.items()}}

    def _apply(self, payload: Any) -> None:
        if self._kind == "history":
            self.store.write(decode_batch(payload))
        else:
            self.store.write([decode_batch(b) for b in payload["forming"]],
                             [decode_batch(b) for b in payload["closed"]],
                             {int(k): v for k, v in payload["states"].items()})

    def _push(self, args: tuple) -> None:
        dropped = self.spool.push(self._kind, self._encode(args))
        if dropped and not self._dropped_logged:
            self._dropped_logged = True
            log.warning("%s spool is full (%d entries, %d bytes): dropping the oldest writes",
                        self.name, self.spool.max_entries, self.spool.max_bytes)

    def _drain(self, limit: int | None) -> bool:
        """Replay spooled writes oldest first. False when the store failed (now marked down)."""
        done = 0
        while len(self.spool) and (limit is None or done < limit):
            entries = self.spool.peek(min(200, limit - done) if limit else 200)
            if not entries:
                break
            last_ok = None
            try:
                for entry_id, _kind, payload in entries:
                    self._apply(payload)
                    last_ok = entry_id
                    done += 1
            except self._errors as exc:
                if last_ok is not None:
                    self.spool.remove(last_ok)
                self._went_down(exc)
                return False
            self.spool.remove(last_ok)  # type: ignore[arg-type]
        self._replayed += done
        return True

    def _went_down(self, exc: BaseException) -> None:
        self._error = _one_line(exc)
        self._next_probe = self._clock() + self.retry_interval
        if not self._down:
            self._down = True
            log.warning("%s store is unreachable (%s); spooling writes to %s and retrying every "
                        "%.1f s", self.name, self._error, self.spool.path, self.retry_interval)

    def _came_back(self) -> None:
        if self._down:
            self._down = False
            self._dropped_logged = False
            log.warning("%s store is reachable again; replayed %d spooled writes",
                        self.name, self._replayed)
            self._replayed = 0
        self._error = None

    # -- reads and the rest -----------------------------------------------------------------------
    def _read(self, method: str, *args: Any, **kw: Any) -> Any:
        try:
            return getattr(self.store, method)(*args, **kw)
        except self._errors as exc:
            raise StoreError(f"{self.name} store is unreachable: {_one_line(exc)}") from exc

    def read(self, *args: Any, **kw: Any) -> Any:
        return self._read("read", *args, **kw)

    def last_start(self, *args: Any, **kw: Any) -> Any:
        return self._read("last_start", *args, **kw)

    def forming(self, *args: Any, **kw: Any) -> Any:
        return self._read("forming", *args, **kw)

    def recent_closed(self, *args: Any, **kw: Any) -> Any:
        return self._read("recent_closed", *args, **kw)

    def load_states(self, tokens: list[int]) -> dict[int, dict]:
        try:
            return self.store.load_states(tokens)
        except self._errors as exc:
            log.warning("%s store is unreachable (%s); starting without saved state",
                        self.name, _one_line(exc))
            return {}

    @property
    def down(self) -> bool:
        return self._down

    def health(self) -> dict:
        return dict(name=self.name, ok=not self._down, error=self._error,
                    spooled=len(self.spool), dropped=self.spool.dropped)

    def describe(self) -> str:
        d = getattr(self.store, "describe", None)
        return d() if d else self.name

    def close(self) -> None:
        """Try a last replay, then close the store and the spool (what stays spooled is kept)."""
        with self._lock:
            try:
                if len(self.spool):
                    self._drain(None)
            finally:
                try:
                    self.store.close()
                finally:
                    self.spool.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)
