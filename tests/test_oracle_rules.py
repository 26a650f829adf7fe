"""The oracle checked against hand-computed examples, one or more per README candle rule; each example
also runs through the package (TickFilter + Engine) and must give the same candles and counts.

``run_oracle`` / ``run_package`` / ``assert_same`` are shared with test_engine.py."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from oracle import Oracle
from strategies import DAY, EQ, EQ2, IDX, MCX, NCO, S, batches, ist, to_batch

D1 = "2026-11-25"
D2 = "2026-11-26"


def at(hms: str, day: str = D1) -> int:
    return ist(f"{day} {hms}")


def hm(start: int) -> str:
    return pd.Timestamp(start, unit="ns", tz="UTC").tz_convert("Asia/Kolkata").strftime("%m-%d %H:%M:%S")


# ---------------------------------------------------------------- running both sides
def run_oracle(rows, tfs, *, cuts=(), resume_at=None, **kw):
    """resume_at: {row index: tokens} -> resume(tokens) before that row."""
    o = Oracle(tfs, **kw)
    resume_at = resume_at or {}
    for i, r in enumerate(rows):
        if i in resume_at:
            o.resume(resume_at[i])
        o.tick(*r)
    o.flush()
    return o


def run_package(rows, tfs, *, cuts=(), resume_at=None, **kw):
    """The package side: per batch good = TickFilter.check(batch); closed += Engine.process(good);
    at the end the filter's held tick, then the engine's forming candles."""
    from kiteohlc_lab.core import sanity
    from kiteohlc_lab.core.engine import Engine

    flt = sanity.TickFilter(live=False)
    eng = Engine(tfs, **kw)
    out = []
    resume_at = dict(resume_at or {})
    bounds = sorted({0, *cuts, *resume_at, len(rows)})
    for a, z in zip(bounds, bounds[1:]):
        if a in resume_at:
            eng.resume(resume_at[a])
        good = flt.check(to_batch(rows[a:z]))
        out += eng.process(good)
    out += eng.process(flt.flush())
    out += eng.flush()
    candles = [c for b in out for c in b]
    return candles, flt, eng


def _key(token, tf, start, amended):
    return (token, tf, start, amended)


def _fields(c):
    g = (lambda k: c[k]) if isinstance(c, dict) else (lambda k: getattr(c, k))
    return {k: g(k) for k in ("token", "tf", "start", "open", "high", "low", "close", "volume", "oi", "ticks",
                              "amended")}


def _counts(d):
    return {int(t): {k: int(n) for k, n in kinds.items() if n} for t, kinds in d.items() if any(kinds.values())}


def _close(a, b):
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return abs(float(a) - float(b)) <= 1e-9


def diff(oracle_candles, package_candles) -> list[str]:
    """Differences between two lists of candles (order-free; float fields with atol 1e-9)."""
    def index(cs):
        out: dict = {}
        for c in cs:
            f = _fields(c)
            out.setdefault((int(f["token"]), str(f["tf"]), int(f["start"])), []).append(f)
        return out

    want, got = index(oracle_candles), index(package_candles)
    msgs = []
    for k in sorted(set(want) | set(got)):
        w, g = want.get(k, []), got.get(k, [])
        if len(w) != len(g):
            msgs.append(f"{k[0]} {k[1]} {hm(k[2])}: oracle emits {len(w)}x {w}, package {len(g)}x {g}")
            continue
        w = sorted(w, key=lambda f: (f["amended"], f["ticks"]))
        g = sorted(g, key=lambda f: (f["amended"], f["ticks"]))
        for a, b in zip(w, g):
            bad = [f for f in ("open", "high", "low", "close", "volume", "oi") if not _close(a[f], b[f])]
            bad += [f for f in ("ticks", "amended") if int(a[f]) != int(b[f])]
            if bad:
                msgs.append(f"{k[0]} {k[1]} {hm(k[2])}: " + ", ".join(f"{f} oracle {a[f]} package {b[f]}" for f in bad))
    return msgs


def assert_same(o: Oracle, candles, flt, eng):
    d = diff(o.closed, candles)
    assert not d, "\n".join(d[:20])
    assert _counts(flt.counts) == _counts(o.counts)
    assert eng.stats["late"] == o.late
    assert eng.stats["volume_glitches"] == o.glitches


def both(rows, tfs, **kw):
    o = run_oracle(rows, tfs, **kw)
    pkg = run_package(rows, tfs, **kw)
    return o, pkg


def got(o: Oracle, tf: str, token: int = EQ):
    return [(hm(c["start"])[6:], c["open"], c["high"], c["low"], c["close"], c["volume"])
            for c in sorted((c for c in o.closed if c["tf"] == tf and c["token"] == token), key=lambda c: c["start"])]


def check_package(rows, tfs, **kw):
    o = run_oracle(rows, tfs, **kw)
    candles, flt, eng = run_package(rows, tfs, **kw)
    assert_same(o, candles, flt, eng)


# ---------------------------------------------------------------- rule 1: bad ticks
BAD_PRICES = [
    (EQ, at("09:15:01"), 100.0, 10.0),
    (EQ, at("09:15:10"), math.nan, 11.0),
    (EQ, at("09:15:20"), 0.0, 12.0),
    (EQ, at("09:15:30"), -5.0, 13.0),
    (EQ, at("09:15:40"), math.inf, 14.0),
    (IDX, at("09:20:00"), math.nan),          # would move the clock past 09:15's end + grace
    (EQ, at("09:15:50"), 101.0, 20.0),        # so this one is not late
    (EQ, at("09:15:55"), 102.0, -1.0),        # bad_volume
    (EQ, at("09:15:56"), 102.0, math.inf),    # bad_volume
    (EQ, at("09:16:01"), 103.0, 25.0),
]


def test_bad_prices_and_volumes_make_nothing_and_move_no_clock():
    o = run_oracle(BAD_PRICES, ["1m"])
    assert got(o, "1m") == [("09:15:00", 100, 101, 100, 101, 10), ("09:16:00", 103, 103, 103, 103, 5)]
    assert o.counts == {EQ: {"bad_price": 4, "bad_volume": 2}, IDX: {"bad_price": 1}}
    assert o.late == 0 and [c for c in o.closed if c["token"] == IDX] == []
    check_package(BAD_PRICES, ["1m"])


LONE_JUMPS = [
    (EQ, at("09:15:01"), 100.0, 10.0),
    (EQ, at("09:15:10"), 101.0, 20.0),
    (EQ, at("10:40:00"), 150.0, 30.0),                   # a lone jump: the tape goes on at 09:15
    (EQ, at("09:15:20"), 102.0, 40.0),
    (EQ, at("09:15:30") + 10 * 365 * DAY, 160.0, 50.0),  # 10 years ahead
    (EQ, 0, 170.0, 60.0),                                # a zero stamp
    (EQ, at("09:15:40"), 99.0, 70.0),
    (EQ, at("09:16:30"), 103.0, 80.0),
    (EQ, at("09:17:31"), 104.0, 90.0),                   # 61 s after the running time, but the tape's last
]


def test_lone_bogus_stamps_in_a_replay_are_rejected():
    o = run_oracle(LONE_JUMPS, ["1m"])
    assert got(o, "1m") == [("09:15:00", 100, 102, 99, 99, 60), ("09:16:00", 103, 103, 103, 103, 10),
                            ("09:17:00", 104, 104, 104, 104, 10)]
    assert o.counts == {EQ: {"bad_stamp": 3}}
    check_package(LONE_JUMPS, ["1m"])
    check_package(LONE_JUMPS, ["1m"], cuts=[1, 3, 4, 8])


NEXT_DAY = [
    (EQ, at("15:29:50"), 100.0, 90_000.0),
    (EQ, at("15:29:58"), 101.0, 90_500.0),
    (EQ, at("09:15:01", D2), 110.0, 300.0),   # a real jump: the next trading day, followed by its ticks
    (EQ, at("09:15:30", D2), 111.0, 450.0),
    (EQ, at("09:16:05", D2), 112.0, 460.0),
]


def test_a_next_day_jump_followed_by_more_ticks_is_accepted_and_volume_restarts():
    o = run_oracle(NEXT_DAY, ["1m", "1d"])
    assert got(o, "1m") == [("15:29:00", 100, 101, 100, 101, 500), ("09:15:00", 110, 111, 110, 111, 450),
                            ("09:16:00", 112, 112, 112, 112, 10)]
    assert [(c[0], c[-1]) for c in got(o, "1d")] == [("00:00:00", 500), ("00:00:00", 460)]
    assert o.counts == {}
    check_package(NEXT_DAY, ["1m", "1d"])
    check_package(NEXT_DAY, ["1m", "1d"], cuts=[2, 3])


@pytest.mark.parametrize("pause,bad", [(6 * 86_400, 0), (7 * 86_400 + 1, 1), (10 * 365 * 86_400, 1)])
def test_the_last_tick_of_a_tape_is_rejected_only_a_week_after_the_running_time(pause, bad):
    rows = [(EQ, at("09:15:01"), 100.0, 10.0), (EQ, at("09:15:10"), 101.0, 20.0),
            (EQ, at("09:15:10") + pause * S, 102.0, 30.0)]
    o = run_oracle(rows, ["1m"])
    assert len(o.closed) == 2 - bad and o.counts == ({EQ: {"bad_stamp": 1}} if bad else {})
    check_package(rows, ["1m"])


def test_a_one_tick_tape_is_accepted():
    rows = [(EQ, at("09:15:01"), 100.0, 10.0)]
    o = run_oracle(rows, ["1m"])
    assert len(o.closed) == 1 and o.counts == {}
    check_package(rows, ["1m"])


@pytest.mark.parametrize("bad_row", [(EQ, at("09:10:00"), 0.0, 2.0), (EQ, at("09:10:00"), 101.0, -5.0),
                                     (EQ, 0, 101.0, 2.0)], ids=["bad_price", "bad_volume", "zero_stamp"])
def test_a_bad_tick_is_not_the_next_tick_that_judges_a_jump(bad_row):
    # bad ticks are rejected first: the 09:17:00 jump is followed by the tape (09:17:10) and accepted
    rows = [(EQ, at("09:15:00"), 100.0, 1.0), (EQ, at("09:17:00"), 101.0, 2.0), bad_row,
            (EQ, at("09:17:10"), 102.0, 3.0)]
    o = run_oracle(rows, ["1m"])
    assert got(o, "1m") == [("09:15:00", 100, 100, 100, 100, 0), ("09:17:00", 101, 102, 101, 102, 2)]
    assert sum(o.counts[EQ].values()) == 1
    check_package(rows, ["1m"])


def test_the_first_tick_of_a_tape_counts_as_a_jump():
    rows = [(EQ, at("10:00:00"), 100.0, 10.0),   # more than 60 s after the next tick: rejected
            (EQ, at("09:15:01"), 101.0, 20.0),
            (EQ, at("09:15:30"), 102.0, 30.0)]
    o = run_oracle(rows, ["1m"])
    assert got(o, "1m") == [("09:15:00", 101, 102, 101, 102, 10)]
    assert o.counts == {EQ: {"bad_stamp": 1}}
    check_package(rows, ["1m"])


def test_live_stamps_ahead_of_the_exchange_clock_or_before_its_day_are_bad():
    o = Oracle(["1m"], live=True)
    now = at("09:15:30")
    o.tick(EQ, at("09:15:20"), 100.0, 10.0, now_ns=now)
    o.tick(EQ, now + 11 * S, 101.0, 20.0, now_ns=now)                 # 11 s ahead
    o.tick(EQ, at("15:29:59", "2026-11-24"), 102.0, 30.0, now_ns=now)  # Kite's cached tick of yesterday
    o.tick(EQ, now + 9 * S, 103.0, 40.0, now_ns=now)
    assert o.counts == {EQ: {"bad_stamp": 2}}
    assert o.forming(EQ, "1m")["close"] == 103 and o.forming(EQ, "1m")["volume"] == 30
    o.advance(at("09:16:05"))
    assert len(o.closed) == 1 and o.forming(EQ, "1m") is None


# ---------------------------------------------------------------- rule 2: buckets
MCX_MIDNIGHT = [
    (MCX, at("23:57:00"), 100.0, 10.0),
    (MCX, at("23:57:50"), 99.0, 15.0),
    (MCX, at("23:58:40"), 101.0, 18.0),
    (MCX, at("23:59:30"), 101.0, 20.0),
    (MCX, at("00:00:30", D2), 102.0, 5.0),    # a new IST day: M restarts at 0
    (MCX, at("00:01:10", D2), 103.0, 8.0),
    (MCX, at("00:02:00", D2), 103.0, 8.5),
    *[(NCO, at(f"00:0{m}:00", D2), 50.0) for m in range(3, 8)],  # the tape goes on (no 60 s jumps)
    (MCX, at("00:08:00", D2), 104.0, 9.0),
    (NCO, at("00:08:30", D2), 50.0),
]


def test_a_7m_mcx_candle_across_midnight_is_cut():
    o = run_oracle(MCX_MIDNIGHT, ["7m", "1d"])
    # 09:00 + 128 x 7m = 23:56, cut at 24:00; the next day's grid (from its 09:00) has 23:54 -> 00:00-00:01
    assert got(o, "7m", MCX) == [("23:56:00", 100, 101, 99, 101, 10), ("00:00:00", 102, 102, 102, 102, 5),
                                 ("00:01:00", 103, 103, 103, 103, 3.5), ("00:08:00", 104, 104, 104, 104, 0.5)]
    assert [c[-1] for c in got(o, "1d", MCX)] == [10, 9]
    check_package(MCX_MIDNIGHT, ["7m", "1d"])


def test_the_short_first_bucket_after_midnight_closes_at_its_own_end():
    o = Oracle(["7m"], grace=0.0)
    o.tick(MCX, at("00:00:30", D2), 100.0, 5.0)
    o.tick(MCX, at("00:00:40", D2), 100.0, 6.0)
    o.tick(NCO, at("00:01:00", D2), 100.0, 1.0)   # another instrument's tick moves the clock to 00:01
    o.end_of_tape()
    assert [(hm(c["start"]), c["token"]) for c in o.closed] == [("11-26 00:00:00", MCX)]


def test_the_short_first_bucket_after_midnight_ends_at_its_grid_point_for_lateness_too():
    # MCX 7m: the first bucket of 11-26 is 00:00-00:01; by 00:01:11 its end + 5 s grace has passed
    rows = [(NCO, at("00:00:28", D2), 50.0), (NCO, at("00:01:11", D2), 50.0),
            (MCX, at("00:00:54", D2), 100.0, 10.0),   # late: no forming candle, end + grace reached
            (MCX, at("00:01:20", D2), 101.0, 12.0)]
    o = run_oracle(rows, ["7m"])
    assert got(o, "7m", MCX) == [("00:01:00", 101, 101, 101, 101, 2)]
    assert o.late == 1
    check_package(rows, ["7m"])
    rows = [(MCX, at("00:00:30", D2), 100.0, 5.0), (MCX, at("00:00:40", D2), 100.0, 6.0),
            (NCO, at("00:01:00", D2), 50.0), (MCX, at("00:00:50", D2), 102.0, 7.0)]  # closed at 00:01: late
    o = run_oracle(rows, ["7m"], grace=0.0)
    assert got(o, "7m", MCX) == [("00:00:00", 100, 100, 100, 100, 1)] and o.late == 1
    check_package(rows, ["7m"], grace=0.0)
    check_package(rows, ["7m"], grace=0.0, cuts=[3])  # (the package re-opens the closed bucket: 2 candles)


@pytest.mark.parametrize("token,when,tf,start", [
    (EQ, "09:14:59", "15m", "09:00:00"), (EQ, "09:15:00", "15m", "09:15:00"), (IDX, "09:20:00", "1h", "09:15:00"),
    (MCX, "09:05:00", "15m", "09:00:00"), (NCO, "09:05:00", "15m", "09:00:00"), (EQ, "00:10:00", "1h", "00:00:00"),
    (MCX, "23:59:00", "1h", "23:00:00"), (EQ, "23:59:00", "1h", "23:15:00"), (MCX, "12:34:56", "1d", "00:00:00"),
    (EQ, "09:15:07", "10s", "09:15:00"), (MCX, "09:06:59", "7m", "09:00:00"), (MCX, "09:07:00", "7m", "09:07:00"),
])
def test_bucket_grid_from_the_session_open_of_the_segment(token, when, tf, start):
    o = Oracle([tf])
    o.tick(token, at(when), 100.0)
    o.tick(token, at(when) + 1, 100.0)
    assert hm(o.forming(token, tf)["start"])[6:] == start


def test_session_open_overrides_per_exchange():
    o = Oracle(["1h"], session_open={"MCX": "09:30"})
    o.tick(MCX, at("10:10:00"), 100.0)
    o.tick(MCX, at("10:10:01"), 100.0)
    assert hm(o.forming(MCX, "1h")["start"])[6:] == "09:30:00"
    rows = [(MCX, at("10:10:00"), 100.0, 1.0), (MCX, at("10:40:00"), 101.0, 2.0), (MCX, at("10:40:10"), 101.0, 3.0)]
    assert [c[0] for c in got(run_oracle(rows, ["1h"], session_open={"MCX": "09:30"}), "1h", MCX)] == [
        "09:30:00", "10:30:00"]
    check_package(rows, ["1h"], session_open={"MCX": "09:30"})


# ---------------------------------------------------------------- rule 3: prices and oi
def test_prices_in_arrival_order_and_oi_last_non_missing():
    rows = [(MCX, at("10:00:01"), 100.0, 10.0, 5000.0), (MCX, at("10:00:20"), 103.0, 20.0, math.nan),
            (MCX, at("10:00:10"), 98.0, 30.0, 5100.0), (MCX, at("10:00:30"), 101.0, 40.0, math.nan),
            (IDX, at("10:00:02"), 24000.0), (IDX, at("10:00:40"), 24010.0)]
    o = run_oracle(rows, ["1m"])
    [c] = [c for c in o.closed if c["token"] == MCX]
    assert (c["open"], c["high"], c["low"], c["close"], c["volume"], c["oi"], c["ticks"]) == (
        100, 103, 98, 101, 30, 5100, 4)
    [i] = [c for c in o.closed if c["token"] == IDX]
    assert i["volume"] == 0 and math.isnan(i["oi"])
    check_package(rows, ["1m"])


# ---------------------------------------------------------------- rule 4: volume
GLITCHES = [
    (EQ, at("09:15:01"), 100.0, 1000.0),   # the first tick ever: adds 0, M = 1000
    (EQ, at("09:15:10"), 100.0, 1100.0),   # +100
    (EQ, at("09:15:20"), 100.0, 0.0),      # a 0: glitch
    (EQ, at("09:15:30"), 100.0, 1050.0),   # a stale snapshot: glitch
    (EQ, at("09:15:40"), 100.0, 1200.0),   # +100
    (EQ, at("09:15:45"), 100.0, 1260.5),   # same second, out of order: +60.5 ...
    (EQ, at("09:15:45"), 100.0, 1230.25),  # ... and a glitch
    (EQ, at("09:16:01"), 100.0, 1300.0),   # +39.5
    (EQ, at("09:16:02"), 100.0, 1300.0),   # a duplicate: only the tick count
]


def test_volume_follows_the_running_maximum_and_glitches_add_nothing():
    o = run_oracle(GLITCHES, ["1m", "1h"])
    assert [c[-1] for c in got(o, "1m")] == [260.5, 39.5]
    assert [c[-1] for c in got(o, "1h")] == [300.0]
    assert o.glitches == 3
    check_package(GLITCHES, ["1m", "1h"])
    check_package(GLITCHES, ["1m", "1h"], cuts=[2, 6])


def test_a_tick_of_an_earlier_day_adds_nothing_and_changes_nothing():
    rows = [(EQ, at("15:29:00"), 100.0, 9000.0), (EQ, at("09:15:01", D2), 100.0, 100.0),
            (EQ, at("09:15:10", D2), 100.0, 150.0),
            (EQ, at("15:29:30"), 99.0, 9500.0),       # yesterday's: late everywhere, M stays 150
            (EQ, at("09:15:20", D2), 100.0, 170.0)]
    o = run_oracle(rows, ["1m", "1d"])
    assert [c[-1] for c in got(o, "1m")] == [0, 170]
    assert [c[-1] for c in got(o, "1d")] == [0, 170]
    assert o.late == 1 and o.glitches == 0
    check_package(rows, ["1m", "1d"])


def test_first_tick_after_a_resume_adds_nothing():
    rows = [(EQ, at("09:15:01"), 100.0, 100.0), (EQ, at("09:15:10"), 100.0, 150.0),
            (EQ, at("09:15:50"), 100.0, 900.0),    # after the resume: adds 0, M = 900
            (EQ, at("09:15:55"), 100.0, 950.0),    # +50
            (EQ2, at("09:15:56"), 10.0, 50.0)]
    o = run_oracle(rows, ["5m"], resume_at={2: [EQ]})
    assert got(o, "5m") == [("09:15:00", 100, 100, 100, 100, 100)]
    assert o.glitches == 0
    check_package(rows, ["5m"], resume_at={2: [EQ]})


def test_a_resume_before_the_instruments_first_tick():
    # a feed reconnected before this instrument ticked at all: its first tick is still a baseline
    rows = [(EQ, at("09:15:01"), 100.0, 100.0), (EQ, at("09:15:10"), 100.0, 150.0)]
    o = run_oracle(rows, ["1m"], resume_at={0: [EQ, EQ2]})
    assert got(o, "1m") == [("09:15:00", 100, 100, 100, 100, 50)]
    check_package(rows, ["1m"], resume_at={0: [EQ, EQ2]})


def test_glitch_count_does_not_depend_on_the_batch_split():
    # found by the property test: a followed jump 10 years ahead (two identical ticks: accepted), then
    # NCO's first tick (late everywhere, still its baseline M = 1), then NCO's 0: a glitch
    far = at("23:59:59") + 10 * 365 * DAY
    rows = [(EQ, far, 100.0, 0.0), (EQ, far, 100.0, 0.0), (NCO, at("00:00:00", D2), 100.0, 1.0),
            (EQ, at("23:46:16", D2), 100.0, 509.0), (NCO, at("23:46:16", D2), 100.0, 0.0)]
    o = run_oracle(rows, ["1m"], grace=0.0)
    assert o.glitches == 1 and o.late == 3
    check_package(rows, ["1m"], grace=0.0)
    check_package(rows, ["1m"], grace=0.0, cuts=[2])


def test_a_dropped_late_ticks_increase_counts_in_m_but_lands_in_no_candle():
    rows = [(EQ, at("09:15:10"), 100.0, 100.0), (EQ, at("09:16:05"), 101.0, 200.0),
            (EQ, at("09:15:30"), 108.0, 300.0),    # late for 1m (dropped), in time for 1h: +100 there
            (EQ, at("09:16:30"), 102.0, 350.0)]
    o = run_oracle(rows, ["1m", "1h"], grace=1.0)
    assert got(o, "1m") == [("09:15:00", 100, 100, 100, 100, 0), ("09:16:00", 101, 102, 101, 102, 150)]
    assert got(o, "1h") == [("09:15:00", 100, 108, 100, 102, 250)]
    assert o.late == 1
    check_package(rows, ["1m", "1h"], grace=1.0)


# ---------------------------------------------------------------- rules 5 and 7: lifecycle, late ticks
AMEND = [(EQ, at("09:15:10"), 100.0, 10.0), (EQ, at("09:15:40"), 101.0, 20.0), (EQ, at("09:16:05"), 102.0, 30.0),
         (EQ, at("09:15:30"), 108.0, 35.0),   # late: high 108, older than the close's tick -> close stays
         (EQ, at("09:15:50"), 99.0, 40.0)]    # late: low 99, newer -> close 99


def test_late_ticks_dropped_and_counted():
    o = run_oracle(AMEND, ["1m"], grace=1.0)
    assert got(o, "1m") == [("09:15:00", 100, 101, 100, 101, 10), ("09:16:00", 102, 102, 102, 102, 10)]
    assert o.late == 2
    check_package(AMEND, ["1m"], grace=1.0)


def test_late_ticks_amend_the_last_closed_candle():
    o = run_oracle(AMEND, ["1m"], grace=1.0, late_policy="amend")
    versions = [(c["high"], c["low"], c["close"], c["volume"], c["ticks"], c["amended"])
                for c in o.closed if c["start"] == at("09:15:00")]
    assert versions == [(101, 100, 101, 10, 2, False), (108, 100, 101, 15, 3, True), (108, 99, 99, 20, 4, True)]
    assert o.frame(EQ, "1m")["close"].tolist() == [99, 102]
    check_package(AMEND, ["1m"], grace=1.0, late_policy="amend")


def test_a_candle_closes_when_the_clock_reaches_its_end_plus_grace():
    o = Oracle(["1m"], grace=3.0, live=True)
    o.tick(EQ, at("09:15:10"), 100.0, now_ns=at("09:15:11"))
    o.advance(at("09:16:02"))
    assert o.closed == []
    o.tick(EQ, at("09:15:59"), 101.0, now_ns=at("09:16:02"))   # within grace: still its candle
    assert o.forming(EQ, "1m")["close"] == 101
    o.advance(at("09:16:03"))
    assert [(c["close"], c["ticks"]) for c in o.closed] == [(101, 2)]
    o.tick(EQ, at("09:15:58"), 102.0, now_ns=at("09:16:04"))   # late now
    assert o.late == 1


def test_a_finished_tape_leaves_its_last_candles_forming():
    o = Oracle(["1m"])
    for r in [(EQ, at("09:15:10"), 100.0), (EQ, at("09:15:20"), 101.0)]:
        o.tick(*r)
    o.end_of_tape()
    assert o.closed == [] and o.forming(EQ, "1m")["close"] == 101
    assert len(o.frame(EQ, "1m", closed_only=False)) == 1 and len(o.frame(EQ, "1m")) == 0


# ---------------------------------------------------------------- rule 8: empty buckets
def test_empty_buckets_filled_on_request_within_one_day_only():
    rows = [(EQ, at("09:15:10"), 100.0, 10.0), (EQ, at("09:18:10"), 104.0, 20.0), (EQ, at("09:18:20"), 104.0, 30.0),
            (EQ, at("09:15:10", D2), 90.0, 5.0), (EQ, at("09:15:20", D2), 90.0, 6.0)]
    plain = run_oracle(rows, ["1m"])
    assert [c[0] for c in got(plain, "1m")] == ["09:15:00", "09:18:00", "09:15:00"]
    filled = run_oracle(rows, ["1m"], fill_empty=True)
    assert got(filled, "1m") == [("09:15:00", 100, 100, 100, 100, 0), ("09:16:00", 100, 100, 100, 100, 0),
                                 ("09:17:00", 100, 100, 100, 100, 0), ("09:18:00", 104, 104, 104, 104, 20),
                                 ("09:15:00", 90, 90, 90, 90, 6)]
    check_package(rows, ["1m"])
    check_package(rows, ["1m"], fill_empty=True)


def test_a_late_tick_amends_a_flat_candle_when_that_is_the_last_closed_one():
    rows = [(EQ, at("09:15:10"), 100.0, 10.0), (EQ, at("09:15:20"), 100.0, 11.0), (EQ, at("09:18:10"), 104.0, 20.0),
            (EQ, at("09:17:30"), 90.0, 21.0)]   # late, for the flat 09:17 candle: the last closed one
    o = run_oracle(rows, ["1m"], grace=0.0, fill_empty=True, late_policy="amend")
    assert got(o, "1m") == [("09:15:00", 100, 100, 100, 100, 1), ("09:16:00", 100, 100, 100, 100, 0),
                            ("09:17:00", 100, 100, 100, 100, 0), ("09:17:00", 100, 100, 90, 90, 1),
                            ("09:18:00", 104, 104, 104, 104, 9)]
    assert o.frame(EQ, "1m").loc[pd.Timestamp(f"{D1} 09:17", tz="Asia/Kolkata")].tolist() == [100, 100, 90, 90, 1]
    check_package(rows, ["1m"], grace=0.0, fill_empty=True, late_policy="amend")


def test_flat_candles_carry_the_amended_close():
    rows = [(EQ, at("09:15:10"), 100.0, 1.0), (EQ, at("09:15:20"), 101.0, 2.0),
            (EQ2, at("09:16:00"), 50.0, 1.0),                 # the clock closes EQ's 09:15 (grace 0)
            (EQ, at("09:15:30"), 105.0, 3.0),                 # late: amends 09:15, close 105
            (EQ2, at("09:17:00"), 50.0, 1.0), (EQ, at("09:18:10"), 106.0, 4.0)]   # flat 09:16, 09:17 at 105
    o = run_oracle(rows, ["1m"], grace=0.0, fill_empty=True, late_policy="amend")
    assert [c[4] for c in got(o, "1m")] == [101, 105, 105, 105, 106]  # 09:15, its amendment, flat 09:16-09:17
    check_package(rows, ["1m"], grace=0.0, fill_empty=True, late_policy="amend")


def test_frame_last_version_wins_and_index_is_ist():
    o = run_oracle(AMEND, ["1m"], grace=1.0, late_policy="amend")
    f = o.frame(EQ, "1m")
    assert list(f.columns) == ["open", "high", "low", "close", "volume"] and f.index.name == "date"
    assert str(f.index.tz) == "Asia/Kolkata" and f.index.is_monotonic_increasing
    assert f.iloc[0].tolist() == [100, 108, 99, 99, 20]


def test_feed_takes_a_batch_and_splits_do_not_matter():
    a = Oracle(["1m", "7m"])
    a.feed(to_batch(LONE_JUMPS))
    a.flush()
    b = Oracle(["1m", "7m"])
    for part in batches(LONE_JUMPS, [2, 3, 5]):
        b.feed(part)
    b.flush()
    assert len(a.closed) == len(b.closed) == 4 and not diff(a.closed, b.closed) and a.counts == b.counts
