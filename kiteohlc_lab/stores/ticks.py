"""The tick store: every tick a live stream accepts, kept in a hive-partitioned Parquet dataset.

Layout (``data_dir/ticks/``, or the ``tick_store`` URL: any pyarrow filesystem, ``file://``,
``s3://`` ...)::

    ticks/host=<host>/date=2026-11-25/part-<host>-<pid>-<opened ns>-<seq>.parquet
    ticks/host=<host>/date=2026-11-25/.part-....parquet.tmp       the open file (readers skip it)
    ticks/_rejected/host=<host>/date=2026-11-25/part-....parquet  ticks the TickFilter rejected

One directory per collector host, one per IST date (of the exchange time; rejected ticks: of the
receive time, their stamps being what is wrong). pyarrow, polars and DuckDB skip names starting with
``.`` or ``_``, so the open file and the rejected ticks never mix in a read of ``ticks/``.

Columns (``SCHEMA``): ``token`` int64; ``exchange_time`` and ``receive_time``
``timestamp[ns, Asia/Kolkata]`` (the instant is UTC-exact, the zone only says how to show it);
``last_price`` float64; ``volume`` float64, the cumulative day volume (null where the packet has
none: indices); ``oi`` float64 (null where none); the top of the book of full-mode packets, ``bid``
``ask`` float64 and ``bid_qty`` ``ask_qty`` float32 (the first depth level of each side; null where
the packet has no depth: ltp/quote mode, indices; an empty side: null price, quantity 0). Rejected
files add ``reason`` (``bad_price``, ``bad_volume``, ``bad_stamp``). Rows keep the order the stream
processed them in (a replay in file order is the live stream's order). ``receive_time`` is when the
stream thread took the batch (the ``TickBatch`` carries no receive stamp of its own).

Writing is on a background thread behind a bounded queue (a full queue for a second drops the batch,
counted in ``status()``); a file is closed every ``file_seconds`` (and at ``close()``), written under
a hidden temporary name and renamed into place, so a crash loses at most the open part and never
leaves a truncated file visible. A restart continues the day with new names (pid, opening ns).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any, Callable

import numpy as np

from ..core.ticks import TickBatch
from ..core.timeframes import DAY_NS, IST_OFFSET_NS, NS
from .tickfiles import (PART_NAME, REASONS, REJECTED_DIR, SYMBOLS_DIR, ZONE, host_name, ist_date,
                        list_dirs, parse_part, pid_alive, prune, resolve, schema, store_url, usage)

log = logging.getLogger("kiteohlc_lab.ticks")

class _Part:
    """One open file: a ParquetWriter on a hidden temporary name, buffered into row groups."""

    def __init__(self, filesystem: Any, folder: str, name: str, rejected: bool, opened: float) -> None:
        import pyarrow.parquet as pq

        filesystem.create_dir(folder, recursive=True)
        self.fs, self.final, self.tmp = filesystem, f"{folder}/{name}", f"{folder}/.{name}.tmp"
        self.opened = opened
        self.rows = 0
        self.buffer: list[Any] = []
        self.buffered = 0
        self.stream = filesystem.open_output_stream(self.tmp)
        self.writer = pq.ParquetWriter(self.stream, schema(rejected), compression="zstd")

    def add(self, rb: Any, row_group: int) -> None:
        self.buffer.append(rb)
        self.buffered += rb.num_rows
        self.rows += rb.num_rows
        if self.buffered >= row_group:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self.buffer:
            self.writer.write_table(pa.Table.from_batches(self.buffer))
            self.buffer, self.buffered = [], 0

    def publish(self) -> str:
        """Close the file and move it into place (a rename on a local or shared filesystem)."""
        self.flush()
        self.writer.close()
        self.stream.close()
        self.fs.move(self.tmp, self.final)
        return self.final


class TickStore:
    """Appends accepted (``write``) and rejected (``write_rejected``) ticks; see the module docstring.

    Parameters
    ----------
    url : the dataset's root, a path or a pyarrow filesystem URL
    file_seconds : a file is closed and published after this many seconds open
    retention_days : date partitions older than this are deleted at start and daily (0: keep all)
    queue_size : batches waiting for the writer thread at most
    row_group : rows per Parquet row group
    """

    def __init__(self, url: str, *, file_seconds: float = 300.0, retention_days: int = 0,
                 queue_size: int = 1024, row_group: int = 524_288, host: str | None = None) -> None:
        self.url = url
        self.fs, self.root = resolve(url)
        self.host = host or host_name()
        self.file_seconds = float(file_seconds)
        self.retention_days = int(retention_days)
        self.row_group = int(row_group)
        self.started_ns = time.time_ns()
        self.pid = os.getpid()
        self.written = 0          # accepted ticks handed to files
        self.rejected = 0         # rejected ticks handed to files
        self.dropped = 0          # ticks lost to a full queue
        self.skip_first = 0       # the first ticks written are not kept (runtime.warmstart's morning)
        self.files = 0            # files published
        self.error: str | None = None
        self.by_date: dict[str, int] = {}  # IST date -> accepted ticks written by this store
        self._seq = 0
        self._parts: dict[tuple[bool, str], _Part] = {}
        self._q: queue.Queue = queue.Queue(maxsize=queue_size)
        self._pruned_for = ""
        self._size_cache: tuple[float, dict] | None = None
        self._rows_cache: dict[str, int] = {}
        self._closed = False
        # token -> symbol of what is written (the stream's names), kept beside the data at each
        # publish: SYMBOLS_DIR/host=<host>.json, so a replay elsewhere knows "NIFTY"
        self.symbols_of: Callable[[], dict[int, str]] | None = None
        self._symbols_written: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name="kiteohlc-ticks", daemon=True)
        self._thread.start()

    # -- the stream thread's side: queue only
    def write(self, batch: TickBatch) -> None:
        """Keep ``batch`` (accepted ticks, in the order the stream processed them)."""
        if self.skip_first and len(batch):  # a warm start's ticks, the stream's first: stored already
            k = min(self.skip_first, len(batch))
            self.skip_first -= k
            batch = batch.take(slice(k, None))
        if len(batch):
            self._put(("ok", batch, time.time_ns(), None))

    def write_rejected(self, batch: TickBatch, reasons: np.ndarray) -> None:
        """Keep rejected ticks apart, each with its reason (``REASONS``)."""
        if len(batch):
            self._put(("bad", batch, time.time_ns(), np.asarray(reasons, dtype=object)))

    def _put(self, item: tuple) -> None:
        if self._closed:
            return
        try:
            self._q.put(item, timeout=1.0)
        except queue.Full:
            self.dropped += len(item[1])

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, publish the open files, end the thread. Idempotent."""
        if not self._closed:
            self._closed = True
            self._q.put(None)
        self._thread.join(timeout)

    # -- the writer thread
    def _run(self) -> None:
        try:
            self._sweep()
        except Exception as exc:  # noqa: BLE001 - leftovers are hidden from readers anyway
            log.debug("tick store: leftovers not swept: %s", exc)
        self._prune()
        while True:
            wait = self._next_roll()
            try:
                item = self._q.get(timeout=wait)
            except queue.Empty:
                item = ()
            try:
                if item is None:
                    self._publish(all_parts=True)
                    return
                if item:
                    self._add(*item)
                self._publish(all_parts=False)
                self._prune()
            except Exception as exc:  # noqa: BLE001 - recorded once, shown in status(); the stream goes on
                if self.error is None:
                    log.warning("tick store %s: %s: %s", self.url, type(exc).__name__, exc)
                self.error = f"{type(exc).__name__}: {exc}"

    def _sweep(self) -> None:
        """Delete the open files a crashed writer of this host left (its pid gone): never readable,
        a killed writer's open part is what a crash loses."""
        from pyarrow import fs

        for base in (self.root, f"{self.root}/{REJECTED_DIR}"):
            for ddir in list_dirs(self.fs, f"{base}/host={self.host}", "date="):
                for info in self.fs.get_file_info(fs.FileSelector(ddir)):
                    m = PART_NAME.search(info.base_name[1:-4]) if info.base_name.endswith(".tmp") else None
                    if m and m.group("host") == self.host and not pid_alive(int(m.group("pid"))):
                        self.fs.delete_file(info.path)

    def _next_roll(self) -> float:
        if not self._parts:
            return 1.0
        due = min(p.opened for p in self._parts.values()) + self.file_seconds
        return max(0.01, min(1.0, due - time.monotonic()))

    def _add(self, kind: str, batch: TickBatch, recv_ns: int, reasons: Any) -> None:
        rejected = kind == "bad"
        # accepted ticks by their exchange date; rejected ones by when they came (the stamp is the lie)
        key_ns = np.full(len(batch), recv_ns, np.int64) if rejected else batch.ts
        days = (key_ns + IST_OFFSET_NS) // DAY_NS
        lo, hi = int(days.min()), int(days.max())
        for day in range(lo, hi + 1):
            sel = slice(None) if lo == hi else np.flatnonzero(days == day)
            if lo != hi and not len(sel):  # type: ignore[arg-type]
                continue
            part = batch if lo == hi else batch.take(sel)
            date = str(np.datetime64(day, "D"))
            rb = self._record_batch(part, recv_ns, None if reasons is None else reasons[sel], rejected)
            self._part(rejected, date).add(rb, self.row_group)
            if rejected:
                self.rejected += len(part)
            else:
                self.written += len(part)
                self.by_date[date] = self.by_date.get(date, 0) + len(part)

    def _record_batch(self, b: TickBatch, recv_ns: int, reasons: Any, rejected: bool) -> Any:
        import pyarrow as pa

        ts = pa.timestamp("ns", tz=ZONE)
        n = len(b)
        cols = [pa.array(b.token, pa.int64()),
                pa.array(b.ts, pa.int64()).view(ts),
                pa.array(np.full(n, recv_ns, np.int64), pa.int64()).view(ts),
                pa.array(b.price, pa.float64()),
                pa.array(b.volume, pa.float64(), from_pandas=True),  # NaN -> null
                pa.array(b.oi, pa.float64(), from_pandas=True)]
        if b.has_book:  # full mode: the top of the book, NaN -> null
            cols += [pa.array(x, t, from_pandas=True) for x, t in
                     zip(b.book(), (pa.float64(), pa.float64(), pa.float32(), pa.float32()))]
        else:  # a column of nulls: no buffer, a few bytes a row group on disk
            cols += [pa.nulls(n, t) for t in (pa.float64(), pa.float64(), pa.float32(), pa.float32())]
        if rejected:
            cols.append(pa.array(list(reasons), pa.string()))
        return pa.RecordBatch.from_arrays(cols, schema=schema(rejected))

    def _part(self, rejected: bool, date: str) -> _Part:
        key = (rejected, date)
        p = self._parts.get(key)
        if p is None:
            self._seq += 1
            base = f"{self.root}/{REJECTED_DIR}" if rejected else self.root
            folder = f"{base}/host={self.host}/date={date}"
            name = f"part-{self.host}-{self.pid}-{time.time_ns()}-{self._seq:06d}.parquet"  # opened at
            p = self._parts[key] = _Part(self.fs, folder, name, rejected, time.monotonic())
        return p

    def _publish(self, all_parts: bool) -> None:
        now = time.monotonic()
        for key, p in list(self._parts.items()):
            if all_parts or now - p.opened >= self.file_seconds:
                del self._parts[key]
                p.publish()
                self.files += 1
                self._write_symbols()

    def _write_symbols(self) -> None:
        import json

        if self.symbols_of is None:
            return
        try:
            names = {str(v).upper(): int(k) for k, v in dict(self.symbols_of()).items()}
        except RuntimeError:  # changed while copied: the next publish writes it
            return
        if names == self._symbols_written:
            return
        folder = f"{self.root}/{SYMBOLS_DIR}"
        self.fs.create_dir(folder, recursive=True)
        final, tmp = f"{folder}/host={self.host}.json", f"{folder}/.host={self.host}.json.tmp"
        with self.fs.open_output_stream(tmp) as out:
            out.write(json.dumps({**self._symbols_written, **names}, sort_keys=True).encode())
        self.fs.move(tmp, final)
        self._symbols_written = {**self._symbols_written, **names}

    def _prune(self) -> None:
        today = ist_date(time.time_ns())
        if self._pruned_for == today:
            return
        self._pruned_for = today
        for path in prune(self.fs, self.root, self.retention_days, today):
            log.info("tick store: deleted %s (older than %d days)", path, self.retention_days)

    # -- status
    def status(self) -> dict:
        """Ticks written, today's tick count and the store's size (listed at most every 10 s)."""
        today = ist_date(time.time_ns())
        out = {"url": self.url, "written": self.written, "rejected": self.rejected,
               "dropped": self.dropped, "files": self.files, "error": self.error}
        cached = self._size_cache
        if cached is None or time.monotonic() - cached[0] > 10.0:
            try:
                cached = self._size_cache = (time.monotonic(), usage(self.fs, self.root, today,
                                                                     self._rows_cache))
            except Exception as exc:  # noqa: BLE001 - a status must not fail
                cached = (time.monotonic(), {"bytes": None, "today_closed": 0, "error": str(exc)})
        info = cached[1]
        open_rows = sum(p.rows for (rej, d), p in list(self._parts.items()) if not rej and d == today)
        out["bytes"] = info.get("bytes")
        # closed files of today (every host) and this store's open one
        out["today_ticks"] = int(info.get("today_closed", 0)) + open_rows
        return out


