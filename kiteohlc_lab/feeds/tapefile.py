"""A tape file streamed block by block (Parquet row groups, CSV blocks): bounded memory at any size.

``open_tape(path)`` reads the first block only (a Parquet batch; a CSV's first megabyte) and returns
a ``TapeStream``: what a replay needs to start (its first tick's time, the instruments and symbols
seen so far) plus ``blocks()``, which yields that block and goes on through the file one block at a
time, converting each with Arrow straight to a ``TickBatch``; a CSV after its first block is parsed
4 to 32 MB of lines at a time by Arrow's multi-threaded reader, with the first block's column types.
The next blocks are read on a thread of their own while this one is aggregated (``prefetch``, up
to three ahead). Instruments are discovered as blocks arrive (``learn``), so a replay of every
instrument starts without a pass over the file.

A tape whose first block is not well typed (text in a number column, a missing stamp, a negative
volume ...) is read whole by ``taperead.read_tape``'s checking path, which names the first malformed
row; a later block that fails the same checks makes ``blocks()`` do the same from that row on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..core.ticks import TickBatch, lookup, run_starts, token_hash
from ..core.timeframes import IST_OFFSET_NS
from .readahead import Ahead, MappedPages, prefetch, tune_malloc

REQUIRED = ("timestamp", "instrument_token", "last_price")
BLOCK_ROWS = 262_144  # Parquet rows per block
PARQUET_GROUP_ROWS = 4 << 20  # a bigger row group is read in blocks, not whole
CSV_BLOCK_BYTES = 8 << 20  # CSV bytes per block (~160k ticks)
CSV_FIRST_BYTES = 1 << 20  # a CSV's first block (what a start needs), parsed before the replay starts


def _csv_types() -> dict[str, Any]:
    import pyarrow as pa

    return {"instrument_token": pa.int64(), "last_price": pa.float64(), "volume_traded": pa.float64(),
            "oi": pa.float64()}


class Malformed(Exception):
    """A block the fast path does not take: the checking path reads the file and names the row."""


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


_PARQUET_COLUMNS = ("timestamp", "instrument_token", "last_price", "volume_traded", "oi")


def _parquet(path: Path) -> tuple[Iterator[tuple[Any, _ParquetSymbols | None]], int]:
    """(the Parquet file's (record batch, its lazily read tradingsymbol column or None) in order,
    its row count). Only the columns ``convert`` takes are decoded (a 20M-tick tape: 0.94 -> 0.72 s
    of CPU in pyarrow); the symbols are read for the few blocks where an instrument first appears.

    Row groups are decoded whole (runs of small ones together, up to ``BLOCK_ROWS``) and handed on
    in blocks of ``BLOCK_ROWS``: pyarrow's ``iter_batches`` took 0.69 s wall / 0.90 s CPU for the
    20M-tick tape, whole row groups 0.44 / 0.62 s. The first row group, when bigger than a block
    (a replay's start waits for its first block), and one above ``PARQUET_GROUP_ROWS`` (an old
    writer's 64M-row default: memory stays bounded) are streamed in batches instead."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    names = f.schema_arrow.names
    sym = next((n for n in names if n.strip().lower() == "tradingsymbol"), None)
    cols = [n for n in names if n.strip().lower() in _PARQUET_COLUMNS]
    if sym is not None:  # the symbols as a dictionary: the few distinct ones once, an index a row
        f = pq.ParquetFile(path, read_dictionary=[sym], metadata=f.metadata)
    sizes = [f.metadata.row_group(g).num_rows for g in range(f.metadata.num_row_groups)]

    def runs() -> Iterator[Any]:
        """Record batches of at most BLOCK_ROWS rows, in file order."""
        run: list[int] = []
        rows = 0
        for g, n in enumerate([*sizes, -1]):
            if run and (n < 0 or n > PARQUET_GROUP_ROWS or rows + n > BLOCK_ROWS):
                tab = f.read_row_groups(run, columns=cols, use_threads=True)
                if len(run) > 1:
                    tab = tab.combine_chunks()
                yield from tab.to_batches(max_chunksize=BLOCK_ROWS)
                run, rows = [], 0
            if n < 0:
                return
            if n > PARQUET_GROUP_ROWS or (g == 0 and n > BLOCK_ROWS):  # the first block soon
                # the first group's symbols decoded with it: every instrument a replay starts with
                # is named from them (read apart, the start waited for a second open and decode of
                # the file: 4-20 ms of a 1M-tick replay)
                with_sym = [*cols, sym] if sym is not None and g == 0 and n <= PARQUET_GROUP_ROWS else cols
                yield from f.iter_batches(batch_size=BLOCK_ROWS, row_groups=[g], columns=with_sym)
                continue
            run.append(g)
            rows += n

    def batches() -> Iterator[tuple[Any, _ParquetSymbols | None]]:
        at = 0
        for rb in runs():
            if not rb.num_rows:
                continue
            lazy = sym is not None and sym not in rb.schema.names
            yield rb, (_ParquetSymbols(path, sym, at, rb.num_rows) if lazy else None)
            at += rb.num_rows

    return batches(), f.metadata.num_rows


class _ParquetSymbols:
    """The tradingsymbol column of rows ``start .. start + n`` of a Parquet tape, read when asked for
    (``learn`` needs it where an instrument first appears): the row groups holding them, that column
    only."""

    def __init__(self, path: Path, name: str, start: int, n: int) -> None:
        self.path, self.name, self.start, self.n = path, name, start, n

    def column(self) -> Any:
        import pyarrow.parquet as pq

        # as a dictionary: the few distinct symbols once and an index per row (a row group of 1M
        # rows: 17.7 -> 3.9 ms; _symbols_at reads either)
        f = pq.ParquetFile(self.path, read_dictionary=[self.name])
        groups, at, first = [], 0, 0
        for g in range(f.metadata.num_row_groups):
            rows = f.metadata.row_group(g).num_rows
            if at < self.start + self.n and at + rows > self.start:
                first = at if not groups else first
                groups.append(g)
            at += rows
        skip, left = divmod(self.start - first, self.n)
        if len(groups) == 1 and not left:  # a block of a group read in batches (its first, mostly)
            # batches up to this one only, not the whole group (a replay's first block: the first
            # 262k of a 1M-row group, 4-25 -> 1.6-2 ms on its start)
            for k, rb in enumerate(f.iter_batches(batch_size=self.n, row_groups=groups, columns=[self.name])):
                if k == skip:
                    if rb.num_rows == self.n:
                        return rb.column(0)
                    break
        col = f.read_row_groups(groups, columns=[self.name]).column(0)
        return col.slice(self.start - first, self.n).combine_chunks()


def _csv_first(path: Path) -> tuple[Any, int]:
    """(the CSV's first block as one record batch or None, the bytes it took): the header and the
    lines of its first ``CSV_FIRST_BYTES``, parsed at once by Arrow's multi-threaded reader; the
    column types found there are the whole file's (``_csv_chunks``). The tape's own columns are
    read as what ``convert`` takes, so a first block of whole-rupee prices does not make
    ``last_price`` an integer column that a later ``2280.05`` breaks."""
    import pyarrow as pa
    from pyarrow import csv

    step = min(CSV_FIRST_BYTES, CSV_BLOCK_BYTES)
    with open(path, "rb") as fh:
        data = fh.read(step)
        while data.count(b"\n") < 2:  # the header and one line at least
            more = fh.read(step)
            if not more:
                break
            data += more
        eof = not fh.read(1)
    cut = len(data) if eof else data.rfind(b"\n") + 1
    tab = csv.read_csv(pa.py_buffer(data[:cut]), read_options=csv.ReadOptions(block_size=1 << 18),
                       convert_options=csv.ConvertOptions(column_types=_csv_types()))
    tab = tab.combine_chunks()
    if tab.num_rows == 0:
        return None, cut
    return tab.to_batches()[0], cut


class _LazySymbols:
    """The tradingsymbol column of one CSV chunk, parsed only when asked for (``learn`` needs it for
    the rows where an instrument first appears, which few chunks have): the column is two fifths
    of a tape's parse. Reads its byte range of the file again."""

    def __init__(self, path: Path, header: bytes, start: int, end: int, name: str) -> None:
        self.path, self.header, self.start, self.end, self.name = path, header, start, end, name

    def column(self) -> Any:
        import pyarrow as pa
        from pyarrow import csv

        with open(self.path, "rb") as fh:
            fh.seek(self.start)
            buf = fh.read(self.end - self.start)
        conv = csv.ConvertOptions(include_columns=[self.name], column_types={self.name: pa.string()})
        return csv.read_csv(pa.py_buffer(self.header + buf), convert_options=conv).column(0).combine_chunks()


def _csv_chunks(path: Path, schema: Any, offset: int = 0) -> Iterator[tuple[Any, _LazySymbols | None]]:
    """(record batch, its lazily parsed tradingsymbol column or None) per chunk of the CSV from
    byte ``offset`` on (0: after the header), parsed a chunk of lines at a time by Arrow's
    multi-threaded reader (its streaming reader parses on one thread), every chunk with the first
    block's column types; chunks grow from 4 to 32 MB, so the first comes soon. The file is
    memory-mapped and each chunk handed to Arrow where it lies: reading it into fresh 32 MB
    ``bytes`` (and cutting them at the last line) took a third of a 1 GB tape's read in copies
    and page faults."""
    import mmap

    import pyarrow as pa
    from pyarrow import csv

    sym = next((f.name for f in schema if f.name.strip().lower() == "tradingsymbol"), None)
    types = {f.name: f.type for f in schema if not pa.types.is_null(f.type) and f.name != sym}
    conv = csv.ConvertOptions(column_types=types, include_columns=[f.name for f in schema if f.name != sym])
    size = CSV_BLOCK_BYTES // 2  # then doubled up to 32 MB: 8 blocks of 4 MB for Arrow's threads
    # the header's names given, so a chunk is parsed where it lies (no copy with the header before it)
    opts = csv.ReadOptions(block_size=max(1 << 16, CSV_BLOCK_BYTES // 2), column_names=schema.names)
    with open(path, "rb") as fh:
        header = fh.readline()
        at = offset or fh.tell()  # the file offset of the next chunk's first line
        end_of_file = os.fstat(fh.fileno()).st_size
        if at >= end_of_file:
            return
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        pages = MappedPages(mm)
        view = memoryview(mm)
        while at < end_of_file:
            stop = min(end_of_file, at + size)
            size = min(4 * CSV_BLOCK_BYTES, 2 * size)
            pages.ahead(at, min(end_of_file, stop + size))  # this chunk and the next
            if stop < end_of_file:  # up to the last whole line (a line longer than a chunk: its end)
                cut = mm.rfind(b"\n", at, stop)
                if cut < 0:
                    cut = mm.find(b"\n", stop)
                stop = end_of_file if cut < 0 else cut + 1
            part = view[at:stop]
            try:
                tab = csv.read_csv(pa.py_buffer(part), read_options=opts, convert_options=conv)
            finally:
                _release(part)
            lazy = _LazySymbols(path, header, at, stop, sym) if sym is not None else None
            at = stop
            pages.behind(at)
            if tab.num_rows:
                yield tab.combine_chunks().to_batches()[0], lazy
        _release(view)
    finally:
        try:
            mm.close()
        except BufferError:  # a view still held somewhere: the map goes with it
            pass


def _release(view: memoryview) -> None:
    try:
        view.release()
    except BufferError:  # Arrow still holds the bytes (it does not for the columns it converts)
        pass


_NP = {"int8": "i1", "int16": "i2", "int32": "i4", "int64": "i8", "uint8": "u1", "uint16": "u2",
       "uint32": "u4", "uint64": "u8", "float": "f4", "double": "f8"}
_UNIT_NS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def _values(a: Any, kind: str | None = None) -> np.ndarray:
    """A primitive Arrow array's values, straight from its buffer (no copy, read-only; pyarrow's own
    conversions would load pandas, a third of a replay's start-up)."""
    kind = kind or _NP[str(a.type)]
    width = int(kind[1:])
    return np.frombuffer(a.buffers()[1], dtype="<" + kind, count=len(a), offset=a.offset * width)


def _valid(a: Any) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(a.buffers()[0], np.uint8), bitorder="little")
    return bits[a.offset:a.offset + len(a)].astype(bool)


def convert(rb: Any) -> tuple[TickBatch, Any]:
    """One Arrow record batch -> (TickBatch, its tradingsymbol column or None); ``Malformed`` when a
    value needs the checking path."""
    import pyarrow as pa

    names = {n.strip().lower(): i for i, n in enumerate(rb.schema.names)}
    if any(c not in names for c in REQUIRED):
        raise Malformed("missing column")
    col = {k: rb.column(i) for k, i in names.items()}
    ts_type = col["timestamp"].type
    if not pa.types.is_timestamp(ts_type):
        raise Malformed("timestamp")
    for c in ("instrument_token", "last_price", "volume_traded", "oi"):
        if c in col and not (str(col[c].type) in _NP or (c not in REQUIRED and pa.types.is_null(col[c].type))):
            raise Malformed(c)
    if not pa.types.is_integer(col["instrument_token"].type) or any(col[c].null_count for c in REQUIRED):
        raise Malformed("instrument_token")
    ts = _values(col["timestamp"], "i8")
    unit = _UNIT_NS[ts_type.unit]
    if unit != 1:
        ts = ts * unit
    if ts_type.tz is None:
        ts = ts - IST_OFFSET_NS  # naive means IST wall-clock
    token = _values(col["instrument_token"]).astype(np.int64, copy=False)
    if len(token) and token.min() <= 0:
        raise Malformed("instrument_token")
    price = _values(col["last_price"]).astype(np.float64, copy=False)

    def opt(name: str) -> np.ndarray | None:
        if name not in col:
            return None
        a = col[name]
        if pa.types.is_null(a.type):
            return np.full(len(a), np.nan)
        v = _values(a).astype(np.float64, copy=False)
        if a.null_count:
            v = np.where(_valid(a), v, np.nan)  # nulls become NaN
        if len(v) and np.nanmin(v, initial=0.0) < 0:
            raise Malformed(name)
        return v

    vol, oi = opt("volume_traded"), opt("oi")
    return TickBatch(token, ts, price, vol, oi), col.get("tradingsymbol")


_SLOT_BITS = 16
_LEARN_SPAN = 4096  # rows of a batch's first span that ``learn`` probes (then 8x more each time)


def _slot(tokens: np.ndarray) -> np.ndarray:
    """The tape's 16-bit token hash (the engine's trick with its own table)."""
    return token_hash(tokens, _SLOT_BITS)


def _first_rows(tok: np.ndarray, slot: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct tokens among ``tok[at]``, sorted; the row of each one's first tick). Grouped by
    the 16-bit hash ``slot`` (numpy's linear-time radix sort, stable: a group's first row comes
    first) instead of ``np.unique`` (a comparison sort of every tick, 14 ms of a 262k-tick first
    block); a hash collision among them takes ``np.unique``."""
    t, sl = tok[at], slot[at]
    order = np.argsort(sl.astype(np.uint16), kind="stable")
    ts, ss = t[order], sl[order]
    start = run_starts(ss)
    if (ts[1:] != ts[:-1])[~start[1:]].any():  # two tokens share a slot
        toks, first = np.unique(t, return_index=True)
        return toks, at[first]
    toks, rows = ts[start], at[order[start]]
    by = np.argsort(toks)
    return toks[by], rows[by]


def _symbols_at(sym: Any, rows: np.ndarray) -> list:
    """The tradingsymbol column's values at ``rows`` (dictionary-encoded or plain strings)."""
    import pyarrow as pa

    if isinstance(sym, (_LazySymbols, _ParquetSymbols)):
        sym = sym.column()
    if pa.types.is_dictionary(sym.type):
        codes = _values(sym.indices)[rows]
        valid = _valid(sym)[rows] if sym.null_count else np.ones(len(rows), bool)
        names = sym.dictionary.to_pylist()
        return [names[int(c)] if ok else None for c, ok in zip(codes.tolist(), valid.tolist())]
    return [sym[int(r)].as_py() for r in rows.tolist()]


@dataclass
class TapeStream:
    """A tape file replayed block by block; the counterpart of ``taperead.Tape`` (which is in memory).

    ``symbols`` and ``tokens()`` grow as ``blocks()`` meets new instruments; ``total`` is the row count
    when the file says it (Parquet), else an estimate from the file size (CSV).
    """

    path: str
    first: TickBatch  # the first block (what a start needs: first stamp, instruments)
    symbols: dict[str, int] = field(default_factory=dict)  # tradingsymbol (upper) -> token
    error: str | None = None
    total: int | None = None
    estimated: bool = False  # total is an estimate (CSV)
    schema: Any = None  # the first block's Arrow schema (a CSV's column types)
    # the first block is not decoded again: its symbols; a Parquet file's reader where open_tape
    # left it (for the first blocks()); a CSV's bytes up to the end of the first block
    first_symbols: Any = field(default=None, repr=False)
    rest: Iterator[Any] | None = field(default=None, repr=False)
    first_bytes: int = 0
    _ahead: Any = field(default=None, repr=False)  # (``Ahead``, first block decoded) from read_ahead
    _tokens: set[int] = field(default_factory=set)
    _first_learned: bool = False
    _sorted: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    _table: np.ndarray = field(default_factory=lambda: np.full(1 << _SLOT_BITS, -1, np.int64))

    streamed = True

    @property
    def empty(self) -> bool:
        return len(self.first) == 0

    @property
    def first_ts(self) -> int | None:
        return int(self.first.ts[0]) if len(self.first) else None

    def tokens(self) -> set[int]:
        """Instruments seen so far (all of the first block's, then each block's new ones)."""
        return self._tokens

    def learn(self, batch: TickBatch, sym: Any) -> list[tuple[str, int]]:
        """The (symbol, token) pairs of ``batch``'s instruments not seen before, remembered.

        The batch is probed in growing spans (4096 rows, then 8x more each time), each against
        what the spans before it taught: a tape's instruments all show up within its first few
        thousand ticks, so a first block's 262k rows are grouped by instrument for their first
        span only and only probed after the first (``open_tape`` of a 1M-tick Parquet tape, pyarrow
        loaded: 39.9 -> 26.0 ms, medians of 20 fresh processes, old and new alternating)."""
        if batch is self.first and self._first_learned:  # open_tape learned it; a replay's
            return []  # blocks() yields it again (4 ms of the GIL at a 1M-tick replay's start)
        tok = batch.token
        slot = _slot(tok)
        got_t, got_r = [], []
        at, span = 0, _LEARN_SPAN
        while at < len(tok):
            end = min(len(tok), at + span)
            # a hash probe a tick; misses are checked against the sorted instruments
            fresh = np.flatnonzero(self._table[slot[at:end]] != tok[at:end])
            if len(fresh):
                fresh += at
                fresh = fresh[~lookup(self._sorted, tok[fresh])[1]]
            if len(fresh):
                toks, rows = _first_rows(tok, slot, fresh)
                self._tokens.update(toks.tolist())
                self._sorted = np.array(sorted(self._tokens), np.int64)
                self._table[_slot(toks)] = toks  # a collision keeps one; the search finds the other
                got_t.append(toks)
                got_r.append(rows)
            at, span = end, span * 8
        self._first_learned = self._first_learned or batch is self.first
        if not got_t:
            return []
        toks, rows = (got_t[0], got_r[0]) if len(got_t) == 1 else (np.concatenate(got_t), np.concatenate(got_r))
        if len(got_t) > 1:  # in token order, as one span gives them
            by = np.argsort(toks, kind="stable")
            toks, rows = toks[by], rows[by]
        new = [int(t) for t in toks.tolist()]
        names: dict[int, str] = {}
        if sym is not None:
            for t, s in zip(new, _symbols_at(sym, rows)):
                if isinstance(s, str) and s.strip() and s.strip().upper() != "NAN":
                    names[t] = s.strip().upper()
                    self.symbols.setdefault(s.strip().upper(), t)
        return [(names.get(t, str(t)), t) for t in new]

    def scan(self) -> None:
        """Learn every instrument of the tape (one pass): a named one was not in the first block."""
        for ticks, _, sym in self.blocks():
            self.learn(ticks, sym)

    def _reader(self) -> tuple[Ahead, bool]:
        """(the blocks after the first, read on their own thread from now on; whether the first
        block is the one decoded already, else the reader starts at the file's start)."""
        path = Path(self.path)
        reader, self.rest = self.rest, None
        if not _is_parquet(path):
            return prefetch(_csv_chunks(path, self.schema, self.first_bytes)), True
        if reader is not None:  # the Parquet reader where open_tape left it
            return prefetch(reader), True
        return prefetch(_parquet(path)[0]), False  # it went with an earlier replay: from the start

    def read_ahead(self) -> None:
        """Start reading the next blocks now, for a replay about to start: Arrow decodes them (off
        the GIL) while the stores open. ``blocks()`` takes them over; ``close_ahead()`` ends the
        reading when no replay comes."""
        if self._ahead is None:
            self._ahead = self._reader()

    def close_ahead(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead[0].close()

    def blocks(self) -> Iterator[tuple[TickBatch, int, Any]]:
        """(ticks, rows consumed so far, tradingsymbol column) per block, from the file's start. A
        malformed block: the checking path's ticks from that row on, its error in ``self.error``."""
        from .taperead import read_tape

        consumed = 0
        ahead: Ahead | None = None
        try:
            started, self._ahead = self._ahead, None
            # the first block is decoded already (open_tape); the next ones read meanwhile
            ahead, decoded = started if started is not None else self._reader()
            if decoded:
                consumed = len(self.first)
                yield self.first, consumed, self.first_symbols
            for rb, lazy in ahead:
                ticks, sym = convert(rb)
                consumed += rb.num_rows
                yield ticks, consumed, sym if sym is not None else lazy
            return
        except Malformed:
            pass
        except Exception:  # noqa: BLE001 - Arrow's own parse error: the checking path names the row
            pass
        finally:
            if ahead is not None:
                ahead.close()
        whole = read_tape(self.path)
        self.error = whole.error
        rest = whole.ticks.take(slice(consumed, None))
        yield rest, consumed + len(rest), None


def open_tape(path: str | Path) -> Any:
    """A tape to replay: a ``TapeStream`` when its first block is well typed, else the whole tape
    read by ``taperead.read_tape`` (its checking path names the first malformed row)."""
    from ..errors import TapeError
    from .taperead import read_tape

    p = Path(path).expanduser()
    if not p.is_file():
        raise TapeError(f"tape {str(path)!r} not found; give a CSV or Parquet file")
    tune_malloc()
    parquet = _is_parquet(p)
    try:
        lazy = None
        if parquet:
            it, total = _parquet(p)
            rb, lazy = next(it, (None, None))
            took = 0
        else:
            it, total = None, None
            rb, took = _csv_first(p)
        if rb is None:
            return read_tape(p)
        first, sym = convert(rb)
        sym = lazy if sym is None else sym
    except Exception:  # noqa: BLE001 - Malformed, or unreadable by Arrow: the checking path says why
        return read_tape(p)
    estimated = False
    if total is None:  # CSV: rows estimated from the first block's bytes per row
        size = os.path.getsize(p)
        total = max(len(first), int(size * len(first) / max(1, took)))
        estimated = True
    tape = TapeStream(str(p), first, total=total, estimated=estimated, schema=rb.schema,
                      first_symbols=sym, rest=it, first_bytes=took)
    tape.learn(first, sym)
    return tape
