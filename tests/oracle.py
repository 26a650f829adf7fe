"""The oracle: a per-tick candle aggregator written from README "## Candle conventions" alone.

It shares no code with ``kiteohlc_lab`` (nothing is imported from the package) and is written for
clarity, one tick at a time with dicts. Rule numbers below refer to the README section.

Readings of the text where it leaves room (each one a decision, stated once here):

* A tick bad in several ways is counted once, under the first kind in the README's order
  (bad_price, bad_volume, bad_stamp).
* "2000-01-01" is 00:00 IST of that day (all times of the section are IST).
* Replay jump rule: "the next tick of the tape" is the next tick that is not already bad by price,
  volume or the 2000 floor (those are rejected first, whatever follows). With no running time yet
  (the tape's first tick, or every tick before the first accepted one) the running-time condition
  holds ("counts as a jump"). The tape's last tick, when held, has no next tick: it is rejected only
  when it is more than 7 days after the running time; with no running time at all (a one-tick tape)
  nothing proves it wrong and it is accepted.
* Volume state (rule 4) is touched only by ticks that carry a figure: a tick without volume adds 0
  and neither sets the first baseline nor changes the instrument's day.
* The first tick after a resume that lowers nothing (M = max(M, v)) is not a glitch; on a later day it
  sets M = v, on an earlier day it changes nothing (and the resume stays pending).
* ``late`` counts ticks late for at least one timeframe, whatever the policy (amended ones too);
  ``amended`` counts the (tick, timeframe) folds.
* Amend: "that candle's last tick" is the tick that set its close; the amended tick's oi replaces the
  candle's when present; the tick count grows by one.
* fill_empty: the flat candles carry the previous candle's close as open/high/low/close, volume 0,
  ticks 0, and no oi (rule 3: they have no ticks); they are emitted (closed) when the candle after the
  gap opens.
"""

from __future__ import annotations

import datetime as dt
import math
import re

import pandas as pd

NS = 1_000_000_000
DAY_NS = 86_400 * NS
IST_OFFSET_NS = (5 * 3600 + 30 * 60) * NS  # UTC+05:30, no DST
IST_NAME = "Asia/Kolkata"
FLOOR_2000_NS = int(dt.datetime(2000, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))).timestamp()) * NS
JUMP_NS = 60 * NS
LAST_JUMP_NS = 7 * 86_400 * NS  # the tape's last tick (no next tick)
LIVE_AHEAD_NS = 10 * NS

# rule 2: segment = token & 0xFF
SEGMENT_NAMES = {1: "NSE", 2: "NFO", 3: "CDS", 4: "BSE", 5: "BFO", 6: "BCD", 7: "MCX", 8: "MCXSX",
                 9: "INDICES", 12: "NCO"}
OPEN_0900 = {3, 6, 7, 8, 12}  # CDS, BCD, MCX, MCXSX, NCO
DEFAULT_OPEN_0915_S = 9 * 3600 + 15 * 60
DEFAULT_OPEN_0900_S = 9 * 3600

CANDLE_KEYS = ("token", "tf", "start", "open", "high", "low", "close", "volume", "oi", "ticks", "amended")