class TickStoreSink:
    """A ``TickStore`` subscribed to a stream's events (core.events): ``TicksAccepted`` -> ``write``,
    ``TicksRejected`` -> ``write_rejected`` of the rows the stream's ``TickFilter`` kept (it keeps
    them while a store listens), ``StreamDone`` -> ``close`` (the open file is published)."""

    def __init__(self, bus: Any, store: TickStore, tick_filter: Any,
                 symbols: Callable[[], dict[int, str]] | None = None) -> None:
        from ..core.events import StreamDone, TicksAccepted, TicksRejected

        self.store = store
        if symbols is not None:
            store.symbols_of = symbols
        self.filter = tick_filter
        tick_filter.keep_rejected = True
        bus.subscribe(TicksAccepted, lambda ev: store.write(ev.batch))
        bus.subscribe(TicksRejected, self._rejected)
        bus.subscribe(StreamDone, lambda ev: store.close())

    def _rejected(self, _ev: Any) -> None:
        bad = self.filter.take_rejected()
        if bad is not None:
            self.store.write_rejected(*bad)


def open_tick_store(cfg: Any) -> TickStore | None:
    """The configuration's tick store if ``record_ticks`` is on, else None."""
    if cfg.record_ticks != "on":
        return None
    return TickStore(store_url(cfg), file_seconds=cfg.tick_file_seconds,
                     retention_days=cfg.tick_retention_days)


__all__ = ["TickStore", "TickStoreSink", "open_tick_store", "schema", "resolve", "store_url", "prune", "ist_date",
           "parse_part", "REJECTED_DIR", "REASONS", "NS"]
