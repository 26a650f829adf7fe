"""Replay tapes (CSV or Parquet) as a tick source, and recording any stream to a tape.

Tape columns: ``timestamp`` (ISO-8601; naive means IST wall-clock), ``instrument_token``, optional
``tradingsymbol``, ``last_price``, optional ``volume_traded`` (cumulative day volume), optional ``oi``.
Rows are delivered in file order (arrival order). A malformed row is reported with its line number and
content; the rows before it are kept and delivered.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:  # pandas only for tapes that take the checking path
    import pandas as pd

from ..core.ticks import TickBatch
from ..core.timeframes import IST, IST_OFFSET_NS, NS
from ..errors import TapeError
from .base import Sink

REQUIRED = ("timestamp", "instrument_token", "last_price")
OPTIONAL = ("tradingsymbol", "volume_traded", "oi")
CHUNK = 65_536  # ticks per batch handed to the engine (its sweet spot: its work stays in cache)


@dataclass
class Tape:
    """A tape read into memory: ticks in file order, symbols it names, and its first problem."""

    path: str
    ticks: TickBatch
    symbols: dict[str, int] = field(default_factory=dict)  # tradingsymbol (upper) -> token
    error: str | None = None  # "tape.csv line 7: ..." when a malformed row stopped the read
    _tokens: set[int] | None = None

    @property
    def empty(self) -> bool:
        return len(self.ticks) == 0

    @property
    def first_ts(self) -> int | None:
        return int(self.ticks.ts[0]) if len(self.ticks) else None

    def tokens(self) -> set[int]:
        """The instruments on the tape (hashed once, not sorted)."""
        if self._tokens is None:
            import pyarrow as pa
            import pyarrow.compute as pc

            self._tokens = set(pc.unique(pa.array(self.ticks.token)).to_pylist())
        return self._tokens


def _parse_timestamps(raw: pd.Series) -> pd.Series:
    """ISO-8601 strings -> UTC; naive values are IST wall-clock. NaT where unparseable."""
    import pandas as pd

    text = raw.astype("string").str.strip()
    aware = text.str.contains(r"(?:Z|[+-]\d\d:?\d\d)$", regex=True, na=False)
    out = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns, UTC]")
    if (~aware).any():
        naive = pd.to_datetime(text[~aware], errors="coerce", format="ISO8601")
        out[~aware] = naive.dt.tz_localize(IST, nonexistent="NaT", ambiguous="NaT").dt.tz_convert("UTC")
    if aware.any():
        out[aware] = pd.to_datetime(text[aware], errors="coerce", utc=True, format="ISO8601")
    return out


def read_tape(path: str | Path) -> Tape:
    """Read a CSV or Parquet tape. Raises ``TapeError`` only when nothing usable is there."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise TapeError(f"tape {str(path)!r} not found; give a CSV or Parquet file")
    suffix = p.suffix.lower()
    # well-typed tapes go straight from Arrow to numpy; anything odd takes the checking path below,
    # which finds and names the first malformed row
    fast = _read_fast(p, parquet=suffix in (".parquet", ".pq"))
    if fast is not None:
        return fast
    import pandas as pd

    try:
        if suffix in (".parquet", ".pq"):
            df = pd.read_parquet(p)
            first_line = 1  # row numbers for Parquet are 1-based rows
            raw_lines = None
        else:
            df = pd.read_csv(p, dtype=str, keep_default_na=False, skipinitialspace=True)
            first_line = 2  # header is line 1
            raw_lines = p
    except Exception as exc:  # unreadable file: one line, no traceback
        raise TapeError(f"tape {p.name}: cannot read it ({type(exc).__name__}: {exc})") from None
    cols = {c.strip().lower(): c for c in df.columns}
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        raise TapeError(
            f"tape {p.name}: missing column(s) {', '.join(missing)}; needs {', '.join(REQUIRED)} "
            f"and optionally {', '.join(OPTIONAL)}"
        )
    df = df.rename(columns={v: k for k, v in cols.items()})
    n = len(df)
    if pd.api.types.is_datetime64_any_dtype(df["timestamp"]):
        ts = df["timestamp"]
        ts = ts.dt.tz_localize(IST) if ts.dt.tz is None else ts
        ts = ts.dt.tz_convert("UTC")
    else:
        ts = _parse_timestamps(df["timestamp"])
    token = pd.to_numeric(df["instrument_token"], errors="coerce")
    # a price that is no number is a malformed row; an empty, zero or negative one is a bad tick,
    # rejected and counted by the stream (core.sanity) like one from any other source
    price, price_text = _numeric(df["last_price"])
    bad = ts.isna().to_numpy() | token.isna().to_numpy() | price_text
    tok_f = token.to_numpy(dtype=float, na_value=np.nan)
    bad |= (tok_f != np.floor(tok_f)) | (tok_f <= 0)
    opt: dict[str, np.ndarray] = {}
    reasons = {}
    for c in ("volume_traded", "oi"):
        if c in df.columns:
            val, colbad = _numeric(df[c])  # a negative volume is a bad tick (core.sanity), not malformed
            reasons[c] = colbad
            bad |= colbad
            opt[c] = val.to_numpy(dtype=float, na_value=np.nan)
    error = None
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        line = i + first_line
        if raw_lines is not None:
            content = _line(raw_lines, line)
        else:
            content = ", ".join(f"{k}={v!r}" for k, v in df.iloc[i].items())
        what = (
            "timestamp" if pd.isna(ts.iloc[i]) else
            "instrument_token" if not (tok_f[i] > 0 and tok_f[i] == np.floor(tok_f[i])) else
            "last_price" if price_text[i] else
            next(k for k, r in reasons.items() if r[i])
        )
        error = f"tape {p.name} line {line}: malformed {what} in row: {content}"
        n = i
    ticks = TickBatch(
        tok_f[:n].astype(np.int64),
        ts.iloc[:n].to_numpy(dtype="datetime64[ns]").astype(np.int64) if n else np.empty(0, np.int64),
        price.to_numpy(dtype=float, na_value=np.nan)[:n],  # type: ignore[union-attr]
        opt["volume_traded"][:n] if "volume_traded" in opt else None,
        opt["oi"][:n] if "oi" in opt else None,
    )
    symbols: dict[str, int] = {}
    if "tradingsymbol" in df.columns and n:
        pairs = pd.DataFrame({"s": df["tradingsymbol"].iloc[:n].to_numpy(), "t": ticks.token}).drop_duplicates()
        for sym, tok in zip(pairs["s"], pairs["t"]):
            if isinstance(sym, str) and sym.strip() and sym.strip().upper() != "NAN":
                symbols.setdefault(sym.strip().upper(), int(tok))
    return Tape(str(p), ticks, symbols, error)


