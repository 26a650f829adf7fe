"""``kiteohlc-lab serve``'s chart pages: ``/`` lists streams, ``/chart/{symbol}/{tf}`` loads the chart
module, ``.../events`` is a server-sent event stream: one full load, then deltas; all behind the key."""

from __future__ import annotations

import base64
import json
import threading

import numpy as np
import pytest

from conftest import need_import
from conftest_notebook import FakeManager, FakeSeries

need_import("starlette", "starlette is not installed (pip install -e '.[serve]')")
need_import("httpx", "httpx is not installed (the test extra)")

from starlette.testclient import TestClient  # noqa: E402

from kiteohlc_lab.serve import build_app  # noqa: E402
from kiteohlc_lab.serve_chart import Tracker  # noqa: E402


@pytest.fixture
def served():
    m = FakeManager()
    m.buffers[("NIFTY", "1m")] = FakeSeries("1m", n=30)
    m.streams["sim-1"] = dict(stream="sim-1", source="sim", state="running", symbols=["NIFTY"],
                              timeframes=["1m"], ticks_per_s=2.0)
    with TestClient(build_app(m, "s3cret")) as c:
        yield c, m


def events(client, url: str) -> list[dict]:
    r = client.get(url)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    return [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]


def test_pages_are_behind_the_key(served):
    client, _ = served
    for url in ("/", "/chart/NIFTY/1m", "/chart/NIFTY/1m/events?limit=1", "/static/chart.js"):
        assert client.get(url).status_code == 401, url
        assert client.get(url + ("&" if "?" in url else "?") + "key=wrong").status_code == 401, url
    assert client.get("/candles/NIFTY/1m?key=s3cret").status_code == 401  # the JSON API: header only
    r = client.get("/?key=s3cret")
    assert r.status_code == 200 and 'href="/chart/NIFTY/1m?key=s3cret"' in r.text and "running" in r.text
    r = client.get("/chart/NIFTY/1m", headers={"X-API-Key": "s3cret"})
    assert r.status_code == 200 and "mountEventSource" in r.text
    assert client.get("/chart/NOPE/1m?key=s3cret").status_code == 404


def test_page_loads_the_same_module(served):
    from kiteohlc_lab.notebook.chart import STATIC

    need_import("anywidget")
    client, _ = served
    if not STATIC.is_file():
        assert client.get("/static/chart.js?key=s3cret").status_code == 503
        return
    r = client.get("/static/chart.js?key=s3cret")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert "mountEventSource" in r.text and r.content == STATIC.read_bytes()


def test_event_stream_is_one_full_load_then_deltas(served):
    client, m = served
    s = m.buffers[("NIFTY", "1m")]
    stop = threading.Event()

    def ticker():
        p = 22000.0
        while not stop.wait(0.03):
            p += 0.05
            s.tick(p)

    th = threading.Thread(target=ticker, daemon=True)
    th.start()
    try:
        msgs = events(client, "/chart/NIFTY/1m/events?key=s3cret&limit=4")
    finally:
        stop.set()
        th.join(2)
    assert [x["kind"] for x in msgs] == ["full", "bars", "bars", "bars"]
    full = msgs[0]
    assert full["n"] == 30 and full["title"] == "NIFTY 1m" and full["state"] == "running (sim)"
    close = np.frombuffer(base64.b64decode(full["buffers"][4]), np.float64)
    assert len(close) == 30
    assert [x["seq"] for x in msgs] == [1, 2, 3, 4]
    for d in msgs[1:]:
        assert len(d["bars"]) == 1 and len(json.dumps(d)) < 200


def test_tracker_reloads_a_rewritten_series():
    s = FakeSeries("1m", n=5)
    t = Tracker()
    assert t.next(s)["kind"] == "full" and t.next(s) is None
    s.add(1)
    assert t.next(s)["kind"] == "bars"
    with s._lock:
        s.rows = s.rows[1:]
        s.version += 1
    assert t.next(s)["kind"] == "full"
