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
TICK_COLUMNS = ("token", "receive_time", "last_price", "volume", "oi")


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

    table = pa.Table.from_pandas(df.reset_index(), preserve_index=False)
    table = table.replace_schema_metadata(None)
    return polars().from_arrow(table) if frame == "polars" else table


def bound(value: Any, what: str) -> int | None:
    """A ``start``/``end`` value -> epoch ns (naive values are IST), or one line naming it."""
    from .core.timeframes import bound_ns

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


def ticks(manager: Any, symbols: Any = None, start: Any = None, end: Any = None,
          columns: list[str] | None = None, frame: str = "pandas") -> Any:
    """See ``kiteohlc_lab.ticks``."""
    from .stores.tickread import read
    from .stores.ticks import store_url
    from .streaminfo import split_symbols

    check_frame(frame)
    lo, hi = span(start, end)
    tokens = None
    if symbols is not None:
        tokens = [manager.token_of(s) for s in split_symbols(symbols)]
    if columns is not None:
        unknown = [c for c in columns if c not in TICK_COLUMNS and c != "exchange_time"]
        if unknown:
            raise TickStoreError(f"column(s) {', '.join(map(repr, unknown))} not in the tick store; "
                                 f"accepted: {', '.join(TICK_COLUMNS)}")
        cols = ["exchange_time", *[c for c in columns if c != "exchange_time"]]
    else:
        cols = ["exchange_time", *TICK_COLUMNS]
    table = read(store_url(manager.cfg), tokens, lo, hi, columns=cols)
    if frame == "arrow":
        return table
    if frame == "polars":
        return polars().from_arrow(table)
    df = table.to_pandas()
    return df.set_index("exchange_time")


__all__ = ["ticks", "convert", "check_frame", "span", "bound", "FRAMES"]
