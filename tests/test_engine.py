"""Engine rules, one test per rule, and the property tests against the oracle (tests/oracle.py)."""

from __future__ import annotations

import os

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiteohlc_lab.core.engine import Engine
from kiteohlc_lab.core.ticks import TickBatch
from kiteohlc_lab.core.timeframes import IST, NS

from strategies import TFS as ORACLE_TFS, in_order_tapes, live_frames, messy_tapes, to_batch
from oracle import Oracle
from test_oracle_rules import assert_same, run_oracle, run_package

EQ, IDX, FUT, MCX = 738561, 256265, 12345602, 0x1234507
S = NS


def ist(s: str) -> int:
    return pd.Timestamp(s, tz=IST).value


def batch(rows):
    """rows: (token, 'HH:MM:SS' or epoch ns, price, volume=nan, oi=nan)"""
    tok, ts, price, vol, oi = [], [], [], [], []
    for r in rows:
        t, when, p, *rest = r
        tok.append(t)
        ts.append(ist(f"2026-11-25 {when}") if isinstance(when, str) else when)
        price.append(p)
        vol.append(rest[0] if len(rest) > 0 else math.nan)
        oi.append(rest[1] if len(rest) > 1 else math.nan)
    return TickBatch(tok, ts, price, vol, oi)


def closed(out, tf=None, token=None):
    rows = [c for b in out for c in b if (tf is None or c.tf == tf) and (token is None or c.token == token)]
    return sorted(rows, key=lambda c: (c.token, c.tf, c.start))


def hhmm(c):
    return c.date.strftime("%H:%M")


def test_ohlc_in_arrival_order_and_candle_stamped_with_start():
    e = Engine(["1m"])
    out = e.process(batch([(EQ, "09:15:01", 100, 10), (EQ, "09:15:20", 103, 20), (EQ, "09:15:40", 99, 35),
                           (EQ, "09:15:59", 101, 40), (EQ, "09:16:00", 102, 41)]))
    [c] = closed(out)
    assert (hhmm(c), c.open, c.high, c.low, c.close) == ("09:15", 100, 103, 99, 101)
    assert c.date.tzinfo is not None and str(c.date.tz) == IST


def test_volume_is_delta_of_cumulative_with_previous_candle_baseline():
    e = Engine(["1m"])
    out = e.process(batch([(EQ, "09:15:01", 100, 1000), (EQ, "09:15:30", 100, 1500),
                           (EQ, "09:16:10", 100, 1700), (EQ, "09:16:50", 100, 2600), (EQ, "09:17:00", 100, 2650)]))
    c1, c2 = closed(out)
    # the first tick a stream sees sets the baseline; afterwards volume = cum(last) - cum(prev candle's last)
    assert c1.volume == 500
    assert c2.volume == 1100


def test_volume_resets_at_day_change_and_never_negative():
    e = Engine(["1m"])
    out = e.process(batch([(EQ, "09:15:01", 100, 1000), (EQ, "15:29:30", 100, 90000),
                           (EQ, ist("2026-11-26 09:15:05"), 100, 300), (EQ, ist("2026-11-26 09:16:05"), 100, 450)]))
    cs = closed(out)
    assert cs[-1].date.strftime("%m-%d %H:%M") == "11-26 09:15"
    assert cs[-1].volume == 300  # baseline 0 on a new trading day
    assert all(c.volume >= 0 for c in cs)


def test_volume_drop_within_the_day_is_a_glitch_not_a_reset():
    # a 0, a stale snapshot after a reconnect: the day's running maximum stays, nothing is added
    e = Engine(["1m"])
    out = e.process(batch([(EQ, "09:15:01", 100, 5000), (EQ, "09:15:30", 100, 5100),
                           (EQ, "09:16:01", 100, 40), (EQ, "09:16:30", 100, 0), (EQ, "09:16:40", 100, 5130),
                           (EQ, "09:17:00", 100, 5140)]))
    c1, c2 = closed(out)
    assert (c1.volume, c2.volume) == (100, 30)
    assert e.stats["volume_glitches"] == 2
    assert e.glitches() == {EQ: 2}


