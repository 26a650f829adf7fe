"""A Kite-protocol simulator on loopback: the ticker WebSocket and the REST endpoints the project uses.

The real ``KiteTicker`` / ``KiteConnect`` clients connect to it (``root=sim.ticker_url`` /
``root=sim.api_url``); it is the live-path test bed, the default source without credentials, and
``kiteohlc-lab sim``. The WebSocket side runs on a ``websockets`` asyncio server in its own thread and
event loop; REST runs on a ``ThreadingHTTPServer``. A seeded random walk (or a replay tape) makes the
market; the ticks generated are kept (the last ``max_log_ticks`` of them: a bounded window, hours of a
busy market by default), so historical candles for the streamed period come from the very ticks that
were sent, and ``sent()`` tells a test exactly what a client should have aggregated.

>>> with KiteSimulator(tick_interval=0.05) as sim:          # doctest: +SKIP
...     kt = KiteTicker(sim.api_key, sim.access_token, root=sim.ticker_url)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import threading
import time
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd

from ..core.ticks import TickBatch
from ..core.timeframes import anchor_for_tokens, bucket_start, parse_timeframe
from .frames import HEARTBEAT
from .sim_http import (
    SPAN_LIMIT_DAYS,
    instruments_csv,
    kite_candles,
    make_http_server,
    minute_candles,
    synthetic_minutes,
    tick_minutes,
)
from .sim_market import (
    DEFAULT_INSTRUMENTS,
    LOG_BATCH_COST,
    LOG_TICKS,
    MINUTE_NS,
    SimInstrument,
    SimMarket,
    TickLogs,
    instrument_for_token,
    read_tape,
    sent_frame,
)
from .sim_wire import (
    INJECT_KINDS,
    MAX_TOKENS_PER_CONNECTION,
    MODES,
    SimClient,
    check_injection,
    encode_batch,
    take_injections,
    with_injections,
)

# the market and tick logs, the REST side, and the ticker wire (client subscriptions, fault
# injection) live in sim_market, sim_http and sim_wire;
# their public names are re-exported here (this module stays the simulator's import path)
__all__ = ["KiteSimulator", "SimInstrument", "DEFAULT_INSTRUMENTS", "main", "read_tape",
           "INJECT_KINDS", "SPAN_LIMIT_DAYS", "LOG_TICKS", "LOG_BATCH_COST", "MINUTE_NS", "MODES",
           "MAX_TOKENS_PER_CONNECTION"]


class KiteSimulator:
    """Kite ticker (WebSocket) + REST simulator on loopback; see the module docstring.

    Fault injection: ``drop_connections()``, ``send_malformed()``, ``go_silent(seconds)``,
    ``pause()``/``resume()``, ``set_history_override(...)``, ``inject(kind, ...)`` (volume glitches,
    bogus stamps, zero prices, late ticks on the wire; ``sent()``/``sent_all()``/``injected()`` say
    what went out). Counters: ``connections``, ``max_seen_connections``, ``total_connections``,
    ``historical_requests``.
    """

    def __init__(self, host: str = "127.0.0.1", ws_port: int = 0, http_port: int = 0,
                 api_key: str = "sim", access_token: str = "sim-token",
                 instruments: list[SimInstrument] | None = None, tick_interval: float = 1.0,
                 heartbeat_interval: float = 1.0, seed: int = 0, tape: str | None = None,
                 speed: float = 1.0, max_connections: int = 3, api_secret: str = "sim-secret",
                 max_log_ticks: int = LOG_TICKS) -> None:
        self.host, self.ws_port, self.http_port = host, ws_port, http_port
        self.api_key, self.access_token = api_key, access_token
        self.api_secret = api_secret  # POST /session/token checks Kite's checksum with it
        self.tick_interval = float(tick_interval)
        self.heartbeat_interval = float(heartbeat_interval)
        self.seed = seed
        self.max_connections = max_connections
        tape_df = read_tape(tape) if tape else None
        instr = list(instruments if instruments is not None else DEFAULT_INSTRUMENTS)
        if tape_df is not None:
            known = {i.instrument_token for i in instr}
            instr += [instrument_for_token(int(t)) for t in tape_df["instrument_token"].unique()
                      if int(t) not in known]
        self.instruments = instr
        self._by_token = {i.instrument_token: i for i in instr}
        self._market = SimMarket(instr, seed, tape_df, speed)

        self._lock = threading.Lock()
        # the tick logs keep a bounded window: each log at most max_log_ticks (a batch counting
        # LOG_BATCH_COST more for its arrays); the oldest batches go first
        self._logs = TickLogs(max_log_ticks)
        self._pending: list[dict[str, Any]] = []  # inject() requests not yet (fully) on the wire
        self._overrides: dict[tuple[int, int], dict[str, float]] = {}
        self._clients: set[SimClient] = set()
        self._paused = False
        self._silent_until = 0.0
        self.max_seen_connections = 0
        self.total_connections = 0
        self.historical_requests = 0
        self.historical_request_times: list[float] = []
        self.started_ns = 0
        self.clock_ns = time.time_ns  # REST's notion of "now" (tests move it to close minutes)

        self._loop: asyncio.AbstractEventLoop | None = None
        self._ws_thread: threading.Thread | None = None
        self._http: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._stop_future: asyncio.Future | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._stopped = False

    # ------------------------------------------------------------------ life cycle
    def start(self) -> "KiteSimulator":
        """Start both servers in daemon threads; returns once both listen."""
        if self._ws_thread is not None:
            return self
        self.started_ns = time.time_ns()
        self._http = make_http_server(self)
        self.http_port = self._http.server_address[1]
        self._http_thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.1},
                                             name="kite-sim-http", daemon=True)
        self._http_thread.start()
        self._ws_thread = threading.Thread(target=self._run_loop, name="kite-sim-ws", daemon=True)
        self._ws_thread.start()
        if not self._ready.wait(10) or self._start_error is not None:
            self.stop()
            raise RuntimeError(f"the simulator's WebSocket server did not start: {self._start_error}")
        return self

    def stop(self) -> None:
        """Close every socket and both servers; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        loop, fut = self._loop, self._stop_future
        if loop is not None and fut is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(None))
            except RuntimeError:
                pass
        if self._ws_thread is not None:
            self._ws_thread.join(5)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._http_thread is not None:
            self._http_thread.join(5)

    def __enter__(self) -> "KiteSimulator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def ticker_url(self) -> str:
        return f"ws://{self.host}:{self.ws_port}"

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def connections(self) -> int:
        return len(self._clients)

    @property
    def max_log_ticks(self) -> int:
        """The bound of each tick log, in ticks (a batch counting LOG_BATCH_COST more)."""
        return self._logs.max_ticks

    @property
    def market_dropped(self) -> int:
        """Ticks generated that fell out of ``market()`` (the bounded window)."""
        return self._logs.market_dropped

    @property
    def sent_offset(self) -> int:
        """Ticks sent that fell out of ``sent()``: ``injected()[i]["index"] - sent_offset`` is a
        position in ``sent()``."""
        return self._logs.sent_offset

    @property
    def _window_ns(self) -> int:
        """Minutes before this start hold ticks no longer kept (history: none)."""
        return self._logs.window_ns

    def instrument(self, token: int) -> SimInstrument | None:
        """The simulated instrument of ``token``, or None."""
        return self._by_token.get(int(token))

    def count_historical_request(self) -> None:
        """Count one historical request (``historical_requests``, ``historical_request_times``)."""
        with self._lock:
            self.historical_requests += 1
            self.historical_request_times.append(time.time())

    # ------------------------------------------------------------------ what was sent
    def sent(self, injected: bool = True) -> TickBatch:
        """Every tick delivered to at least one client, in wire order, with the exact
        timestamps/volumes encoded.

        ``volume`` is NaN for indices, ``oi`` NaN for non-derivatives, the book (``bid ask bid_qty
        ask_qty``) NaN for indices (clients in ltp/quote mode do not see the timestamp, volume, oi or
        book of a tick). Packets put on the wire by ``inject()`` are
        included where they were sent; ``injected=False`` leaves them out (the clean market as sent).
        """
        with self._lock:
            return self._logs.sent(injected)

    def sent_all(self) -> pd.DataFrame:
        """``sent()`` as a frame, one row per tick in wire order, with what a test may need besides:

        ``token ts price volume oi bid ask bid_qty ask_qty`` (as in ``sent()``), ``kind`` ("" for a market tick, else the
        ``inject()`` kind that put it on the wire), ``mode`` (the subscription mode(s) of the clients
        it went to, e.g. "full" or "full,quote": only full packets carry the timestamp) and ``frame``
        (the number of the broadcast, counted from 0).
        """
        with self._lock:
            parts = self._logs.sent_parts()
        return sent_frame(*parts)

    def subscriptions(self) -> list[dict[int, str]]:
        """Per connected client, its subscriptions ``{token: mode}`` as the simulator holds them.

        A test waits on this for the clients' ``mode full`` before ``resume()``: until a mode message
        arrives Kite (and the simulator) send quote packets, which carry no exchange timestamp.
        """
        return [dict(c.modes) for c in list(self._clients)]

    def market(self) -> TickBatch:
        """Every tick the market generated (sent or not: paused clients, silence, drops)."""
        with self._lock:
            return TickBatch.concat(self._logs.market_log)

    # ------------------------------------------------------------------ fault injection
    def pause(self) -> None:
        """Stop generating ticks (heartbeats continue)."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def go_silent(self, seconds: float) -> None:
        """Send neither ticks nor heartbeats for ``seconds``; sockets stay open, pings are answered.

        The market keeps moving (ticks land in ``market()`` and in history, not in ``sent()``).
        """
        self._silent_until = time.monotonic() + seconds

    def drop_connections(self) -> None:
        """Abort every client socket without a closing handshake (clients see 1006)."""
        def abort() -> None:
            for c in list(self._clients):
                transport = getattr(c.ws, "transport", None)
                if transport is not None:
                    transport.abort()
        self._call_in_loop(abort)

    def send_malformed(self) -> None:
        """Send each client a truncated frame: 3 packets declared, one cut short, none whole."""
        garbage = b"\x00\x03\x00\xb8" + bytes(range(20))

        async def send_all() -> None:
            await asyncio.gather(*(c.ws.send(garbage) for c in list(self._clients)),
                                 return_exceptions=True)
        self._call_in_loop(send_all)

    def set_history_override(self, token: int, minute_start_ns: int, **fields: float) -> None:
        """Make the historical minute candle at ``minute_start_ns`` differ from the ticks sent.

        ``fields``: any of open, high, low, close, volume, oi.
        """
        bad = set(fields) - {"open", "high", "low", "close", "volume", "oi"}
        if bad:
            raise ValueError(f"override fields {sorted(bad)} are not accepted; use open, high, low, "
                             "close, volume, oi")
        with self._lock:
            self._overrides[(int(token), int(minute_start_ns) // MINUTE_NS * MINUTE_NS)] = dict(fields)

    def inject(self, kind: str, token: int | None = None, count: int = 1, **opts: Any) -> None:
        """Make the next ``count`` broadcasts carrying ``token`` (default: the first instrument of the
        broadcast that fits ``kind``) each carry one extra packet of the mess real Kite feeds send.

        The extra packet follows the instrument's market packet in the same frame, with its price,
        volume, oi and (second) timestamp unless ``kind`` says otherwise; it is sent to every client
        subscribed to the instrument, in its mode, and it is in ``sent()`` where it went (``kind`` in
        ``sent_all()``, one record per packet in ``injected()``). It changes nothing in the market
        itself: ``market()`` and the historical candles stay clean. Deterministic: no randomness.

        kind
            ``zero_volume``  cumulative ``volume_traded`` 0 (tradable instruments only);
            ``stale_volume`` a stale lower snapshot: the volume the instrument had ``ago`` (default 1)
            market packets earlier (tradable only);
            ``swap``         two packets of one second out of order: after the market packet comes
            the one before it in the same second, with the previous packet's price and a volume
            half way between the previous packet's and this one's (strictly lower; tradable only);
            ``bogus_stamp``  an exchange timestamp ``ahead`` seconds in the future (default 10
            years), or exactly ``stamp`` (epoch seconds, e.g. 0);
            ``zero_price``   ``last_price`` 0 (the wire's prices are uint32 paise, so 0 is the only
            non-positive price a frame can carry);
            ``late``         stamped ``seconds`` (default 10) in the past.
        opts
            the kind's option above, and ``price``/``volume`` to set the packet's fields explicitly.
        """
        check_injection(kind, token, count, opts, self.instrument)
        with self._lock:
            self._pending.append({"kind": kind, "token": None if token is None else int(token),
                                  "left": int(count), "opts": dict(opts)})

    def injected(self) -> list[dict[str, Any]]:
        """One record per packet ``inject()`` put on the wire, in order: ``kind token ts price volume
        oi frame`` and ``index``, its position in ``sent()``."""
        with self._lock:
            return [dict(r) for r in self._logs.injected]

    @property
    def pending_injections(self) -> int:
        """Packets ``inject()`` still has to put on the wire (0: all sent)."""
        with self._lock:
            return sum(p["left"] for p in self._pending)

    def _apply_injections(self, batch: TickBatch, subscribed: set[int]) -> tuple[TickBatch, np.ndarray]:
        """The broadcast with the pending injections' packets added; and each tick's kind ("")."""
        if not self._pending:
            return batch, np.full(len(batch), "", dtype=object)
        with self._lock:
            extra = take_injections(self._pending, batch, subscribed, self._by_token, self._logs.recent)
        return with_injections(batch, extra)

    def _call_in_loop(self, fn: Any, timeout: float = 5.0) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        async def run() -> None:
            result = fn()
            if asyncio.iscoroutine(result):
                await result
        asyncio.run_coroutine_threadsafe(run(), loop).result(timeout)

    # ------------------------------------------------------------------ WebSocket side
    def _run_loop(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported through start()
            self._start_error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        from websockets.asyncio.server import serve

        self._stop_future = asyncio.get_running_loop().create_future()
        async with serve(self._handle, self.host, self.ws_port, process_request=self._check_request,
                         compression=None, ping_interval=None, close_timeout=1,
                         max_size=2**20) as server:
            self.ws_port = server.sockets[0].getsockname()[1]
            pump = asyncio.create_task(self._pump())
            beat = asyncio.create_task(self._heartbeats())
            self._ready.set()
            await self._stop_future
            pump.cancel()
            beat.cancel()
            for c in list(self._clients):
                transport = getattr(c.ws, "transport", None)
                if transport is not None:
                    transport.abort()

    def _check_request(self, connection: Any, request: Any) -> Any:
        query = parse_qs(urlsplit(request.path).query)
        key = query.get("api_key", [""])[0]
        token = query.get("access_token", [""])[0]
        if key != self.api_key or token != self.access_token:
            return connection.respond(HTTPStatus.FORBIDDEN, "Invalid api_key or access_token\n")
        if len(self._clients) >= self.max_connections:
            return connection.respond(HTTPStatus.TOO_MANY_REQUESTS, "Too many connections\n")
        return None

    async def _handle(self, ws: Any) -> None:
        client = SimClient(ws)
        self._clients.add(client)
        self.total_connections += 1
        self.max_seen_connections = max(self.max_seen_connections, len(self._clients))
        try:
            async for message in ws:
                error = client.on_message(message)
                if error:
                    await ws.send(json.dumps({"type": "error", "data": error}))
        except Exception:  # noqa: BLE001 - a dropped client just goes away
            pass
        finally:
            self._clients.discard(client)

    async def _pump(self) -> None:
        interval = max(self.tick_interval, 0.001)
        next_t = time.monotonic()
        while True:
            next_t += interval
            delay = next_t - time.monotonic()
            if delay < -interval:  # fell behind (loaded machine): do not burst
                next_t = time.monotonic()
            await asyncio.sleep(max(delay, 0))
            if self._paused:
                continue
            now = time.time()
            batch = self._market.step(int(now), now)
            if not len(batch):
                continue
            with self._lock:
                self._logs.add_market(batch)
            if time.monotonic() < self._silent_until:
                continue
            await self._broadcast(batch)

    async def _broadcast(self, batch: TickBatch) -> None:
        clients = [c for c in list(self._clients) if c.modes]
        subscribed = set().union(*(c.modes for c in clients)) if clients else set()
        batch, kinds = self._apply_injections(batch, subscribed)
        delivered = np.zeros(len(batch), dtype=bool)
        modes: list[set[str]] = [set() for _ in range(len(batch))]
        sends = []
        for client in clients:
            sel = np.flatnonzero([t in client.modes for t in batch.token.tolist()])
            if not len(sel):
                continue
            sel_modes = [client.modes[int(t)] for t in batch.token[sel]]
            frame = encode_batch(self._market, batch, sel, sel_modes)
            client.last_sent = time.monotonic()
            delivered[sel] = True
            for i, m in zip(sel.tolist(), sel_modes):
                modes[i].add(m)
            sends.append(client.ws.send(frame))
        if delivered.any():  # logged before the send, so a client never sees a tick sent() lacks
            with self._lock:
                self._logs.add_sent(batch, kinds, delivered, modes)
        if sends:
            await asyncio.gather(*sends, return_exceptions=True)

    async def _heartbeats(self) -> None:
        period = max(min(self.heartbeat_interval / 4, 0.25), 0.01)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            if now < self._silent_until:
                continue
            due = [c for c in list(self._clients) if now - c.last_sent >= self.heartbeat_interval]
            for c in due:
                c.last_sent = now
            if due:
                await asyncio.gather(*(c.ws.send(HEARTBEAT) for c in due), return_exceptions=True)

    # ------------------------------------------------------------------ historical candles
    def historical(self, token: int, interval: str, from_ns: int, to_ns: int,
                   oi: bool = False) -> list[list[Any]]:
        """Candles ``[iso, o, h, l, c, v(, oi)]`` with start in [from_ns, to_ns], as Kite returns."""
        tf = parse_timeframe(interval)
        inst = self._by_token[token]
        anchor = int(anchor_for_tokens(np.array([token]))[0])
        lo = int(bucket_start(np.array([from_ns]), tf, anchor)[0])
        hi = to_ns + tf.ns
        return kite_candles(self._minute_candles(inst, lo, hi), inst, tf, anchor, from_ns, to_ns, oi)

    def _minute_candles(self, inst: SimInstrument, lo: int, hi: int) -> dict[str, np.ndarray]:
        """Minute candles in [lo, hi): synthetic before the simulator started, then from the ticks
        generated (minutes already over on ``clock_ns``), overrides applied."""
        boundary = self.started_ns // MINUTE_NS * MINUTE_NS
        parts = []
        if lo < boundary:
            parts.append(synthetic_minutes(inst, self.seed, lo, min(hi, boundary), end_ns=boundary))
        if hi > boundary:
            parts.append(tick_minutes(self.market(), inst.instrument_token, max(lo, boundary), hi,
                                      self._logs.window_ns, self.clock_ns()))
        with self._lock:
            overrides = {m: f for (t, m), f in self._overrides.items()
                         if t == inst.instrument_token and lo <= m < hi}
        return minute_candles(parts, overrides, inst)

    def instruments_csv(self, exchange: str | None = None) -> str:
        """Kite's instruments dump (CSV) of the simulated instruments, at the market's prices."""
        prices = dict(zip(self._market.tokens.tolist(), self._market.prices().tolist()))
        return instruments_csv(self.instruments, prices, exchange)


# ---------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    """``kiteohlc-lab sim``: run the simulator until Ctrl-C / SIGTERM."""
    parser = argparse.ArgumentParser(prog="kiteohlc-lab sim",
                                     description="Kite-protocol simulator (ticker WebSocket + REST)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ws-port", type=int, default=0)
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--tape", default=None, help="CSV/Parquet tape to replay instead of a random walk")
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--tick-interval", type=float, default=1.0)
    parser.add_argument("--api-key", default="sim")
    parser.add_argument("--access-token", default="sim-token")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sim = KiteSimulator(host=args.host, ws_port=args.ws_port, http_port=args.http_port,
                        api_key=args.api_key, access_token=args.access_token, tape=args.tape,
                        speed=args.speed, tick_interval=args.tick_interval, seed=args.seed)
    done = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
    sim.start()
    print(f"ticker_url {sim.ticker_url}", flush=True)
    print(f"api_url {sim.api_url}", flush=True)
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
