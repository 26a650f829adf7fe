"""Reading a whole tape into memory (``read_tape``): Arrow for a well-typed file, else a checking
path (pandas) that finds and names the first malformed row; the rows before it are kept.

Tape columns: ``timestamp`` (ISO-8601; naive means IST wall-clock), ``instrument_token``, optional
``tradingsymbol``, ``last_price``, optional ``volume_traded`` (cumulative day volume), optional ``oi``.
A replay streams a well-typed file block by block instead (``feeds.tapefile``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas only for tapes that take the checking path
    import pandas as pd

from ..core.ticks import TickBatch
from ..core.timeframes import IST, IST_OFFSET_NS
from ..errors import TapeError

REQUIRED = ("timestamp", "instrument_token", "last_price")
OPTIONAL = ("tradingsymbol", "volume_traded", "oi")


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


def _numeric(raw: "pd.Series") -> "tuple[pd.Series, np.ndarray]":
    """A column as float64 (empty cells NaN) and the mask of cells that are text but no number."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(raw):
        return raw.astype("float64"), np.zeros(len(raw), bool)
    empty = raw.isna() | (raw.astype("string").str.strip() == "")
    val = pd.to_numeric(raw.where(~empty), errors="coerce")
    return val, (val.isna() & ~empty).to_numpy()