def _read_fast(path: Path, parquet: bool) -> Tape | None:
    """A well-typed CSV or Parquet tape read by Arrow; None to take the checking path."""
    import pyarrow as pa

    try:
        if parquet:
            import pyarrow.parquet as pq

            names0 = pq.ParquetFile(path).schema_arrow.names
            sym_col = [n for n in names0 if n.strip().lower() == "tradingsymbol"]
            # symbols come dictionary-encoded straight from the file (no re-encoding of 1M strings)
            table = pq.read_table(path, read_dictionary=sym_col)
        else:
            from pyarrow import csv

            table = csv.read_csv(path, convert_options=csv.ConvertOptions(
                auto_dict_encode=True, auto_dict_max_cardinality=1 << 20))
    except Exception:
        return None
    names = {n.strip().lower(): n for n in table.column_names}
    if any(c not in names for c in REQUIRED):
        return None
    col = {k: table.column(v) for k, v in names.items()}
    ts_type = col["timestamp"].type
    if not pa.types.is_timestamp(ts_type):
        return None
    numeric = [c for c in ("instrument_token", "last_price", "volume_traded", "oi") if c in col]
    if not all(pa.types.is_integer(col[c].type) or pa.types.is_floating(col[c].type) for c in numeric):
        return None
    if not pa.types.is_integer(col["instrument_token"].type):
        return None  # e.g. 738561.5: the checking path names the row
    if any(col[c].null_count for c in REQUIRED):
        return None
    ts = col["timestamp"].cast(pa.timestamp("ns", tz=ts_type.tz)).cast(pa.int64()).to_numpy()
    if ts_type.tz is None:
        ts = ts - IST_OFFSET_NS  # naive means IST wall-clock
    token = col["instrument_token"].to_numpy().astype(np.int64)
    price = col["last_price"].to_numpy().astype(np.float64)
    if not np.all(token > 0):
        return None

    def opt(name: str) -> np.ndarray | None:
        if name not in col:
            return None
        return col[name].cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls become NaN

    vol, oi = opt("volume_traded"), opt("oi")
    if (vol is not None and np.any(vol < 0)) or (oi is not None and np.any(oi < 0)):
        return None
    symbols: dict[str, int] = {}
    if "tradingsymbol" in col:
        sym = col["tradingsymbol"]
        if pa.types.is_dictionary(sym.type):
            enc = sym.unify_dictionaries().combine_chunks()
        else:
            enc = sym.combine_chunks().dictionary_encode()
        codes = enc.indices.fill_null(-1).to_numpy().astype(np.int64)
        names = enc.dictionary.to_pylist()
        # first row of each symbol without sorting: reversed assignment, the first row writes last
        first = np.full(len(names), -1, np.int64)
        valid = np.flatnonzero(codes >= 0)
        first[codes[valid][::-1]] = valid[::-1]
        for code, at in enumerate(first.tolist()):
            if at < 0:
                continue
            tok, sym = int(token[at]), names[code]
            if isinstance(sym, str) and sym.strip() and sym.strip().upper() != "NAN":
                symbols.setdefault(sym.strip().upper(), int(tok))
    return Tape(str(path), TickBatch(token, ts, price, vol, oi), symbols, None)


