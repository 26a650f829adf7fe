"""A collector (a real subprocess, the tick store on by default for collectors) SIGKILLed while a tick
file is open: the files it had published stay readable (pyarrow.dataset reads the directory without
error, the open part is invisible), a restarted collector continues the day in new files of the same
date directory (nothing overwritten), and no tick is stored twice (each stored tick is one the
simulator sent, no more often than it was sent)."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import stop_embedded, wait_for
from kiteohlc_lab.feeds.simulator import KiteSimulator

TOKEN = "sekrit-access-token-4242"


def parts(root: Path, pid: int | None = None) -> list[Path]:
    out = sorted(p for p in root.glob("host=*/date=*/part-*.parquet"))
    return [p for p in out if pid is None or f"-{pid}-" in p.name]


@pytest.fixture
def env(tmp_path):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("KITEOHLC_", "KITE_"))}
    e["KITE_API_KEY"], e["KITE_ACCESS_TOKEN"] = "testkey", TOKEN
    e["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return e


def test_sigkill_mid_file_then_restart(env, tmp_path):
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq


    sim = KiteSimulator(tick_interval=0.25, heartbeat_interval=0.5, api_key="testkey",
                        access_token=TOKEN).start()
    data, root = tmp_path / "data", tmp_path / "ticks"
    cmd = [sys.executable, "-m", "kiteohlc_lab.cli", "collect", "NIFTY,RELIANCE", "10s", "--source", "sim",
           "--ticker-url", sim.ticker_url, "--api-url", sim.api_url, "--data-dir", str(data),
           "--tick-store", str(root), "--tick-file-seconds", "1", "--heartbeat", "0.5",
           "--lease-ttl", "2", "--quiet"]
    procs: list[subprocess.Popen] = []
    try:
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(first)
        wait_for(lambda: len(parts(root, first.pid)) >= 2, 40, "two published files of the first collector")
        wait_for(lambda: list(root.glob(f"host=*/date=*/.part-*-{first.pid}-*.tmp")), 10, "an open file")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        before = {p: p.read_bytes() for p in parts(root)}
        assert before and all(pq.read_table(p).num_rows > 0 for p in before)
        whole = ds.dataset(str(root), format="parquet", partitioning="hive").to_table()  # no error
        assert whole.num_rows == sum(pq.read_metadata(p).num_rows for p in before)
        # (the killed writer's open part, if one was open at the kill, is a hidden .tmp: not read)

        second = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(second)
        wait_for(lambda: len(parts(root, second.pid)) >= 2, 40, "two files of the restarted collector")
        assert not list(root.glob(f"host=*/date=*/.part-*-{first.pid}-*.tmp")), "the dead part was swept"
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0
        sim.pause()
        sent = sim.sent()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        sim.stop()
        stop_embedded(data)

    # the first collector's files are untouched; the second's sit beside them, the same day
    assert {p: p.read_bytes() for p in parts(root, first.pid)} == before
    dates = {p.parent.name for p in parts(root)}
    assert {p.parent.name for p in parts(root, second.pid)} <= dates and len(dates) <= 2
    assert not list(root.glob("host=*/date=*/.part-*.tmp")), "a clean stop publishes its open file"
    table = ds.dataset(str(root), format="parquet", partitioning="hive").to_table()
    t1 = max(pq.read_table(p).column("exchange_time").cast("int64").to_numpy().max() for p in before)
    stamps = table.column("exchange_time").cast("int64").to_numpy()
    assert (stamps > t1).any(), "the day continued after the restart"
    # nothing duplicated: every stored tick was sent, and no more often than sent
    key = lambda tok, ts, price: (int(tok), int(ts), round(float(price), 2))  # noqa: E731
    wire = collections.Counter(key(*r) for r in zip(sent.token, sent.ts, sent.price))
    stored = collections.Counter(key(*r) for r in zip(table.column("token").to_numpy(), stamps,
                                                      table.column("last_price").to_numpy()))
    extra = {k: n for k, n in stored.items() if n > wire.get(k, 0)}
    assert not extra, f"stored more often than sent: {list(extra.items())[:3]}"