def test_first_tick_after_resume_adds_no_volume():
    e = Engine(["1m"])
    e.process(batch([(EQ, "09:15:01", 100, 5000), (EQ, "09:15:30", 100, 5100)]))
    e.resume([EQ])  # e.g. a restart at 10:00: what traded in between is unknown
    out = e.process(batch([(EQ, "10:00:01", 100, 90_000), (EQ, "10:00:30", 100, 90_050)]))
    out += e.flush()
    cs = closed(out)
    assert [c.volume for c in cs] == [100, 50]


def test_fractional_volumes_are_exact():
    e = Engine(["1m"])
    out = e.process(batch([(EQ, "09:15:01", 100, 10.25), (EQ, "09:15:30", 100, 11.5),
                           (EQ, "09:15:31", 100, 11.0), (EQ, "09:15:40", 100, 12.125)]))
    out += e.flush()
    [c] = closed(out)
    assert c.volume == 1.875


def test_out_of_order_tick_with_lower_cumulative_is_no_reset():
    e = Engine(["5m"])
    out = e.process(batch([(EQ, "09:15:01", 100, 5000), (EQ, "09:15:30", 100, 5100),
                           (EQ, "09:15:20", 100, 5050), (EQ, "09:15:40", 100, 5200)]))
    out += e.flush()
    [c] = closed(out)
    assert c.volume == 200


def test_index_volume_is_zero_and_oi_is_last_seen():
    e = Engine(["1m"])
    out = e.process(batch([(IDX, "09:15:01", 24000), (IDX, "09:15:40", 24010),
                           (FUT, "09:15:01", 24100, 10, 5000), (FUT, "09:15:30", 24105, 20, 5100),
                           (FUT, "09:15:50", 24101, 25)]))
    out += e.flush()
    fut = closed(out, token=FUT)[0]
    idx = closed(out, token=IDX)[0]
    assert idx.volume == 0 and math.isnan(idx.oi)
    assert fut.oi == 5100 and fut.volume == 15


def test_a_batch_without_oi_shares_a_read_only_nan_column_and_candles_keep_the_last_oi_seen():
    """A source without open interest (most tapes) gives its batches one shared read-only NaN
    column, which the engine takes as all NaN without looking (no gather, no scan); a column of
    the source's own, NaN in places, is looked at: the last oi seen in a candle is kept across
    batches with and without it."""
    from kiteohlc_lab.core.ticks import is_nan_column

    none = TickBatch([FUT, FUT], [ist("2026-11-25 09:15:30"), ist("2026-11-25 09:15:40")],
                     [24105.0, 24106.0], [20.0, 22.0], None)
    assert is_nan_column(none.oi) and is_nan_column(none.take(slice(1, 2)).oi)
    assert not none.oi.flags.writeable and np.isnan(none.oi).all()
    own = batch([(FUT, "09:15:01", 24100, 10, 5000), (FUT, "09:15:20", 24102, 15)])
    assert not is_nan_column(own.oi) and not is_nan_column(batch([(FUT, "09:15:01", 1.0)]).oi)
    e = Engine(["1m", "5m"])
    out = e.process(own) + e.process(none)
    out += e.process(TickBatch([FUT], [ist("2026-11-25 09:16:05")], [24107.0], [30.0], None))
    out += e.process(batch([(FUT, "09:16:10", 24108, 31), (FUT, "09:16:20", 24109, 32, 5300),
                            (FUT, "09:16:30", 24110, 33)]))
    out += e.flush()
    m1 = closed(out, tf="1m", token=FUT)
    assert [(hhmm(c), c.oi, c.volume) for c in m1] == [("09:15", 5000, 12), ("09:16", 5300, 11)]
    [m5] = closed(out, tf="5m", token=FUT)
    assert m5.oi == 5300 and m5.volume == 23


