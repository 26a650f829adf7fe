"""How the simulator's market moves: each instrument's volatility and turnover, and the day's rhythm.

One model for both halves of the simulated market, so they look alike and join:
- the live random walk (``SimMarket.step``): per step a normal move with the instrument's volatility
  scaled to the step's length and the time of day, volume in lots at the instrument's turnover;
- the minute history before the simulator started (``sim_http.synthetic_minutes``): the same
  volatility and turnover per minute, the path pinned so that the last minute before the start
  closes at the live starting price (history joins live without a jump).

The rhythm is the Indian cash market's usual U shape: a busy first half hour, a quiet midday, a
busier last hour (activity 1.0 at midday). Outside the session (a demo run in the evening) the
walk keeps moving at the midday pace. Nothing here reads a clock or keeps state.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.timeframes import DAY_NS, IST_OFFSET_NS, NS

MINUTE_NS = 60 * NS
SESSIONS = {"MCX": (9 * 60, 23 * 60 + 30), "CDS": (9 * 60, 17 * 60)}  # IST minutes after midnight
DEFAULT_SESSION = (9 * 60 + 15, 15 * 60 + 30)  # NSE, BSE, NFO: 09:15-15:30
# a day's volatility (one standard deviation of the close-to-close move, as a fraction of price)
DAILY_VOL = {"INDICES": 0.008, "EQ": 0.014, "FUT": 0.009, "MCX": 0.016}
# shares (or units) traded per quiet minute, per unit of price: turnover ~ 4e7 rupees a minute
TURNOVER_PER_MINUTE = 4.0e7
FUT_LOTS_PER_MINUTE = {"NFO": 120.0, "MCX": 40.0}


def session(inst: Any) -> tuple[int, int]:
    """The instrument's session as (open, close) in IST minutes after midnight."""
    return SESSIONS.get(inst.exchange, DEFAULT_SESSION)


def activity(minute_of_session: np.ndarray, length: np.ndarray | int = 375) -> np.ndarray:
    """The day's rhythm (1.0 = midday): about 3x in the first minutes, 2x into the close."""
    m = np.asarray(minute_of_session, dtype=np.float64)
    inside = (m >= 0) & (m < length)
    with np.errstate(over="ignore"):
        shape = 1.0 + 2.0 * np.exp(-m / 25.0) + 1.0 * np.exp(-(length - m) / 35.0)
    return np.where(inside, shape, 1.0)


def minute_of_session(ts_ns: np.ndarray, open_minute: np.ndarray | int) -> np.ndarray:
    """Minutes since the IST session open (``open_minute`` minutes after midnight); may be < 0."""
    ist_minute = ((np.asarray(ts_ns, dtype=np.int64) + IST_OFFSET_NS) % DAY_NS) // MINUTE_NS
    return ist_minute - np.asarray(open_minute)


def minute_sigma(inst: Any) -> float:
    """One quiet minute's move (standard deviation, as a fraction of price)."""
    kind = ("INDICES" if inst.is_index else "MCX" if inst.exchange == "MCX"
            else "FUT" if inst.instrument_type == "FUT" else "EQ")
    open_min, close_min = session(inst)
    # a day's variance spread over its minutes by the rhythm (its mean over a session is ~1.25)
    return float(DAILY_VOL[kind] / np.sqrt((close_min - open_min) * 1.25))


def minute_volume(inst: Any) -> float:
    """Units traded in a quiet minute (0 for indices)."""
    if inst.is_index:
        return 0.0
    if inst.instrument_type == "FUT":
        return FUT_LOTS_PER_MINUTE.get(inst.exchange, 60.0) * max(inst.lot_size, 1)
    return TURNOVER_PER_MINUTE / max(inst.last_price, 1.0)


def normal(u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    """Standard normal draws from two uniform [0, 1) arrays (Box-Muller)."""
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


class Rhythm:
    """Per-instrument constants of the live walk (arrays aligned with ``SimMarket.tokens``)."""

    def __init__(self, instruments: list[Any]) -> None:
        hours = np.array([session(i) for i in instruments], dtype=np.int64).reshape(-1, 2)
        self.open_minute, self.length = hours[:, 0], hours[:, 1] - hours[:, 0]
        self.sigma = np.array([minute_sigma(i) for i in instruments])
        self.volume = np.array([minute_volume(i) for i in instruments])

    def step(self, rng: np.random.Generator, now_ns: int, dt_s: float, price: np.ndarray,
             tick: np.ndarray, lot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step of ``dt_s`` seconds at ``now_ns``: (move in ticks, volume traded in units)."""
        n = len(price)
        act = activity(minute_of_session(np.full(n, now_ns), self.open_minute), self.length)
        minutes = max(dt_s, 1e-3) / 60.0
        sd = price * self.sigma * np.sqrt(act * minutes) / tick
        move = np.rint(rng.normal(0.0, 1.0, n) * sd).astype(np.int64)
        expected = self.volume * act * minutes / lot  # lots
        lots = np.maximum(rng.poisson(np.maximum(expected, 0.0) * rng.lognormal(0.0, 0.5, n)), 1)
        return move, np.where(self.volume > 0, lots * lot, 0)
