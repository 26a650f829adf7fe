"""KiteSource: the live Kite ticker as a Source, with reconnects, a stall watchdog and gap repair.

Threads
-------
* The process-wide reactor thread (``feeds.reactor``) runs every KiteTicker socket. Callbacks there do
  in-memory work only: decode the frame (``frames.decode_frame``, which counts and skips a truncated
  packet where kiteconnect's parser would raise and kill the socket), update counters, hand the batch to
  ``sink.on_batch``.
* Outage repair (``feeds.kite_repair.OutageRepair``) fetches historical minute candles for outages once
  their minutes are final, on the session's history thread (``jobs``) or one of its own, and calls
  ``sink.on_history`` then ``sink.on_gap``.

The reactor is never stopped (``KiteTicker.stop()`` would make it unrestartable): ``stop()`` closes the
sockets with ``ticker.close()``, which also stops the factory's retries.

The access token is in KiteTicker's socket URL; nothing here puts it in a message, log, repr or status.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import threading
import time
from typing import Any, Callable
from urllib.parse import urlparse

from ..core.clock import ExchangeClock
from ..core.repair import REPAIR_SETTLE_S
from ..core.timeframes import NS
from .auth import guard_logging, redact
from .base import Sink
from .frames import decode_frame, parse_text
from .kite_repair import TOKEN_REJECTED, OutageRepair
from .reactor import call_in_reactor, call_in_reactor_wait, ensure_reactor

log = logging.getLogger(__name__)

MODES = ("ltp", "quote", "full")
_MINUTE_NS = 60 * NS
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


class _Conn:
    """One KiteTicker connection and the tokens it carries (restored on every reconnect)."""

    __slots__ = ("index", "tokens", "ticker", "state", "connects", "last_frame", "watch")

    def __init__(self, index: int, tokens: list[int]) -> None:
        self.index = index
        self.tokens: list[int] = list(tokens)
        self.ticker: Any = None
        self.state = "connecting"
        self.connects = 0
        self.last_frame = time.monotonic()


class KiteSource(OutageRepair):
    """Live ticks from Kite's WebSocket (or the simulator) as a ``Source``.

    Parameters
    ----------
    api_key, access_token : Kite credentials (the token is never shown anywhere)
    tokens : instrument tokens to subscribe
    ticker_url, api_url : WebSocket root and REST root (default Kite's; the simulator's for tests)
    mode : "ltp", "quote" or "full" (default, indices too)
    stall_timeout : seconds without any frame (tick or heartbeat) before the connection is dropped
        and reopened; kiteconnect 5.2 never pings, so nothing else notices a silent socket
    max_per_connection, max_connections : Kite's limits (3000 instruments x 3 connections per key);
        more tokens are spread over several connections, beyond the product ``ValueError``
    repair_gaps : after a reconnect, fetch the outage's minute candles from Kite's historical API
    history : a ``HistoricalClient`` for gap repair (default: one over ``KiteConnect`` at ``api_url``)
    repair_grace : seconds after the minute of the first post-outage tick ends before fetching
        (Zerodha advises waiting over 10 s for a minute candle to be final)
    clock : epoch-ns wall clock deciding when an outage's minutes are final (tests shift it)
    jobs : ``submit(run, ready=, cancelled=, what=)`` of the session's history thread
        (runtime.history.HistoryService) for the repair fetches; None: a thread of its own

    Status keys: state (connecting|connected|reconnecting|stopped|failed), reconnects, ticks,
    ticks_per_s, last_tick_age, malformed, heartbeats, stalls, connections, gaps, repaired, error, ...
    """

    live = True
    # Seconds before the first reconnect attempt (then x e, jittered, capped). Not faster: a socket
    # dropped for silence should find the server talking again, not be dropped twice.
    reconnect_initial_delay = 2.0
    reconnect_max_delay = 30
    reconnect_max_tries = 300

    def __init__(
        self,
        api_key: str,
        access_token: str,
        tokens: list[int],
        *,
        ticker_url: str | None = None,
        api_url: str | None = None,
        mode: str = "full",
        stall_timeout: float = 10.0,
        max_per_connection: int = 3000,
        max_connections: int = 3,
        repair_gaps: bool = True,
        history: Any = None,
        repair_grace: float = REPAIR_SETTLE_S,
        clock: Callable[[], int] | None = None,
        jobs: Callable[..., None] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not accepted; use 'ltp', 'quote' or 'full'")
        if stall_timeout <= 0:
            raise ValueError(f"stall_timeout {stall_timeout!r} must be a positive number of seconds")
        self._api_key = api_key
        self.__secret = access_token
        guard_logging(access_token)
        self.ticker_url = ticker_url
        self.api_url = api_url
        host = urlparse(ticker_url).hostname if ticker_url else None
        self.name = "sim" if host in _LOOPBACK else "kite"
        self.mode = mode
        self.stall_timeout = float(stall_timeout)
        self.max_per_connection = int(max_per_connection)
        self.max_connections = int(max_connections)
        self.repair_gaps = repair_gaps
        self.repair_grace = float(repair_grace)
        self._history = history
        self._jobs = jobs
        self._clock = clock if clock is not None else time.time_ns  # the machine's clock
        # the machine's clock corrected by its measured offset from the exchange's stamps
        self.exchange_clock = ExchangeClock(wall=self._clock)
        self.tokens: list[int] = []
        self._conns: list[_Conn] = []
        self._sink: Sink | None = None
        self._running = False
        self._gen = 0
        self._lock = threading.Lock()
        self._since: dict[int, int] = {}  # token -> last tick of a previous writer (repair_since)
        self._reset_counters()
        self._assign([int(t) for t in tokens])

    # ---- public ----------------------------------------------------------------------------
    def __repr__(self) -> str:
        return (f"KiteSource(name={self.name!r}, instruments={len(self.tokens)}, mode={self.mode!r}, "
                f"connections={len(self._conns)}, state={self._state()!r})")

    def start(self, sink: Sink) -> None:
        """Open the connection(s) and deliver frames to ``sink``; returns at once."""
        if self._running:
            return
        ensure_reactor()
        self._reset_counters()
        self._sink = sink
        with self._lock:
            self._seed_open()  # outages since a previous writer (repair_since before start)
        self._running = True
        self._gen += 1
        gen = self._gen
        self._repair_q: queue.Queue = queue.Queue()
        self._repair_stop = threading.Event()
        self._repair_said = False  # "gap repair unavailable" said once per start
        if self.repair_gaps and self._jobs is None:
            self._repair_thread = threading.Thread(
                target=self._repair_loop, args=(gen, self._repair_q, self._repair_stop),
                name="kiteohlc-gap-repair", daemon=True)
            self._repair_thread.start()
        call_in_reactor_wait(self._start_in_reactor, gen)

    def subscribe(self, tokens: list[int]) -> None:
        """Add instruments without reconnecting (new connections only when the others are full)."""
        new = self._assign([int(t) for t in tokens])
        if self._running and new:
            call_in_reactor(self._subscribe_in_reactor, self._gen, new)

    def unsubscribe(self, tokens: list[int]) -> None:
        """Stop receiving instruments (``%ohlc_stop SYMBOL``) without reconnecting."""
        drop = {int(t) for t in tokens} & set(self.tokens)
        if not drop:
            return
        self.tokens = [t for t in self.tokens if t not in drop]
        placed: dict[int, list[int]] = {}
        for conn in self._conns:
            gone = [t for t in conn.tokens if t in drop]
            if gone:
                conn.tokens = [t for t in conn.tokens if t not in drop]
                placed[conn.index] = gone
        if self._running and placed:
            call_in_reactor(self._unsubscribe_in_reactor, self._gen, placed)

    def _unsubscribe_in_reactor(self, gen: int, placed: dict[int, list[int]]) -> None:
        if gen != self._gen or not self._running:
            return
        for idx, toks in placed.items():
            ticker = self._conns[idx].ticker
            if ticker is not None and ticker.is_connected():
                ticker.unsubscribe(toks)

    def repair_since(self, stamps: dict[int, int]) -> None:
        """Repair (or mark) the outage of each instrument since ``stamps[token]`` (epoch ns: the last
        tick a previous writer saw) up to its first tick here; instruments already ticking are left."""
        if not self.repair_gaps:
            return
        with self._lock:
            self._since.update({int(t): int(ts) for t, ts in stamps.items() if ts > 0})
            if self._running:
                self._seed_open()

    def _seed_open(self) -> None:
        for tok, ts in self._since.items():
            if tok in self.tokens and tok not in self._last_ts:
                self._open.setdefault(tok, ts)
        self._since.clear()

    def stop(self) -> None:
        """Close every socket (the reactor keeps running); idempotent and quick."""
        if not self._running:
            return
        self._running = False
        self._repair_stop.set()
        try:
            call_in_reactor_wait(self._stop_in_reactor, timeout=5.0)
        except TimeoutError:
            log.warning("kite feed: the reactor did not close the sockets within 5 s")
        for c in self._conns:
            c.state = "stopped"

    def status(self) -> dict:
        """Counters and state; never the token."""
        now = time.monotonic()
        with self._lock:
            recent = [(t, n) for t, n in self._recent if now - t <= 5.0]
        window = min(5.0, max(now - self._started_mono, 1e-9))
        tps = sum(n for _, n in recent) / window if recent else 0.0
        return {
            "name": self.name,
            "state": self._state(),
            "mode": self.mode,
            "instruments": len(self.tokens),
            "connections": sum(1 for c in self._conns if c.state == "connected"),
            "reconnects": self._reconnects,
            "ticks": self._ticks,
            "ticks_per_s": round(tps, 3),
            "last_tick_age": None if self._last_tick_mono is None else now - self._last_tick_mono,
            "malformed": self._malformed,
            "heartbeats": self._heartbeats,
            "stalls": self._stalls,
            "gaps": self._gaps,
            "repaired": self._repaired,
            "pending_gaps": len(self._open) + self._pending_repairs,
            "text_messages": self._texts,
            "order_updates": self._orders,
            "error": self._error,
        }

    # ---- bookkeeping -----------------------------------------------------------------------
    def _reset_counters(self) -> None:
        self._reconnects = self._ticks = self._malformed = self._heartbeats = 0
        self._stalls = self._gaps = self._repaired = self._texts = self._orders = 0
        self._pending_repairs = 0
        self._last_tick_mono: float | None = None
        self._started_mono = time.monotonic()
        self._recent: collections.deque = collections.deque(maxlen=4096)
        self._error: str | None = None
        self._failed = False
        self._last_ts: dict[int, int] = {}  # token -> ts of its last tick (epoch ns)
        self._open: dict[int, int] = {}  # token -> last tick before an outage, awaiting the next
        self._sink_failed = False
        for c in self._conns:
            c.connects, c.state = 0, "connecting"

    def _state(self) -> str:
        if self._failed:
            return "failed"
        if not self._running:
            return "stopped"
        states = [c.state for c in self._conns]
        if states and all(s == "connected" for s in states):
            return "connected"
        if any(c.connects for c in self._conns):
            return "reconnecting"
        return "connecting"

    def _assign(self, tokens: list[int]) -> dict[int, list[int]]:
        """Place new tokens on connections (fill, then open more); {conn index: new tokens}."""
        seen = set(self.tokens)
        new = [t for t in dict.fromkeys(tokens) if t not in seen]
        limit = self.max_connections * self.max_per_connection
        if len(self.tokens) + len(new) > limit:
            raise ValueError(
                f"{len(self.tokens) + len(new)} instruments exceed the limit of {limit} per API key "
                f"({self.max_connections} connections x {self.max_per_connection} instruments); "
                "subscribe fewer")
        placed: dict[int, list[int]] = {}
        for t in new:
            conn = next((c for c in self._conns if len(c.tokens) < self.max_per_connection), None)
            if conn is None:
                conn = _Conn(len(self._conns), [])
                self._conns.append(conn)
            conn.tokens.append(t)
            placed.setdefault(conn.index, []).append(t)
            self.tokens.append(t)
        return placed

    def _emit_error(self, message: str, fatal: bool) -> None:
        msg = redact(message, self.__secret)
        self._error = msg
        log.warning("kite feed: %s", msg)
        if self._sink is not None:
            try:
                self._sink.on_error(msg, fatal)
            except Exception:  # noqa: BLE001 - a broken sink must not kill the socket
                log.exception("kite feed: sink.on_error failed")

    # ---- reactor side ----------------------------------------------------------------------
    def _start_in_reactor(self, gen: int) -> None:
        from twisted.internet.task import LoopingCall

        for conn in self._conns:
            if conn.tokens:
                self._open_conn(conn, gen)
        self._watch = LoopingCall(self._watchdog, gen)
        self._watch.start(min(1.0, self.stall_timeout / 4), now=False)

    def _open_conn(self, conn: _Conn, gen: int) -> None:
        from kiteconnect import KiteTicker

        ticker = KiteTicker(self._api_key, self.__secret, root=self.ticker_url,
                            reconnect=True, reconnect_max_tries=self.reconnect_max_tries,
                            reconnect_max_delay=self.reconnect_max_delay)
        ticker.on_ticks = None  # frames are decoded here, vectorised and tolerant of bad packets
        ticker.on_connect = lambda ws, resp: self._on_connect(gen, conn, ws)
        ticker.on_message = lambda ws, payload, binary: self._on_message(gen, conn, payload, binary)
        ticker.on_close = lambda ws, code, reason: self._on_close(gen, conn, code, reason)
        ticker.on_noreconnect = lambda ws: self._on_noreconnect(gen, conn)
        conn.ticker = ticker
        conn.state = "connecting"
        conn.last_frame = time.monotonic()
        ticker.connect()  # on the reactor thread: the reactor runs, so connect() does not start it
        f = ticker.factory
        f.initialDelay = f.delay = self.reconnect_initial_delay

    def _send(self, conn: _Conn, tokens: list[int]) -> None:
        ws = conn.ticker.ws if conn.ticker is not None else None
        if ws is None or ws.state != ws.STATE_OPEN or not tokens:
            return  # restored by on_connect when the socket opens
        ws.sendMessage(json.dumps({"a": "subscribe", "v": tokens}).encode())
        ws.sendMessage(json.dumps({"a": "mode", "v": [self.mode, tokens]}).encode())

    def _on_connect(self, gen: int, conn: _Conn, ws: Any) -> None:
        if gen != self._gen or not self._running:
            return
        conn.connects += 1
        if conn.connects > 1:
            self._reconnects += 1
        conn.state = "connected"
        conn.last_frame = time.monotonic()
        # Subscriptions are sent here on every (re)connect. They bypass KiteTicker.subscribe so its
        # own resubscribe() (in on_open) finds nothing and does not send them twice.
        self._send(conn, conn.tokens)

    def _on_message(self, gen: int, conn: _Conn, payload: bytes, is_binary: bool) -> None:
        if gen != self._gen or not self._running:
            return
        now = time.monotonic()
        conn.last_frame = now
        if not is_binary:
            self._on_text(payload)
            return
        recv = self._clock()
        batch, info = decode_frame(payload, recv)
        if len(batch):
            # the exchange clock learns from stamped packets; unstamped ones (ltp, quote) get the
            # receive time in exchange time
            unstamped = batch.ts == recv
            if not unstamped.all():
                self.exchange_clock.observe(recv, batch.ts[~unstamped])
            if unstamped.any() and self.exchange_clock.offset_ns:
                batch.ts[unstamped] = self.exchange_clock.to_exchange(recv)
        self._malformed += info.malformed
        if info.heartbeat:
            self._heartbeats += 1
        n = len(batch)
        if not n:
            return
        self._ticks += n
        self._last_tick_mono = now
        with self._lock:
            self._recent.append((now, n))
        toks = batch.token.tolist()
        stamps = batch.ts.tolist()
        if self._open:
            resumed = [tok for tok in toks if tok in self._open]
            if resumed:
                # the first tick after an outage: what traded meanwhile belongs to the gap's candles
                # (repaired from Kite's minutes, or marked), not to this tick's
                self._sink.on_resume(resumed)  # type: ignore[union-attr]
            for tok, ts in zip(toks, stamps):
                t0 = self._open.pop(tok, None)
                if t0 is None:
                    continue
                if self.repair_gaps:
                    with self._lock:
                        self._pending_repairs += 1
                    self._queue_repair(gen, (tok, t0, ts))
                else:
                    self._mark_gap(tok, t0, ts)
        self._last_ts.update(zip(toks, stamps))
        try:
            self._sink.on_batch(batch)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - report once, keep the socket
            if not self._sink_failed:
                self._sink_failed = True
                self._emit_error(f"sink.on_batch failed: {type(exc).__name__}: {exc}", False)

    def _mark_gap(self, token: int, t0: int, t1: int) -> None:
        self._gaps += 1
        try:
            self._sink.on_gap(token, int(t0), int(t1))  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001
            self._emit_error(f"sink.on_gap failed: {exc}", False)

    def _on_text(self, payload: Any) -> None:
        self._texts += 1
        data = parse_text(payload)
        kind = data.get("type")
        if kind == "error":
            self._emit_error(f"Kite ticker error: {data.get('data')}", False)
        elif kind == "order":
            self._orders += 1  # order updates are not market data

    def _on_close(self, gen: int, conn: _Conn, code: Any, reason: Any) -> None:
        if gen != self._gen or not self._running:
            return
        text = redact(str(reason), self.__secret)
        if "(403" in text or " 403 " in text:
            self._fatal(TOKEN_REJECTED)
            return
        if conn.state == "connected":
            # Outage starts: each instrument's last tick before it; the first after closes it.
            for t in conn.tokens:
                if t in self._last_ts and t not in self._open:
                    self._open[t] = self._last_ts[t]
        conn.state = "reconnecting"
        log.info("kite feed: connection %d lost (%s %s); reconnecting", conn.index, code, text)

    def _on_noreconnect(self, gen: int, conn: _Conn) -> None:
        if gen != self._gen or not self._running:
            return
        self._fatal(f"Kite ticker connection {conn.index} gave up after "
                    f"{self.reconnect_max_tries} reconnect attempts")

    def _fatal(self, message: str) -> None:
        if self._failed:
            return
        self._failed = True
        self._close_all()
        self._emit_error(message, True)

    def _watchdog(self, gen: int) -> None:
        if gen != self._gen or not self._running:
            return
        now = time.monotonic()
        for conn in self._conns:
            if conn.state != "connected" or now - conn.last_frame <= self.stall_timeout:
                continue
            ws = conn.ticker.ws if conn.ticker is not None else None
            if ws is None:
                continue
            self._stalls += 1
            log.warning("kite feed: no frame for %.1f s on connection %d; reconnecting",
                        now - conn.last_frame, conn.index)
            self._on_close(gen, conn, 1006, "stalled")
            ws.dropConnection(abort=True)  # the factory reconnects with backoff

    def _subscribe_in_reactor(self, gen: int, placed: dict[int, list[int]]) -> None:
        if gen != self._gen or not self._running:
            return
        for idx, toks in placed.items():
            conn = self._conns[idx]
            if conn.ticker is None:
                self._open_conn(conn, gen)
            else:
                self._send(conn, toks)

    def _close_all(self) -> None:
        watch = getattr(self, "_watch", None)
        if watch is not None and watch.running:
            watch.stop()
        for conn in self._conns:
            t = conn.ticker
            if t is None:
                continue
            try:
                t.close()  # stopTrying + closing handshake; never t.stop(): that ends the reactor
                ws = t.ws
                if ws is not None and ws.state in (ws.STATE_CONNECTING, ws.STATE_PROXY_CONNECTING):
                    ws.dropConnection(abort=True)  # mid-handshake: nothing to close cleanly
            except Exception:  # noqa: BLE001 - closing a half-open socket
                pass
            conn.ticker = None
            conn.state = "stopped"

    def _stop_in_reactor(self) -> None:
        self._close_all()

    # ---- gap repair (own thread) -----------------------------------------------------------
    def history_client(self) -> Any:
        """The ``HistoricalClient`` its repairs fetch with (made on first use); a stream's gap repair
        of longer candles uses it too (core.repair)."""
        return self._history_client()

    def _history_client(self) -> Any:
        if self._history is None:
            from kiteconnect import KiteConnect

            from .historical import HistoricalClient

            self._history = HistoricalClient(
                KiteConnect(self._api_key, access_token=self.__secret, root=self.api_url),
                now=self._clock)
        elif not hasattr(self._history, "fetch") and hasattr(self._history, "historical_data"):
            from .historical import HistoricalClient

            self._history = HistoricalClient(self._history, now=self._clock)
        return self._history