def test_all_timeframes_of_an_instrument_update_in_one_pass():
    e = Engine(["1m", "5m", "1h"])
    t0 = ist("2026-11-25 09:15:00")
    out = e.process(batch([(EQ, t0 + (m * 60 + s) * S, 100 + m, 10 * (m * 60 + s)) for m in range(61) for s in (0, 30)]))
    out += e.flush()
    assert len(closed(out, "1m")) == 61
    assert [hhmm(c) for c in closed(out, "5m")][:2] == ["09:15", "09:20"]
    assert [hhmm(c) for c in closed(out, "1h")] == ["09:15", "10:15"]
    assert sum(c.volume for c in closed(out, "1m")) == sum(c.volume for c in closed(out, "1h"))


def test_candle_stays_forming_until_clock_passes_end_plus_grace():
    e = Engine(["1m"], grace=3.0)
    assert e.process(batch([(EQ, "09:15:10", 100)])) == []
    assert closed(e.advance(ist("2026-11-25 09:16:02"))) == []  # within grace: late ticks still welcome
    out = e.process(batch([(EQ, "09:15:59", 101)]))  # ~2-3 s late, still in its candle
    assert out == [] and e.forming("1m").close[0] == 101
    [c] = closed(e.advance(ist("2026-11-25 09:16:03")))
    assert (c.close, c.ticks) == (101, 2)
    assert len(e.forming("1m")) == 0


def test_another_instrument_advances_the_event_clock():
    e = Engine(["1m"], grace=2.0)
    e.process(batch([(EQ, "09:15:10", 100)]))
    out = e.process(batch([(IDX, "09:16:05", 24000)]))
    assert [c.token for c in closed(out)] == [EQ]


@pytest.mark.parametrize("policy", ["drop", "amend"])
def test_late_tick_policy(policy):
    e = Engine(["1m"], grace=1.0, late_policy=policy)
    e.process(batch([(EQ, "09:15:10", 100, 10), (EQ, "09:15:20", 101, 20), (EQ, "09:16:05", 102, 30)]))
    out = e.process(batch([(EQ, "09:15:30", 108, 20)]))  # arrives after its candle closed
    if policy == "drop":
        assert out == [] and e.stats["late"] == 1
    else:
        [c] = closed(out)
        assert c.amended and c.high == 108 and c.close == 108 and hhmm(c) == "09:15"
        assert e.stats["amended"] == 1


def test_duplicates_are_harmless():
    rows = [(EQ, "09:15:10", 100, 10), (EQ, "09:15:20", 101, 20), (EQ, "09:15:40", 99, 30)]
    a, b = Engine(["1m"]), Engine(["1m"])
    oa = a.process(batch(rows)) + a.flush()
    ob = b.process(batch([r for r in rows for _ in (0, 1)])) + b.flush()
    ca, cb = closed(oa)[0], closed(ob)[0]
    assert (ca.open, ca.high, ca.low, ca.close, ca.volume) == (cb.open, cb.high, cb.low, cb.close, cb.volume)


def test_empty_buckets_no_row_by_default_and_filled_on_request():
    rows = [(EQ, "09:15:10", 100, 10), (EQ, "09:18:10", 104, 20), (EQ, "09:19:10", 104, 30)]
    plain = closed(Engine(["1m"]).process(batch(rows)))
    assert [hhmm(c) for c in plain] == ["09:15", "09:18"]
    filled = closed(Engine(["1m"], fill_empty=True).process(batch(rows)))
    assert [hhmm(c) for c in filled] == ["09:15", "09:16", "09:17", "09:18"]
    assert filled[1].volume == 0 and filled[1].open == filled[1].close == 100


def test_exported_state_continues_in_a_new_engine():
    rows = [(EQ, ist("2026-11-25 09:15:00") + i * 10 * S, 100 + i % 7, 10 * i) for i in range(60)]
    full = Engine(["1m", "5m"])
    want = closed(full.process(batch(rows)) + full.flush())
    first = Engine(["1m", "5m"])
    got = first.process(batch(rows[:27]))
    state = first.export_state()
    import json

    state = {int(k): v for k, v in json.loads(json.dumps(state)).items()}
    second = Engine(["1m", "5m"])
    second.import_state(state)
    got += second.process(batch(rows[27:])) + second.flush()
    assert [(c.tf, c.start, c.open, c.high, c.low, c.close, c.volume) for c in closed(got)] == [
        (c.tf, c.start, c.open, c.high, c.low, c.close, c.volume) for c in want]


