"""The live chart on a web page, for ``kiteohlc-lab serve``: ``/`` lists the streams, ``/chart/{symbol}/{tf}``
is the notebook chart's JavaScript module (``kiteohlc_lab/static/chart.js``) fed by server-sent events
from ``/chart/{symbol}/{tf}/events``: one full load (base64 float64 columns), then only what changed,
at most ``rate`` messages per second (default 10), read from the manager's series (which follow the
stores a collector writes).

Behind the read API's key, which never goes into a URL or a page: browsers cannot send the
``X-API-Key`` header when they open a page or an ``EventSource``, so these routes take either the
header or a session cookie. Without one, a page is a small login form (no data) that POSTs the key
to ``/login``; a right key (compared in constant time) sets an HttpOnly, SameSite=Strict cookie
holding a random session token (never the key; tokens live in this process's memory and expire after
``SESSION_TTL``) and redirects (303) back to the page, whose module and event stream then carry the
cookie (same origin). The JSON API (``/candles``, ``/status``) stays header-only.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import json
import secrets
import threading
import time
from typing import Any, Callable
from urllib.parse import parse_qs, quote, urlsplit

import numpy as np

from .notebook.chart_data import COLS, STATIC, WINDOW, snapshot
from .notebook.handle import stream_state

HEARTBEAT = 15.0  # seconds between SSE comments on a quiet stream (proxies close idle connections)
SESSION_COOKIE = "kohlc_session"
SESSION_TTL = 12 * 3600.0  # seconds a login lasts
MAX_SESSIONS = 1000  # live logins kept; past it the oldest goes
_MAX_LOGIN_BODY = 8192


class Sessions:
    """The chart pages' logins: random tokens (never the key) kept in memory, each expiring ``ttl``
    seconds after its login. Only a digest of each token is stored; the repr shows counts, no token."""

    def __init__(self, ttl: float = SESSION_TTL, clock: Callable[[], float] = time.monotonic,
                 limit: int = MAX_SESSIONS) -> None:
        self.ttl, self.limit, self._clock = float(ttl), int(limit), clock
        self._lock = threading.Lock()
        self._expiry: dict[bytes, float] = {}

    @staticmethod
    def _digest(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "replace")).digest()

    def new(self) -> str:
        """A fresh session token (goes into the cookie only)."""
        token = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            self._expiry = {d: t for d, t in self._expiry.items() if t > now}
            while len(self._expiry) >= self.limit:
                del self._expiry[min(self._expiry, key=self._expiry.__getitem__)]
            self._expiry[self._digest(token)] = now + self.ttl
        return token

    def valid(self, token: str | None) -> bool:
        if not token or len(token) > 256:
            return False
        d = self._digest(token)
        with self._lock:
            exp = self._expiry.get(d)
            if exp is None:
                return False
            if exp <= self._clock():
                del self._expiry[d]
                return False
            return True

    def drop(self, token: str | None) -> None:
        if token:
            with self._lock:
                self._expiry.pop(self._digest(token), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._expiry)

    def __repr__(self) -> str:
        return f"Sessions({len(self)} active, ttl={self.ttl:g}s)"


class Tracker:
    """What one page has: a full load first, then the deltas since (as ``LiveChart`` sends them)."""

    def __init__(self) -> None:
        self.key: tuple[int, int] | None = None
        self.seq = 0
        self.total = 0
        self.last_t = -np.inf
        self.recent: dict[float, tuple] = {}

    def _remember(self, rows: np.ndarray) -> None:
        for r in rows[-WINDOW:]:
            self.recent[float(r[0])] = tuple(float(x) for x in r)
        if len(self.recent) > 2 * WINDOW:
            for k in sorted(self.recent)[: len(self.recent) - WINDOW]:
                del self.recent[k]

    def full(self, series: Any, **extra: Any) -> dict:
        snap = snapshot(series, None)
        rows = snap.rows
        self.seq += 1
        self.key, self.total = snap.key, snap.total
        self.last_t = float(rows[-1, 0]) if len(rows) else -np.inf
        self.recent = {}
        self._remember(rows)
        buffers = [base64.b64encode(np.ascontiguousarray(rows[:, j]).tobytes()).decode() for j in range(6)]
        return {"kind": "full", "seq": self.seq, "n": len(rows), "cols": list(COLS), "overlays": [],
                "markers": [], "buffers": buffers, **extra}

    def next(self, series: Any, **extra: Any) -> dict | None:
        """The message that brings the page up to date with ``series``, or None."""
        key = (id(series), int(series.version))
        if self.key is None or key[0] != self.key[0]:
            return self.full(series, **extra)
        if key == self.key:
            return None
        snap = snapshot(series, WINDOW)
        rows = snap.rows
        new = rows[:, 0] > self.last_t
        n_new = int(new.sum())
        if snap.total - n_new != self.total or (n_new and n_new == len(rows) and snap.total > n_new):
            return self.full(series, **extra)
        changed = [r for r in rows[~new] if self.recent.get(float(r[0])) != tuple(float(x) for x in r)]
        bars = changed + list(rows[new])
        self.key = snap.key
        if not bars:
            return None
        self.seq += 1
        self.total = snap.total
        self.last_t = max(self.last_t, float(rows[-1, 0]))
        self._remember(np.asarray(bars))
        return {"kind": "bars", "seq": self.seq, "bars": [[float(x) for x in r] for r in bars]}


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{margin:16px;font:14px "DejaVu Sans",sans-serif}} a{{color:#2962ff}}</style></head>
<body><div><a href="/">streams</a> · <b>{title}</b></div><div id="chart"></div>
<script type="module">
import {{ mountEventSource }} from "/static/chart.js";
const el = document.getElementById("chart");
window.kohlcChart = mountEventSource(el, {events}, {opts});
</script></body></html>
"""

