"""The Source protocol: what every tick source (replay, sim, kite, redis) offers the stream thread."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..core.candles import CandleBatch
from ..core.ticks import TickBatch


class Sink(Protocol):
    """Where a source delivers. Every method may be called from any thread and must return fast."""

    def on_batch(self, batch: TickBatch) -> None:
        """One frame's ticks or one replay chunk, in arrival order."""

    def on_done(self) -> None:
        """A finite source (a replay tape) is consumed."""

    def on_error(self, message: str, fatal: bool) -> None:
        """A one-line problem; ``fatal`` means the source stopped for good (bad token, bad tape)."""

    def on_gap(self, token: int, start_ns: int, end_ns: int) -> None:
        """An outage between two ticks of ``token`` that could not be repaired (marked, not hidden)."""

    def on_resume(self, tokens: list[int]) -> None:
        """The next ticks of ``tokens`` follow an outage of unknown extent (reconnect, restart): they
        set the volume baseline instead of adding what traded during the outage."""

    def on_history(self, token: int, tf: str, candles: CandleBatch) -> None:
        """Closed candles from Kite's historical API (backfill or gap repair) to store as they are."""

    # A sink may also offer ``backlog() -> int`` (items queued, not handled yet) and
    # ``wait_room(limit, timeout) -> bool`` (block until fewer than ``limit`` are queued): a replay
    # reads its tape no further ahead than that (core.stream.Stream has both).


@runtime_checkable
class Source(Protocol):
    name: str
    live: bool  # True: the wall clock closes candles (Engine.advance); False: event time only

    def start(self, sink: Sink) -> None:
        """Begin delivering batches to ``sink``; returns at once."""

    def subscribe(self, tokens: list[int]) -> None:
        """Add instruments to a running source without reconnecting."""

    def stop(self) -> None:
        """Stop delivering; idempotent and quick."""

    def status(self) -> dict:
        """state, reconnects, ticks, last_tick_age, errors ... (never secrets)."""
