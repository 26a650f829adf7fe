"""The runtime: the process-wide ``Manager`` and its parts.

- ``manager``: ``Manager``, the facade the magics, the Python API and the command line use;
- ``symbols``: ``SymbolBook``, symbol -> token (instrument tables, tapes, symbols.json);
- ``registry``: ``SeriesRegistry``, the candle series in memory and the on_candle callbacks;
- ``launch``: starting replay and live streams, backfill, history/live-state preparation.
"""

from __future__ import annotations

from ..core.candles import empty_frame
from ..streaminfo import StreamInfo, split_symbols
from .launch import SOURCES, last_stamp
from .manager import Manager
from .registry import SeriesRegistry
from .symbols import SymbolBook

__all__ = ["Manager", "StreamInfo", "split_symbols", "empty_frame", "SOURCES", "last_stamp",
           "SeriesRegistry", "SymbolBook"]
