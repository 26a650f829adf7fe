"""Symbol -> instrument token: aliases, a replay tape's symbols, and Kite's instruments dump.

Kite regenerates the instruments dump daily, so it is cached per IST day under
``data_dir/instruments/YYYY-MM-DD.parquet`` (CSV when pyarrow is missing). Resolution order:
a numeric token, an alias (NIFTY, BANKNIFTY: these work with no table), the caller's extra mapping
(a tape's tradingsymbol -> token), ``EXCHANGE:SYMBOL``, then a bare symbol (NSE first, then BSE,
then the others; two candidates elsewhere are ambiguous).
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from ..core.timeframes import IST_OFFSET_NS, SEGMENTS, exchange_of_token
from ..errors import SymbolError

# alias -> (exchange, tradingsymbol, token). Index tokens are stable across days.
ALIASES: dict[str, tuple[str, str, int]] = {
    "NIFTY": ("NSE", "NIFTY 50", 256265),
    "NIFTY50": ("NSE", "NIFTY 50", 256265),
    "NIFTY 50": ("NSE", "NIFTY 50", 256265),
    "BANKNIFTY": ("NSE", "NIFTY BANK", 260105),
    "NIFTYBANK": ("NSE", "NIFTY BANK", 260105),
    "NIFTY BANK": ("NSE", "NIFTY BANK", 260105),
}
_PREFERRED = ("NSE", "BSE")
_COLUMNS = ("instrument_token", "tradingsymbol", "name", "tick_size", "segment", "exchange")


@dataclass(frozen=True, slots=True)
class Instrument:
    """One tradable (or index) instrument."""

    token: int
    tradingsymbol: str
    exchange: str
    name: str = ""
    tick_size: float = 0.05
    segment: str = ""

    @property
    def key(self) -> str:
        """``EXCHANGE:TRADINGSYMBOL``, Kite's quote key."""
        return f"{self.exchange}:{self.tradingsymbol}"


