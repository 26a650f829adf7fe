"""Store protocols: ``HistoryStore`` (closed candles) and ``LiveStore`` (Redis live state).

See docs/architecture.md ("Stores") and docs/stores.md. Times are int64 epoch ns (UTC); ``tf`` is a
canonical timeframe label (``"1m"``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TypedDict, runtime_checkable


if TYPE_CHECKING:  # pandas loads where a frame is made: a replay never needs it
    import pandas as pd

from ..core.candles import Candle, CandleBatch


class StoreHealth(TypedDict, total=False):
    """What ``health()`` returns.

    name : short store description (``"redis"``, ``"sqlite"``, ``"mongo"``)
    ok : the last operation (or probe) succeeded
    error : one-line message of the last failure, ``None`` when ok
    spooled : writes waiting in the on-disk spool (0 without one)
    dropped : spooled writes lost because the spool hit its bound (``Resilient`` only)
    """

    name: str
    ok: bool
    error: str | None
    spooled: int
    dropped: int


def health(name: str, ok: bool = True, error: str | None = None, spooled: int = 0) -> StoreHealth:
    return StoreHealth(name=name, ok=ok, error=error, spooled=spooled)


@runtime_checkable
class HistoryStore(Protocol):
    """Closed candles, idempotent upserts keyed ``(token, tf, start)``; the last write wins."""

    def write(self, batch: CandleBatch) -> None: ...

    def read(
        self, token: int, tf: str, start_ns: int | None = None, end_ns: int | None = None
    ) -> pd.DataFrame:
        """Public frame (``core.candles.frame_from_arrays``) of ``start_ns <= start < end_ns``."""
        ...

    def last_start(self, token: int, tf: str) -> int | None: ...

    def close(self) -> None: ...


@runtime_checkable
class LiveStore(Protocol):
    """Live state (Redis): forming candles, engine state per instrument, closed-candle streams."""

    def write(
        self, forming: list[CandleBatch], closed: list[CandleBatch], states: dict[int, dict]
    ) -> None:
        """ONE pipelined round trip per call."""
        ...

    def load_states(self, tokens: list[int]) -> dict[int, dict]: ...

    def forming(self, token: int, tf: str) -> Candle | None: ...

    def health(self) -> dict: ...

    def close(self) -> None: ...