LOGIN = """<!doctype html>
<html><head><meta charset="utf-8"><title>kiteohlc_lab: sign in</title></head>
<body style="font:14px sans-serif"><h3>kiteohlc_lab</h3>{message}
<form method="post" action="/login">
<input type="hidden" name="next" value="{next}">
<label>API key <input type="password" name="key" autocomplete="current-password" required autofocus></label>
<button type="submit">Sign in</button>
</form></body></html>
"""


def _safe_next(target: str) -> str:
    """Where a login may send the browser back to: a path of these pages on this server, else ``/``."""
    path = urlsplit(target or "/").path if "\\" not in (target or "") else "/"
    if path == "/" or (path.startswith("/chart/") and not path.startswith("//")):
        return path
    return "/"


def chart_routes(manager: Any, key_ok: Callable[[str], bool], rate: float = 10.0,
                 sessions: Sessions | None = None, header: str = "X-API-Key") -> list:
    """The routes of the chart pages and their login; ``key_ok(s)`` is the read API's constant-time
    key check on the ``header`` it is sent in, ``sessions`` the logins (a fresh ``Sessions()`` by
    default)."""
    API_KEY_HEADER = header
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
    from starlette.routing import Route

    from .core.timeframes import parse_timeframe
    from .errors import KiteOHLCError

    logins = Sessions() if sessions is None else sessions
    no_store = {"Cache-Control": "no-store"}

    def form(next_path: str, status: int, message: str = "") -> HTMLResponse:
        headers = dict(no_store)
        if status == 401:
            headers["WWW-Authenticate"] = API_KEY_HEADER
        return HTMLResponse(LOGIN.format(next=html.escape(_safe_next(next_path), quote=True),
                                         message=f"<p>{html.escape(message)}</p>" if message else ""),
                            status_code=status, headers=headers)

    def denied(request: Request) -> Response | None:
        """None with the ``X-API-Key`` header or a live session cookie, else the login form (no data)."""
        if key_ok(request.headers.get(API_KEY_HEADER, "")):
            return None
        if logins.valid(request.cookies.get(SESSION_COOKIE)):
            return None
        raw = request.scope.get("raw_path")
        path = raw.decode("latin-1") if raw else quote(request.url.path)
        return form(path.removesuffix("/events"), 401)

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return form(request.query_params.get("next", "/"), 200)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_LOGIN_BODY:
                return Response("login body too large", status_code=413)
        try:
            fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=8)
        except ValueError:
            return Response("bad login form", status_code=400)
        next_path = _safe_next((fields.get("next") or ["/"])[0])
        if not key_ok((fields.get("key") or [""])[0]):
            return form(next_path, 403, "Wrong key.")
        resp = RedirectResponse(next_path, status_code=303, headers=no_store)
        resp.set_cookie(SESSION_COOKIE, logins.new(), max_age=int(logins.ttl), path="/", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
        return resp

    def index(request: Request) -> Response:
        if (r := denied(request)) is not None:
            return r
        rows = []
        for s in manager.status():
            links = " ".join(
                f'<a href="/chart/{quote(str(sym), safe="")}/{quote(str(tf), safe="")}">'
                f"{html.escape(str(sym))} {html.escape(str(tf))}</a>"
                for sym in s.get("symbols") or [] for tf in s.get("timeframes") or [])
            rate_s = s.get("ticks_per_s")
            rows.append(f"<tr><td>{html.escape(str(s.get('stream', '')))}</td>"
                        f"<td>{html.escape(str(s.get('source', '')))}</td>"
                        f"<td>{html.escape(str(s.get('state', '')))}</td>"
                        f"<td>{'-' if rate_s is None else f'{float(rate_s):.1f}'}</td><td>{links}</td></tr>")
        body = ("<table><thead><tr><th>stream</th><th>source</th><th>state</th><th>ticks/s</th>"
                "<th>charts</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
                if rows else "<p><i>no streams</i></p>")
        return HTMLResponse(f"<!doctype html><html><head><meta charset='utf-8'><title>kiteohlc_lab</title>"
                            f"</head><body style='font:14px sans-serif'><h3>kiteohlc_lab streams</h3>{body}"
                            "</body></html>")

    def page(request: Request) -> Response:
        if (r := denied(request)) is not None:
            return r
        symbol, tf = request.path_params["symbol"], request.path_params["tf"]
        try:
            label = parse_timeframe(tf).label
            manager.series(symbol, label)
        except KiteOHLCError as exc:
            return HTMLResponse(f"<p>{html.escape(str(exc))}</p>", status_code=404)
        from .reconcile import tick_size_of

        events = json.dumps(f"/chart/{quote(symbol, safe='')}/{quote(label, safe='')}/events")
        opts = json.dumps({"tick": tick_size_of(manager, symbol), "height": 520,
                           "seconds": parse_timeframe(label).ns < 60 * 10**9})
        return HTMLResponse(PAGE.format(title=html.escape(f"{symbol} {label}"), events=events, opts=opts),
                            headers=no_store)

    def script(request: Request) -> Response:
        if (r := denied(request)) is not None:
            return r
        if not STATIC.is_file():
            return Response("the chart's JavaScript is not built: install Node.js/npm and reinstall",
                            status_code=503)
        return FileResponse(STATIC, media_type="text/javascript")

    async def events(request: Request) -> Response:
        if (r := denied(request)) is not None:
            return r
        symbol, tf = request.path_params["symbol"], request.path_params["tf"]
        try:
            label = parse_timeframe(tf).label
            await run_in_threadpool(manager.series, symbol, label)
        except KiteOHLCError as exc:
            return Response(str(exc), status_code=404)
        limit = int(request.query_params.get("limit", "0") or 0)  # tests: stop after N messages
        interval = 1.0 / rate

        def step(tracker: Tracker) -> dict | None:
            series = manager.series(symbol, label)  # follows the stores (throttled by the manager)
            extra: dict[str, Any] = {}
            if tracker.key is None or id(series) != tracker.key[0]:
                row = stream_state(manager, symbol, label)
                extra = {"title": f"{symbol} {label}",
                         "state": "not streaming" if row is None else f"{row.get('state')} ({row.get('source')})"}
            return tracker.next(series, **extra)

        async def stream():
            tracker = Tracker()
            sent, quiet = 0, 0.0
            while True:
                msg = await run_in_threadpool(step, tracker)
                if msg is not None:
                    yield f"data: {json.dumps(msg, separators=(',', ':'))}\n\n"
                    sent, quiet = sent + 1, 0.0
                    if limit and sent >= limit:
                        return
                else:
                    quiet += interval
                    if quiet >= HEARTBEAT:
                        yield ": keep-alive\n\n"
                        quiet = 0.0
                if await request.is_disconnected():
                    return
                await asyncio.sleep(interval)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return [
        Route("/login", login, methods=["GET", "POST"]),
        Route("/", index, methods=["GET"]),
        Route("/chart/{symbol}/{tf}", page, methods=["GET"]),
        Route("/chart/{symbol}/{tf}/events", events, methods=["GET"]),
        Route("/static/chart.js", script, methods=["GET"]),
    ]


__all__ = ["chart_routes", "Tracker", "Sessions", "SESSION_COOKIE", "SESSION_TTL"]