def ist_today(now_ns: int | None = None) -> dt.date:
    """The IST calendar date (the instruments dump is per IST day, whatever the machine's zone)."""
    ns = time.time_ns() if now_ns is None else int(now_ns)
    return (dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=(ns + IST_OFFSET_NS) // 1000)).date()


class InstrumentTable:
    """Kite's instruments, indexed for ``resolve``.

    Parameters
    ----------
    rows : ``kite.instruments()`` records or a DataFrame with at least instrument_token,
        tradingsymbol, exchange (name, tick_size, segment optional). ``None``: aliases and numeric
        tokens only.
    extra : tradingsymbol (or ``EXCH:SYMBOL``) -> token, e.g. a replay tape's symbols
    """

    def __init__(self, rows: "Iterable[Mapping[str, Any]] | pd.DataFrame | None" = None,
                 extra: Mapping[str, int] | None = None) -> None:
        df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows or []))
        for col in _COLUMNS:
            if col not in df.columns:
                df[col] = "" if col not in ("instrument_token", "tick_size") else 0
        self.frame = df
        tokens = pd.to_numeric(df["instrument_token"], errors="coerce").fillna(0).astype("int64")
        syms = df["tradingsymbol"].fillna("").astype(str)
        exch = df["exchange"].fillna("").astype(str)
        self._tokens = tokens.to_numpy()
        self._syms = syms.to_numpy()
        self._exch = exch.to_numpy()
        self._names = df["name"].fillna("").astype(str).to_numpy()
        self._ticks = pd.to_numeric(df["tick_size"], errors="coerce").fillna(0.05).to_numpy()
        self._segs = df["segment"].fillna("").astype(str).to_numpy()
        self._by_key: dict[tuple[str, str], int] = {}
        self._by_sym: dict[str, list[int]] = {}
        self._by_token: dict[int, int] = {}
        for i, (s, e, t) in enumerate(zip(syms.str.upper(), exch.str.upper(), self._tokens)):
            self._by_key.setdefault((e, s), i)
            self._by_sym.setdefault(s, []).append(i)
            self._by_token.setdefault(int(t), i)
        self.extra: dict[str, int] = {}
        if extra:
            self.add_extra(extra)

    def __len__(self) -> int:
        return len(self._tokens)

    def __repr__(self) -> str:
        return f"InstrumentTable({len(self)} instruments, {len(self.extra)} extra symbols)"

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def load(cls, kite: Any, data_dir: "str | Path", *, today: dt.date | None = None,
             refresh: bool = False, extra: Mapping[str, int] | None = None) -> "InstrumentTable":
        """Today's table from the cache under ``data_dir/instruments``, else ``kite.instruments()``
        (then cached). ``kite`` may be ``None`` to use the cache only (an empty table if none)."""
        folder = Path(data_dir) / "instruments"
        day = (today or ist_today()).isoformat()
        if not refresh:
            for suffix, reader in ((".parquet", pd.read_parquet), (".csv", _read_csv)):
                path = folder / f"{day}{suffix}"
                if path.is_file():
                    try:
                        return cls(reader(path), extra)
                    except Exception:  # noqa: BLE001 - a torn cache file: fetch again
                        path.unlink(missing_ok=True)
        if kite is None:
            return cls(None, extra)
        df = _normalise(pd.DataFrame(kite.instruments()))
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{day}.tmp"
        try:
            df.to_parquet(tmp, index=False)
            tmp.replace(folder / f"{day}.parquet")
        except ImportError:
            df.to_csv(tmp, index=False)
            tmp.replace(folder / f"{day}.csv")
        return cls(df, extra)

    def add_extra(self, mapping: Mapping[str, int]) -> None:
        """Add symbol -> token pairs (a tape's symbols) consulted before the table."""
        for k, v in mapping.items():
            self.extra[str(k).strip().upper()] = int(v)

    # ---- lookups -------------------------------------------------------------------------
    def _instrument(self, i: int) -> Instrument:
        return Instrument(int(self._tokens[i]), str(self._syms[i]), str(self._exch[i]),
                          str(self._names[i]), float(self._ticks[i]), str(self._segs[i]))

    def by_token(self, token: int) -> Instrument:
        """The instrument of ``token``; a minimal record (exchange from the token) if not listed."""
        i = self._by_token.get(int(token))
        if i is not None:
            return self._instrument(i)
        for _alias, (exch, sym, tok) in ALIASES.items():
            if tok == int(token):
                return Instrument(tok, sym, exch, sym, 0.05, "INDICES")
        for sym, tok in self.extra.items():
            if tok == int(token):
                return Instrument(tok, sym, exchange_of_token(tok), "", 0.05, "")
        seg = exchange_of_token(int(token))
        return Instrument(int(token), str(token), "NSE" if seg == "INDICES" else seg, "", 0.05, seg)

    def resolve(self, symbol: "str | int", extra: Mapping[str, int] | None = None) -> Instrument:
        """Resolve ``NIFTY``, ``BANKNIFTY``, ``NSE:RELIANCE``, ``NFO:NIFTY25DECFUT``, ``RELIANCE`` or
        a numeric token. Raises ``SymbolError`` naming the symbol with the closest matches, or
        listing the candidates when a bare symbol is ambiguous."""
        if isinstance(symbol, int) or (isinstance(symbol, str) and symbol.strip().isdigit()):
            return self.by_token(int(symbol))
        if not isinstance(symbol, str) or not symbol.strip():
            raise SymbolError(f"symbol {symbol!r} is not accepted; use NIFTY, NSE:RELIANCE, RELIANCE "
                              "or a numeric instrument token")
        raw = re.sub(r"\s+", " ", symbol.strip())
        up = raw.upper()
        extras = {**self.extra, **{str(k).strip().upper(): int(v) for k, v in (extra or {}).items()}}
        if up in extras:
            inst = self.by_token(extras[up])
            return inst if inst.tradingsymbol != str(inst.token) else Instrument(
                inst.token, raw, inst.exchange, "", inst.tick_size, inst.segment)
        exch, _, sym = up.partition(":") if ":" in up else ("", "", up)
        exch, sym = exch.strip(), sym.strip()
        if not exch and sym in ALIASES:
            a_exch, a_sym, a_tok = ALIASES[sym]
            i = self._by_key.get((a_exch, a_sym))
            return self._instrument(i) if i is not None else Instrument(
                a_tok, a_sym, a_exch, a_sym, 0.05, "INDICES")
        if exch:
            if exch not in set(SEGMENTS.values()) | {"NCO", "BCD", "BFO"}:
                raise SymbolError(f"exchange {exch!r} in {raw!r} is not known; use NSE, BSE, NFO, BFO, "
                                  "CDS, BCD or MCX")
            i = self._by_key.get((exch, sym))
            if i is not None:
                return self._instrument(i)
            if (exch, sym) in {(e, s) for e, s, _ in ALIASES.values()}:
                return self.resolve(sym)
            raise self._unknown(raw, f"{exch}:")
        idx = self._by_sym.get(sym, [])
        if not idx:
            raise self._unknown(raw, "")
        for pref in _PREFERRED:
            hits = [i for i in idx if self._exch[i].upper() == pref]
            if len(hits) == 1:
                return self._instrument(hits[0])
            if len(hits) > 1:
                raise self._ambiguous(raw, hits)
        if len(idx) == 1:
            return self._instrument(idx[0])
        raise self._ambiguous(raw, idx)

    def resolve_many(self, symbols: Iterable["str | int"],
                     extra: Mapping[str, int] | None = None) -> list[Instrument]:
        return [self.resolve(s, extra) for s in symbols]

    def _ambiguous(self, raw: str, idx: list[int]) -> SymbolError:
        cands = ", ".join(f"{self._exch[i]}:{self._syms[i]} ({self._tokens[i]})" for i in idx[:10])
        return SymbolError(f"symbol {raw!r} is ambiguous: {cands}; write it as EXCHANGE:SYMBOL")

    def _unknown(self, raw: str, exch_prefix: str) -> SymbolError:
        up = raw.upper().split(":", 1)[-1]
        pool: set[str] = set(ALIASES) | set(self.extra)
        # difflib over ~100k option symbols is slow: match against cash/index names and the
        # symbols that share the first letters.
        head = up[:3]
        for (e, s) in self._by_key:
            if e in _PREFERRED or s.startswith(head):
                if not exch_prefix or f"{e}:" == exch_prefix:
                    pool.add(s)
        close = difflib.get_close_matches(up, sorted(pool), n=5, cutoff=0.6)
        where = f" on {exch_prefix[:-1]}" if exch_prefix else ""
        hint = f"; closest matches: {', '.join(close)}" if close else ""
        if not len(self):
            hint += "; no instruments table is loaded (aliases NIFTY, BANKNIFTY and numeric tokens work)"
        return SymbolError(f"unknown symbol {raw!r}{where}{hint}")


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"tradingsymbol": str, "name": str, "exchange": str,
                                    "segment": str, "expiry": str, "instrument_type": str},
                       keep_default_na=False)


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Plain column types so the cache round-trips through Parquet/CSV."""
    df = df.copy()
    if "expiry" in df.columns:
        df["expiry"] = df["expiry"].map(lambda v: "" if v in (None, "") or pd.isna(v) else str(v))
    for col in ("tradingsymbol", "name", "exchange", "segment", "instrument_type"):
        if col in df.columns:
            df[col] = df[col].fillna("").astype(str)
    for col in ("instrument_token", "exchange_token", "lot_size"):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce").fillna(0).astype("int64")
    for col in ("last_price", "strike", "tick_size"):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    return df
