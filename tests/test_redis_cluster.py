"""The live store through a real 3-master Redis Cluster (and a Sentinel-monitored server) on loopback.

The servers are the machine's ``redis-server``, started here on free ports in a temp dir and killed
at teardown; the tests are skipped when ``redis-server`` is not installed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import numpy as np
import pytest

from kiteohlc_lab.core.candles import CandleBatch

from conftest import needs

pytestmark = [pytest.mark.integration,
              needs(shutil.which("redis-server") and shutil.which("redis-cli"),
                    "redis-server / redis-cli not installed")]

NIFTY, RELIANCE, INFY = 256265, 738561, 408065
T0 = 1_795_000_020 * 10**9


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_ports(n: int, bus: bool = False) -> list[int]:
    """``n`` free loopback ports (with ``bus``, port + 10000 free too: the cluster bus)."""
    out: list[int] = []
    while len(out) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p < 55000 and p not in out and (not bus or _free(p + 10000)):
            out.append(p)
    return out


def _wait_ping(port: int, timeout: float = 10.0) -> None:
    import redis

    end = time.monotonic() + timeout
    while True:
        try:
            if redis.Redis(port=port, socket_timeout=0.5).ping():
                return
        except Exception:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


def _cluster_ok(port: int) -> bool:
    import redis

    info = redis.Redis(port=port).execute_command("CLUSTER INFO")
    if isinstance(info, dict):
        return info.get("cluster_state") == "ok"
    return b"cluster_state:ok" in info if isinstance(info, bytes) else "cluster_state:ok" in info


class Servers:
    def __init__(self, tmp) -> None:
        self.tmp, self.procs = tmp, []

    def start(self, port: int, *extra: str, conf: str | None = None) -> None:
        args = ["redis-server"] + ([conf] if conf else []) + [
            "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.tmp), "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no", *extra]
        self.procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_ping(port)

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``redis+cluster://`` URL of a fresh 3-master cluster."""
    import redis

    tmp = tmp_path_factory.mktemp("cluster")
    srv = Servers(tmp)
    ports = free_ports(3, bus=True)
    try:
        for p in ports:
            srv.start(p, "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{p}.conf",
                      "--cluster-node-timeout", "3000")
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30)
        end = time.monotonic() + 20
        while not all(_cluster_ok(p) for p in ports):
            assert time.monotonic() < end, "cluster did not become ok"
            time.sleep(0.1)
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports[:2])
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    srv = Servers(tmp)
    (port,) = free_ports(1)
    try:
        srv.start(port)
        yield f"redis://127.0.0.1:{port}/0", port, srv
    finally:
        srv.stop()


def batch(tf: str, tokens, starts, closed=True) -> CandleBatch:
    n = len(tokens)
    p = np.arange(n, dtype=float) + 100.0
    return CandleBatch(tf, np.asarray(tokens, np.int64), np.asarray(starts, np.int64), p, p + 1,
                       p - 1, p + 0.5, np.full(n, 10.0), np.full(n, np.nan), np.ones(n, np.int64),
                       closed)


