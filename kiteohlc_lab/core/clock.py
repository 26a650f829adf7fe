"""The exchange clock: the machine's wall clock corrected by its measured offset from the exchange.

Laptops, WSL and VMs without NTP drift by seconds. Kite stamps ticks with the exchange's time in whole
seconds and delivers them 0-3 s later, so on a true clock ``receive - stamp`` is a small positive lag;
on a clock 8 s ahead it is 8 s more. The offset is estimated continuously from those lags: per frame the
smallest lag (the freshest tick), and over the last ``window`` frames their lower quartile, which
ignores stale snapshots (large lags: Kite's cached ticks on subscribe) and the odd bogus stamp (large
negative lags) alike, and follows a clock that is stepped (NTP) within a few frames. Lags beyond an
hour are not clock error and are not used.

>>> clk = ExchangeClock(wall=lambda: 1_000 * NS)
>>> clk.observe(1_000 * NS, np.array([992 * NS]))   # this machine runs 8 s ahead
>>> round(clk.offset_s)
8
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

import numpy as np

from .timeframes import NS

__all__ = ["ExchangeClock"]

_PLAUSIBLE_NS = 3600 * NS  # a larger lag is a stale or bogus stamp, not clock error


class ExchangeClock:
    """Wall clock minus the estimated (machine - exchange) offset.

    Parameters
    ----------
    wall : the machine's clock in epoch ns (``time.time_ns``)
    window : frames the estimate looks back over
    quantile : the low quantile of per-frame lags taken as the offset
    deadband_s : offsets smaller than this are taken as 0 (stamps are whole seconds, lags 0-3 s)
    warn_s : an offset larger than this is reported once, in one line (``message``)
    """

    def __init__(self, wall: Callable[[], int] = time.time_ns, *, window: int = 31,
                 quantile: float = 0.25, deadband_s: float = 1.0, warn_s: float = 2.0,
                 min_frames: int = 5) -> None:
        self._wall = wall
        self._lags: deque[int] = deque(maxlen=int(window))
        self._q = float(quantile)
        self._deadband = int(deadband_s * NS)
        self._warn = int(warn_s * NS)
        self._min_frames = int(min_frames)
        self._offset = 0  # applied offset (ns): 0 inside the deadband
        self._estimate = 0
        self._lock = threading.Lock()
        self.message: str | None = None  # set once when the machine is off by more than warn_s
        self._reported = False
        self._born = int(wall())
        self._seen = False  # a stamped frame was observed

    @property
    def ready(self) -> bool:
        """Whether the offset is known: a stamped frame was seen, or none came for 10 s (ltp/quote
        feeds carry no stamps: the wall clock is all there is). Until then the live clock must not
        move candles on, or a machine that runs ahead would close the first candles early."""
        return self._seen or int(self._wall()) - self._born > 10 * NS

    def observe(self, receive_ns: int, stamps_ns: np.ndarray) -> None:
        """One frame: its receive time and the exchange stamps of its packets that carry one."""
        if not len(stamps_ns):
            return
        lags = int(receive_ns) - np.asarray(stamps_ns, dtype=np.int64)
        lags = lags[np.abs(lags) < _PLAUSIBLE_NS]
        if not len(lags):
            return
        with self._lock:
            self._seen = True
            self._lags.append(int(lags.min()))
            if len(self._lags) < min(self._min_frames, self._lags.maxlen or 1) and self._estimate == 0:
                # the first frames: take what there is (a clock 8 s off must not wait to be corrected)
                est = int(min(self._lags))
            else:
                est = int(np.quantile(np.fromiter(self._lags, np.int64), self._q))
            self._estimate = est
            self._offset = est if abs(est) >= self._deadband else 0
            if (not self._reported and len(self._lags) >= self._min_frames
                    and abs(est) > self._warn):
                self._reported = True
                secs = abs(est) / NS
                way = "ahead of" if est > 0 else "behind"
                self.message = (f"this machine's clock is {secs:.0f} s {way} the exchange; "
                                "candles follow the exchange's time")

    @property
    def offset_ns(self) -> int:
        """Applied offset, machine minus exchange (positive: the machine is ahead)."""
        return self._offset

    @property
    def offset_s(self) -> float:
        """The current estimate in seconds (before the deadband)."""
        return self._estimate / NS

    def now_ns(self) -> int:
        """The exchange's time now, as far as this machine can tell."""
        return int(self._wall()) - self._offset

    def to_exchange(self, local_ns: int) -> int:
        """A local (receive) time in exchange time."""
        return int(local_ns) - self._offset

    def status(self) -> dict:
        return {"clock_offset_s": round(self._estimate / NS, 2), "frames": len(self._lags)}
