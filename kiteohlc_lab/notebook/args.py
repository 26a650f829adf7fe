"""Argument helpers of the magics: value parsers for ``magic_arguments`` and the one-line errors.

Shared by ``magics`` and ``reconcile_magic`` (so neither imports the other).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from IPython.core.error import UsageError

from ..errors import KiteOHLCError

SOURCES = ("kite", "sim", "replay", "redis")
MODES = ("ltp", "quote", "full")


def speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        import argparse

        raise argparse.ArgumentTypeError(
            f"{text!r} is not accepted; use 0 (as fast as possible) or a positive factor like 1 or 60")
    return value


def when(text: str) -> Any:
    """A date/time argument; naive values are IST wall-clock (the exchange's clock)."""
    import argparse

    import pandas as pd

    try:
        ts = pd.Timestamp(text)
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date; use e.g. 2024-05-02 or '2024-05-02 09:15'") from None
    return ts.tz_localize("Asia/Kolkata") if ts.tzinfo is None else ts.tz_convert("Asia/Kolkata")


def symbols(text: str) -> list[str]:
    out = [s.strip() for s in text.split(",") if s.strip()]
    if not out:
        raise UsageError(f"no symbol in {text!r}; use e.g. NIFTY or NIFTY,NSE:RELIANCE or 256265")
    return out


def one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def friendly(fn: Callable) -> Callable:
    """Turn the project's errors into a one-line ``UsageError`` (after ``prewarm.wait``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .prewarm import wait

        wait()  # %load_ext's imports of pandas and the rest, not beside this magic's own
        try:
            return fn(*args, **kwargs)
        except KiteOHLCError as exc:
            raise UsageError(one_line(exc)) from None

    return wrapper
