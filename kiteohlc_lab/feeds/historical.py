"""Kite historical candles for backfill and gap repair, within Kite's span and rate limits.

Kite reads ``from``/``to`` as IST wall-clock times and kiteconnect strips any zone from a datetime, so
the window is always sent as naive IST strings built here from epoch ns (never ``datetime.now()`` or a
local-zone value: on a UTC machine that is 5.5 hours off). Returned candles are stamped at their start
with ``+0530``; they become epoch ns exactly.
"""

from __future__ import annotations

import collections
import datetime as dt
import re
import threading
import time
from typing import Any, Callable

import numpy as np

from ..core.candles import CandleBatch, combine
from ..core.ticks import to_epoch_ns
from ..core.timeframes import (
    DAY_NS,
    IST_OFFSET_NS,
    NS,
    Timeframe,
    anchor_for_tokens,
    bucket_start,
    is_weekday,
    parse_timeframe,
)
from ..errors import CredentialsError, KiteOHLCError, TimeframeError
from .auth import LOGIN_HINT

# Longest window (days) one request may cover, per interval (figures from Zerodha staff).
SPAN_DAYS = {
    "minute": 60,
    "3minute": 100,
    "5minute": 100,
    "10minute": 100,
    "15minute": 200,
    "30minute": 200,
    "60minute": 400,
    "day": 2000,
}
_INTERVAL_SECONDS = {
    "minute": 60,
    "3minute": 180,
    "5minute": 300,
    "10minute": 600,
    "15minute": 900,
    "30minute": 1800,
    "60minute": 3600,
    "day": 86400,
}
# Kite intervals to rebuild other timeframes from, coarsest first (all aligned to the session open).
_REBUILD_FROM = ("60minute", "30minute", "15minute", "10minute", "5minute", "3minute", "minute")
_DERIVATIVE_SEGMENTS = {2, 3, 5, 6, 7, 8}  # NFO CDS BFO BCD MCX MCXSX: these have open interest
_SPAN = re.compile(r"^\s*(\d+)\s*([dwh])\s*$", re.IGNORECASE)


class HistoricalError(KiteOHLCError):
    """Kite's historical API could not serve a request (permission, input, network)."""


class RateLimiter:
    """At most ``rate`` acquisitions in any window of ``per`` seconds, shared by threads.

    A sliding-window token bucket: up to ``rate`` requests go at once, the next waits until the
    oldest of them is ``per`` seconds old. ``clock``/``sleep`` are injectable for tests.
    """

    def __init__(
        self,
        rate: int = 3,
        per: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate, self.per = int(rate), float(per)
        self.clock, self.sleep = clock, sleep
        self._grants: collections.deque[float] = collections.deque(maxlen=self.rate)
        self._lock = threading.Lock()
        self.waited = 0.0

    def acquire(self) -> float:
        """Block until a request may go; returns the seconds waited."""
        with self._lock:
            now = self.clock()
            at = now
            if len(self._grants) == self.rate:
                at = max(now, self._grants[0] + self.per)
            self._grants.append(at)  # reserve the slot before sleeping: fair between threads
        wait = at - now
        if wait > 0:
            self.waited += wait
            self.sleep(wait)
        return wait


SHARED_LIMITER = RateLimiter(3, 1.0)  # Kite: historical 3 requests/second per API key


def _span_parts(span: str) -> tuple[int, str]:
    m = _SPAN.match(str(span))
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"backfill span {span!r} is not accepted; use Nd, Nw or Nh such as 5d, 2w, 6h")
    return int(m.group(1)), m.group(2).lower()


def parse_span(span: str) -> int:
    """``"5d"``, ``"2w"``, ``"6h"`` -> nanoseconds."""
    n, unit = _span_parts(span)
    return n * {"h": 3600, "d": 86400, "w": 7 * 86400}[unit] * NS


def span_start(span: str, end_ns: int) -> int:
    """Where a backfill of ``span`` ending at ``end_ns`` starts. ``Nw`` is N calendar weeks;
    ``Nd`` and ``Nh`` count weekday time only (IST days; weekends hold no session), so
    ``--backfill 1d`` on a Monday before the open, or on a Sunday, still holds Friday's session.

    >>> ist_string(span_start("1d", 1_764_554_400 * NS))  # Monday 2025-12-01 07:30 IST
    '2025-11-28 07:30:00'
    """
    need = parse_span(span)
    if _span_parts(span)[1] == "w":
        return int(end_ns) - need
    at = int(end_ns)
    while need > 0:
        day = (at + IST_OFFSET_NS - 1) // DAY_NS  # the IST day of the instant just before ``at``
        held = at + IST_OFFSET_NS - day * DAY_NS  # of that day, the part before ``at``
        if is_weekday(day):
            held = min(held, need)
            need -= held
        at -= held  # a weekend day is passed over whole
    return at