def test_live_store_on_cluster_state_forming_and_streams(cluster) -> None:
    from kiteohlc_lab.stores.redis_live import RedisLive, redis_client

    r = redis_client(cluster)
    live = RedisLive(r, prefix="t1:")
    try:
        toks = [NIFTY, RELIANCE, INFY]
        # an instrument's keys share one slot (hash tag); instruments spread over the masters
        for t in toks:
            slots = {r.keyslot(live.key(t, k, tf)) for k, tf in
                     (("state", None), ("last", None), ("forming", "1m"), ("closed", "5m"))}
            assert len(slots) == 1
        assert len({r.keyslot(live.key(t, "state")) for t in toks}) == 3
        states = {t: {"clock": T0 + i, "vol": {"prev": 5.0 * i}} for i, t in enumerate(toks)}
        live.write([batch("1m", toks, [T0] * 3, closed=False)],
                   [batch("1m", toks, [T0 - 60 * 10**9] * 3), batch("5m", toks[:1], [T0 - 300 * 10**9])],
                   states)
        assert live.load_states(toks + [999]) == states
        f = live.forming(RELIANCE, "1m")
        assert f is not None and f.start == T0 and f.close == 101.5 and not f.closed
        rc = live.recent_closed(INFY, "1m")
        assert rc.start.tolist() == [T0 - 60 * 10**9] and rc.close.tolist() == [102.5]
        assert len(live.recent_closed(NIFTY, "5m")) == 1
        assert live.known_tokens() == sorted(toks)
        assert live.last_tick(NIFTY)["price"] == "100.5"
        # one instrument's commands pipelined in a transaction (one slot): fine on a cluster
        pipe = r.pipeline(transaction=True)
        pipe.hget(live.key(RELIANCE, "forming", "1m"), "close")
        pipe.get(live.key(RELIANCE, "state"))
        assert pipe.execute()[0] == b"101.5"
        h = live.health()
        assert h["ok"] and "Cluster" in live.describe()
        assert live.delete_all() >= 3 * 4 and live.known_tokens() == []
    finally:
        r.close()


def _replay(tmp_path, monkeypatch, redis_url: str, tape) -> tuple:
    from kiteohlc_lab import api

    monkeypatch.setenv("KITEOHLC_REDIS_URL", redis_url)
    monkeypatch.setenv("KITEOHLC_DATA_DIR", str(tmp_path / redis_url.split(":")[0].replace("+", "_")))
    api.reset()
    m = api.manager()
    m.start("ALL", ["1m", "5m"], tape=str(tape))
    assert m.wait(60)
    out = {(tok, tf): m.candles(tok, tf) for tok in (NIFTY, RELIANCE, INFY) for tf in ("1m", "5m")}
    live = m.stores()[0]
    streams = {tok: live.recent_closed(tok, "1m", 10_000).to_frame() for tok in (RELIANCE, INFY)}
    assert "Cluster" in m.stores()[2] or redis_url.startswith("redis://")
    live.delete_all()
    api.reset()
    return out, streams


def test_manager_replay_through_cluster_equals_single_server(cluster, single, tmp_path,
                                                             monkeypatch) -> None:
    from kiteohlc_lab.feeds.synthetic import make_ticks, write_tape

    ticks, symbols = make_ticks(6000, n_instruments=5, seed=3)
    tape = write_tape(tmp_path / "tape.csv", ticks, symbols)
    a, sa = _replay(tmp_path, monkeypatch, cluster, tape)
    b, sb = _replay(tmp_path, monkeypatch, single[0], tape)
    for k in a:
        assert len(a[k]) > 3
        assert a[k].equals(b[k]), k
    for tok in sa:
        assert len(sa[tok]) >= 1 and sa[tok].equals(sb[tok])  # replays publish the newest only


def test_sentinel_url_finds_the_master(single, tmp_path) -> None:
    import redis

    from kiteohlc_lab.stores.factory import open_stores

    _, port, srv = single
    (sport,) = free_ports(1)
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"sentinel monitor mymaster 127.0.0.1 {port} 1\n")
    srv.start(sport, "--sentinel", conf=str(conf))
    live, hist, desc = open_stores(f"redis+sentinel://127.0.0.1:{sport}/mymaster/0",
                                   "", str(tmp_path / "d"), prefix="sent:", resilient=False)
    try:
        live.write([], [batch("1m", [RELIANCE], [T0])], {RELIANCE: {"clock": 1}})
        assert redis.Redis(port=port).exists(f"sent:{{{RELIANCE}}}:state")
        assert live.load_states([RELIANCE]) == {RELIANCE: {"clock": 1}}
        assert "Sentinel" in desc and live.health()["ok"]
        live.delete_all()
    finally:
        live.close()
        hist.close()