def test_in_order_ticks_match_a_pandas_groupby():
    rng = np.random.default_rng(7)
    n = 5000
    ts = ist("2026-11-25 09:15:00") + np.sort(rng.integers(0, 6 * 3600, n)) * S
    tok = rng.choice([EQ, 408065, 341249], n)
    price = np.round(1000 + rng.normal(0, 1, n).cumsum(), 2)
    vol = np.zeros(n)
    for t in (EQ, 408065, 341249):
        m = tok == t
        vol[m] = np.cumsum(rng.integers(1, 100, m.sum()))
    e = Engine(["5m"])
    out = closed(e.process(TickBatch(tok, ts, price, vol, None)) + e.flush())
    df = pd.DataFrame({"tok": tok, "ts": pd.to_datetime(ts, utc=True).tz_convert(IST), "p": price, "v": vol})
    df["bucket"] = (df["ts"] - pd.Timedelta(minutes=15)).dt.floor("5min") + pd.Timedelta(minutes=15)
    g = df.groupby(["tok", "bucket"], sort=True)
    ref = g.agg(open=("p", "first"), high=("p", "max"), low=("p", "min"), close=("p", "last"), last_v=("v", "last"))
    ref["volume"] = ref.groupby(level=0)["last_v"].diff()
    first_v = df.groupby("tok")["v"].first()
    for t in first_v.index:  # the first candle's baseline is the stream's first tick
        k = ref.loc[t].index[0]
        ref.loc[(t, k), "volume"] = ref.loc[(t, k), "last_v"] - first_v[t]
    got = pd.DataFrame([(c.token, c.date, c.open, c.high, c.low, c.close, c.volume) for c in out],
                       columns=["tok", "bucket", "open", "high", "low", "close", "volume"]).set_index(["tok", "bucket"])
    pd.testing.assert_frame_equal(got, ref[["open", "high", "low", "close", "volume"]], check_names=False,
                                  check_index_type=False)


def test_tokens_whose_hashes_collide_keep_their_own_candles():
    from kiteohlc_lab.core.ticks import SlotTable, token_hash

    def _hash(tokens):
        return token_hash(tokens, SlotTable().bits)  # a new engine's table

    a = 514229
    cand = np.arange(a + 1, a + 200_000)
    b = int(cand[_hash(cand) == _hash(np.array([a]))[0]][0])  # same entry of a new engine's table
    rows = [(a, "09:15:01", 100, 10), (b, "09:15:02", 200, 5), (a, "09:15:30", 101, 20), (b, "09:15:40", 199, 9),
            (a, "09:16:01", 102, 30), (b, "09:16:02", 201, 12)]
    e = Engine(["1m"])
    out = e.process(batch(rows)) + e.flush()
    ca, cb = closed(out, token=a), closed(out, token=b)
    assert [(c.open, c.close, c.volume) for c in ca] == [(100, 101, 10), (102, 102, 10)]
    assert [(c.open, c.close, c.volume) for c in cb] == [(200, 199, 4), (201, 201, 3)]


