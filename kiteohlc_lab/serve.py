"""A read-only HTTP API over the candles and stream status (``kiteohlc-lab serve``).

Optional extra ``serve`` (``pip install kiteohlc_lab[serve]``: starlette + uvicorn). Endpoints, all
behind the ``X-API-Key`` header (401 without it, or with a wrong one):

* ``GET /candles/{symbol}/{tf}?from=&to=&format=json|csv&closed_only=`` candles (history + closed
  + forming unless ``closed_only``), ``from``/``to`` bound the candle start (naive values are IST)
* ``GET /status`` one entry per stream, and the stores' health

``GET /openapi.json`` (the schema, no key needed) describes them. The chart pages (``/``,
``/chart/{symbol}/{tf}``, see ``serve_chart``) take the header or a session cookie set by a login
form that POSTs the key to ``/login``; the key never goes into a URL. Nothing here writes: a collector
(``kiteohlc-lab collect``) fills the stores, any number of read servers read them.

>>> app = build_app(kiteohlc_lab.api.manager(), api_key="k")        # doctest: +SKIP
"""

from __future__ import annotations

import hmac
import json
import math
import os
from typing import Any

from .errors import ConfigError, KiteOHLCError

API_KEY_HEADER = "X-API-Key"
API_KEY_ENV = "KITEOHLC_SERVE_API_KEY"

