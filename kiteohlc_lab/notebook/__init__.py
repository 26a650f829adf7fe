"""The notebook layer: magics, ``LiveCandles``, the live widget and static charts.

The only package that imports IPython, ipywidgets and matplotlib. It parses arguments and calls the
core's ``Manager``; it holds no market logic. Submodules load on use (``%load_ext`` imports only
``magics``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["get_manager", "use_manager"]

_override: Any = None


def get_manager() -> Any:
    """The process-wide ``Manager`` (``kiteohlc_lab.api.manager()``), or the one set by ``use_manager``."""
    if _override is not None:
        return _override
    from ..current import manager

    return manager()


def use_manager(m: Any) -> Any:
    """Make the notebook layer talk to ``m`` (tests, embedding); ``None`` restores the default.

    Returns the previous override.
    """
    global _override
    previous, _override = _override, m
    return previous


def __getattr__(name: str) -> Any:
    lazy = {"LiveCandles": "live", "LiveView": "widgets", "plot_candles": "plots", "png_bytes": "plots"}
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(f".{lazy[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
