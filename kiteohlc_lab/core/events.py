"""Every event a stream emits, and the small synchronous bus that delivers them.

A ``Stream`` (core.stream) emits; the history writer, the live store writer, the recorder and the
runtime's listener subscribe (core.sinks); none of them is known to the stream by name (cryptofeed's
backends are the model: each sink its own writer queue where it does I/O). Events are emitted on the
stream thread, a few per drain of its queue (never one per tick), and handlers run there in the
order they subscribed: a handler must be quick and hand slow work to its own thread.

Events (``stream`` is always the emitting stream's name):

- ``TicksReceived(stream, batch)``: a batch as the feed delivered it, before the bad-tick filter
  (the recorder writes these, so a replayed tape meets the same filter).
- ``TicksAccepted(stream, batch)``: the ticks of one batch that passed the filter and go to the
  engine (a tick store writes these).
- ``TicksRejected(stream, count)``: how many ticks of one batch the filter refused.
- ``CandlesClosed(stream, batches)``: closed (and amended) candles, one ``CandleBatch`` per
  timeframe, as the engine made them (at least once per drain that closed any; a long drain emits
  every ``Stream.emit_interval`` seconds so the history writer works while the rest aggregates).
- ``FormingChanged(stream, tokens, batches)``: the instruments whose forming candles changed in one
  drain. An own stream's forming candles are read from its engine on demand, so ``batches`` is
  empty; an attached stream, which has no engine, carries them.
- ``Drained(stream, final)``: the end of one drain (every 0.25-0.5 s even when idle); ``final``
  when the stream ends (tape consumed, stop, failure). Sinks that coalesce (the live store) write here.
- ``Gap(stream, token, start_ns, end_ns)``: an outage of one instrument the feed could not repair.
- ``Resumed(stream, tokens)``: instruments continued from saved live state (their volume baseline
  taken afresh from the next tick).
- ``StreamError(stream, message, notice)``: one line, reported once; ``notice`` for reports that are
  not failures (bad ticks of an instrument, clock skew).
- ``StreamDone(stream, state)``: the stream thread ends ("done", "stopped", "failed"); sinks close.

Each event is an immutable ``NamedTuple`` (a frozen dataclass costs 1.3 ms of the package's import on
a 2-core machine, ten of them a sixth of its own modules' import time; a named tuple 0.2 ms), but
``TicksRejected``, whose field ``count`` would hide ``tuple.count``.

Example::

    unsubscribe = stream.events.subscribe(TicksAccepted, lambda ev: store.append(ev.batch))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Protocol

from .candles import CandleBatch
from .ticks import TickBatch


class TicksReceived(NamedTuple):
    stream: str
    batch: TickBatch


class TicksAccepted(NamedTuple):
    stream: str
    batch: TickBatch


@dataclass(frozen=True, slots=True)  # a dataclass: its field ``count`` would hide tuple.count
class TicksRejected:
    stream: str
    count: int


class CandlesClosed(NamedTuple):
    stream: str
    batches: list[CandleBatch]


class FormingChanged(NamedTuple):
    stream: str
    tokens: frozenset[int]
    batches: tuple[CandleBatch, ...] = ()


class Drained(NamedTuple):
    stream: str
    final: bool = False


class Gap(NamedTuple):
    stream: str
    token: int
    start_ns: int
    end_ns: int


class Resumed(NamedTuple):
    stream: str
    tokens: tuple[int, ...]


class StreamError(NamedTuple):
    stream: str
    message: str
    notice: bool = False


class StreamDone(NamedTuple):
    stream: str
    state: str


EVENTS = (TicksReceived, TicksAccepted, TicksRejected, CandlesClosed, FormingChanged, Drained, Gap,
          Resumed, StreamError, StreamDone)

Handler = Callable[[Any], Any]


class Bus:
    """Synchronous publish/subscribe by event type: ``subscribe(EventType, handler)``, ``emit(event)``.

    Handlers run on the emitting thread, in subscription order; an exception propagates to the
    emitter (the stream records it and fails, as it did for its listener). ``wants(EventType)`` lets
    the emitter skip building an event nobody takes. Subscribing from another thread is safe: the
    handler lists are replaced, never changed in place.
    """

    __slots__ = ("_handlers",)

    def __init__(self) -> None:
        self._handlers: dict[type, tuple[Handler, ...]] = {}

    def subscribe(self, event_type: type, handler: Handler) -> Callable[[], None]:
        """Call ``handler(event)`` for every ``event_type`` emitted; returns the unsubscribe function."""
        if event_type not in EVENTS:
            raise TypeError(f"not a stream event: {event_type!r}; events are "
                            f"{', '.join(e.__name__ for e in EVENTS)}")
        self._handlers[event_type] = self._handlers.get(event_type, ()) + (handler,)

        def unsubscribe() -> None:
            hs = self._handlers.get(event_type, ())
            self._handlers[event_type] = tuple(h for h in hs if h is not handler)

        return unsubscribe

    def wants(self, event_type: type) -> bool:
        return bool(self._handlers.get(event_type))

    def emit(self, event: Any) -> None:
        for handler in self._handlers.get(type(event), ()):
            handler(event)


class Listener(Protocol):
    """What the runtime's series registry is to a stream (``Stream(listener=...)``), subscribed by
    ``listen``: ``on_closed`` <- CandlesClosed, ``on_gap`` <- Gap, ``on_error`` <- StreamError,
    ``on_forming`` <- FormingChanged when it carries the candles (an attached stream; an own
    stream's forming candles are read from its engine, so it never calls ``on_forming``)."""

    def on_closed(self, stream: Any, batches: list[CandleBatch]) -> None: ...
    def on_forming(self, stream: Any, batches: list[CandleBatch]) -> None: ...
    def on_gap(self, stream: Any, token: int, start_ns: int, end_ns: int) -> None: ...
    def on_error(self, stream: Any, message: str) -> None: ...


def listen(bus: Bus, stream: Any, listener: Listener) -> None:
    """Subscribe ``listener``'s methods to ``bus``; ``stream`` is passed as their first argument."""
    bus.subscribe(CandlesClosed, lambda ev: listener.on_closed(stream, ev.batches))
    bus.subscribe(Gap, lambda ev: listener.on_gap(stream, ev.token, ev.start_ns, ev.end_ns))
    bus.subscribe(StreamError, lambda ev: listener.on_error(stream, ev.message))

    def forming(ev: FormingChanged) -> None:
        if ev.batches:
            listener.on_forming(stream, list(ev.batches))

    bus.subscribe(FormingChanged, forming)