_CANDLE_SCHEMA = {
    "type": "object",
    "properties": {
        "date": {"type": "string", "format": "date-time", "description": "candle start, +05:30"},
        **{k: {"type": "number"} for k in ("open", "high", "low", "close", "volume")},
        "oi": {"type": "number", "nullable": True},
    },
    "required": ["date", "open", "high", "low", "close", "volume"],
}
_ERROR = {"description": "error", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string"}}}}}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "kiteohlc_lab read API", "version": "1",
             "description": "Read-only candles and status. Send the API key in the X-API-Key header."},
    "components": {"securitySchemes": {"apiKey": {"type": "apiKey", "in": "header",
                                                  "name": API_KEY_HEADER}}},
    "security": [{"apiKey": []}],
    "paths": {
        "/candles/{symbol}/{tf}": {"get": {
            "summary": "Candles of one instrument at one timeframe",
            "parameters": [
                {"name": "symbol", "in": "path", "required": True, "schema": {"type": "string"},
                 "description": "NIFTY, NSE:RELIANCE or an instrument token"},
                {"name": "tf", "in": "path", "required": True, "schema": {"type": "string"},
                 "description": "1m, 5m, 15m, 1h, 1d, 10s ..."},
                {"name": "from", "in": "query", "schema": {"type": "string"},
                 "description": "earliest candle start (ISO 8601; naive = IST)"},
                {"name": "to", "in": "query", "schema": {"type": "string"},
                 "description": "candle starts before this (ISO 8601; naive = IST)"},
                {"name": "format", "in": "query",
                 "schema": {"type": "string", "enum": ["json", "csv"], "default": "json"}},
                {"name": "closed_only", "in": "query",
                 "schema": {"type": "boolean", "default": False}},
            ],
            "responses": {
                "200": {"description": "candles, oldest first", "content": {
                    "application/json": {"schema": {"type": "object", "properties": {
                        "symbol": {"type": "string"}, "tf": {"type": "string"},
                        "forming": {"type": "string", "nullable": True,
                                    "description": "start of the forming (last) candle"},
                        "candles": {"type": "array", "items": _CANDLE_SCHEMA}}}},
                    "text/csv": {"schema": {"type": "string"}}}},
                "400": _ERROR, "401": _ERROR, "404": _ERROR},
        }},
        "/status": {"get": {
            "summary": "Streams and stores",
            "responses": {"200": {"description": "status", "content": {"application/json": {
                "schema": {"type": "object", "properties": {
                    "streams": {"type": "array", "items": {"type": "object"}},
                    "stores": {"type": "string"}}}}}},
                "401": _ERROR},
        }},
    },
}


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def build_app(manager: Any, api_key: str) -> Any:
    """The Starlette app serving ``manager``'s candles read-only, behind ``api_key``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    if not api_key:
        raise ConfigError(f"the read API needs an API key: pass api_key or set {API_KEY_ENV}")
    expected = api_key.encode()

    def key_ok(got: str) -> bool:
        return hmac.compare_digest(got.encode("utf-8", "surrogateescape"), expected)

    def denied(request: Request) -> JSONResponse | None:
        if key_ok(request.headers.get(API_KEY_HEADER, "")):
            return None
        return JSONResponse({"error": f"missing or wrong {API_KEY_HEADER} header"}, status_code=401,
                            headers={"WWW-Authenticate": API_KEY_HEADER})

    def candles(request: Request) -> Response:
        if (r := denied(request)) is not None:
            return r
        symbol, tf = request.path_params["symbol"], request.path_params["tf"]
        q = request.query_params
        fmt = q.get("format", "json").lower()
        if fmt not in ("json", "csv"):
            return JSONResponse({"error": f"format {fmt!r} is not accepted; use json or csv"}, 400)
        closed_only = q.get("closed_only", "false").lower() in ("1", "true", "yes")
        try:
            df = manager.candles(symbol, tf, closed_only=closed_only, start=q.get("from") or None,
                                 end=q.get("to") or None)
        except KiteOHLCError as exc:  # unknown symbol, bad timeframe: the message says what is accepted
            status = 404 if type(exc).__name__ == "SymbolError" else 400
            return JSONResponse({"error": str(exc)}, status_code=status)
        except ValueError as exc:  # an unparsable from/to
            return JSONResponse({"error": f"bad from/to: {exc}"}, status_code=400)
        forming = df.attrs.get("forming")
        if fmt == "csv":
            return Response(df.to_csv(date_format="%Y-%m-%dT%H:%M:%S%z"), media_type="text/csv")
        rows = df.reset_index()
        rows["date"] = [d.isoformat() for d in rows["date"]]
        return JSONResponse({
            "symbol": symbol, "tf": tf,
            "forming": None if forming is None else forming.isoformat(),
            "candles": _clean(rows.to_dict(orient="records")),
        })

    def status(request: Request) -> Response:
        if (r := denied(request)) is not None:
            return r
        streams = manager.status()
        stores = manager.store_health() if hasattr(manager, "store_health") else None
        return JSONResponse(_clean({"streams": streams, "stores": stores}))

    def openapi(request: Request) -> Response:
        return Response(json.dumps(OPENAPI), media_type="application/json")

    from .serve_chart import chart_routes  # /, /chart/{symbol}/{tf}, /login: the live chart on a web page

    return Starlette(routes=[
        Route("/candles/{symbol}/{tf}", candles, methods=["GET"]),
        Route("/status", status, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        *chart_routes(manager, key_ok, header=API_KEY_HEADER),
    ])


def main(cfg: Any = None, host: str = "127.0.0.1", port: int = 8765, api_key: str | None = None) -> None:
    """Serve the read API until interrupted (what ``kiteohlc-lab serve`` runs).

    ``cfg`` is a ``KiteOHLC`` (stores to read); ``api_key`` defaults to ``$KITEOHLC_SERVE_API_KEY``.
    """
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("kiteohlc-lab serve needs the 'serve' extra: pip install 'kiteohlc_lab[serve]'") from None
    from . import api

    key = api_key or os.environ.get(API_KEY_ENV, "")
    m = api.manager()
    if cfg is not None:
        m.configure(cfg)
    app = build_app(m, key)
    m.stores()  # open them now: a bad URL fails here, not at the first request
    uvicorn.run(app, host=host, port=int(port), log_level="warning")


__all__ = ["build_app", "main", "OPENAPI", "API_KEY_HEADER", "API_KEY_ENV"]
