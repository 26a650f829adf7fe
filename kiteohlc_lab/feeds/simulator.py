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
import datetime as dt
import hashlib
import json
import signal
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd

from ..core.ticks import TickBatch, ist_naive_to_epoch_ns
from ..core.timeframes import (
    DAY_NS,
    IST,
    IST_OFFSET_NS,
    NS,
    anchor_for_tokens,
    bucket_start,
    parse_timeframe,
)
from ..errors import TapeError
from .frames import HEARTBEAT, encode_packets

__all__ = ["KiteSimulator", "SimInstrument", "DEFAULT_INSTRUMENTS", "main"]

MINUTE_NS = 60 * NS
MODES = ("ltp", "quote", "full")
MAX_TOKENS_PER_CONNECTION = 3000
# the tick logs (market(), sent()) keep this many ticks each, a batch counting LOG_BATCH_COST more
# (its arrays): 2 million = 10 instruments every 50 ms for ~3 hours; about 100 MB at most
LOG_TICKS = 2_000_000
LOG_BATCH_COST = 32
# What inject() can put on the wire (see KiteSimulator.inject).
INJECT_KINDS = ("zero_volume", "stale_volume", "swap", "bogus_stamp", "zero_price", "late")
_VOLUME_KINDS = ("zero_volume", "stale_volume", "swap")
_TEN_YEARS_S = 3653 * 86400
# Kite's span limits for one historical request, in days (forum figures from Zerodha staff).
SPAN_LIMIT_DAYS = {
    "minute": 60, "3minute": 100, "5minute": 100, "10minute": 100,
    "15minute": 200, "30minute": 200, "60minute": 400, "day": 2000,
}
# Synthetic history session per exchange: (open, close) minutes after 00:00 IST.
_SESSIONS = {"MCX": (9 * 60, 23 * 60 + 30), "CDS": (9 * 60, 17 * 60)}
_DEFAULT_SESSION = (9 * 60 + 15, 15 * 60 + 30)


@dataclass(frozen=True, slots=True)
class SimInstrument:
    """One simulated instrument, with the columns of Kite's instruments dump."""

    instrument_token: int
    tradingsymbol: str
    name: str
    exchange: str
    segment: str
    instrument_type: str
    last_price: float  # starting price of the random walk
    tick_size: float = 0.05
    lot_size: int = 1
    expiry: str = ""
    strike: float = 0.0

    @property
    def exchange_token(self) -> int:
        return self.instrument_token >> 8

    @property
    def is_index(self) -> bool:
        return self.instrument_token & 0xFF == 9

    @property
    def has_oi(self) -> bool:
        return self.instrument_type in ("FUT", "CE", "PE")


DEFAULT_INSTRUMENTS: tuple[SimInstrument, ...] = (
    SimInstrument(256265, "NIFTY 50", "NIFTY 50", "NSE", "INDICES", "EQ", 26000.0),
    SimInstrument(260105, "NIFTY BANK", "NIFTY BANK", "NSE", "INDICES", "EQ", 59000.0),
    SimInstrument(738561, "RELIANCE", "RELIANCE INDUSTRIES", "NSE", "NSE", "EQ", 1550.0),
    SimInstrument(408065, "INFY", "INFOSYS", "NSE", "NSE", "EQ", 1600.0),
    SimInstrument(341249, "HDFCBANK", "HDFC BANK", "NSE", "NSE", "EQ", 1000.0),
    SimInstrument(2953217, "TCS", "TATA CONSULTANCY SERV LT", "NSE", "NSE", "EQ", 3150.0),
    SimInstrument(779521, "SBIN", "STATE BANK OF INDIA", "NSE", "NSE", "EQ", 980.0),
    SimInstrument(13238786, "NIFTY25DECFUT", "NIFTY", "NFO", "NFO-FUT", "FUT", 26100.0,
                  lot_size=75, expiry="2025-12-30"),
    SimInstrument(54000903, "CRUDEOIL25DECFUT", "CRUDEOIL", "MCX", "MCX-FUT", "FUT", 5400.0,
                  tick_size=1.0, lot_size=100, expiry="2025-12-16"),
)


def _instrument_for_token(token: int) -> SimInstrument:
    """A placeholder instrument for a tape token the simulator does not know."""
    seg = token & 0xFF
    exchange = {2: "NFO", 3: "CDS", 4: "BSE", 5: "BFO", 6: "BCD", 7: "MCX", 9: "NSE"}.get(seg, "NSE")
    segment = "INDICES" if seg == 9 else exchange
    return SimInstrument(token, f"TOKEN{token}", f"TOKEN{token}", exchange, segment, "EQ", 100.0)


