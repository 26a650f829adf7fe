"""``kiteohlc_lab.ticks()`` and the ``frame=`` conversion of ``candles()``/``history()``.

pandas is the default; ``frame="arrow"`` gives a ``pyarrow.Table`` and ``frame="polars"`` a
``polars.DataFrame`` (the optional ``[polars]`` extra), converted at the boundary. Candle frames keep
their ``date`` index as the first column in Arrow and polars; tick frames their ``exchange_time``.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from .errors import ConfigError, MissingExtraError, TickStoreError

FRAMES = ("pandas", "polars", "arrow")
TICK_COLUMNS = ("token", "receive_time", "last_price", "volume", "oi", "bid", "ask", "bid_qty",
                "ask_qty")


def check_frame(frame: str) -> str:
    if frame not in FRAMES:
        raise ConfigError(f"frame {frame!r} is not accepted; use one of {', '.join(FRAMES)}")
    return frame


def polars() -> Any:
    """The polars module, or one line saying how to install it."""
    try:
        import polars as pl
    except ImportError:
        raise MissingExtraError("frame='polars' needs polars, which is not installed: "
                                "pip install 'kiteohlc_lab[polars]' (or pip install polars)") from None
    return pl


def convert(df: pd.DataFrame, frame: str = "pandas") -> Any:
    """A candle DataFrame as ``frame`` (its index becomes the first column outside pandas)."""
    if check_frame(frame) == "pandas":
        return df
    import pyarrow as pa

    flat = df.reset_index()
    flat.attrs = {}  # (``forming``: a Timestamp pandas' Arrow metadata cannot hold)
    table = pa.Table.from_pandas(flat, preserve_index=False)
    table = table.replace_schema_metadata(None)
    return polars().from_arrow(table) if frame == "polars" else table


def bound(value: Any, what: str) -> int | None:
    """A ``start``/``end`` value -> epoch ns (naive values are IST, integers epoch ns), or one line
    naming it."""
    import numpy as np

    from .core.timeframes import bound_ns

    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)  # epoch ns (a wall-clock reading of a number would be a guess)
    try:
        return bound_ns(value)
    except (ValueError, TypeError):
        raise TickStoreError(f"{what} {value!r} is not a date/time; use e.g. 2026-11-25 or "
                             "'2026-11-25 09:15' (IST unless it carries a zone)") from None


def span(start: Any, end: Any) -> tuple[int | None, int | None]:
    lo, hi = bound(start, "start"), bound(end, "end")
    if lo is not None and hi is not None and hi <= lo:
        raise TickStoreError(f"end {end!r} is not after start {start!r}; the range is [start, end)")
    return lo, hi


def tokens_of(manager: Any, symbols: Any, url: str) -> list[tuple[str, int]]:
    """``(SYMBOL, token)`` of each symbol: what this process knows (streams, symbols.json, aliases),
    else the names the tick store's writers kept beside their ticks."""
    from .errors import SymbolError
    from .streaminfo import split_symbols

    out, stored = [], None
    for s in split_symbols(symbols):
        try:
            out.append((s.upper(), int(manager.token_of(int(s) if s.strip().isdigit() else s))))
            continue
        except (SymbolError, KeyError, ValueError):
            pass
        if stored is None:
            from .stores.tickread import symbols as store_symbols

            stored = store_symbols(url)
        if s.strip().upper() not in stored:
            raise SymbolError(f"{s} is not a known symbol here nor in the tick store {url}; use a "
                              "symbol streamed before, or its numeric instrument token")
        out.append((s.strip().upper(), stored[s.strip().upper()]))
    return out


def ticks(manager: Any, symbols: Any = None, start: Any = None, end: Any = None,
          columns: list[str] | None = None, frame: str = "pandas") -> Any:
    """See ``kiteohlc_lab.ticks``."""
    from .stores.tickread import read, scan
    from .stores.ticks import store_url

    check_frame(frame)
    lo, hi = span(start, end)
    url = store_url(manager.cfg)
    tokens = None
    if symbols is not None:
        tokens = [t for _, t in tokens_of(manager, symbols, url)]
    if columns is not None:
        unknown = [c for c in columns if c not in TICK_COLUMNS and c != "exchange_time"]
        if unknown:
            raise TickStoreError(f"column(s) {', '.join(map(repr, unknown))} not in the tick store; "
                                 f"accepted: {', '.join(TICK_COLUMNS)}")
        cols = ["exchange_time", *[c for c in columns if c != "exchange_time"]]
    else:
        cols = ["exchange_time", *TICK_COLUMNS]
    fast = scan(url, tokens, lo, hi, columns=cols)  # None without polars or off the local disk
    if frame == "polars":
        return fast if fast is not None else polars().from_arrow(read(url, tokens, lo, hi, columns=cols))
    table = read(url, tokens, lo, hi, columns=cols) if fast is None else fast.to_arrow()
    if frame == "arrow":
        return table
    df = table.to_pandas()
    return df.set_index("exchange_time")


__all__ = ["ticks", "tokens_of", "convert", "check_frame", "span", "bound", "FRAMES"]
