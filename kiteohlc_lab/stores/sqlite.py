"""SQLite candle history: the embedded default (``data_dir/history.sqlite3``).

One table keyed ``(token, tf, start)`` (``WITHOUT ROWID``), WAL journal so the notebook thread reads
while the stream thread writes. Each thread gets its own connection (sqlite3 connections must not be
shared across threads); writes are serialised by a lock because SQLite allows one writer anyway.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas loads where a frame is made: a replay never needs it
    import pandas as pd

from ..core.candles import CandleBatch, frame_from_arrays
from ..errors import StoreError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS candles (
    token INTEGER NOT NULL, tf TEXT NOT NULL, start INTEGER NOT NULL,
    open REAL, high REAL, low REAL, close REAL, volume REAL, oi REAL, ticks INTEGER,
    PRIMARY KEY (token, tf, start)
) WITHOUT ROWID
"""
# many rows per statement: one sqlite3_step (one release of the GIL) per statement instead of one
# per row, which made the writer thread and the stream thread hand the GIL back and forth per candle
_UPSERT_HEAD = "INSERT INTO candles (token, tf, start, open, high, low, close, volume, oi, ticks) VALUES "
_UPSERT_ROW = "(?,?,?,?,?,?,?,?,?,?)"
_UPSERT_TAIL = """
ON CONFLICT (token, tf, start) DO UPDATE SET
    open = excluded.open, high = excluded.high, low = excluded.low, close = excluded.close,
    volume = excluded.volume, oi = excluded.oi, ticks = excluded.ticks
"""
# Rows per statement: SQLite compiles every row of a VALUES list into the statement's program, so
# preparing one of 3000 rows took ~14 ms, and each batch's odd-sized last statement was prepared
# afresh. Statements of 1024 rows, the rest of a batch in 512, 256, ... 1 (``_pieces``): eleven
# shapes, each prepared once per connection, then taken from sqlite3's statement cache. Fewer rows
# a statement are quicker alone (256: 1.85 us a row in benchmarks/bench_stores.py), but each
# statement's end waits for the GIL back from the stream thread: in a 1M-tick replay 1024 rows
# ended 0.311 -> 0.286 s (median of 12, alternating; 2048 the same as 1024).
_ROWS_PER_STATEMENT = 1024
_WIDTH = 10  # parameters a row: token, tf, start, open, high, low, close, volume, oi, ticks
_PLACES = ((0, 0), (2, 1), (3, 2), (4, 3), (5, 4), (6, 5), (7, 6), (8, 7), (9, 8))  # (place, column)
# SQLite stores NaN as NULL; 9e999 reads back as +inf, which no real price/volume/oi is, so a NULL
# becomes inf in the structured array and is turned back into NaN in one vectorised step.
_READ = (
    "SELECT start, ifnull(open, 9e999), ifnull(high, 9e999), ifnull(low, 9e999), "
    "ifnull(close, 9e999), ifnull(volume, 9e999), ifnull(oi, 9e999) FROM candles "
    "WHERE token = ? AND tf = ? AND start >= ? AND start < ? ORDER BY start"
)
_ROW = np.dtype(
    [("start", "i8"), ("open", "f8"), ("high", "f8"), ("low", "f8"), ("close", "f8"),
     ("volume", "f8"), ("oi", "f8")]
)
_READ_MANY_HEAD = (
    "SELECT token, start, ifnull(open, 9e999), ifnull(high, 9e999), ifnull(low, 9e999), "
    "ifnull(close, 9e999), ifnull(volume, 9e999), ifnull(oi, 9e999) FROM candles "
    "WHERE tf = ? AND token IN ("
)
_ROW_T = np.dtype([("token", "i8"), *[(n, _ROW.fields[n][0]) for n in _ROW.names]])
_I64_MIN = -(2**63)
_I64_MAX = 2**63 - 1


def _pieces(n: int, per: int) -> list[tuple[int, int]]:
    """(first row, rows) of each statement for ``n`` rows: ``per`` at a time, then the rest in
    ``per // 2``, ``per // 4``, ... 1 (powers of two for the usual 1024; a few statement shapes,
    all cached, for any ``n``)."""
    out = [(i, per) for i in range(0, n - n % per, per)]
    at, size = n - n % per, per
    while at < n:
        while size > n - at:
            size //= 2
        out.append((at, size))
        at += size
    return out


def _key_sorted(tok: np.ndarray, start: np.ndarray) -> bool:
    """Whether the rows are in ``(token, start)`` order already."""
    dt, ds = np.diff(tok), np.diff(start)
    return bool(((dt > 0) | ((dt == 0) & (ds > 0))).all())


