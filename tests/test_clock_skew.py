"""A machine whose clock is 8 s ahead of the exchange (README "Candle conventions" rule 6).

The simulator runs in this process on the true clock; a kernel-like subprocess streams from it through
the public API (``k.stream(..., source="sim")`` with ``KITEOHLC_TICKER_URL``/``KITEOHLC_API_URL``
pointing at it) under libfaketime ``FAKETIME=+8s`` (monotonic clocks faked too). Its closed 5 s candles
must equal the oracle's over what the simulator sent (before the exchange clock, ~1/4 of the volume
went missing: candles closed 8 s early and the rest of their ticks were dropped as late), and it must
say once that the machine is 8 s ahead. The same subprocess on the true clock must not say so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from conftest import need
from kiteohlc_lab.core.timeframes import NS
from kiteohlc_lab.feeds.simulator import KiteSimulator
from conftest import wait_for  # noqa: E402

pytestmark = pytest.mark.integration

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
SYMS = {"RELIANCE": 738561, "INFY": 408065, "NIFTY25DECFUT": 13238786}
MARKET_S = 27  # seconds of market streamed
COLS = ["open", "high", "low", "close", "volume"]
SAID = re.compile(r"this machine's clock is (\d+(?:\.\d+)?) s ahead of the exchange; "
                  r"candles follow the exchange's time")

# libfaketime 0.9.10 (Debian 12) fakes CLOCK_MONOTONIC but does not wrap sem_clockwait, which CPython
# 3.11 uses for every timed lock wait (Event.wait, Queue.get(timeout=...)): the deadline, taken on the
# faked monotonic clock, is decades ahead of the kernel's, so each timed wait blocks forever. This shim
# (preloaded after libfaketime) turns the deadline into the kernel's clock; the clocks stay faked.
SEM_SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <semaphore.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
int sem_clockwait(sem_t *sem, clockid_t clock, const struct timespec *abs) {
    static int (*real)(sem_t *, clockid_t, const struct timespec *);
    if (!real) real = (int (*)(sem_t *, clockid_t, const struct timespec *))dlsym(RTLD_NEXT, "sem_clockwait");
    struct timespec fake_now, real_now, t;
    clock_gettime(clock, &fake_now);               /* libfaketime's: the clock the caller read */
    syscall(SYS_clock_gettime, clock, &real_now);  /* the kernel's */
    long long rel = (long long)(abs->tv_sec - fake_now.tv_sec) * 1000000000LL + (abs->tv_nsec - fake_now.tv_nsec);
    long long r = (long long)real_now.tv_sec * 1000000000LL + real_now.tv_nsec + (rel > 0 ? rel : 0);
    t.tv_sec = r / 1000000000LL; t.tv_nsec = r % 1000000000LL;
    return real(sem, clock, &t);
}
"""