def _line(path: Path, lineno: int) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        for k, line in enumerate(fh, 1):
            if k == lineno:
                text = line.rstrip("\n")
                return text if len(text) <= 200 else text[:200] + "..."
    return "?"


class ReplaySource:
    """Deliver a tape's ticks for the chosen tokens; ``speed`` 0 = as fast as possible, 1 = recorded
    pace, 60 = sixty times faster (pacing by the tape's own timestamps).

    ``tape`` is a ``Tape`` (in memory) or a ``feeds.tapefile.TapeStream`` (read block by block, never
    more than ``MAX_BACKLOG`` blocks ahead of the stream thread: bounded memory at any tape size).
    ``tokens`` None replays every instrument; ``on_new_tokens(pairs)``, when set, is called from the
    replay thread with the (symbol, token) pairs a block brings for the first time, before that block.
    """

    live = False
    MAX_BACKLOG = 8  # chunks queued on the stream and not yet aggregated

    def __init__(self, tape: Any, tokens: list[int] | None = None, speed: float = 0.0,
                 chunk: int = CHUNK) -> None:
        if speed < 0:
            raise TapeError(f"speed {speed} is not accepted; use 0 (as fast as possible) or a positive factor")
        self.name = "replay"
        self.tape = tape
        self.speed = float(speed)
        self.chunk = chunk
        self._tokens = set(int(t) for t in tokens) if tokens else None
        self.on_new_tokens: Callable[[list[tuple[str, int]]], Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sent = 0
        self._consumed = 0  # rows of the tape read (delivered or not selected)
        self._state = "idle"
        self._started = 0.0
        self._last_tick_wall: float | None = None
        self._clock: list[int] | None = None  # paced replay: [wall t0 ns, tape t0, tape max so far]

    def _select(self, t: TickBatch, every: set[int] | None = None) -> TickBatch:
        if self._tokens is None or (every is not None and self._tokens >= every):
            return t  # every instrument of the tape: no copy
        return t.take(np.isin(t.token, np.fromiter(self._tokens, np.int64)))

    def start(self, sink: Sink) -> None:
        self._state = "running"
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(sink,), name="kiteohlc-replay", daemon=True)
        self._thread.start()

    def subscribe(self, tokens: list[int]) -> None:
        if self._tokens is not None:
            self._tokens.update(int(t) for t in tokens)

    def _blocks(self):
        """(ticks, rows consumed) in tape order, in chunks of at most ``chunk`` ticks."""
        if getattr(self.tape, "streamed", False):
            for block, consumed, sym in self.tape.blocks():
                new = self.tape.learn(block, sym)
                if new and self.on_new_tokens is not None and not self._stop.is_set():
                    self.on_new_tokens(new)
                block = self._select(block)
                n = len(block)
                for i in range(0, n, self.chunk):
                    yield block.take(slice(i, i + self.chunk)), consumed - max(0, n - i - self.chunk)
            return
        ticks = self._select(self.tape.ticks, self.tape.tokens())
        for i in range(0, len(ticks), self.chunk):
            yield ticks.take(slice(i, i + self.chunk)), min(len(ticks), i + self.chunk)

    def _run(self, sink: Sink) -> None:
        backlog = getattr(sink, "backlog", None)  # a Stream says how far behind it is
        try:
            for ticks, consumed in self._blocks():
                if self._stop.is_set():
                    return
                while backlog is not None and backlog() >= self.MAX_BACKLOG and not self._stop.is_set():
                    self._stop.wait(0.002)
                if self.speed == 0:
                    if len(ticks):
                        sink.on_batch(ticks)
                    self._sent += len(ticks)
                    self._last_tick_wall = time.monotonic()
                else:
                    self._paced(ticks, sink)
                self._consumed = consumed
            if self._stop.is_set():
                return
            if self.tape.error:
                sink.on_error(self.tape.error + " (the rows before it were replayed)", False)
            self._state = "done"
            sink.on_done()
        except Exception as exc:  # never die silently
            self._state = "failed"
            sink.on_error(f"replay failed: {type(exc).__name__}: {exc}", True)

    def _paced(self, ticks: TickBatch, sink: Sink) -> None:
        """Release ticks when the scaled tape clock reaches them, in slices of ~50 ms wall time."""
        n = len(ticks)
        if n == 0:
            return
        # the tape clock follows arrival order: a tick is due at the max timestamp seen so far
        if self._clock is None:
            self._clock = [time.monotonic_ns(), int(ticks.ts[0]), int(ticks.ts[0])]
        t0_ns, t0_tape, seen = self._clock
        due = np.maximum(np.maximum.accumulate(ticks.ts), seen)
        self._clock[2] = int(due[-1])
        i = 0
        while i < n and not self._stop.is_set():
            elapsed_tape = int((time.monotonic_ns() - t0_ns) * self.speed)
            j = int(np.searchsorted(due, t0_tape + elapsed_tape, side="right"))
            if j > i:
                sink.on_batch(ticks.take(slice(i, j)))
                self._sent += j - i
                self._last_tick_wall = time.monotonic()
                i = j
                continue
            wait = ((due[i] - t0_tape) / self.speed - (time.monotonic_ns() - t0_ns)) / NS
            self._stop.wait(min(max(wait, 0.001), 0.05))

    def stop(self) -> None:
        self._stop.set()
        if self._state == "running":
            self._state = "stopped"
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5)

    def progress(self) -> dict:
        """How far the replay is: rows read of the tape's total, ticks/s and the time left."""
        total = getattr(self.tape, "total", None)
        if total is None:
            total = len(self.tape.ticks)
        done = self._consumed
        if self._state == "done":  # the exact count now (a CSV's total was an estimate)
            total = done = self._consumed or total
        elapsed = (time.monotonic() - self._started) if self._started else 0.0
        rate = done / elapsed if elapsed > 0 else 0.0
        frac = min(1.0, done / total) if total else 1.0
        eta = (total - done) / rate if rate > 0 and self._state == "running" else None
        return {"fraction": frac, "rows": done, "total": total, "ticks_per_s": rate,
                "eta_s": None if eta is None else max(0.0, eta),
                "estimated": bool(getattr(self.tape, "estimated", False)) and self._state != "done"}

    def progress_line(self) -> str:
        """One line: ``replay tape.parquet: 45% (9,000,000 of 20,000,000 ticks), 4.1M ticks/s, ETA 3 s``."""
        p = self.progress()
        about = "~" if p["estimated"] else ""
        eta = "" if p["eta_s"] is None else f", ETA {p['eta_s']:.0f} s"
        return (f"replay {Path(self.tape.path).name}: {p['fraction']:.0%} ({p['rows']:,} of {about}"
                f"{p['total']:,} ticks), {p['ticks_per_s'] / 1e6:.1f}M ticks/s{eta}")

    def status(self) -> dict:
        total = getattr(self.tape, "total", None)
        if not getattr(self.tape, "streamed", False):
            total = len(self.tape.ticks) if self._tokens is None else None
        age = None if self._last_tick_wall is None else time.monotonic() - self._last_tick_wall
        return {"state": self._state, "ticks_sent": self._sent, "tape": Path(self.tape.path).name,
                "speed": self.speed, "total": total, "last_tick_age": age, "reconnects": 0,
                "progress": self.progress()}


