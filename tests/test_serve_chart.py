"""``kiteohlc-lab serve``'s chart pages: ``/`` lists streams, ``/chart/{symbol}/{tf}`` loads the chart
module, ``.../events`` is a server-sent event stream: one full load, then deltas; all behind the key
(header) or a session cookie from the ``/login`` form; the key is never in a URL or a response."""

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

KEY = "s3cret"


@pytest.fixture
def served():
    m = FakeManager()
    m.buffers[("NIFTY", "1m")] = FakeSeries("1m", n=30)
    m.streams["sim-1"] = dict(stream="sim-1", source="sim", state="running", symbols=["NIFTY"],
                              timeframes=["1m"], ticks_per_s=2.0)
    with TestClient(build_app(m, KEY)) as c:
        yield c, m


def events(client, url: str, **kw) -> list[dict]:
    r = client.get(url, **kw)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    return [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]


PAGES = ("/", "/chart/NIFTY/1m", "/chart/NIFTY/1m/events?limit=1", "/static/chart.js")


def login(client, key: str = KEY, next_path: str = "/chart/NIFTY/1m"):
    return client.post("/login", data={"key": key, "next": next_path}, follow_redirects=False)


def no_key_in(r) -> None:
    """The key is in no body, header value or cookie of a response (nor of the redirects before it)."""
    for x in [*r.history, r]:
        assert KEY not in x.text, x.url
        for name, value in x.headers.items():
            assert KEY not in value, (x.url, name)


def test_pages_without_a_credential_are_a_login_form(served):
    client, _ = served
    for url in PAGES:
        r = client.get(url)
        assert r.status_code == 401, url
        assert '<form method="post" action="/login">' in r.text and 'type="password"' in r.text, url
        assert "NIFTY 1m" not in r.text and "running" not in r.text and "mountEventSource" not in r.text, url
        assert "text/event-stream" not in r.headers["content-type"], url
        no_key_in(r)
        # the old ?key= no longer opens anything
        r = client.get(url + ("&" if "?" in url else "?") + f"key={KEY}")
        assert r.status_code == 401 and "mountEventSource" not in r.text, url
    assert 'name="next" value="/chart/NIFTY/1m"' in client.get("/chart/NIFTY/1m").text
    assert 'name="next" value="/chart/NIFTY/1m"' in client.get("/chart/NIFTY/1m/events").text
    # the JSON API: header only, never the cookie
    assert client.get("/candles/NIFTY/1m").status_code == 401
    assert login(client).status_code == 303 and client.cookies.get("kohlc_session")
    assert client.get("/candles/NIFTY/1m").status_code == 401
    assert client.get(f"/candles/NIFTY/1m?key={KEY}").status_code == 401
    assert client.get("/status", headers={"X-API-Key": KEY}).status_code == 200


def test_wrong_key_is_403_and_the_form_again(served):
    client, _ = served
    for key in ("wrong", "", KEY + "x", KEY[:-1]):
        r = login(client, key)
        assert r.status_code == 403, key
        assert '<form method="post" action="/login">' in r.text and 'value="/chart/NIFTY/1m"' in r.text
        assert "set-cookie" not in r.headers and not client.cookies
        no_key_in(r)
    assert client.get("/chart/NIFTY/1m").status_code == 401
    assert client.post("/login", content=b"key=" + b"x" * 10_000,
                       headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 413


def test_right_key_sets_a_session_cookie_then_pages_and_events_work(served):
    client, _ = served
    r = login(client)
    assert r.status_code == 303 and r.headers["location"] == "/chart/NIFTY/1m"
    no_key_in(r)
    cookie = r.headers["set-cookie"]
    low = cookie.lower()
    assert "kohlc_session=" in cookie and "httponly" in low and "samesite=strict" in low and "path=/" in low
    assert "max-age=43200" in low
    token = client.cookies.get("kohlc_session")
    assert token and KEY not in token and len(token) >= 32
    r = client.get("/")
    assert r.status_code == 200 and 'href="/chart/NIFTY/1m"' in r.text and "running" in r.text
    assert "key=" not in r.text
    no_key_in(r)
    r = client.get("/chart/NIFTY/1m")
    assert r.status_code == 200 and "mountEventSource" in r.text
    assert '"/static/chart.js"' in r.text and '"/chart/NIFTY/1m/events"' in r.text and "key=" not in r.text
    no_key_in(r)
    msgs = events(client, "/chart/NIFTY/1m/events?limit=1")
    assert msgs[0]["kind"] == "full" and msgs[0]["n"] == 30
    assert client.get("/chart/NOPE/1m").status_code == 404
    # following the redirect in one go: the form posts, the page comes back; another client has no session
    with TestClient(client.app) as other:
        assert other.get("/chart/NIFTY/1m").status_code == 401
        r = other.post("/login", data={"key": KEY, "next": "/chart/NIFTY/1m"})
        assert r.status_code == 200 and "mountEventSource" in r.text
        no_key_in(r)
        other.cookies.set("kohlc_session", token + "x")
        assert other.get("/chart/NIFTY/1m").status_code == 401


def test_header_still_opens_the_pages(served):
    client, _ = served
    r = client.get("/chart/NIFTY/1m", headers={"X-API-Key": KEY})
    assert r.status_code == 200 and "mountEventSource" in r.text and "key=" not in r.text
    assert client.get("/chart/NIFTY/1m", headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get("/chart/NOPE/1m", headers={"X-API-Key": KEY}).status_code == 404


def test_login_only_redirects_to_its_own_pages(served):
    client, _ = served
    for target, where in (("https://evil.example/", "/"), ("//evil.example/x", "/"), ("/\\evil", "/"),
                          ("/candles/NIFTY/1m", "/"), ("/chart/NIFTY/1m?x=1", "/chart/NIFTY/1m"),
                          ("", "/"), ("/", "/")):
        client.cookies.clear()
        r = login(client, next_path=target)
        assert r.status_code == 303 and r.headers["location"] == where, target
    r = client.get("/login?next=//evil.example")
    assert r.status_code == 200 and 'name="next" value="/"' in r.text


def test_sessions_expire_and_hold_no_key():
    from kiteohlc_lab.serve_chart import Sessions

    now = [1000.0]
    s = Sessions(ttl=60, clock=lambda: now[0], limit=3)
    a = s.new()
    assert s.valid(a) and not s.valid(a + "x") and not s.valid("") and not s.valid(None)
    now[0] += 59
    assert s.valid(a)
    now[0] += 2
    assert not s.valid(a) and len(s) == 0
    tokens = [s.new() for _ in range(4)]  # past the limit the oldest goes
    assert not s.valid(tokens[0]) and all(s.valid(t) for t in tokens[1:]) and len(s) == 3
    assert not any(t in repr(s) for t in tokens) and "3 active" in repr(s)
    s.drop(tokens[1])
    assert not s.valid(tokens[1])


def test_page_loads_the_same_module(served):
    from kiteohlc_lab.notebook.chart import STATIC

    need_import("anywidget")
    client, _ = served
    login(client)
    if not STATIC.is_file():
        assert client.get("/static/chart.js").status_code == 503
        return
    r = client.get("/static/chart.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert "mountEventSource" in r.text and r.content == STATIC.read_bytes()
    assert "?key=" not in r.text


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
        msgs = events(client, "/chart/NIFTY/1m/events?limit=4", headers={"X-API-Key": KEY})
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