class SQLiteHistory:
    """Closed-candle history in one SQLite file.

    Parameters
    ----------
    path : file path (parent directories are created) or ``":memory:"`` (one shared connection).

    Examples
    --------
    >>> h = SQLiteHistory(":memory:")
    >>> h.write(batch); df = h.read(256265, "1m")
    """

    name = "sqlite"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self._memory = self.path == ":memory:"
        if not self._memory:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        self._shared: sqlite3.Connection | None = None
        conn = self._conn()
        conn.execute(_SCHEMA)
        conn.commit()
        self._per = self._rows_per_statement(conn)  # the same library for every connection

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
            if not self._memory:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL keeps it safe
            # a multi-row upsert's statement journal in memory: on disk it was a file created, written
            # and deleted under /var/tmp per statement (13,484 writes to 103 such files in a
            # 20M-tick replay)
            conn.execute("PRAGMA temp_store=MEMORY")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite history at {self.path!r}: {exc}") from exc
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"SQLite history at {self.path!r} is closed")
        if self._memory:  # one connection: a second ":memory:" connection would be another database
            if self._shared is None:
                self._shared = self._connect()
            return self._shared
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def write(self, batch: CandleBatch) -> None:
        """Upsert the batch's candles (one transaction, multi-row statements)."""
        self._upsert([batch])

    def write_many(self, batches: list[CandleBatch]) -> None:
        """Upsert several batches (timeframes) in one transaction: a commit writes every page it
        changed to the WAL again, and a replay's writer takes a batch per timeframe at each wake
        (107 -> 43 commits in a 20M-tick replay)."""
        self._upsert(batches)

    def _upsert(self, batches: list[CandleBatch]) -> None:
        work = [b for b in batches if len(b)]
        if not work:
            return
        conn = self._conn()
        per = self._per
        with self._write_lock, conn:
            for batch in work:
                tok, start = batch.token, batch.start
                # in key order: a batch closes candles time by time, instrument after instrument,
                # and inserting them in the table's (token, tf, start) order touches each B-tree
                # page once (benchmarks/bench_stores.py: a replay's batches)
                order = None if len(tok) < 2 or _key_sorted(tok, start) else np.lexsort((start, tok))
                cols = [col.tolist() if order is None else col[order].tolist()
                        for col in (tok, start, batch.open, batch.high, batch.low, batch.close,
                                    batch.volume, batch.oi, batch.ticks)]
                for i, k in _pieces(len(batch), per):
                    sql = _UPSERT_HEAD + ",".join([_UPSERT_ROW] * k) + _UPSERT_TAIL
                    # the rows' parameters laid out by slice assignment, a column at a time: 4.6x
                    # quicker than zipping them row by row, and no tuple a row for the collector
                    # to chase (both under the GIL, which the stream thread wants meanwhile)
                    params = [batch.tf] * (_WIDTH * k)
                    for j, col in _PLACES:
                        params[j::_WIDTH] = cols[col][i:i + k]
                    conn.execute(sql, params)

    @staticmethod
    def _rows_per_statement(conn: sqlite3.Connection) -> int:
        try:  # an SQLite built with a lower limit of bound parameters
            return max(1, min(_ROWS_PER_STATEMENT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 10))
        except (AttributeError, sqlite3.Error):
            return 99  # the limit of SQLite before 3.32 (999 parameters)

    def read(
        self, token: int, tf: str, start_ns: int | None = None, end_ns: int | None = None
    ) -> pd.DataFrame:
        """Candles with ``start_ns <= start < end_ns`` as the public frame, sorted by date."""
        lo = _I64_MIN if start_ns is None else int(start_ns)
        hi = _I64_MAX if end_ns is None else int(end_ns)
        conn = self._conn()
        if self._memory:
            with self._write_lock:
                arr = np.fromiter(conn.execute(_READ, (int(token), tf, lo, hi)), dtype=_ROW)
        else:
            arr = np.fromiter(conn.execute(_READ, (int(token), tf, lo, hi)), dtype=_ROW)
        cols = {k: arr[k] for k in _ROW.names}
        for k in _ROW.names[1:]:
            col = np.ascontiguousarray(cols[k])
            col[np.isinf(col)] = np.nan
            cols[k] = col
        return frame_from_arrays(
            np.ascontiguousarray(cols["start"]), cols["open"], cols["high"], cols["low"],
            cols["close"], cols["volume"], cols["oi"],
        )

    def read_many(self, tokens: list[int], tf: str) -> dict[int, CandleBatch]:
        """Every stored candle of ``tokens`` at ``tf`` in one query per 500 tokens (stream start
        with thousands of instruments); tokens without candles are left out."""
        out: dict[int, CandleBatch] = {}
        toks = [int(t) for t in tokens]
        conn = self._conn()
        for i in range(0, len(toks), 500):
            chunk = toks[i : i + 500]
            sql = (_READ_MANY_HEAD + ",".join("?" * len(chunk)) + ") ORDER BY token, start")
            if self._memory:
                with self._write_lock:
                    arr = np.fromiter(conn.execute(sql, (tf, *chunk)), dtype=_ROW_T)
            else:
                arr = np.fromiter(conn.execute(sql, (tf, *chunk)), dtype=_ROW_T)
            if not len(arr):
                continue
            tok = arr["token"]
            cuts = np.flatnonzero(tok[1:] != tok[:-1]) + 1
            for part in np.split(arr, cuts):
                n = len(part)
                cols = {k: np.ascontiguousarray(part[k]) for k in _ROW.names}
                for k in _ROW.names[1:]:
                    cols[k][np.isinf(cols[k])] = np.nan
                out[int(part["token"][0])] = CandleBatch(
                    tf, np.full(n, int(part["token"][0]), np.int64), cols["start"], cols["open"],
                    cols["high"], cols["low"], cols["close"], cols["volume"], cols["oi"],
                    np.zeros(n, np.int64),
                )
        return out

    def last_start(self, token: int, tf: str) -> int | None:
        row = self._conn().execute(
            "SELECT max(start) FROM candles WHERE token = ? AND tf = ?", (int(token), tf)
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def count(self) -> int:
        return int(self._conn().execute("SELECT count(*) FROM candles").fetchone()[0])

    def health(self) -> dict:
        try:
            self._conn().execute("SELECT 1").fetchone()
            return dict(name=self.name, ok=True, error=None, spooled=0)
        except (sqlite3.Error, StoreError) as exc:
            return dict(name=self.name, ok=False, error=str(exc), spooled=0)

    def describe(self) -> str:
        return f"SQLite at {self.path}"

    def close(self) -> None:
        """Close every thread's connection. Idempotent."""
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.close()
            except sqlite3.Error:
                pass
