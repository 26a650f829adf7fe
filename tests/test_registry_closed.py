"""SeriesRegistry.on_closed: its two paths (Python lists for the few candles of an attached reader's
wake, arrays above SMALL_BATCH) give the series the same candles and the callbacks the same calls,
in the same order, on batches with the mess a feed sends (instruments nobody reads, unsorted
starts, the same start twice in a batch, amends, NaN oi, a start older than the series' last)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from kiteohlc_lab.config import KiteOHLC
from kiteohlc_lab.core.bounded import ErrorLog
from kiteohlc_lab.core.candles import CandleBatch
from kiteohlc_lab.core.series import SeriesBuffer
from kiteohlc_lab.runtime import registry as registry_mod

NS = 1_000_000_000
T0 = 1_767_238_200 * NS  # 2026-01-01 09:00 IST


class _Stream:
    attached = True  # the worker is not waited for: the test waits itself


def _registry(calls: list) -> registry_mod.SeriesRegistry:
    reg = registry_mod.SeriesRegistry(lambda: KiteOHLC(), threading.RLock(), lambda: (None, None, ""),
                                      lambda: [], int, ErrorLog())
    for tok in (1, 2, 3):  # 4 and 5 arrive too: nobody reads them
        reg.buffers[(tok, "1m")] = SeriesBuffer(tok, "1m")
    for tok in (2, 3, 6):  # 6: a callback without a series
        reg.on_candle(tok, "1m", lambda c, tag=tok: calls.append((tag, c)))
    reg.on_candle(3, "1m", lambda c: calls.append(("second", c)))  # two callbacks, in order
    return reg


def _batches(seed: int) -> list[CandleBatch]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(60):
        n = int(rng.integers(1, 9))
        tok = rng.choice([1, 2, 3, 4, 5, 6], n)
        start = T0 + (k + rng.integers(-3, 2, n)) * 60 * NS  # unsorted, repeats, older than the last
        p = rng.uniform(90, 110, n).round(2)
        oi = np.where(rng.random(n) < 0.3, np.nan, rng.integers(0, 1000, n).astype(float))
        out.append(CandleBatch("1m", tok.astype(np.int64), start.astype(np.int64), p, p + 1, p - 1,
                               p + 0.5, rng.integers(0, 500, n).astype(float), oi,
                               rng.integers(1, 50, n).astype(np.int64), True,
                               None if k % 5 == 0 else rng.random(n) < 0.2))  # None: an own stream's
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_small_and_array_paths_agree(seed, monkeypatch):
    got = {}
    for name, limit in (("small", registry_mod.SMALL_BATCH), ("array", -1)):
        monkeypatch.setattr(registry_mod, "SMALL_BATCH", limit)
        calls: list = []
        reg = _registry(calls)
        for b in _batches(seed):
            reg.on_closed(_Stream(), [b])
        assert reg.wait_callbacks(10)
        frames = {tok: reg.buffers[(tok, "1m")].frame(closed_only=True) for tok in (1, 2, 3)}
        got[name] = (frames, calls)
        reg.stop_callbacks(2)
    (fs, cs), (fa, ca) = got["small"], got["array"]
    for tok in (1, 2, 3):
        assert len(fa[tok]) > 0
        assert fs[tok].equals(fa[tok]), tok
    assert len(ca) > 100 and {tag for tag, _ in ca} == {2, 3, 6, "second"}
    # repr: NaN oi compares unequal to itself; the text shows every field and its type
    assert [(tag, repr(c)) for tag, c in cs] == [(tag, repr(c)) for tag, c in ca]
    assert all(type(c.start) is int and type(c.oi) is float and type(c.amended) is bool for _, c in cs)