def ist_day_start(ts_ns: int) -> int:
    """Epoch ns of 00:00 IST of the IST day holding ts_ns."""
    local = ts_ns + IST_OFFSET_NS
    return (local // DAY_NS) * DAY_NS - IST_OFFSET_NS


def ist_day(ts_ns: int) -> int:
    """An IST day number (days since 1970-01-01 in IST)."""
    return (ts_ns + IST_OFFSET_NS) // DAY_NS


def parse_tf(label: str) -> int:
    """'10s' / '1m' / '7m' / '1h' / '1d' -> length in ns."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhd])\s*", str(label))
    if not m:
        raise ValueError(f"timeframe {label!r}: expected N followed by s, m, h or d")
    n, unit = int(m.group(1)), m.group(2)
    if n <= 0:
        raise ValueError(f"timeframe {label!r}: length must be positive")
    if unit == "d" and n != 1:
        raise ValueError(f"timeframe {label!r}: only 1d (a day) is a day timeframe")
    return n * {"s": 1, "m": 60, "h": 3600, "d": 86_400}[unit] * NS


def parse_hhmm(value: str) -> int:
    """'09:15' or '09:15:30' -> seconds after midnight."""
    parts = [int(p) for p in str(value).split(":")]
    while len(parts) < 3:
        parts.append(0)
    h, m, s = parts[:3]
    return h * 3600 + m * 60 + s


def _isnan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


class Oracle:
    """Reference aggregator: see the module docstring and README "## Candle conventions"."""

    def __init__(self, timeframes: list[str], *, grace: float = 5.0, late_policy: str = "drop",
                 fill_empty: bool = False, session_open: dict[str, str] | None = None, live: bool = False):
        if late_policy not in ("drop", "amend"):
            raise ValueError(f"late_policy {late_policy!r}")
        self.tfs = [(label, parse_tf(label)) for label in timeframes]
        self.grace_ns = int(round(grace * NS))
        self.late_policy = late_policy
        self.fill_empty = fill_empty
        self.live = live
        self.session_open = {str(k).upper(): parse_hhmm(v) for k, v in (session_open or {}).items()}

        self.closed: list[dict] = []
        self.counts: dict[int, dict[str, int]] = {}
        self.late = 0
        self.glitches = 0
        self.amended = 0

        self.clock: int | None = None         # rule 5: latest accepted stamp, and the exchange clock (live)
        self.running: int | None = None       # rule 1 (replay): latest accepted stamp
        self.exchange_now: int | None = None  # rule 6 (live)
        self.held: tuple | None = None        # replay: a suspect tick waiting for the next one

        # rule 4 state per instrument: {"day": int, "M": float} once it has had a figure
        self.vol: dict[int, dict] = {}
        self.resumed: set[int] = set()
        # per (token, tf): {"forming": candle|None, "newest": start|None, "last_closed": candle|None}
        self.series: dict[tuple[int, str], dict] = {}

    # ------------------------------------------------------------------ input
    def feed(self, batch) -> None:
        n = len(batch.token)
        for i in range(n):
            self.tick(int(batch.token[i]), int(batch.ts[i]), float(batch.price[i]),
                      float(batch.volume[i]), float(batch.oi[i]))

    def tick(self, token: int, ts_ns: int, price: float, volume: float = math.nan, oi: float = math.nan,
             now_ns: int | None = None) -> None:
        token, ts_ns = int(token), int(ts_ns)
        price = float(price)
        volume = math.nan if volume is None else float(volume)
        oi = math.nan if oi is None else float(oi)
        if self.live and now_ns is not None:
            self.advance(now_ns)
        # rule 1, the stateless checks
        kind = self._stateless_bad(price, volume, ts_ns)
        if kind is not None:
            self._count(token, kind)
            return
        t = (token, ts_ns, price, volume, oi)
        if self.live:
            if self.exchange_now is not None:
                if ts_ns > self.exchange_now + LIVE_AHEAD_NS or ts_ns < ist_day_start(self.exchange_now):
                    self._count(token, "bad_stamp")
                    return
            self._accept(t)
            return
        # replay: the jump rule needs the next tick
        if self.held is not None:
            h = self.held
            self.held = None
            if self._jumps_past_running(h[1]) and h[1] > ts_ns + JUMP_NS:
                self._count(h[0], "bad_stamp")
            else:
                self._accept(h)
        if self._jumps_past_running(ts_ns):
            self.held = t
        else:
            self._accept(t)

    def advance(self, now_ns: int) -> None:
        now_ns = int(now_ns)
        if self.exchange_now is None or now_ns > self.exchange_now:
            self.exchange_now = now_ns
        self._move_clock(now_ns)

    def resume(self, tokens) -> None:
        for t in tokens:
            self.resumed.add(int(t))

    def end_of_tape(self) -> None:
        """Replay: the held last tick has no next tick (rule 1); the forming candles stay forming."""
        if self.held is not None:
            h = self.held
            self.held = None
            if self.running is not None and h[1] > self.running + LAST_JUMP_NS:
                self._count(h[0], "bad_stamp")
            else:
                self._accept(h)

    def flush(self) -> None:
        self.end_of_tape()
        for key in sorted(self.series):
            s = self.series[key]
            if s["forming"] is not None:
                self._close(key, s["forming"])

    # ------------------------------------------------------------------ output
    def forming(self, token: int, tf: str) -> dict | None:
        s = self.series.get((int(token), tf))
        if s is None or s["forming"] is None:
            return None
        return self._public(s["forming"])

    def frame(self, token: int, tf: str, closed_only: bool = True) -> pd.DataFrame:
        by_start: dict[int, dict] = {}
        for c in self.closed:
            if c["token"] == token and c["tf"] == tf:
                by_start[c["start"]] = c  # the last emitted version wins
        if not closed_only:
            f = self.forming(token, tf)
            if f is not None:
                by_start[f["start"]] = f
        rows = [by_start[k] for k in sorted(by_start)]
        index = pd.DatetimeIndex(pd.to_datetime([c["start"] for c in rows], unit="ns", utc=True),
                                 name="date").tz_convert(IST_NAME)
        return pd.DataFrame({col: [float(c[col]) for c in rows] for col in ("open", "high", "low", "close", "volume")},
                            index=index)

    # ------------------------------------------------------------------ rule 1
    @staticmethod
    def _stateless_bad(price: float, volume: float, ts_ns: int) -> str | None:
        if math.isnan(price) or math.isinf(price) or price <= 0:
            return "bad_price"
        if not math.isnan(volume) and (volume < 0 or math.isinf(volume)):
            return "bad_volume"
        if ts_ns < FLOOR_2000_NS:
            return "bad_stamp"
        return None

    def _jumps_past_running(self, ts_ns: int) -> bool:
        return self.running is None or ts_ns > self.running + JUMP_NS

    def _count(self, token: int, kind: str) -> None:
        d = self.counts.setdefault(token, {})
        d[kind] = d.get(kind, 0) + 1

    # ------------------------------------------------------------------ an accepted tick
    def _accept(self, t: tuple) -> None:
        token, ts, price, volume, oi = t
        if self.running is None or ts > self.running:
            self.running = ts
        self._move_clock(ts)
        inc = self._volume_increase(token, ts, volume)
        is_late = False
        for label, length in self.tfs:
            if self._apply(token, label, length, ts, price, inc, oi):
                is_late = True
        if is_late:
            self.late += 1

    def _move_clock(self, ts: int) -> None:
        if self.clock is not None and ts <= self.clock:
            return
        self.clock = ts
        # rule 5: candles whose end + grace the clock reached are closed
        for key in sorted(self.series):
            s = self.series[key]
            f = s["forming"]
            if f is not None and f["end"] + self.grace_ns <= self.clock:
                self._close(key, f)

    # rule 4
    def _volume_increase(self, token: int, ts: int, v: float) -> float:
        if math.isnan(v):
            return 0.0
        day = ist_day(ts)
        st = self.vol.get(token)
        if st is None:  # the first figure an instrument ever has: baseline
            self.vol[token] = {"day": day, "M": v}
            self.resumed.discard(token)
            return 0.0
        if day < st["day"]:  # an earlier day: adds 0, changes nothing
            return 0.0
        if token in self.resumed:
            self.resumed.discard(token)
            if day > st["day"]:
                st["day"], st["M"] = day, v
            else:
                st["M"] = max(st["M"], v)
            return 0.0
        if day > st["day"]:
            st["day"], st["M"] = day, 0.0
        if v < st["M"]:
            self.glitches += 1
            return 0.0
        inc = v - st["M"]
        st["M"] = v
        return inc

    # rule 2
    def _open_s(self, token: int) -> int:
        seg = token & 0xFF
        name = SEGMENT_NAMES.get(seg)
        if name is not None and name in self.session_open:
            return self.session_open[name]
        return DEFAULT_OPEN_0900_S if seg in OPEN_0900 else DEFAULT_OPEN_0915_S

    def bucket(self, token: int, length: int, ts: int) -> tuple[int, int]:
        """(start, end) in epoch ns of the bucket holding ts."""
        day0 = ist_day_start(ts)
        day1 = day0 + DAY_NS
        if length >= DAY_NS:
            return day0, day1
        origin = day0 + self._open_s(token) * NS
        k = (ts - origin) // length  # floor, so the grid runs before the open too
        grid = origin + k * length
        return max(grid, day0), min(grid + length, day1)

    # rules 3, 5, 7, 8 for one timeframe; returns True when the tick is late there
    def _apply(self, token: int, label: str, length: int, ts: int, price: float, inc: float, oi: float) -> bool:
        key = (token, label)
        s = self.series.setdefault(key, {"forming": None, "newest": None, "last_closed": None})
        start, end = self.bucket(token, length, ts)
        f = s["forming"]
        late = (s["newest"] is not None and start < s["newest"]) or (
            f is None and end + self.grace_ns <= self.clock)
        if late:
            lc = s["last_closed"]
            if self.late_policy == "amend" and lc is not None and lc["start"] == start:
                lc["high"] = max(lc["high"], price)
                lc["low"] = min(lc["low"], price)
                if ts >= lc["last_ts"]:
                    lc["close"] = price
                    lc["last_ts"] = ts
                lc["volume"] += inc
                if not math.isnan(oi):
                    lc["oi"] = oi
                lc["ticks"] += 1
                lc["amended"] = True
                self.amended += 1
                self.closed.append(self._public(lc))
            return True
        if f is not None and f["start"] == start:
            f["high"] = max(f["high"], price)
            f["low"] = min(f["low"], price)
            f["close"] = price
            f["last_ts"] = ts
            f["volume"] += inc
            if not math.isnan(oi):
                f["oi"] = oi
            f["ticks"] += 1
            return False
        # a later bucket: the forming candle (if any) is proven finished
        prev = None
        if f is not None:
            self._close(key, f)
            prev = f
        elif s["last_closed"] is not None:
            prev = s["last_closed"]
        if self.fill_empty and prev is not None and ist_day(prev["start"]) == ist_day(start):
            b = prev["end"]
            while b < start:
                bs, be = self.bucket(token, length, b)
                flat = {"token": token, "tf": label, "start": bs, "end": be, "open": prev["close"],
                        "high": prev["close"], "low": prev["close"], "close": prev["close"], "volume": 0.0,
                        "oi": math.nan, "ticks": 0, "amended": False, "last_ts": bs}
                self._close(key, flat)
                b = be
        s["forming"] = {"token": token, "tf": label, "start": start, "end": end, "open": price, "high": price,
                        "low": price, "close": price, "volume": inc, "oi": oi, "ticks": 1, "amended": False,
                        "last_ts": ts}
        s["newest"] = start
        return False

    def _close(self, key: tuple[int, str], c: dict) -> None:
        s = self.series[key]
        if s["forming"] is c:
            s["forming"] = None
        s["last_closed"] = c
        self.closed.append(self._public(c))

    @staticmethod
    def _public(c: dict) -> dict:
        return {k: c[k] for k in CANDLE_KEYS}
