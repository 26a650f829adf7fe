"""What starting a stream reports (``StreamInfo``), and the symbol-list parser every entry point uses."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SymbolError

__all__ = ["StreamInfo", "split_symbols"]


@dataclass
class StreamInfo:
    """What ``start`` did: the stream, its source, the instruments and a one-line message."""

    name: str
    source: str
    instruments: list[tuple[str, int]]
    timeframes: list[str]
    message: str

    def __repr__(self) -> str:
        return self.message


def split_symbols(symbols: str | list[str] | tuple[str, ...]) -> list[str]:
    if isinstance(symbols, (int, np.integer)):
        return [str(symbols)]
    if isinstance(symbols, str):
        parts = symbols.split(",")
    else:
        parts = [p for s in symbols for p in str(s).split(",")]
    out = [p.strip() for p in parts if p.strip()]
    if not out:
        raise SymbolError("no symbol given; use e.g. NIFTY, NSE:RELIANCE or a numeric token")
    return out
