"""HistoricalClient: span splitting, the rate limiter, IST windows, re-aggregation, errors."""

from __future__ import annotations

import datetime as dt
import numpy as np
import pytest
from kiteconnect import KiteConnect

from kiteohlc_lab.core.timeframes import DAY_NS, IST_OFFSET_NS, NS
from kiteohlc_lab.errors import CredentialsError, TimeframeError
from kiteohlc_lab.feeds.historical import (
    HistoricalClient,
    RateLimiter,
    SPAN_DAYS,
    ist_string,
    parse_span,
    span_start,
)
from kiteohlc_lab.feeds.simulator import KiteSimulator

RELIANCE, NIFTYFUT = 738561, 13238786
MINUTE = 60 * NS
# Monday 2025-01-06 00:00 IST, as epoch ns
MON = 1736101800 * NS
OPEN = MON + (9 * 3600 + 15 * 60) * NS  # 09:15 IST


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


@pytest.fixture(scope="module")
def sim():
    with KiteSimulator(tick_interval=1.0) as s:
        yield s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def client(sim, clock) -> HistoricalClient:
    kite = KiteConnect(sim.api_key, access_token=sim.access_token, root=sim.api_url)
    return HistoricalClient(kite, limiter=RateLimiter(3, 1.0, clock.now, clock.sleep))


def test_rate_limiter_three_per_second(clock: FakeClock) -> None:
    lim = RateLimiter(3, 1.0, clock.now, clock.sleep)
    grants = []
    for _ in range(10):
        lim.acquire()
        grants.append(clock.t)
    assert grants == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    g = np.array(grants)
    assert max(((g >= t) & (g < t + 1)).sum() for t in g) == 3
    clock.t += 10  # idle time refills the bucket
    assert lim.acquire() == 0


def test_ist_strings() -> None:
    assert ist_string(OPEN) == "2025-01-06 09:15:00"
    assert ist_string(0) == "1970-01-01 05:30:00"
    assert parse_span("5d") == 5 * DAY_NS and parse_span("2w") == 14 * DAY_NS
    assert parse_span("6h") == 6 * 3600 * NS
    with pytest.raises(ValueError, match="Nd, Nw or Nh"):
        parse_span("5x")


def test_backfill_days_and_hours_count_weekdays_so_a_monday_morning_holds_friday() -> None:
    # written from the rule, not the code: walk back minute by minute, counting only minutes
    # whose IST date is Monday..Friday, until the span's minutes are counted
    def by_minutes(span_min: int, end_ns: int) -> int:
        at, left = end_ns, span_min
        while left:
            at -= 60 * NS
            ist = dt.datetime.fromtimestamp(at / NS, dt.timezone(dt.timedelta(hours=5, minutes=30)))
            left -= ist.weekday() < 5
        return at

    mon = OPEN - 2 * 3600 * NS + 7 * DAY_NS  # 2025-01-13 07:15 IST, before the open
    assert ist_string(span_start("1d", mon)) == "2025-01-10 07:15:00"  # Friday, its session whole
    sun = mon - DAY_NS
    assert ist_string(span_start("1d", sun)) == "2025-01-10 00:00:00"  # all of Friday
    for end in (mon, sun, OPEN + 3 * DAY_NS + 5 * 60 * NS, OPEN + 4 * DAY_NS + 7 * 3600 * NS):
        for span, minutes in (("1d", 1440), ("3d", 3 * 1440), ("6h", 360), ("30h", 1800)):
            assert span_start(span, end) == by_minutes(minutes, end), (span, ist_string(end))
        assert span_start("2w", end) == end - 14 * DAY_NS  # weeks are calendar weeks
    with pytest.raises(ValueError, match="Nd, Nw or Nh"):
        span_start("0d", mon)


@pytest.mark.parametrize(
    "interval, days, requests",
    [("minute", 61, 2), ("5minute", 250, 3), ("60minute", 401, 2), ("day", 4100, 3)],
)
def test_span_splitting(sim, client, clock, interval, days, requests) -> None:
    before = sim.historical_requests
    start = MON - days * DAY_NS
    calls = []
    out = client.fetch(RELIANCE, interval, start, MON, progress=lambda d, t: calls.append((d, t)))
    assert sim.historical_requests - before == requests == len(client.plan(interval, start, MON))
    assert calls == [(i + 1, requests) for i in range(requests)]
    for a, b in client.plan(interval, start, MON):
        assert b - a <= SPAN_DAYS[interval] * DAY_NS
    assert len(out) and np.all(np.diff(out.start) > 0)  # sorted, no duplicate at window edges
    assert out.start[0] >= start and out.start[-1] < MON