class TapeRecorder:
    """Append every batch a stream sees to a Parquet tape (replayable with ``--source replay``)."""

    def __init__(self, path: str | Path, symbols: dict[int, str] | None = None, flush_rows: int = 50_000) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.symbols = dict(symbols or {})
        self.flush_rows = flush_rows
        self._pending: list[TickBatch] = []
        self._rows = 0
        self._writer = None
        self._lock = threading.Lock()
        self.written = 0

    def write(self, batch: TickBatch) -> None:
        with self._lock:
            self._pending.append(batch)
            self._rows += len(batch)
            if self._rows >= self.flush_rows:
                self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._pending:
            return
        b = TickBatch.concat(self._pending)
        self._pending, self._rows = [], 0
        table = pa.table({
            "timestamp": pa.array(b.ts, pa.timestamp("ns", tz="UTC")),
            "instrument_token": pa.array(b.token, pa.int64()),
            "tradingsymbol": pa.array([self.symbols.get(int(t), "") for t in b.token], pa.string()),
            "last_price": pa.array(b.price, pa.float64()),
            "volume_traded": pa.array(b.volume, pa.float64(), from_pandas=True),
            "oi": pa.array(b.oi, pa.float64(), from_pandas=True),
        })
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema)
        self._writer.write_table(table)
        self.written += len(b)

    def close(self) -> None:
        with self._lock:
            self._flush()
            if self._writer is not None:
                self._writer.close()
                self._writer = None


def _numeric(raw: "pd.Series") -> "tuple[pd.Series, np.ndarray]":
    """A column as float64 (empty cells NaN) and the mask of cells that are text but no number."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(raw):
        return raw.astype("float64"), np.zeros(len(raw), bool)
    empty = raw.isna() | (raw.astype("string").str.strip() == "")
    val = pd.to_numeric(raw.where(~empty), errors="coerce")
    return val, (val.isna() & ~empty).to_numpy()
