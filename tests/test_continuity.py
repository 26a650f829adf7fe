"""A kernel that dies mid-candle is continued by the next one: history + live, no gap, no duplicate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kiteohlc_lab.stores.redis_live import RedisLive

from conftest import need, redis_available
from kiteohlc_lab.feeds.synthetic import make_ticks, write_tape
from oracle import Oracle

TFS = ["1m", "5m", "15m"]
SYMS = {"RELIANCE": 738561, "INFY": 408065, "NIFTY": 256265}

KERNEL = textwrap.dedent(
    """
    import json, os, signal, sys
    import kiteohlc_lab as k
    tape, tfs, out, die = sys.argv[1], sys.argv[2].split(","), sys.argv[3], sys.argv[4] == "die"
    k.stream("RELIANCE,INFY,NIFTY", *tfs, source="replay", tape=tape)
    assert k.wait(120)
    res = {}
    for sym in ("RELIANCE", "INFY", "NIFTY"):
        for tf in tfs:
            df = k.candles(sym, tf)
            res[f"{sym}/{tf}"] = {"index": [t.isoformat() for t in df.index],
                                  "rows": df[["open", "high", "low", "close", "volume"]].values.tolist(),
                                  "forming": None if df.attrs.get("forming") is None else df.attrs["forming"].isoformat()}
    with open(out, "w") as fh:
        json.dump(res, fh)
    if die:
        os.kill(os.getpid(), signal.SIGKILL)   # the kernel dies: no %ohlc_stop, no atexit
    """
)


def reference(ticks):
    ref = Oracle(TFS)  # replay: one continuous tape, whichever kernel reads which part of it
    ref.feed(ticks)
    ref.flush()
    out = {}
    for sym, tok in SYMS.items():
        for tf in TFS:
            df = ref.frame(tok, tf)
            out[f"{sym}/{tf}"] = ([t.isoformat() for t in df.index],
                                  df[["open", "high", "low", "close", "volume"]].values.tolist())
    return out


def run_kernel(tape: Path, out: Path, env: dict, die: bool) -> dict:
    res = subprocess.run([sys.executable, "-c", KERNEL, str(tape), ",".join(TFS), str(out), "die" if die else "live"],
                         env=env, capture_output=True, text=True, timeout=180)
    if die:
        assert res.returncode == -9, res.stderr[-2000:]
    else:
        assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(out.read_text())


def shutdown_embedded(data_dir: Path) -> None:
    sock = data_dir / "redis" / "socket"
    if sock.is_file():
        import redis

        try:
            redis.Redis(unix_socket_path=sock.read_text().strip()).shutdown(nosave=True)
        except Exception:
            pass


@pytest.mark.slow
@pytest.mark.parametrize("store", ["embedded", "redis-server"])
def test_kernel_killed_mid_candle_is_continued_by_the_next(store, tmp_path):
    if store == "redis-server":
        need(redis_available(), "no Redis server on 127.0.0.1:6379")
    ticks, names = make_ticks(8000, seed=21)
    # cut in the middle of a 15-minute candle (and so of the 5m and 1m ones around it)
    ts_local = pd.to_datetime(ticks.ts, utc=True).tz_convert("Asia/Kolkata")
    minute = ts_local.minute
    k = int(np.flatnonzero((minute % 15 == 7) & (ts_local.second >= 30))[len(ticks) // 400])
    first, rest = ticks.take(slice(0, k)), ticks.take(slice(k, None))
    tape_a = write_tape(tmp_path / "a.csv", first, names)
    tape_b = write_tape(tmp_path / "b.csv", rest, names)
    data_dir = tmp_path / "data"
    env = {key: v for key, v in os.environ.items() if not key.startswith(("KITE_", "KITEOHLC_"))}
    env["KITEOHLC_DATA_DIR"] = str(data_dir)
    if store == "redis-server":
        env["KITEOHLC_REDIS_URL"] = "redis://127.0.0.1:6379/0"
        env["KITEOHLC_REDIS_PREFIX"] = f"kohlc-test-{uuid.uuid4().hex[:8]}:"
    try:
        run_kernel(tape_a, tmp_path / "a.json", env, die=True)
        got = run_kernel(tape_b, tmp_path / "b.json", env, die=False)
    finally:
        if store == "embedded":
            shutdown_embedded(data_dir)
        else:
            import redis

            r = redis.Redis.from_url("redis://127.0.0.1:6379/0")
            RedisLive(r, prefix=env["KITEOHLC_REDIS_PREFIX"]).delete_all()  # SCAN + UNLINK, never FLUSHALL
            r.close()
    want = reference(ticks)
    for key, (index, rows) in want.items():
        assert got[key]["index"] == index, key
        np.testing.assert_allclose(np.array(got[key]["rows"]), np.array(rows), rtol=0, atol=1e-9, err_msg=key)
        assert got[key]["forming"] == index[-1]  # the tape ended, the last candle is still forming