def sem_shim(tmp: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    need(cc, "a C compiler (cc) is needed to build the sem_clockwait shim for libfaketime")
    src, lib = tmp / "semshim.c", tmp / "semshim.so"
    src.write_text(SEM_SHIM_C)
    res = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(lib), str(src), "-ldl"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return lib


KERNEL = textwrap.dedent('''
    import faulthandler, json, sys, threading, time
    import kiteohlc_lab as k

    faulthandler.dump_traceback_later(90, exit=True)  # a hang shows where, in the test's report

    syms, out = sys.argv[1].split(","), sys.argv[2]
    k.stream(",".join(syms), "5s", source="sim")
    # the test's word once the market paused: ticks sent, and each symbol's last candle start
    word = json.loads(sys.stdin.readline())
    ev, deadline = threading.Event(), time.monotonic() + 40

    def done():  # every tick arrived and every candle up to the last one is closed (clock: grace)
        if k.status()[0]["feed"]["ticks"] < word["n"]:
            return False
        for s in syms:
            df = k.candles(s, "5s")
            closed = k.candles(s, "5s", closed_only=True)
            if len(df) != len(closed) or not len(closed) or int(closed.index.asi8[-1]) < word["last"][s]:
                return False
        return True

    while time.monotonic() < deadline and not done():
        ev.wait(0.05)
    status = k.status()[0]
    frames = {}
    for s in syms:
        df = k.candles(s, "5s", closed_only=True)
        frames[s] = {"start": [int(x) for x in df.index.asi8],
                     **{c: df[c].astype(float).tolist() for c in ("open", "high", "low", "close", "volume")}}
    k.stop()
    with open(out, "w") as f:
        json.dump({"status": status, "candles": frames, "word": word}, f, default=str)
''')


class Kernel:
    """One kernel-like subprocess streaming from the simulator (killed at teardown if still running)."""

    def __init__(self, tmp: Path, name: str, sim: KiteSimulator, faketime: str | None,
                 preload: str = "") -> None:
        self.out = tmp / f"{name}.json"
        self.err_path = tmp / f"{name}.stderr"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("KITEOHLC_", "KITE_", "FAKETIME", "LD_PRELOAD"))}
        env.update(KITEOHLC_TICKER_URL=sim.ticker_url, KITEOHLC_API_URL=sim.api_url,
                   KITEOHLC_DATA_DIR=str(tmp / f"{name}-data"), PYTHONUNBUFFERED="1")
        if faketime is not None:
            env.update(LD_PRELOAD=preload, FAKETIME=faketime)
        self.err = open(self.err_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", KERNEL, ",".join(SYMS), str(self.out)],
            stdin=subprocess.PIPE, stdout=self.err, stderr=subprocess.STDOUT, env=env, text=True,
            cwd=str(tmp))

    def output(self) -> str:
        self.err.flush()
        return self.err_path.read_text()

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the kernel exited ({self.proc.returncode}):\n{self.output()}")
        return True

    def finish(self, word: dict) -> dict:
        self.proc.stdin.write(json.dumps(word) + "\n")
        self.proc.stdin.flush()
        self.proc.wait(60)
        assert self.proc.returncode == 0, self.output()
        return json.loads(self.out.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.err.close()


def oracle_frames(sim: KiteSimulator) -> dict:
    """The oracle over every tick sent, in wire order, live on the true clock (the exchange stamps
    stand for the receive times), flushed: every candle closed."""
    from oracle import Oracle

    o = Oracle(["5s"], live=True)
    sent = sim.sent()
    for i in range(len(sent)):
        o.tick(int(sent.token[i]), int(sent.ts[i]), float(sent.price[i]), float(sent.volume[i]),
               float(sent.oi[i]), now_ns=int(sent.ts[i]))
    o.flush()
    return {s: o.frame(t, "5s", closed_only=True) for s, t in SYMS.items()}


def as_frame(d: dict) -> pd.DataFrame:
    index = pd.DatetimeIndex(pd.to_datetime(d["start"], unit="ns", utc=True), name="date").tz_convert("Asia/Kolkata")
    return pd.DataFrame({c: d[c] for c in COLS}, index=index, dtype=float)


def test_clock_8s_ahead_candles_follow_the_exchange(tmp_path):
    need(LIBFAKETIME.exists(), f"libfaketime is not installed ({LIBFAKETIME}; apt-get install faketime)")
    preload = f"{LIBFAKETIME} {sem_shim(tmp_path)}"
    sim = KiteSimulator(tick_interval=0.25, heartbeat_interval=0.5, seed=3).start()
    kernels: list[Kernel] = []
    try:
        sim.pause()  # until both kernels are subscribed in full mode (exchange stamps on every tick)
        ahead = Kernel(tmp_path, "ahead", sim, "+8s", preload)
        true = Kernel(tmp_path, "true", sim, None)
        kernels = [ahead, true]

        def subscribed() -> bool:
            all(k.alive() for k in kernels)
            full = [s for s in sim.subscriptions() if all(s.get(t) == "full" for t in SYMS.values())]
            return len(full) == 2

        wait_for(subscribed, 60, "both kernels' full-mode subscriptions")
        sim.resume()
        wait_for(lambda: len(sim.sent()) and all(k.alive() for k in kernels)
                 and int(sim.sent().ts.max() - sim.sent().ts.min()) >= MARKET_S * NS,
                 MARKET_S + 15, f"{MARKET_S} s of market")
        sim.pause()
        sent = sim.sent()
        n = len(sent)
        last = {s: int(sent.ts[sent.token == t].max()) // (5 * NS) * (5 * NS) for s, t in SYMS.items()}
        word = {"n": n, "last": last}
        got_ahead, got_true = ahead.finish(word), true.finish(word)
        out_ahead, out_true = ahead.output(), true.output()
    finally:
        for k in kernels:
            k.kill()
        sim.stop()

    want = oracle_frames(sim)
    for name, got in (("ahead", got_ahead), ("true", got_true)):
        st = got["status"]
        assert st["feed"]["ticks"] == n, (name, st)
        for sym in SYMS:
            have = as_frame(got["candles"][sym])
            assert len(want[sym]) >= 5
            total = (have["volume"].sum(), want[sym]["volume"].sum())
            side = pd.concat({"kernel": have, "oracle": want[sym][COLS]}, axis=1)
            assert have.equals(want[sym][COLS]), (
                f"{name} kernel {sym} 5s candles differ from the oracle's (volume {total[0]:g} vs "
                f"{total[1]:g}; clock offset {st.get('clock_offset_s')} s, late {st.get('late')}):\n"
                f"{side.to_string()}")
        assert st.get("late", 0) == 0, (name, st)

    said = SAID.findall(out_ahead)
    assert len(said) == 1, out_ahead
    assert 7 <= float(said[0]) <= 9, out_ahead
    assert 7 <= float(got_ahead["status"]["clock_offset_s"]) <= 9, got_ahead["status"]
    assert "this machine's clock is" not in out_true, out_true
    assert abs(float(got_true["status"]["clock_offset_s"])) < 2, got_true["status"]
