"""The simulator's market: instruments, the seeded random walk (or tape playback) and the tick logs.

``KiteSimulator`` (``feeds.simulator``) owns one ``SimMarket`` and one ``TickLogs``; nothing here
reads a clock (the simulator passes its own time in, so tests that shift ``feeds.simulator.time``
move the market too) and nothing here locks (the simulator calls ``TickLogs`` under its lock).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core.ticks import TickBatch, ist_naive_to_epoch_ns
from ..core.timeframes import DAY_NS, IST_OFFSET_NS, NS
from ..errors import TapeError
from .sim_rhythm import Rhythm

MINUTE_NS = 60 * NS
# the tick logs (market(), sent()) keep this many ticks each, a batch counting LOG_BATCH_COST more
# (its arrays): 2 million = 10 instruments every 50 ms for ~3 hours; about 170 MB at most (72 bytes
# a tick with the book, and the sent log's kind and mode)
LOG_TICKS = 2_000_000
LOG_BATCH_COST = 32


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


def instrument_for_token(token: int) -> SimInstrument:
    """A placeholder instrument for a tape token the simulator does not know."""
    seg = token & 0xFF
    exchange = {2: "NFO", 3: "CDS", 4: "BSE", 5: "BFO", 6: "BCD", 7: "MCX", 9: "NSE"}.get(seg, "NSE")
    segment = "INDICES" if seg == 9 else exchange
    return SimInstrument(token, f"TOKEN{token}", f"TOKEN{token}", exchange, segment, "EQ", 100.0)


def hash_uniform(*keys: Any) -> np.ndarray:
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


class SimMarket:
    """Seeded random walk (``feeds.sim_rhythm``: volatility, turnover, the day's rhythm) or tape
    playback, producing one TickBatch per step."""

    def __init__(self, instruments: list[SimInstrument], seed: int, tape: pd.DataFrame | None,
                 speed: float) -> None:
        self.instruments = instruments
        self.tokens = np.array([i.instrument_token for i in instruments], dtype=np.int64)
        self.tick = np.array([i.tick_size or 0.05 for i in instruments])
        self.lot = np.array([max(i.lot_size, 1) for i in instruments], dtype=np.int64)
        self.is_index = np.array([i.is_index for i in instruments])
        self.has_oi = np.array([i.has_oi for i in instruments])
        self.rng = np.random.default_rng(seed)
        self.rhythm = Rhythm(instruments)  # volatility, turnover and the day's rhythm per instrument
        self.last_wall: float | None = None
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

    def step(self, now_s: int, wall: float) -> TickBatch:
        """The ticks of the step at ``now_s`` (epoch seconds); ``wall`` (epoch seconds, the
        simulator's clock) paces a tape."""
        if self.tape is not None:
            return self._tape_step(now_s, wall)
        day = (now_s * NS + IST_OFFSET_NS) // DAY_NS
        if day != self.day:  # a new IST trading day: volume restarts, yesterday's close is kept
            self.day = day
            self.cum_volume[:] = 0
            self.prev_close = self.prices()
            self.new_day = True
        n = len(self.tokens)
        dt_s = 1.0 if self.last_wall is None else min(max(wall - self.last_wall, 1e-3), 60.0)
        self.last_wall = wall
        move, traded = self.rhythm.step(self.rng, now_s * NS, dt_s, self.prices(), self.tick, self.lot)
        self.price_ticks = np.maximum(self.price_ticks + move, 1)
        self.cum_volume += traded
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
            *self.book(np.arange(n), price, now_s),
        )

    def book(self, idx: np.ndarray, price: np.ndarray, now_s: int) -> tuple[np.ndarray, ...]:
        """The top of the book (bid, ask, bid_qty, ask_qty) beside ``price`` of the instruments at
        ``idx``: the best bid one or two ticks below the price, the ask one or two above, each for
        1 to 40 lots; NaN for indices (no depth). A pure function of (token, second, price): no
        draw from the market's generator, so the walk is the same with or without it."""
        tick = self.tick[idx]
        u = hash_uniform(self.tokens[idx], now_s, np.rint(price / tick).astype(np.int64),
                         np.arange(4)[:, None])
        pt = np.rint(price / tick)
        bid_t = pt - 1 - (u[0] < 0.3)
        bid = np.where(bid_t > 0, np.round(bid_t * tick, 6), np.nan)  # no bid at or below 0
        ask = np.round((pt + 1 + (u[1] < 0.3)) * tick, 6)
        lots = self.lot[idx]
        bid_qty = np.where(bid_t > 0, (1 + np.floor(u[2] * 40)) * lots, 0.0)
        ask_qty = (1 + np.floor(u[3] * 40)) * lots
        index = self.is_index[idx]
        return tuple(np.where(index, np.nan, x) for x in (bid, ask, bid_qty, ask_qty))

    def _tape_step(self, now_s: int, wall: float) -> TickBatch:
        tape = self.tape
        assert tape is not None
        if self.tape_wall0 is None:
            self.tape_wall0 = wall
        due = tape["ts"].iloc[0] + int((wall - self.tape_wall0) * self.speed * NS)
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
                         np.where(self.is_index[idx], np.nan, vol), np.where(self.has_oi[idx], oi, np.nan),
                         *self.book(idx, price, now_s))


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