def ist_string(ns: int) -> str:
    """Epoch ns -> naive IST wall-clock ``YYYY-MM-DD HH:MM:SS`` (what Kite reads from/to as)."""
    secs = (int(ns) + IST_OFFSET_NS) // NS
    return (dt.datetime(1970, 1, 1) + dt.timedelta(seconds=secs)).strftime("%Y-%m-%d %H:%M:%S")


def _record_ns(value: Any) -> int:
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        # A naive time from Kite is IST wall clock, never the machine's zone.
        return to_epoch_ns(value.replace(tzinfo=dt.timezone.utc)) - IST_OFFSET_NS
    if isinstance(value, str):
        return _record_ns(dt.datetime.fromisoformat(value))
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return _record_ns(dt.datetime(value.year, value.month, value.day))
    return to_epoch_ns(value)


def kite_interval_for(tf: Timeframe) -> tuple[str, bool]:
    """Kite interval to fetch for ``tf`` and whether the result must be re-aggregated."""
    if tf.kite_interval:
        return tf.kite_interval, False
    if tf.seconds < 60 or tf.seconds % 60:
        raise TimeframeError(
            f"timeframe {tf.label!r} cannot be fetched from Kite's historical API: its smallest "
            "interval is 1 minute (sub-minute candles exist only from live ticks)"
        )
    for name in _REBUILD_FROM:
        if tf.seconds % _INTERVAL_SECONDS[name] == 0:
            return name, True
    return "minute", True  # unreachable: minute divides every whole-minute timeframe


def reaggregate(batch: CandleBatch, tf: Timeframe, session_open: dict[str, str] | None = None) -> CandleBatch:
    """Combine finer candles (sorted by start, one or more tokens) into ``tf`` buckets aligned to the
    session open of each token's exchange (09:15 for NSE)."""
    if not len(batch):
        return CandleBatch.empty(tf.label)
    order = np.lexsort((batch.start, batch.token))
    b = batch.select(order)
    anchor = anchor_for_tokens(b.token, session_open)
    return combine(b, tf.label, bucket_start(b.start, tf, anchor))


