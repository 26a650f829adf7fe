"""Session (also ``Manager``): configuration, stores, streams and the candle series the researcher reads.

One per process (``kiteohlc_lab.api.manager()``); the magics, the Python API and the command line all
go through it. It resolves symbols, picks the source (Kite when credentials are configured, otherwise
the built-in simulator, or a replay tape), opens the stores, restores history and live state, and
keeps one ``SeriesBuffer`` per (instrument, timeframe) up to date from the stream threads.

A small facade: its parts are built here, in ``__init__``, and passed what they need through their
constructors (``SymbolBook`` the symbols, ``SeriesRegistry`` the series and on_candle callbacks,
``HistoryService`` the Kite history fetches, ``launch`` the starting of streams, ``lease`` the
``LeaseKeeper``). Every stream in ``streams`` is a ``streaminfo.StreamHandle``. ``shutdown()`` is the
one reset.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable


if TYPE_CHECKING:  # pandas loads where a frame is made: a replay never needs it
    import pandas as pd

from ..config import KiteOHLC
from ..core.bounded import ErrorLog
from ..core.candles import Candle, CandleBatch
from ..core.engine import Engine
from ..core.series import SeriesBuffer
from ..core.stream import Stream
from ..core.timeframes import bound_ns, parse_timeframe
from ..streaminfo import StreamHandle, StreamInfo, split_symbols
from .history import HistoryService
from .launch import new_engine, prepare as prepare_stream, start as start_stream
from .registry import SeriesRegistry
from .symbols import SymbolBook

log = logging.getLogger("kiteohlc_lab")


class Session:
    """Process-wide owner of streams, stores and candle series (``Manager`` is the same class)."""

    def __init__(self, cfg: KiteOHLC | None = None) -> None:
        # the configuration (configure() replaces it; the parts read it through a getter)
        self.cfg = cfg or KiteOHLC()
        # guards streams, the stores' opening and the series between threads (``lock``)
        self._lock = threading.RLock()
        # stream name -> StreamHandle (own feeds and attached ones), stopped ones until the next start
        self.streams: dict[str, StreamHandle] = {}
        # (live store, history store, description) once opened, and the configuration they are for
        self._stores: tuple[Any, Any, str] | None = None
        self._stores_key: tuple | None = None
        # the built-in KiteSimulator (source "sim" without a ticker_url), started on first use
        self._sim: Any = None
        # counter that makes stream names unique (new_stream_name)
        self._seq = 0
        # one writer per instrument (kiteohlc_lab.lease): "strict" raises, "standby" (collector) waits
        self.lease_policy = "strict"
        # instruments waiting for a lease another writer holds: {symbol: token}
        self.lease_waiting: dict[str, int] = {}
        # seconds a lease lives without renewal (kiteohlc_lab.lease.DEFAULT_TTL)
        self.lease_ttl = 5.0
        # the LeaseKeeper of this process's own feeds (lease_keeper() creates it; it fences the live
        # store's writes and calls lease.stand_down when a lease is lost)
        self.leases: Any = None
        # (stream, message), for the notebook to surface once: the last 1000 (``errors.total`` counts all)
        self.errors: ErrorLog = ErrorLog(1000)
        # store health line and when it was probed (store_health caches it for a second)
        self._health_cache: tuple[float, str] | None = None
        # lines for the notebook to show
        self.messages: list[str] = []
        # symbol -> token: instrument tables, tapes, names learned from streams, symbols.json
        self.symbols = SymbolBook(lambda: self.cfg, self._lock)
        # the series in memory, pins, idle LRU, store following, on_candle callbacks
        self.registry = SeriesRegistry(lambda: self.cfg, self._lock, self.stores,
                                       lambda: list(self.streams.values()), self.symbols.token_of,
                                       self.errors)
        # the one thread for Kite history fetches: gap repair of long buckets, backfill
        self.history_service = HistoryService()

    # ------------------------------------------------------------------ configuration
    def configure(self, cfg: KiteOHLC) -> None:
        self.cfg = cfg

    def lease_keeper(self) -> Any:
        """The LeaseKeeper (``self.leases``) on the current live store, created on first use; the
        live store stamps its writes with the keeper's generations (``set_fence``)."""
        from ..lease import LeaseKeeper, stand_down, written_tokens

        live = self.stores()[0]
        with self._lock:
            k = self.leases
            if k is None or k.client is not live.client:
                if k is not None:
                    k.stop(release=True)
                k = self.leases = LeaseKeeper(live.client, live.prefix, ttl=self.lease_ttl,
                                              wanted=lambda: written_tokens(self),
                                              on_lost=lambda toks: stand_down(self, toks))
                set_fence = getattr(live, "set_fence", None)
                if set_fence is not None:
                    set_fence(k)
            return k

    def release_leases(self) -> None:
        """Stop renewing and give back every lease (after the streams flushed)."""
        with self._lock:
            k, self.leases = self.leases, None
        if k is not None:
            k.stop(release=True)

    @property
    def lock(self) -> threading.RLock:
        """Guards ``streams`` (and the stores' opening) between threads."""
        return self._lock

    def opened_stores(self) -> tuple[Any, Any, str] | None:
        """The stores if they are open, without opening them."""
        return self._stores

    def stores(self) -> tuple[Any, Any, str]:
        """(live store, history store, description), opened once per configuration."""
        c = self.cfg
        key = (c.redis_url, c.mongo_uri, c.data_dir, c.redis_prefix)
        with self._lock:
            if self._stores is None or self._stores_key != key:
                if self._stores is not None and not any(s.alive for s in self.streams.values()):
                    self._close_stores()
                if self._stores is None or self._stores_key != key:
                    from ..stores.factory import open_stores

                    self._stores = open_stores(c.redis_url, c.mongo_uri, c.data_dir, prefix=c.redis_prefix)
                    self._stores_key = key
            return self._stores

    def _close_stores(self) -> None:
        if self._stores is None:
            return
        live, hist, _ = self._stores
        for s in (live, hist):
            try:
                s.close()
            except Exception as exc:  # closing must not raise at shutdown
                log.debug("closing store: %s", exc)
        self._stores = None
        self._stores_key = None

    def simulator(self) -> Any:
        """The built-in KiteSimulator, started on first use."""
        from ..feeds.simulator import KiteSimulator

        with self._lock:
            if self._sim is None:
                self._sim = KiteSimulator().start()
            return self._sim

    def running_simulator(self) -> Any:
        """The built-in KiteSimulator if it was started, else None (never starts one)."""
        return self._sim

    # ------------------------------------------------------------------ symbols (SymbolBook)
    def tick_size(self, symbol: str | int) -> float | None:
        """The instrument's tick size, from the instrument tables loaded so far (None: unknown)."""
        return self.symbols.tick_size(symbol)

    @property
    def names(self) -> dict[int, str]:
        """token -> display symbol."""
        return self.symbols.names

    @property
    def symbol_tokens(self) -> dict[str, int]:
        """SYMBOL (upper) -> token, learned from streams."""
        return self.symbols.symbol_tokens

    def resolve(self, symbol: str, extra: dict[str, int] | None = None, table: Any = None) -> int:
        """Symbol -> instrument token (tape symbols, aliases, the instruments table, a token)."""
        return self.symbols.resolve(symbol, extra, table)

    def token_of(self, symbol: str | int) -> int:
        """Token for a symbol the researcher reads (no network: streams, tapes, cache, aliases)."""
        return self.symbols.token_of(symbol)

    # ------------------------------------------------------------------ streams (launch)
    def start(
        self,
        symbols: str | list[str],
        timeframes: str | list[str],
        *,
        source: str | None = None,
        tape: str | None = None,
        speed: float = 0.0,
        mode: str | None = None,
        backfill: str | None = None,
        record: str | None = None,
        progress: Callable[[float, str], Any] | None = None,
    ) -> StreamInfo:
        """Start (or extend) a stream; returns at once, the stream runs in a background thread.

        ``progress(fraction, text)`` is called from the backfill thread as ``backfill`` loads.
        """
        return start_stream(self, symbols, timeframes, source=source, tape=tape, speed=speed, mode=mode,
                            backfill=backfill, record=record, progress=progress)

    def _engine(self, tfs: list) -> Engine:
        return new_engine(self.cfg, tfs)

    def new_stream_name(self, base: str) -> str:
        """``base``, or ``base#N`` when a stream of that name exists."""
        self._seq += 1
        return base if base not in self.streams else f"{base}#{self._seq}"

    def prepare(self, stream: Stream | None, pairs, tfs, first_ts: int | None = None,
                engine: Engine | None = None, resume: bool = False) -> dict[int, dict]:
        """Load history into the series and continue the live state from Redis.

        ``resume``: a live source continues the state after a gap of unknown length (the kernel or
        collector was down): each instrument's first tick sets its volume baseline (README rule 4).
        Returns the states continued.
        """
        live = self.stores()[0]
        return prepare_stream(live, self.symbols, self.registry, stream, pairs, tfs,
                              first_ts=first_ts, engine=engine, resume=resume)

    def stop(self, symbols: list[str] | str | None = None) -> list[str]:
        """Stop every stream (or only the given symbols' subscriptions: their streams stop when empty)."""
        stopped = []
        with self._lock:
            streams = list(self.streams.items())
        if symbols:
            toks = {self.token_of(s) for s in split_symbols(symbols)}
            for name, s in streams:
                if set(s.tokens) <= toks:
                    s.stop()
                    stopped.append(name)
                elif set(s.tokens) & toks:
                    gone = sorted(toks & set(s.tokens))
                    s.unsubscribe(gone)
                    stopped.append(f"{name} ({', '.join(self.names.get(t, str(t)) for t in toks)})")
        else:
            for name, s in streams:
                s.stop()
                stopped.append(name)
        from ..lease import sync

        sync(self)  # give back the leases of instruments no own stream writes any more
        return stopped

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every replay stream is consumed and the on_candle calls of its candles have
        run (True), or ``timeout`` seconds pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        replays = 0
        for s in list(self.streams.values()):
            if s.realtime:
                continue
            replays += 1
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not s.done.wait(left):
                return False
        if replays:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            return self.registry.wait_callbacks(left)
        return True

    def status(self) -> list[dict]:
        out = []
        store_health = self.store_health()
        callbacks = self.callbacks_status() if self.registry.callbacks_started else None
        for s in list(self.streams.values()):
            st = s.status()
            st["store"] = store_health
            if callbacks is not None:  # on_candle calls of this process (one worker for all)
                st["callbacks"] = dict(callbacks)
            out.append(st)
        return out

    def memory_status(self) -> dict:
        """What the reading side keeps: series in memory (and idle ones), series dropped, pins,
        on_candle calls backlogged/dropped, errors kept/dropped."""
        return {**self.registry.memory_status(), "errors": len(self.errors), "errors_dropped": self.errors.dropped}

    def store_health(self) -> str:
        """One line: each store's health (cached for a second)."""
        if self._stores is None:
            return "not opened"
        cached = self._health_cache
        if cached is not None and time.monotonic() - cached[0] < 1.0:
            return cached[1]
        text = self._probe_health()
        self._health_cache = (time.monotonic(), text)
        return text

    def _probe_health(self) -> str:
        assert self._stores is not None
        parts = []
        for s in self._stores[:2]:
            try:
                h = s.health()
            except Exception as exc:
                h = {"name": type(s).__name__, "ok": False, "error": str(exc)}
            txt = f"{h.get('name', '?')} {'ok' if h.get('ok') else 'DOWN'}"
            if h.get("spooled"):
                txt += f" ({h['spooled']} spooled)"
            parts.append(txt)
        return ", ".join(parts)

    # ------------------------------------------------------------------ reading (SeriesRegistry)
    @property
    def buffers(self) -> dict[tuple[int, str], SeriesBuffer]:
        """(token, timeframe label) -> the SeriesBuffer in memory."""
        return self.registry.buffers

    @property
    def _pins(self) -> dict[tuple[int, str], int]:
        return self.registry.pins

    @property
    def evicted(self) -> int:
        """Series dropped from memory (they reload from the store when read)."""
        return self.registry.evicted

    @property
    def callback_grace(self) -> float:
        """Grace the stream thread gives an idle callback worker, seconds."""
        return self.registry.callback_grace

    @callback_grace.setter
    def callback_grace(self, value: float) -> None:
        self.registry.callback_grace = value

    def series(self, symbol: str | int, tf: str) -> SeriesBuffer:
        """The series of ``symbol`` at ``tf``; one that no stream of this process writes follows the
        stores (what another process's writer stored shows within ``cfg.follow_interval`` s)."""
        return self.registry.series(symbol, tf)

    def in_use(self, key: tuple[int, str]) -> bool:
        """True while a stream of this process (own or attached), a callback or a pin uses the
        series ``key`` = (token, timeframe label)."""
        return self.registry.in_use(key)

    def pin(self, symbol: str | int, tf: str) -> Callable[[], None]:
        """Keep the series of ``symbol`` at ``tf`` in memory (a live view uses it); returns the unpin."""
        return self.registry.pin(symbol, tf)

    def candles(self, symbol: str | int, tf: str, closed_only: bool = False,
                start: Any = None, end: Any = None) -> pd.DataFrame:
        """History + closed + forming candles of ``symbol`` at ``tf`` (see ``kiteohlc_lab.candles``)."""
        return self.registry.candles(symbol, tf, closed_only=closed_only, start=start, end=end)

    def history(self, symbol: str | int, tf: str, start: Any = None, end: Any = None) -> pd.DataFrame:
        """Closed candles straight from the history store (no stream needed)."""
        tok = self.token_of(symbol)
        label = parse_timeframe(tf).label
        df = self.stores()[1].read(tok, label, bound_ns(start), bound_ns(end))
        df.attrs["forming"] = None
        return df

    def on_candle(self, symbol: str | int, tf: str, fn: Callable[[Candle], Any]) -> Callable[[], None]:
        """Call ``fn(candle)`` for each closed candle of ``symbol`` at ``tf``; returns an unsubscribe."""
        return self.registry.on_candle(symbol, tf, fn)

    def callbacks_status(self) -> dict:
        """on_candle calls: queued (backlog now), called, dropped (queue full), max_backlog, limit."""
        return self.registry.callbacks_status()

    # ------------------------------------------------------------------ Listener (stream threads)
    def on_closed(self, stream: StreamHandle, batches: list[CandleBatch]) -> None:
        self.registry.on_closed(stream, batches)

    def on_forming(self, stream: StreamHandle, batches: list[CandleBatch]) -> None:
        self.registry.on_forming(stream, batches)

    def on_gap(self, stream: StreamHandle, token: int, start_ns: int, end_ns: int) -> None:
        self.registry.on_gap(stream, token, start_ns, end_ns)

    def on_error(self, stream: StreamHandle, message: str) -> None:
        log.warning("%s: %s", stream.name, message)
        self.errors.append((stream.name, message))

    # ------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        """Stop all streams, flush and close the stores, stop the simulator."""
        for s in list(self.streams.values()):
            s.stop()
        self.streams.clear()
        self.history_service.stop()  # repairs and backfills still waiting are dropped
        self.registry.stop_callbacks(2.0)  # what the streams closed last is called, for up to 2 s
        self.release_leases()  # after the streams flushed: the next writer continues from their state
        if self._sim is not None:
            try:
                self._sim.stop()
            finally:
                self._sim = None
        self._close_stores()


Manager = Session  # the name every caller and test uses