class TickLogs:
    """The bounded tick logs: every tick the market generated, and every tick sent (with its kind,
    the clients' modes, the injected packets' records and each instrument's recent (price, volume)).

    Each log keeps at most ``max_ticks`` (a batch counting ``LOG_BATCH_COST`` more for its arrays);
    the oldest batches go first. Not locked: the simulator calls every method under its lock.
    """

    def __init__(self, max_ticks: int) -> None:
        self.max_ticks = max(1, int(max_ticks))
        self.market_cost = 0
        self.sent_cost = 0
        self.market_dropped = 0  # ticks generated that fell out of market()
        self.sent_offset = 0  # ticks sent that fell out of sent(): injected()[i]["index"] - this
        self.window_ns = 0  # minutes before this start hold ticks no longer kept (history: none)
        self.market_log: list[TickBatch] = []
        self.sent_log: list[TickBatch] = []
        self.sent_kind: list[np.ndarray] = []  # per logged batch: "" or the injected kind, per tick
        self.sent_mode: list[np.ndarray] = []  # per logged batch: the client mode(s), per tick
        self.frames = 0  # broadcasts that carried ticks
        self.sent_n = 0  # ticks in the sent log
        self.injected: list[dict[str, Any]] = []  # what inject() put on the wire
        self.recent: dict[int, list[tuple[float, float]]] = {}  # token -> (price, volume) sent

    def add_market(self, batch: TickBatch) -> None:
        """Log a batch the market generated; drop the oldest past the bound."""
        self.market_log.append(batch)
        self.market_cost += len(batch) + LOG_BATCH_COST
        while self.market_cost > self.max_ticks and len(self.market_log) > 1:
            old = self.market_log.pop(0)
            self.market_cost -= len(old) + LOG_BATCH_COST
            self.market_dropped += len(old)
            # the minute of the oldest tick kept may have lost ticks: history starts after it
            self.window_ns = (int(self.market_log[0].ts.min()) // MINUTE_NS + 1) * MINUTE_NS

    def add_sent(self, batch: TickBatch, kinds: np.ndarray, delivered: np.ndarray,
                 modes: list[set[str]]) -> None:
        """Log the ticks of a broadcast that reached a client (``delivered``), with their kinds
        ("" or the injected kind) and the modes of the clients they went to."""
        base = self.sent_n
        idx = np.flatnonzero(delivered)
        for pos, i in enumerate(idx.tolist()):
            t = int(batch.token[i])
            if kinds[i]:
                self.injected.append({
                    "kind": kinds[i], "token": t, "ts": int(batch.ts[i]),
                    "price": float(batch.price[i]), "volume": float(batch.volume[i]),
                    "oi": float(batch.oi[i]), "frame": self.frames, "index": base + pos})
            else:
                recent = self.recent.setdefault(t, [])
                recent.append((float(batch.price[i]), float(batch.volume[i])))
                del recent[:-64]
        self.sent_log.append(batch.take(delivered))
        self.sent_kind.append(kinds[delivered])
        self.sent_mode.append(np.array([",".join(sorted(modes[i])) for i in idx.tolist()],
                                       dtype=object))
        self.frames += 1
        self.sent_n += len(idx)
        self.sent_cost += len(idx) + LOG_BATCH_COST
        while self.sent_cost > self.max_ticks and len(self.sent_log) > 1:
            old = self.sent_log.pop(0)
            self.sent_kind.pop(0)
            self.sent_mode.pop(0)
            self.sent_cost -= len(old) + LOG_BATCH_COST
            self.sent_offset += len(old)

    def sent(self, injected: bool = True) -> TickBatch:
        if injected:
            return TickBatch.concat(self.sent_log)
        return TickBatch.concat([b.take(k == "") for b, k in zip(self.sent_log, self.sent_kind)])

    def sent_parts(self) -> tuple[list[TickBatch], list[np.ndarray], list[np.ndarray]]:
        """Copies of the sent log's lists (batches, kinds, modes), for ``sent_frame``."""
        return list(self.sent_log), list(self.sent_kind), list(self.sent_mode)


def sent_frame(batches: list[TickBatch], kinds: list[np.ndarray], modes: list[np.ndarray]) -> pd.DataFrame:
    """The sent log as one frame (``KiteSimulator.sent_all``)."""
    b = TickBatch.concat(batches)
    frame = np.concatenate([np.full(len(x), i, np.int64) for i, x in enumerate(batches)]) \
        if batches else np.empty(0, np.int64)
    bid, ask, bid_qty, ask_qty = b.book()
    return pd.DataFrame({
        "token": b.token, "ts": b.ts, "price": b.price, "volume": b.volume, "oi": b.oi,
        "bid": bid, "ask": ask, "bid_qty": bid_qty, "ask_qty": ask_qty,
        "kind": np.concatenate(kinds) if kinds else np.empty(0, object),
        "mode": np.concatenate(modes) if modes else np.empty(0, object),
        "frame": frame,
    })