def _hash_uniform(*keys: Any) -> np.ndarray:
    """Deterministic uniform [0, 1) from integer keys (splitmix64 mixing), vectorised."""
    arrays = np.broadcast_arrays(*[np.asarray(k, dtype=np.int64).astype(np.uint64) for k in keys])
    h = np.zeros(arrays[0].shape, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for a in arrays:
            h = h ^ (a + np.uint64(0x9E3779B97F4A7C15) + (h << np.uint64(6)) + (h >> np.uint64(2)))
            h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h = h ^ (h >> np.uint64(31))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class _Market:
    """Seeded random walk (or tape playback) producing one TickBatch per step."""

    def __init__(self, instruments: list[SimInstrument], seed: int, tape: pd.DataFrame | None,
                 speed: float) -> None:
        self.instruments = instruments
        self.tokens = np.array([i.instrument_token for i in instruments], dtype=np.int64)
        self.tick = np.array([i.tick_size or 0.05 for i in instruments])
        self.lot = np.array([max(i.lot_size, 1) for i in instruments], dtype=np.int64)
        self.is_index = np.array([i.is_index for i in instruments])
        self.has_oi = np.array([i.has_oi for i in instruments])
        self.rng = np.random.default_rng(seed)
        self.price_ticks = np.rint(np.array([i.last_price for i in instruments]) / self.tick).astype(np.int64)
        self.cum_volume = np.zeros(len(instruments), dtype=np.int64)
        self.oi = np.where(self.has_oi, 1_000_000, 0).astype(np.int64)
        self.day = -1
        self.new_day = True
        self.index_of = {t: i for i, t in enumerate(self.tokens.tolist())}
        self.open = self.high = self.low = self.prev_close = self.prices()
        self.tape = tape
        self.speed = speed
        self.tape_pos = 0
        self.tape_wall0: float | None = None

    def prices(self) -> np.ndarray:
        return np.round(self.price_ticks * self.tick, 6)

    def step(self, now_s: int) -> TickBatch:
        if self.tape is not None:
            return self._tape_step(now_s)
        day = (now_s * NS + IST_OFFSET_NS) // DAY_NS
        if day != self.day:  # a new IST trading day: volume restarts, yesterday's close is kept
            self.day = day
            self.cum_volume[:] = 0
            self.prev_close = self.prices()
            self.new_day = True
        n = len(self.tokens)
        self.price_ticks = np.maximum(self.price_ticks + self.rng.integers(-2, 3, n), 1)
        self.cum_volume += np.where(self.is_index, 0, self.rng.integers(1, 50, n) * self.lot)
        self.oi = np.maximum(self.oi + np.where(self.has_oi, self.rng.integers(-20, 21, n) * self.lot, 0), 0)
        price = self.prices()
        if self.new_day:
            self.open, self.high, self.low = price.copy(), price.copy(), price.copy()
            self.new_day = False
        self.high = np.maximum(self.high, price)
        self.low = np.minimum(self.low, price)
        return TickBatch(
            self.tokens.copy(),
            np.full(n, now_s * NS, dtype=np.int64),
            price,
            np.where(self.is_index, np.nan, self.cum_volume.astype(np.float64)),
            np.where(self.has_oi, self.oi.astype(np.float64), np.nan),
        )

    def _tape_step(self, now_s: int) -> TickBatch:
        tape = self.tape
        assert tape is not None
        if self.tape_wall0 is None:
            self.tape_wall0 = time.time()
        due = tape["ts"].iloc[0] + int((time.time() - self.tape_wall0) * self.speed * NS)
        end = int(np.searchsorted(tape["ts"].to_numpy(), due, side="right"))
        rows = tape.iloc[self.tape_pos:end]
        self.tape_pos = max(self.tape_pos, end)
        if rows.empty:
            return TickBatch.empty()
        tok = rows["instrument_token"].to_numpy(np.int64)
        idx = np.array([self.index_of[t] for t in tok.tolist()], dtype=np.int64)
        price = rows["last_price"].to_numpy(np.float64)
        self.price_ticks[idx] = np.rint(price / self.tick[idx]).astype(np.int64)
        vol = rows["volume_traded"].to_numpy(np.float64)
        oi = rows["oi"].to_numpy(np.float64)
        return TickBatch(tok, np.full(len(tok), now_s * NS, np.int64), price,
                         np.where(self.is_index[idx], np.nan, vol), np.where(self.has_oi[idx], oi, np.nan))


def read_tape(path: str) -> pd.DataFrame:
    """Tape (CSV/Parquet: timestamp, instrument_token, last_price, volume_traded, oi) sorted by time.

    Naive timestamps are IST wall clock. Adds ``ts`` (epoch ns).
    """
    p = Path(path)
    try:
        df = pd.read_parquet(p) if p.suffix.lower() in (".parquet", ".pq") else pd.read_csv(p)
    except Exception as exc:  # noqa: BLE001 - one clear message for any unreadable file
        raise TapeError(f"tape {path!r} cannot be read ({exc}); use a CSV or Parquet file") from None
    missing = {"timestamp", "instrument_token", "last_price"} - set(df.columns)
    if missing:
        raise TapeError(f"tape {path!r} lacks column(s) {sorted(missing)}; needs timestamp, "
                        "instrument_token, last_price[, volume_traded, oi]")
    stamps = pd.to_datetime(df["timestamp"])
    if stamps.dt.tz is None:
        ts = ist_naive_to_epoch_ns(stamps.to_numpy())
    else:
        ts = stamps.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[ns]").astype(np.int64)
    out = pd.DataFrame({
        "ts": ts,
        "instrument_token": df["instrument_token"].astype(np.int64),
        "last_price": df["last_price"].astype(np.float64),
        "volume_traded": df["volume_traded"].astype(np.float64) if "volume_traded" in df else np.nan,
        "oi": df["oi"].astype(np.float64) if "oi" in df else np.nan,
    })
    return out.sort_values("ts", kind="stable").reset_index(drop=True)


@dataclass(eq=False)
class _Client:
    ws: Any
    modes: dict[int, str] = field(default_factory=dict)
    last_sent: float = field(default_factory=time.monotonic)


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
            instr += [_instrument_for_token(int(t)) for t in tape_df["instrument_token"].unique()
                      if int(t) not in known]
        self.instruments = instr
        self._by_token = {i.instrument_token: i for i in instr}
        self._market = _Market(instr, seed, tape_df, speed)

        self._lock = threading.Lock()
        # the tick logs keep a bounded window: each log at most max_log_ticks (a batch counting
        # LOG_BATCH_COST more for its arrays); the oldest batches go first
        self.max_log_ticks = max(1, int(max_log_ticks))
        self._market_cost = 0
        self._sent_cost = 0
        self.market_dropped = 0  # ticks generated that fell out of market()
        self.sent_offset = 0  # ticks sent that fell out of sent(): injected()[i]["index"] - this
        self._window_ns = 0  # minutes before this start hold ticks no longer kept (history: none)
        self._market_log: list[TickBatch] = []
        self._sent_log: list[TickBatch] = []
        self._sent_kind: list[np.ndarray] = []  # per logged batch: "" or the injected kind, per tick
        self._sent_mode: list[np.ndarray] = []  # per logged batch: the client mode(s), per tick
        self._frames = 0  # broadcasts that carried ticks
        self._sent_n = 0  # ticks in the sent log
        self._pending: list[dict[str, Any]] = []  # inject() requests not yet (fully) on the wire
        self._injected: list[dict[str, Any]] = []  # what they put on the wire
        self._recent: dict[int, list[tuple[float, float]]] = {}  # token -> (price, volume) sent
        self._overrides: dict[tuple[int, int], dict[str, float]] = {}
        self._clients: set[_Client] = set()
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
        self._http = _make_http_server(self)
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

    # ------------------------------------------------------------------ what was sent
    def sent(self, injected: bool = True) -> TickBatch:
        """Every tick delivered to at least one client, in wire order, with the exact
        timestamps/volumes encoded.

        ``volume`` is NaN for indices, ``oi`` NaN for non-derivatives (clients in ltp/quote mode do not
        see the timestamp, volume or oi of a tick). Packets put on the wire by ``inject()`` are
        included where they were sent; ``injected=False`` leaves them out (the clean market as sent).
        """
        with self._lock:
            if injected:
                return TickBatch.concat(self._sent_log)
            return TickBatch.concat([b.take(k == "") for b, k in zip(self._sent_log, self._sent_kind)])

    def sent_all(self) -> pd.DataFrame:
        """``sent()`` as a frame, one row per tick in wire order, with what a test may need besides:

        ``token ts price volume oi`` (as in ``sent()``), ``kind`` ("" for a market tick, else the
        ``inject()`` kind that put it on the wire), ``mode`` (the subscription mode(s) of the clients
        it went to, e.g. "full" or "full,quote": only full packets carry the timestamp) and ``frame``
        (the number of the broadcast, counted from 0).
        """
        with self._lock:
            batches, kinds, modes = list(self._sent_log), list(self._sent_kind), list(self._sent_mode)
        b = TickBatch.concat(batches)
        frame = np.concatenate([np.full(len(x), i, np.int64) for i, x in enumerate(batches)]) \
            if batches else np.empty(0, np.int64)
        return pd.DataFrame({
            "token": b.token, "ts": b.ts, "price": b.price, "volume": b.volume, "oi": b.oi,
            "kind": np.concatenate(kinds) if kinds else np.empty(0, object),
            "mode": np.concatenate(modes) if modes else np.empty(0, object),
            "frame": frame,
        })

    def subscriptions(self) -> list[dict[int, str]]:
        """Per connected client, its subscriptions ``{token: mode}`` as the simulator holds them.

        A test waits on this for the clients' ``mode full`` before ``resume()``: until a mode message
        arrives Kite (and the simulator) send quote packets, which carry no exchange timestamp.
        """
        return [dict(c.modes) for c in list(self._clients)]

    def market(self) -> TickBatch:
        """Every tick the market generated (sent or not: paused clients, silence, drops)."""
        with self._lock:
            return TickBatch.concat(self._market_log)

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
        if kind not in INJECT_KINDS:
            raise ValueError(f"kind {kind!r} is not accepted; use one of {', '.join(INJECT_KINDS)}")
        known = {"stale_volume": {"ago"}, "bogus_stamp": {"ahead", "stamp"}, "late": {"seconds"}}
        bad = set(opts) - known.get(kind, set()) - {"price", "volume"}
        if bad:
            raise ValueError(f"option(s) {sorted(bad)} are not accepted for {kind!r}")
        if opts.get("price") is not None and not float(opts["price"]) >= 0:
            raise ValueError("a frame's price is uint32 paise: a negative price cannot be sent; use 0")
        if token is not None:
            inst = self._by_token.get(int(token))
            if inst is None:
                raise ValueError(f"token {token} is not one of the simulator's instruments")
            if kind in _VOLUME_KINDS and inst.is_index:
                raise ValueError(f"{kind!r} needs a tradable instrument; {inst.tradingsymbol} is an "
                                 "index (no volume)")
        if int(count) < 1:
            raise ValueError(f"count {count!r} must be at least 1")
        with self._lock:
            self._pending.append({"kind": kind, "token": None if token is None else int(token),
                                  "left": int(count), "opts": dict(opts)})

    def injected(self) -> list[dict[str, Any]]:
        """One record per packet ``inject()`` put on the wire, in order: ``kind token ts price volume
        oi frame`` and ``index``, its position in ``sent()``."""
        with self._lock:
            return [dict(r) for r in self._injected]

    @property
    def pending_injections(self) -> int:
        """Packets ``inject()`` still has to put on the wire (0: all sent)."""
        with self._lock:
            return sum(p["left"] for p in self._pending)

    def _apply_injections(self, batch: TickBatch, subscribed: set[int]) -> tuple[TickBatch, np.ndarray]:
        """The broadcast with the pending injections' packets added; and each tick's kind ("")."""
        kinds = np.full(len(batch), "", dtype=object)
        if not self._pending:
            return batch, kinds
        toks = batch.token.tolist()
        extra: dict[int, list[tuple[str, int, float, float, float]]] = {}  # row -> packets after it
        with self._lock:
            for p in list(self._pending):
                kind, opts = p["kind"], p["opts"]
                row = None
                for i, t in enumerate(toks):
                    if t not in subscribed or (p["token"] is not None and t != p["token"]):
                        continue
                    if kind in _VOLUME_KINDS and self._by_token[t].is_index:
                        continue
                    if p["token"] is None and any(e[0] == kind for e in extra.get(i, ())):
                        continue
                    row = i
                    break
                if row is None:
                    continue
                t = toks[row]
                ts_s = int(batch.ts[row]) // NS
                price, vol, oi = float(batch.price[row]), float(batch.volume[row]), float(batch.oi[row])
                recent = self._recent.get(t, [])
                if kind == "zero_volume":
                    vol = 0.0
                elif kind == "stale_volume":
                    ago = int(opts.get("ago", 1))
                    vol = recent[-ago][1] if len(recent) >= ago else 0.0
                elif kind == "swap":
                    prev_p, prev_v = recent[-1] if recent else (price, 0.0)
                    price, vol = prev_p, float(np.floor(prev_v + (vol - prev_v) / 2))
                elif kind == "bogus_stamp":
                    ts_s = int(opts["stamp"]) if "stamp" in opts else ts_s + int(opts.get("ahead", _TEN_YEARS_S))
                elif kind == "zero_price":
                    price = 0.0
                elif kind == "late":
                    ts_s -= int(opts.get("seconds", 10))
                if opts.get("price") is not None:
                    price = float(opts["price"])
                if opts.get("volume") is not None and not self._by_token[t].is_index:
                    vol = float(opts["volume"])
                extra.setdefault(row, []).append((kind, ts_s, price, vol, oi))
                p["left"] -= 1
                if p["left"] <= 0:
                    self._pending.remove(p)
        if not extra:
            return batch, kinds
        order: list[int] = []
        rows: list[tuple[int, str, int, float, float, float]] = []
        for i in range(len(batch)):
            order.append(len(rows))
            rows.append((toks[i], "", int(batch.ts[i]), float(batch.price[i]), float(batch.volume[i]),
                         float(batch.oi[i])))
            for kind, ts_s, price, vol, oi in extra.get(i, ()):
                rows.append((toks[i], kind, ts_s * NS, price, vol, oi))
        out = TickBatch(np.array([r[0] for r in rows], np.int64), np.array([r[2] for r in rows], np.int64),
                        np.array([r[3] for r in rows]), np.array([r[4] for r in rows]),
                        np.array([r[5] for r in rows]))
        return out, np.array([r[1] for r in rows], dtype=object)

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
        client = _Client(ws)
        self._clients.add(client)
        self.total_connections += 1
        self.max_seen_connections = max(self.max_seen_connections, len(self._clients))
        try:
            async for message in ws:
                error = self._on_client_message(client, message)
                if error:
                    await ws.send(json.dumps({"type": "error", "data": error}))
        except Exception:  # noqa: BLE001 - a dropped client just goes away
            pass
        finally:
            self._clients.discard(client)

    def _on_client_message(self, client: _Client, message: str | bytes) -> str | None:
        try:
            msg = json.loads(message)
            action, value = msg["a"], msg["v"]
        except (ValueError, TypeError, KeyError):
            return f"Invalid message: {str(message)[:100]}"
        try:
            if action == "subscribe":
                tokens = [int(t) for t in value]
                if len(set(client.modes) | set(tokens)) > MAX_TOKENS_PER_CONNECTION:
                    return f"Subscription limit of {MAX_TOKENS_PER_CONNECTION} instruments exceeded"
                for t in tokens:
                    client.modes.setdefault(t, "quote")
            elif action == "unsubscribe":
                for t in value:
                    client.modes.pop(int(t), None)
            elif action == "mode":
                mode, tokens = value[0], [int(t) for t in value[1]]
                if mode not in MODES:
                    return f"Invalid mode: {mode}"
                for t in tokens:
                    if t in client.modes:
                        client.modes[t] = mode
            else:
                return f"Invalid action: {action}"
        except (TypeError, ValueError, IndexError):
            return f"Invalid message: {str(message)[:100]}"
        return None

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
            batch = self._market.step(int(time.time()))
            if not len(batch):
                continue
            with self._lock:
                self._market_log.append(batch)
                self._market_cost += len(batch) + LOG_BATCH_COST
                while self._market_cost > self.max_log_ticks and len(self._market_log) > 1:
                    old = self._market_log.pop(0)
                    self._market_cost -= len(old) + LOG_BATCH_COST
                    self.market_dropped += len(old)
                    # the minute of the oldest tick kept may have lost ticks: history starts after it
                    self._window_ns = (int(self._market_log[0].ts.min()) // MINUTE_NS + 1) * MINUTE_NS
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
            frame = self._encode(batch, sel, sel_modes)
            client.last_sent = time.monotonic()
            delivered[sel] = True
            for i, m in zip(sel.tolist(), sel_modes):
                modes[i].add(m)
            sends.append(client.ws.send(frame))
        if delivered.any():  # logged before the send, so a client never sees a tick sent() lacks
            with self._lock:
                base = self._sent_n
                idx = np.flatnonzero(delivered)
                for pos, i in enumerate(idx.tolist()):
                    t = int(batch.token[i])
                    if kinds[i]:
                        self._injected.append({
                            "kind": kinds[i], "token": t, "ts": int(batch.ts[i]),
                            "price": float(batch.price[i]), "volume": float(batch.volume[i]),
                            "oi": float(batch.oi[i]), "frame": self._frames, "index": base + pos})
                    else:
                        recent = self._recent.setdefault(t, [])
                        recent.append((float(batch.price[i]), float(batch.volume[i])))
                        del recent[:-64]
                self._sent_log.append(batch.take(delivered))
                self._sent_kind.append(kinds[delivered])
                self._sent_mode.append(np.array([",".join(sorted(modes[i])) for i in idx.tolist()],
                                                dtype=object))
                self._frames += 1
                self._sent_n += len(idx)
                self._sent_cost += len(idx) + LOG_BATCH_COST
                while self._sent_cost > self.max_log_ticks and len(self._sent_log) > 1:
                    old = self._sent_log.pop(0)
                    self._sent_kind.pop(0)
                    self._sent_mode.pop(0)
                    self._sent_cost -= len(old) + LOG_BATCH_COST
                    self.sent_offset += len(old)
        if sends:
            await asyncio.gather(*sends, return_exceptions=True)

    def _encode(self, batch: TickBatch, sel: np.ndarray, modes: list[str]) -> bytes:
        m = self._market
        idx = np.array([m.index_of[t] for t in batch.token[sel].tolist()], dtype=np.int64)
        return encode_packets(
            batch.token[sel], batch.price[sel], modes,
            volume=np.nan_to_num(batch.volume[sel]), oi=np.nan_to_num(batch.oi[sel]),
            timestamp=batch.ts[sel] // NS,
            open=m.open[idx], high=m.high[idx], low=m.low[idx], close=m.prev_close[idx],
        )

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
        mins = self._minute_candles(inst, lo, hi)
        if not len(mins["start"]):
            return []
        starts = bucket_start(mins["start"], tf, anchor)
        keys, first = np.unique(starts, return_index=True)
        last = np.r_[first[1:], len(starts)] - 1
        out = {
            "start": keys,
            "open": mins["open"][first],
            "high": np.maximum.reduceat(mins["high"], first),
            "low": np.minimum.reduceat(mins["low"], first),
            "close": mins["close"][last],
            "volume": np.add.reduceat(mins["volume"], first),
            "oi": mins["oi"][last],
        }
        keep = (keys >= from_ns) & (keys <= to_ns)
        stamps = pd.to_datetime(keys[keep], utc=True).tz_convert(IST).strftime("%Y-%m-%dT%H:%M:%S%z")
        decimals = 4 if inst.segment in ("CDS", "BCD") else 2
        rows = []
        cols = [np.round(out[k][keep], decimals).tolist() for k in ("open", "high", "low", "close")]
        vols = out["volume"][keep].astype(np.int64).tolist()
        ois = out["oi"][keep].astype(np.int64).tolist()
        for i, stamp in enumerate(stamps):
            row = [stamp, cols[0][i], cols[1][i], cols[2][i], cols[3][i], vols[i]]
            if oi:
                row.append(ois[i])
            rows.append(row)
        return rows

    def _minute_candles(self, inst: SimInstrument, lo: int, hi: int) -> dict[str, np.ndarray]:
        boundary = self.started_ns // MINUTE_NS * MINUTE_NS
        parts = []
        if lo < boundary:
            parts.append(self._synthetic_minutes(inst, lo, min(hi, boundary)))
        if hi > boundary:
            parts.append(self._tick_minutes(inst, max(lo, boundary), hi))
        mins = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        with self._lock:
            overrides = {m: f for (t, m), f in self._overrides.items()
                         if t == inst.instrument_token and lo <= m < hi}
        for minute, fields in sorted(overrides.items()):
            pos = int(np.searchsorted(mins["start"], minute))
            if pos == len(mins["start"]) or mins["start"][pos] != minute:
                base = fields.get("close", fields.get("open", inst.last_price))
                row = {"start": minute, "open": base, "high": base, "low": base, "close": base,
                       "volume": 0.0, "oi": 0.0}
                mins = {k: np.insert(v, pos, row[k]) for k, v in mins.items()}
            for k, v in fields.items():
                mins[k][pos] = v
        return mins

    def _tick_minutes(self, inst: SimInstrument, lo: int, hi: int) -> dict[str, np.ndarray]:
        """Minute candles built from the ticks generated (only minutes already over, like Kite);
        none for minutes whose ticks left the bounded window."""
        t = self.market()
        lo = max(lo, self._window_ns)
        sel = t.token == inst.instrument_token
        ts, price = t.ts[sel], t.price[sel]
        vol = np.nan_to_num(t.volume[sel])
        oi = np.nan_to_num(t.oi[sel])
        minute = ts // MINUTE_NS * MINUTE_NS
        now_minute = self.clock_ns() // MINUTE_NS * MINUTE_NS
        done = minute < now_minute
        ts, price, vol, oi, minute = ts[done], price[done], vol[done], oi[done], minute[done]
        if not len(ts):
            return _empty_minutes()
        keys, first = np.unique(minute, return_index=True)
        last = np.r_[first[1:], len(minute)] - 1
        # candle volume: cumulative volume at its last tick minus at the previous candle's last tick
        # (the same IST day; the cumulative figure restarts each day)
        day = (keys + IST_OFFSET_NS) // DAY_NS
        prev = np.r_[0.0, vol[last][:-1]]
        prev[np.r_[True, day[1:] != day[:-1]]] = 0.0
        out = {
            "start": keys,
            "open": price[first],
            "high": np.maximum.reduceat(price, first),
            "low": np.minimum.reduceat(price, first),
            "close": price[last],
            "volume": np.maximum(vol[last] - prev, 0.0),
            "oi": oi[last],
        }
        keep = (keys >= lo) & (keys < hi)
        return {k: v[keep] for k, v in out.items()}

    def _synthetic_minutes(self, inst: SimInstrument, lo: int, hi: int) -> dict[str, np.ndarray]:
        """Deterministic (seeded) minute candles for market hours on weekdays before the sim started."""
        open_min, close_min = _SESSIONS.get(inst.exchange, _DEFAULT_SESSION)
        per_day = close_min - open_min
        d0 = (lo + IST_OFFSET_NS) // DAY_NS
        d1 = (hi - 1 + IST_OFFSET_NS) // DAY_NS
        days = np.arange(d0, d1 + 1)
        days = days[(days + 3) % 7 < 5]  # 1970-01-01 was a Thursday: Monday == 0
        if not len(days):
            return _empty_minutes()
        tok, seed, tick = inst.instrument_token, self.seed, inst.tick_size or 0.05
        # each day opens within 0.5% of the live starting price, so backfilled history joins the
        # live candles without a jump on the chart
        level = inst.last_price * (0.995 + 0.01 * _hash_uniform(seed, tok, days, -1))
        m = np.arange(per_day)
        steps = np.rint((_hash_uniform(seed, tok, days[:, None], m[None, :]) - 0.5) * 6)
        path = np.rint(level / tick)[:, None] + np.cumsum(steps, axis=1)
        path = np.maximum(path, 1.0)
        close = path
        open_ = np.concatenate([np.rint(level / tick)[:, None], path[:, :-1]], axis=1)
        open_ = np.maximum(open_, 1.0)
        wick = np.floor(_hash_uniform(seed, tok, days[:, None], m[None, :], 7) * 3)
        high = np.maximum(open_, close) + wick
        low = np.maximum(np.minimum(open_, close) - wick, 1.0)
        volume = (np.zeros_like(close) if inst.is_index else
                  np.floor(_hash_uniform(seed, tok, days[:, None], m[None, :], 11) * 2000 + 10)
                  * max(inst.lot_size, 1))
        oi = (1_000_000 + np.cumsum(np.rint((_hash_uniform(seed, tok, days[:, None], m[None, :], 13)
                                              - 0.5) * 40), axis=1) * inst.lot_size
              if inst.has_oi else np.zeros_like(close))
        start = (days[:, None] * DAY_NS + (open_min + m[None, :]) * MINUTE_NS) - IST_OFFSET_NS
        out = {"start": start.ravel().astype(np.int64),
               "open": (open_ * tick).ravel(), "high": (high * tick).ravel(),
               "low": (low * tick).ravel(), "close": (close * tick).ravel(),
               "volume": volume.ravel().astype(np.float64), "oi": np.asarray(oi, np.float64).ravel()}
        keep = (out["start"] >= lo) & (out["start"] < hi)
        return {k: v[keep] for k, v in out.items()}

    def instruments_csv(self, exchange: str | None = None) -> str:
        cols = ["instrument_token", "exchange_token", "tradingsymbol", "name", "last_price", "expiry",
                "strike", "tick_size", "lot_size", "instrument_type", "segment", "exchange"]
        rows = [",".join(cols)]
        prices = dict(zip(self._market.tokens.tolist(), self._market.prices().tolist()))
        for i in self.instruments:
            if exchange and i.exchange != exchange.upper():
                continue
            name = f'"{i.name}"' if "," in i.name else i.name
            rows.append(",".join(str(x) for x in (
                i.instrument_token, i.exchange_token, i.tradingsymbol, name,
                prices.get(i.instrument_token, 0.0), i.expiry, i.strike, i.tick_size,
                i.lot_size, i.instrument_type, i.segment, i.exchange)))
        return "\n".join(rows) + "\n"


def _empty_minutes() -> dict[str, np.ndarray]:
    z = np.empty(0)
    return {"start": z.astype(np.int64), "open": z, "high": z, "low": z, "close": z,
            "volume": z, "oi": z}


# ---------------------------------------------------------------------- REST
class _ApiError(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message


def _parse_kite_time(text: str | None, what: str) -> int:
    """Kite's naive ``YYYY-MM-DD[ HH:MM:SS]`` (IST wall clock) -> epoch ns."""
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            naive = dt.datetime.strptime(text or "", fmt)
        except ValueError:
            continue
        return ist_naive_to_epoch_ns(np.array([np.datetime64(naive, "ns")]))[0].item()
    raise _ApiError(400, "InputException", f"invalid {what} date: {text!r}")


def _make_http_server(sim: KiteSimulator) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by design
            pass

        def _reply(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, payload: dict) -> None:
            self._reply(status, json.dumps(payload).encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            try:
                auth = self.headers.get("Authorization", "")
                if auth != f"token {sim.api_key}:{sim.access_token}":
                    raise _ApiError(403, "TokenException",
                                    "Incorrect `api_key` or `access_token`.")
                url = urlsplit(self.path)
                parts = [p for p in url.path.split("/") if p]
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                if parts == ["user", "profile"]:
                    return self._json(200, {"status": "success", "data": _PROFILE})
                if parts[:1] == ["instruments"] and len(parts) <= 2:
                    csv = sim.instruments_csv(parts[1] if len(parts) == 2 else None)
                    return self._reply(200, csv.encode(), "text/csv")
                if parts[:2] == ["instruments", "historical"] and len(parts) == 4:
                    return self._json(200, self._historical(parts[2], parts[3], query))
                raise _ApiError(404, "GeneralException", f"Route not found: {url.path}")
            except _ApiError as err:
                self._json(err.status, {"status": "error", "error_type": err.error_type,
                                        "message": err.message, "data": None})
            except Exception as exc:  # noqa: BLE001 - a bug in the simulator is a 500, not a hang
                self._json(500, {"status": "error", "error_type": "GeneralException",
                                 "message": f"simulator error: {exc}", "data": None})

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            """``POST /session/token`` (the login exchange): checksum = sha256(key + request + secret)."""
            try:
                size = int(self.headers.get("Content-Length") or 0)
                form = {k: v[-1] for k, v in parse_qs(self.rfile.read(size).decode()).items()}
                if urlsplit(self.path).path.rstrip("/") != "/session/token":
                    raise _ApiError(404, "GeneralException", f"Route not found: {self.path}")
                want = hashlib.sha256((sim.api_key + form.get("request_token", "") + sim.api_secret)
                                      .encode()).hexdigest()
                if form.get("api_key") != sim.api_key or not form.get("request_token") \
                        or form.get("checksum") != want:
                    raise _ApiError(403, "TokenException", "Invalid `checksum` or `request_token`.")
                data = {**_PROFILE, "access_token": sim.access_token, "public_token": "sim-public",
                        "refresh_token": "", "login_time": "2026-11-26 09:00:00", "api_key": sim.api_key}
                return self._json(200, {"status": "success", "data": data})
            except _ApiError as err:
                self._json(err.status, {"status": "error", "error_type": err.error_type,
                                        "message": err.message, "data": None})

        def _historical(self, token_s: str, interval: str, query: dict[str, str]) -> dict:
            with sim._lock:
                sim.historical_requests += 1
                sim.historical_request_times.append(time.time())
            if interval not in SPAN_LIMIT_DAYS:
                raise _ApiError(400, "InputException", f"invalid interval: {interval}")
            try:
                token = int(token_s)
            except ValueError:
                raise _ApiError(400, "InputException", f"invalid token: {token_s}") from None
            if token not in sim._by_token:
                raise _ApiError(400, "InputException", f"invalid token: {token}")
            start = _parse_kite_time(query.get("from"), "from")
            end = _parse_kite_time(query.get("to"), "to")
            if end < start:
                raise _ApiError(400, "InputException", "invalid date range: from is after to")
            limit = SPAN_LIMIT_DAYS[interval]
            if end - start > limit * DAY_NS:
                raise _ApiError(400, "InputException", f"interval exceeds max limit: {limit} days")
            candles = sim.historical(token, interval, start, end, oi=query.get("oi") == "1")
            return {"status": "success", "data": {"candles": candles}}

    server = ThreadingHTTPServer((sim.host, sim.http_port), Handler)
    server.daemon_threads = True
    return server


_PROFILE = {
    "user_id": "SIM001", "user_name": "Kite Simulator", "user_shortname": "Simulator",
    "email": "simulator@example.invalid", "user_type": "individual", "broker": "ZERODHA",
    "exchanges": ["NSE", "BSE", "NFO", "CDS", "MCX"], "products": ["CNC", "NRML", "MIS"],
    "order_types": ["MARKET", "LIMIT", "SL", "SL-M"], "avatar_url": None,
    "meta": {"demat_consent": "physical"},
}


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