def test_thousands_of_instruments_known_ahead_or_not_keep_their_own_candles():
    """The token table grows with the instruments (rehashed each time: collisions at every size);
    instruments registered before their first tick (``add_instruments``) or met in a batch, in any
    order, each get exactly their own ticks (checked against a dict per token)."""
    rng = np.random.default_rng(11)
    toks = rng.choice(np.arange(1, 50_000_000), 6000, replace=False)
    e = Engine(["1m"])
    e.add_instruments(toks[:1000].tolist())
    e.add_instruments(toks[500:1500])  # half of them known already
    assert all(e.slot(int(t)) is not None for t in toks[:1500]) and e.slot(int(toks[-1])) is None
    t0 = pd.Timestamp("2025-12-01 09:15:00", tz="Asia/Kolkata").value
    want: dict[int, list] = {}
    out = []
    for k in range(3):  # three batches of 6000 ticks each, in the 09:15 minute, tokens shuffled
        order = rng.permutation(toks)
        px = rng.uniform(10, 1000, len(order)).round(2)
        vol = np.full(len(order), 100.0 * (k + 1))
        ts = np.full(len(order), t0 + (k + 1) * 10**9, np.int64)
        out += e.process(TickBatch(order, ts, px, vol, np.full(len(order), np.nan)))
        for t, p in zip(order.tolist(), px.tolist()):
            w = want.setdefault(t, [p, p, p, p])
            w[1], w[2], w[3] = max(w[1], p), min(w[2], p), p
    out += e.flush()
    got = {c.token: [c.open, c.high, c.low, c.close, c.volume] for c in closed(out)}
    assert len(got) == len(toks)
    assert got == {t: w + [200.0] for t, w in want.items()}  # volume: 300 - the first tick's 100


# ---------------------------------------------------------------- property tests vs the oracle
# The oracle (tests/oracle.py) restates README "## Candle conventions" without the package's code; the
# package side is TickFilter (replay) + Engine, fed in random batch splits.
def _equal_to_oracle(rows, cuts, **kw):
    o = run_oracle(rows, ORACLE_TFS, **kw)
    candles, flt, eng = run_package(rows, ORACLE_TFS, cuts=cuts, **kw)
    assert_same(o, candles, flt, eng)


@pytest.mark.parametrize("policy", ["drop", "amend"])
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=messy_tapes(), grace=st.sampled_from([0.0, 2.0, 5.0]))
def test_engine_equals_reference_on_random_tapes(policy, data, grace):
    rows, cuts = data
    _equal_to_oracle(rows, cuts, grace=grace, late_policy=policy)


@pytest.mark.parametrize("policy", ["drop", "amend"])
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=in_order_tapes(), grace=st.sampled_from([0.0, 5.0]), fill=st.booleans())
def test_engine_equals_reference_on_in_order_tapes(policy, data, grace, fill):
    """In-order batches take the engine's shortcut (no tick of them can be late: Engine._prepare),
    across day changes and near midnight, with either late policy and flat fill."""
    rows, cuts = data
    _equal_to_oracle(rows, cuts, grace=grace, late_policy=policy, fill_empty=fill)


# flat fill over day-long gaps builds thousands of candles per example: fewer examples here
# (HYPOTHESIS_PROFILE=thorough still runs the full count)
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
          max_examples=60 if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci" else 2000)
@given(data=messy_tapes(max_rows=60), policy=st.sampled_from(["drop", "amend"]),
       session_open=st.sampled_from([None, {"MCX": "10:00"}, {"NSE": "09:07", "NCO": "09:30"}]))
def test_engine_equals_oracle_with_empty_buckets_filled_and_session_opens(data, policy, session_open):
    rows, cuts = data
    _equal_to_oracle(rows, cuts, grace=5.0, late_policy=policy, fill_empty=True, session_open=session_open)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(frames=live_frames(), grace=st.sampled_from([0.0, 2.0, 5.0]), policy=st.sampled_from(["drop", "amend"]))
def test_engine_equals_oracle_on_live_frames(frames, grace, policy):
    """Live: the exchange clock moves at every frame (closing candles of a quiet market), stamps are
    checked against it, reconnects resume the instruments."""
    from kiteohlc_lab.core.sanity import TickFilter

    o = Oracle(ORACLE_TFS, grace=grace, late_policy=policy, live=True)
    flt = TickFilter(live=True)
    eng = Engine(ORACLE_TFS, grace=grace, late_policy=policy)
    out = []
    for now, rows, resumed in frames:
        if resumed:
            o.resume(resumed)
            eng.resume(resumed)
        o.advance(now)
        for r in rows:
            o.tick(*r, now_ns=now)
        out += eng.advance(now)
        out += eng.process(flt.check(to_batch(rows), now_ns=now))
    o.flush()
    out += eng.process(flt.flush())
    out += eng.flush()
    assert_same(o, [c for b in out for c in b], flt, eng)