def test_requests_are_rate_limited(sim, client, clock) -> None:
    for _ in range(7):
        client.fetch(RELIANCE, "minute", OPEN, OPEN + 5 * MINUTE)
    assert clock.t == pytest.approx(2.0)  # 7 requests: 3 at t=0, 3 at t=1, 1 at t=2


def test_window_is_ist_and_candles_start_at_0915(client) -> None:
    c = client.fetch(RELIANCE, "1m", OPEN, OPEN + 5 * MINUTE)
    assert c.tf == "1m" and c.start.tolist() == [OPEN + i * MINUTE for i in range(5)]
    assert str(c.to_frame().index[0]) == "2025-01-06 09:15:00+05:30"
    h = client.fetch(RELIANCE, "60minute", MON, MON + DAY_NS)
    assert h.tf == "1h" and h.start[0] == OPEN and h.start[-1] == OPEN + 6 * 3600 * NS
    d = client.fetch(RELIANCE, "day", MON, MON + DAY_NS)
    assert d.tf == "1d" and d.start.tolist() == [MON]


def _by_hand(m, size: int) -> dict:
    """Reference re-aggregation of minute candles starting at 09:15."""
    k = (m.start - OPEN) // (size * MINUTE)
    out = {"start": [], "open": [], "high": [], "low": [], "close": [], "volume": []}
    for key in np.unique(k):
        s = k == key
        out["start"].append(OPEN + int(key) * size * MINUTE)
        out["open"].append(m.open[s][0])
        out["high"].append(m.high[s].max())
        out["low"].append(m.low[s].min())
        out["close"].append(m.close[s][-1])
        out["volume"].append(m.volume[s].sum())
    return out


@pytest.mark.parametrize("tf, size", [("2m", 2), ("20m", 20), ("45m", 45), ("2h", 120)])
def test_reaggregated_timeframes(client, tf, size) -> None:
    end = MON + (15 * 3600 + 30 * 60) * NS
    minutes = client.fetch(RELIANCE, "1m", OPEN, end)
    got = client.fetch(RELIANCE, tf, OPEN, end)
    ref = _by_hand(minutes, size)
    assert got.tf == tf and got.start.tolist() == ref["start"]
    for col in ("open", "high", "low", "close", "volume"):
        np.testing.assert_allclose(getattr(got, col), ref[col])


def test_sub_minute_cannot_be_fetched(client) -> None:
    with pytest.raises(TimeframeError, match="1 minute"):
        client.fetch(RELIANCE, "10s", OPEN, OPEN + MINUTE)


def test_oi_when_present(client) -> None:
    fut = client.fetch(NIFTYFUT, "1m", OPEN, OPEN + 3 * MINUTE)
    eq = client.fetch(RELIANCE, "1m", OPEN, OPEN + 3 * MINUTE)
    assert len(fut) == 3 and not np.isnan(fut.oi).any() and fut.oi[0] > 0
    assert np.isnan(eq.oi).all()


def test_only_closed_candles(sim, clock) -> None:
    kite = KiteConnect(sim.api_key, access_token=sim.access_token, root=sim.api_url)
    now = OPEN + 3 * MINUTE + 30 * NS  # 09:18:30: the 09:18 candle is still forming
    hc = HistoricalClient(kite, limiter=RateLimiter(3, 1.0, clock.now, clock.sleep), now=lambda: now)
    c = hc.fetch(RELIANCE, "1m", OPEN, OPEN + 10 * MINUTE)
    assert c.start.tolist() == [OPEN, OPEN + MINUTE, OPEN + 2 * MINUTE]


def test_backfill_span_and_progress(client) -> None:
    calls = []
    end = MON + 5 * DAY_NS  # Saturday 00:00 IST: the whole Mon-Fri week
    c = client.backfill(RELIANCE, "5m", "5d", progress=lambda d, t: calls.append((d, t)), end_ns=end)
    assert calls == [(1, 1)]
    assert len(c) == 5 * 75 and c.start[0] == OPEN
    assert np.all((c.start + IST_OFFSET_NS) % (5 * MINUTE) == (OPEN + IST_OFFSET_NS) % (5 * MINUTE))


def test_rejected_token_is_credentials_error(sim, clock) -> None:
    kite = KiteConnect(sim.api_key, access_token="stale-token-1", root=sim.api_url)
    hc = HistoricalClient(kite, limiter=RateLimiter(3, 1.0, clock.now, clock.sleep))
    with pytest.raises(CredentialsError, match="HTTP 403") as e:
        hc.fetch(RELIANCE, "1m", OPEN, OPEN + MINUTE)
    assert "stale-token-1" not in str(e.value)
