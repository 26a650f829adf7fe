"""What every stream is (``StreamHandle``), what starting one reports (``StreamInfo``), and the
symbol-list parser every entry point uses."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

from .errors import SymbolError

if TYPE_CHECKING:
    from .core.candles import CandleBatch
    from .core.events import Bus
    from .core.timeframes import Timeframe

__all__ = ["StreamHandle", "StreamInfo", "split_symbols"]


class StreamHandle(Protocol):
    """A running stream of a session, own (``core.stream.Stream``: a feed into an engine) or attached
    (``attach.AttachedStream``: another writer's candles followed through the store). The runtime,
    the leases and the collector use only this; nothing asks a stream what shape it has.
    """

    name: str  # unique in its session ("sim", "replay-2", "redis")
    attached: bool  # True: follows another writer's candles; writes no store, holds no lease
    tokens: list[int]  # the instruments it streams, in subscription order
    symbols: dict[int, str]  # token -> display symbol
    state: str  # "starting", "running", "reconnecting", "done", "stopped", "failed"
    error: str | None  # the last error, reported once
    done: threading.Event  # set when the stream has ended (consumed, stopped or failed)
    events: "Bus"  # what it emits (core.events); subscribe(EventType, handler)

    @property
    def source_name(self) -> str:
        """Where its ticks or candles come from: "kite", "sim", "replay", "redis"."""
        ...

    @property
    def realtime(self) -> bool:
        """True when the wall clock drives it (a live feed, an attached reader); False: a replay."""
        ...

    @property
    def timeframes(self) -> list["Timeframe"]: ...

    @property
    def alive(self) -> bool:
        """Its thread runs."""
        ...

    def start(self) -> Any: ...
    def stop(self, timeout: float = 5.0) -> None: ...
    def subscribe(self, tokens: list[int], symbols: dict[int, str] | None = None) -> None: ...
    def unsubscribe(self, tokens: list[int]) -> None: ...
    def add_timeframe(self, tf: Any) -> Any: ...

    def call(self, fn: Callable[[], Any], timeout: float | None = ...) -> Any:
        """Run ``fn()`` where the stream's state is owned (its thread, in order), return its result."""
        ...

    def forming(self, tf: Any, token: int | None = None) -> "CandleBatch":
        """A copy of the forming candles of ``tf`` (all its instruments or one)."""
        ...

    def written_tokens(self) -> list[int]:
        """The instruments this stream writes to the stores (none for an attached one)."""
        ...

    def status(self) -> dict: ...


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
