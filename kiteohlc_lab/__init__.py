"""kiteohlc_lab: live OHLCV candles from Zerodha Kite ticks, in Jupyter/IPython.

``%load_ext kiteohlc_lab`` registers the magics; the functions below are the Python API. Importing the
package is light: IPython, ipywidgets, matplotlib, twisted and pymongo load only when used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "candles",
    "wait",
    "status",
    "stream",
    "stop",
    "live",
    "on_candle",
    "history",
    "ticks",
    "login",
    "reconcile",
    "load_ipython_extension",
    "unload_ipython_extension",
]


def __getattr__(name: str) -> Any:
    if name in {"candles", "wait", "status", "stream", "stop", "live", "on_candle", "history",
                "reconcile", "manager", "login", "ticks"}:
        from . import api

        return getattr(api, name)
    if name == "KiteOHLC":
        from .config import KiteOHLC

        return KiteOHLC
    raise AttributeError(f"module 'kiteohlc_lab' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """Entry point of ``%load_ext kiteohlc_lab``."""
    from .notebook.magics import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """Entry point of ``%unload_ext kiteohlc_lab``: stops streams and flushes stores."""
    from .notebook.magics import unload_ipython_extension as _unload

    _unload(ipython)
