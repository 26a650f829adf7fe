"""The runtime: the process-wide ``Session`` (``Manager``) and its parts.

- ``manager``: ``Session`` (alias ``Manager``), the facade the magics, the Python API and the command
  line use;
- ``symbols``: ``SymbolBook``, symbol -> token (instrument tables, tapes, symbols.json);
- ``registry``: ``SeriesRegistry``, the candle series in memory and the on_candle callbacks;
- ``launch``: starting replay and live streams, backfill, history/live-state preparation;
- ``history``: ``HistoryService``, one queue and thread for gap repair and backfill fetches.
"""

from __future__ import annotations

from ..core.candles import empty_frame
from ..streaminfo import StreamInfo, split_symbols
from .launch import SOURCES, last_stamp
from .history import HistoryService
from .manager import Manager, Session
from .registry import SeriesRegistry
from .symbols import SymbolBook

__all__ = ["Manager", "Session", "HistoryService", "StreamInfo", "split_symbols", "empty_frame", "SOURCES", "last_stamp",
           "SeriesRegistry", "SymbolBook"]
