import numpy as np
import pandas as pd
import pytest

from kiteohlc_lab.core.timeframes import (
    IST,
    anchor_for_tokens,
    bucket_start,
    parse_timeframe,
)
from kiteohlc_lab.errors import TimeframeError

NSE_TOKEN = 738561  # & 0xFF == 1 (NSE)
MCX_TOKEN = 0x1234507  # & 0xFF == 7 (MCX)


@pytest.mark.parametrize(
    "text,label,seconds",
    [("10s", "10s", 10), ("1m", "1m", 60), ("5m", "5m", 300), ("15m", "15m", 900), ("1h", "1h", 3600),
     ("1d", "1d", 86400), ("minute", "1m", 60), ("5minute", "5m", 300), ("60minute", "1h", 3600),
     ("day", "1d", 86400), ("60m", "1h", 3600), (" 3MIN ", "3m", 180), ("90s", "90s", 90)],
)
def test_grammar_accepts(text, label, seconds):
    tf = parse_timeframe(text)
    assert (tf.label, tf.seconds) == (label, seconds)


@pytest.mark.parametrize("bad", ["7x", "0m", "-5m", "", "m5", "2d", "1.5m", None])
def test_grammar_rejects_with_what_is_accepted(bad):
    with pytest.raises(TimeframeError) as exc:
        parse_timeframe(bad)
    msg = str(exc.value)
    assert "\n" not in msg
    assert "1m" in msg and "5minute" in msg


def ist(s: str) -> int:
    return pd.Timestamp(s, tz=IST).value


def starts(times: list[str], tf: str, token: int = NSE_TOKEN, fmt: str = "%m-%d %H:%M") -> list[str]:
    ts = np.array([ist(t) for t in times])
    b = bucket_start(ts, parse_timeframe(tf), anchor_for_tokens(np.full(len(ts), token)))
    return [pd.Timestamp(x, tz="UTC").tz_convert(IST).strftime(fmt) for x in b]


def test_fifteen_minute_candles_align_to_0915():
    got = starts(["2026-11-25 09:15:00", "2026-11-25 09:29:59", "2026-11-25 09:30:00", "2026-11-25 15:29:59"], "15m")
    assert got == ["11-25 09:15", "11-25 09:15", "11-25 09:30", "11-25 15:15"]


def test_hour_candles_start_0915_1015_and_last_is_1515():
    got = starts(["2026-11-25 09:15:00", "2026-11-25 10:14:59", "2026-11-25 10:15:00", "2026-11-25 15:29:00"], "1h")
    assert got == ["11-25 09:15", "11-25 09:15", "11-25 10:15", "11-25 15:15"]


def test_preopen_tick_is_kept_in_the_bucket_before_the_open():
    assert starts(["2026-11-25 09:05:00"], "1h") == ["11-25 08:15"]
    assert starts(["2026-11-25 09:14:59"], "5m") == ["11-25 09:10"]


def test_day_candle_is_dated_midnight_ist():
    assert starts(["2026-11-25 09:15:00", "2026-11-25 23:59:59", "2026-11-26 00:00:00"], "1d") == [
        "11-25 00:00", "11-25 00:00", "11-26 00:00"]


def test_mcx_anchors_at_0900():
    assert starts(["2026-11-25 09:00:00", "2026-11-25 09:59:59", "2026-11-25 23:10:00"], "1h", MCX_TOKEN) == [
        "11-25 09:00", "11-25 09:00", "11-25 23:00"]


def test_session_open_is_configurable_per_exchange():
    ts = np.array([ist("2026-11-25 10:00:00")])
    a = anchor_for_tokens([NSE_TOKEN], {"NSE": "09:00"})
    b = bucket_start(ts, parse_timeframe("1h"), a)
    assert pd.Timestamp(b[0], tz="UTC").tz_convert(IST).strftime("%H:%M") == "10:00"


def test_ten_second_buckets():
    got = starts(["2026-11-25 09:15:09", "2026-11-25 09:15:10"], "10s", fmt="%H:%M:%S")
    assert got == ["09:15:00", "09:15:10"]