class HistoricalClient:
    """Historical candles from ``KiteConnect.historical_data`` as ``CandleBatch``.

    Parameters
    ----------
    kite : kiteconnect.KiteConnect
    limiter : RateLimiter, default the process-wide 3 requests/second limiter
    now : callable returning epoch ns, the wall clock deciding which candles are closed (tests)
    retries : attempts on network errors and HTTP 429 before giving up

    Example
    -------
    >>> hc = HistoricalClient(KiteConnect(key, access_token=token))      # doctest: +SKIP
    >>> hc.backfill(256265, "5m", "5d").to_frame()                       # doctest: +SKIP
    """

    def __init__(
        self,
        kite: Any,
        *,
        limiter: RateLimiter | None = None,
        now: Callable[[], int] = time.time_ns,
        retries: int = 3,
        session_open: dict[str, str] | None = None,
    ) -> None:
        self.kite = kite
        self.limiter = limiter or SHARED_LIMITER
        self.now = now
        self.retries = retries
        self.session_open = session_open
        self.requests = 0

    def __repr__(self) -> str:
        return f"HistoricalClient(root={getattr(self.kite, 'root', None)!r}, requests={self.requests})"

    def plan(self, interval: str, start_ns: int, end_ns: int) -> list[tuple[int, int]]:
        """Split ``[start_ns, end_ns)`` into request windows within Kite's span for ``interval``."""
        span = SPAN_DAYS[interval] * DAY_NS
        out = []
        a = int(start_ns)
        while a < end_ns:
            b = min(a + span, int(end_ns))
            out.append((a, b))
            a = b
        return out

    def fetch(
        self,
        token: int,
        tf: "str | Timeframe",
        start_ns: int,
        end_ns: int,
        progress: Callable[[int, int], None] | None = None,
        oi: bool | None = None,
    ) -> CandleBatch:
        """Closed candles of ``token`` whose start is in ``[start_ns, end_ns)``.

        ``tf`` is a timeframe label (``5m``) or Kite interval name (``5minute``). Timeframes Kite has
        no interval for (``2m``, ``20m``, ``2h``) are rebuilt from a finer Kite interval aligned to the
        session open; sub-minute ones raise ``TimeframeError``. ``progress(done, total)`` is called
        after each request. Raises ``CredentialsError`` on a rejected token and ``HistoricalError``
        on other API failures.
        """
        tfo = parse_timeframe(tf)
        interval, rebuild = kite_interval_for(tfo)
        token = int(token)
        if oi is None:
            oi = (token & 0xFF) in _DERIVATIVE_SEGMENTS
        # Widen to whole target buckets so a rebuilt candle is never built from part of its minutes.
        anchor = int(anchor_for_tokens(np.array([token]), self.session_open)[0])
        lo = int(bucket_start(np.array([start_ns]), tfo, anchor)[0])
        windows = self.plan(interval, lo, int(end_ns))
        parts: list[CandleBatch] = []
        for i, (a, b) in enumerate(windows):
            parts.append(self._request(token, interval, a, b, oi))
            if progress is not None:
                progress(i + 1, len(windows))
        fine = CandleBatch.concat(parts) if parts else CandleBatch.empty(parse_timeframe(interval).label)
        out = reaggregate(fine, tfo, self.session_open) if rebuild else _dedupe(fine, tfo.label)
        # A candle is closed once its full length has passed (the 15:15 1h candle is final at 16:15).
        ends = out.start + tfo.ns
        keep = (out.start >= start_ns) & (out.start < end_ns) & (ends <= self.now())
        return out.select(keep)

    def backfill(
        self,
        token: int,
        tf: "str | Timeframe",
        span: str = "5d",
        progress: Callable[[int, int], None] | None = None,
        end_ns: int | None = None,
    ) -> CandleBatch:
        """Closed candles of the last ``span`` (``5d``, ``2w``, ``6h``; days and hours count
        weekdays only, ``span_start``) up to ``end_ns`` (default now)."""
        end = self.now() if end_ns is None else int(end_ns)
        return self.fetch(token, tf, span_start(span, end), end, progress=progress)

    def _request(self, token: int, interval: str, a: int, b: int, oi: bool) -> CandleBatch:
        from kiteconnect import exceptions as kex

        # Kite's `to` is inclusive: stop one second before the next window starts.
        frm, to = ist_string(a), ist_string(max(a, b - NS))
        delay = 0.5
        for attempt in range(self.retries):
            self.limiter.acquire()
            self.requests += 1
            try:
                rows = self.kite.historical_data(token, frm, to, interval, oi=oi)
                break
            except kex.TokenException:
                raise CredentialsError(
                    "Kite rejected the access token (HTTP 403): it may have expired (tokens expire "
                    f"daily around 06:00 IST); {LOGIN_HINT}"
                ) from None
            except kex.PermissionException as exc:
                raise HistoricalError(f"historical data not available for {token}: {exc}") from None
            except kex.InputException as exc:
                raise HistoricalError(f"Kite refused the historical request for {token} {interval} "
                                      f"{frm}..{to}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - network errors, 429, 5xx: retry then give up
                if attempt + 1 >= self.retries:
                    raise HistoricalError(
                        f"historical request for {token} {interval} {frm}..{to} failed: "
                        f"{type(exc).__name__}: {exc}"
                    ) from None
                time.sleep(delay)
                delay *= 2
        return _to_batch(token, parse_timeframe(interval).label, rows)


def _to_batch(token: int, label: str, rows: list[dict]) -> CandleBatch:
    n = len(rows)
    start = np.empty(n, np.int64)
    cols = np.full((6, n), np.nan)
    for i, r in enumerate(rows):
        start[i] = _record_ns(r["date"])
        cols[0, i] = r["open"]
        cols[1, i] = r["high"]
        cols[2, i] = r["low"]
        cols[3, i] = r["close"]
        cols[4, i] = r["volume"]
        if r.get("oi") is not None:
            cols[5, i] = r["oi"]
    return CandleBatch(
        label, np.full(n, token, np.int64), start, *cols, np.zeros(n, np.int64), True
    )


def _dedupe(batch: CandleBatch, label: str) -> CandleBatch:
    """Sort by start and drop candles repeated at window edges."""
    if not len(batch):
        return CandleBatch.empty(label)
    order = np.lexsort((batch.start, batch.token))
    b = batch.select(order)
    keep = np.ones(len(b), bool)
    keep[1:] = (b.start[1:] != b.start[:-1]) | (b.token[1:] != b.token[:-1])
    out = b.select(keep)
    out.tf = label
    return out
