"""The simulator's REST side: Kite's endpoints over ``http.server``, and its historical candles.

``make_http_server(sim)`` serves ``/user/profile``, ``/instruments[/EXCHANGE]``,
``/instruments/historical/TOKEN/INTERVAL`` and ``POST /session/token`` for a ``KiteSimulator``
(through its public methods only). The candle functions are pure: the simulator hands them its tick
log, its clock and its overrides (``KiteSimulator.historical``), so nothing here reads a clock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd

from ..core.ticks import TickBatch, ist_naive_to_epoch_ns
from ..core.timeframes import DAY_NS, IST, IST_OFFSET_NS, Timeframe, bucket_start, is_weekday
from .sim_market import MINUTE_NS, SimInstrument, hash_uniform
from . import sim_rhythm as rhythm

# Kite's span limits for one historical request, in days (forum figures from Zerodha staff).
SPAN_LIMIT_DAYS = {
    "minute": 60, "3minute": 100, "5minute": 100, "10minute": 100,
    "15minute": 200, "30minute": 200, "60minute": 400, "day": 2000,
}
# Synthetic history session per exchange: (open, close) minutes after 00:00 IST.


class SimulatorApi(Protocol):
    """What the REST handler uses of a ``KiteSimulator``."""

    host: str
    http_port: int
    api_key: str
    access_token: str
    api_secret: str

    def instrument(self, token: int) -> SimInstrument | None: ...

    def count_historical_request(self) -> None: ...

    def instruments_csv(self, exchange: str | None = None) -> str: ...

    def historical(self, token: int, interval: str, from_ns: int, to_ns: int,
                   oi: bool = False) -> list[list[Any]]: ...


# ---------------------------------------------------------------------- historical candles
def empty_minutes() -> dict[str, np.ndarray]:
    z = np.empty(0)
    return {"start": z.astype(np.int64), "open": z, "high": z, "low": z, "close": z,
            "volume": z, "oi": z}


def tick_minutes(t: TickBatch, token: int, lo: int, hi: int, window_ns: int,
                 now_ns: int) -> dict[str, np.ndarray]:
    """Minute candles of ``token`` in [lo, hi) built from the ticks generated ``t`` (only minutes
    already over at ``now_ns``, like Kite); none for minutes before ``window_ns`` (their ticks left
    the bounded window)."""
    lo = max(lo, window_ns)
    sel = t.token == token
    ts, price = t.ts[sel], t.price[sel]
    vol = np.nan_to_num(t.volume[sel])
    oi = np.nan_to_num(t.oi[sel])
    minute = ts // MINUTE_NS * MINUTE_NS
    now_minute = now_ns // MINUTE_NS * MINUTE_NS
    done = minute < now_minute
    ts, price, vol, oi, minute = ts[done], price[done], vol[done], oi[done], minute[done]
    if not len(ts):
        return empty_minutes()
    keys, first = np.unique(minute, return_index=True)
    last = np.r_[first[1:], len(minute)] - 1
    # candle volume: cumulative volume at its last tick minus at the previous candle's last tick
    # (the same IST day; the cumulative figure restarts each day)
    day = (keys + IST_OFFSET_NS) // DAY_NS
    prev = np.r_[0.0, vol[last][:-1]]
    prev[np.r_[True, day[1:] != day[:-1]]] = 0.0
    out = {
        "start": keys,
        "open": price[first],
        "high": np.maximum.reduceat(price, first),
        "low": np.minimum.reduceat(price, first),
        "close": price[last],
        "volume": np.maximum(vol[last] - prev, 0.0),
        "oi": oi[last],
    }
    keep = (keys >= lo) & (keys < hi)
    return {k: v[keep] for k, v in out.items()}


def synthetic_minutes(inst: SimInstrument, seed: int, lo: int, hi: int,
                      end_ns: int | None = None) -> dict[str, np.ndarray]:
    """Deterministic (seeded) minute candles in [lo, hi) for market hours on weekdays: the history
    before the simulator started at ``end_ns``.

    The path moves like the live walk (``feeds.sim_rhythm``: the instrument's volatility and
    turnover, the day's rhythm, an overnight gap at each open) and is pinned at its end: the last
    minute before ``end_ns`` closes at the live starting price, so history joins live without a jump.
    """
    end_ns = hi if end_ns is None else end_ns
    hi = min(hi, end_ns)
    open_min, close_min = rhythm.session(inst)
    per_day = close_min - open_min
    d0 = (lo + IST_OFFSET_NS) // DAY_NS
    d1 = (end_ns - 1 + IST_OFFSET_NS) // DAY_NS
    days = np.arange(d0, d1 + 1)
    days = days[is_weekday(days)]
    if not len(days) or hi <= lo:
        return empty_minutes()
    tok, tick = inst.instrument_token, inst.tick_size or 0.05
    m = np.broadcast_to(np.arange(per_day)[None, :], (len(days), per_day))
    dd = np.broadcast_to(days[:, None], m.shape)
    start = (dd * DAY_NS + (open_min + m) * MINUTE_NS) - IST_OFFSET_NS
    before = start < end_ns  # every minute up to the pinned end: the path is summed back from it
    m, dd, start = m[before], dd[before], start[before]
    act = rhythm.activity(m, per_day)
    sigma = rhythm.minute_sigma(inst) * np.sqrt(act)
    intra = sigma * rhythm.normal(hash_uniform(seed, tok, dd, m, 1), hash_uniform(seed, tok, dd, m, 2))
    gap = np.where(m == 0, 0.004 * rhythm.normal(hash_uniform(seed, tok, dd, 3),
                                                 hash_uniform(seed, tok, dd, 4)), 0.0)
    step = gap + intra
    # log price at each minute's close, counted back from the live starting price at the end
    close_log = np.log(inst.last_price) - (step.sum() - np.cumsum(step))
    open_log = close_log - intra
    wick_hi = sigma * 0.6 * np.abs(rhythm.normal(hash_uniform(seed, tok, dd, m, 5), hash_uniform(seed, tok, dd, m, 6)))
    wick_lo = sigma * 0.6 * np.abs(rhythm.normal(hash_uniform(seed, tok, dd, m, 7), hash_uniform(seed, tok, dd, m, 8)))

    def ticks(x: np.ndarray) -> np.ndarray:
        return np.maximum(np.rint(np.exp(x) / tick), 1.0)

    open_, close = ticks(open_log), ticks(close_log)
    high = np.maximum(ticks(np.maximum(open_log, close_log) + wick_hi), np.maximum(open_, close))
    low = np.minimum(ticks(np.minimum(open_log, close_log) - wick_lo), np.minimum(open_, close))
    lot = max(inst.lot_size, 1)
    noise = np.exp(0.5 * rhythm.normal(hash_uniform(seed, tok, dd, m, 11), hash_uniform(seed, tok, dd, m, 12)))
    volume = (np.zeros_like(close) if inst.is_index else
              np.maximum(np.rint(rhythm.minute_volume(inst) * act * noise / lot), 1) * lot)
    oi = np.zeros_like(close)
    if inst.has_oi:
        moves = np.rint((hash_uniform(seed, tok, dd, m, 13) - 0.5) * 40) * lot
        oi = 1_000_000 + np.cumsum(moves) - moves.sum()
    out = {"start": start.astype(np.int64),
           "open": np.round(open_ * tick, 6), "high": np.round(high * tick, 6),
           "low": np.round(low * tick, 6), "close": np.round(close * tick, 6),
           "volume": volume.astype(np.float64), "oi": np.asarray(oi, np.float64)}
    keep = (out["start"] >= lo) & (out["start"] < hi)
    return {k: v[keep] for k, v in out.items()}


def minute_candles(parts: list[dict[str, np.ndarray]], overrides: dict[int, dict[str, float]],
                   inst: SimInstrument) -> dict[str, np.ndarray]:
    """The minute candles ``parts`` (synthetic, then from ticks) joined, with ``overrides``
    ({minute start: fields}, see ``KiteSimulator.set_history_override``) applied."""
    mins = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    for minute, fields in sorted(overrides.items()):
        pos = int(np.searchsorted(mins["start"], minute))
        if pos == len(mins["start"]) or mins["start"][pos] != minute:
            base = fields.get("close", fields.get("open", inst.last_price))
            row = {"start": minute, "open": base, "high": base, "low": base, "close": base,
                   "volume": 0.0, "oi": 0.0}
            mins = {k: np.insert(v, pos, row[k]) for k, v in mins.items()}
        for k, v in fields.items():
            mins[k][pos] = v
    return mins


def kite_candles(mins: dict[str, np.ndarray], inst: SimInstrument, tf: Timeframe, anchor: int,
                 from_ns: int, to_ns: int, oi: bool) -> list[list[Any]]:
    """Minute candles aggregated to ``tf`` as Kite returns them: ``[iso, o, h, l, c, v(, oi)]``
    with start in [from_ns, to_ns]."""
    if not len(mins["start"]):
        return []
    starts = bucket_start(mins["start"], tf, anchor)
    keys, first = np.unique(starts, return_index=True)
    last = np.r_[first[1:], len(starts)] - 1
    out = {
        "start": keys,
        "open": mins["open"][first],
        "high": np.maximum.reduceat(mins["high"], first),
        "low": np.minimum.reduceat(mins["low"], first),
        "close": mins["close"][last],
        "volume": np.add.reduceat(mins["volume"], first),
        "oi": mins["oi"][last],
    }
    keep = (keys >= from_ns) & (keys <= to_ns)
    stamps = pd.to_datetime(keys[keep], utc=True).tz_convert(IST).strftime("%Y-%m-%dT%H:%M:%S%z")
    decimals = 4 if inst.segment in ("CDS", "BCD") else 2
    rows = []
    cols = [np.round(out[k][keep], decimals).tolist() for k in ("open", "high", "low", "close")]
    vols = out["volume"][keep].astype(np.int64).tolist()
    ois = out["oi"][keep].astype(np.int64).tolist()
    for i, stamp in enumerate(stamps):
        row = [stamp, cols[0][i], cols[1][i], cols[2][i], cols[3][i], vols[i]]
        if oi:
            row.append(ois[i])
        rows.append(row)
    return rows


# ---------------------------------------------------------------------- REST
def instruments_csv(instruments: list[SimInstrument], prices: dict[int, float],
                    exchange: str | None = None) -> str:
    """Kite's instruments dump (CSV) of ``instruments`` ({token: last price}), of one exchange or all."""
    cols = ["instrument_token", "exchange_token", "tradingsymbol", "name", "last_price", "expiry",
            "strike", "tick_size", "lot_size", "instrument_type", "segment", "exchange"]
    rows = [",".join(cols)]
    for i in instruments:
        if exchange and i.exchange != exchange.upper():
            continue
        name = f'"{i.name}"' if "," in i.name else i.name
        rows.append(",".join(str(x) for x in (
            i.instrument_token, i.exchange_token, i.tradingsymbol, name,
            prices.get(i.instrument_token, 0.0), i.expiry, i.strike, i.tick_size,
            i.lot_size, i.instrument_type, i.segment, i.exchange)))
    return "\n".join(rows) + "\n"


class _ApiError(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message


def _parse_kite_time(text: str | None, what: str) -> int:
    """Kite's naive ``YYYY-MM-DD[ HH:MM:SS]`` (IST wall clock) -> epoch ns."""
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
        try:
            naive = dt.datetime.strptime(text or "", fmt)
        except ValueError:
            continue
        return ist_naive_to_epoch_ns(np.array([np.datetime64(naive, "ns")]))[0].item()
    raise _ApiError(400, "InputException", f"invalid {what} date: {text!r}")


def make_http_server(sim: SimulatorApi) -> ThreadingHTTPServer:
    """The simulator's REST server (not started), bound to ``sim.host``/``sim.http_port``."""
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by design
            pass

        def _reply(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, payload: dict) -> None:
            self._reply(status, json.dumps(payload).encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            try:
                auth = self.headers.get("Authorization", "")
                if auth != f"token {sim.api_key}:{sim.access_token}":
                    raise _ApiError(403, "TokenException",
                                    "Incorrect `api_key` or `access_token`.")
                url = urlsplit(self.path)
                parts = [p for p in url.path.split("/") if p]
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                if parts == ["user", "profile"]:
                    return self._json(200, {"status": "success", "data": _PROFILE})
                if parts[:1] == ["instruments"] and len(parts) <= 2:
                    csv = sim.instruments_csv(parts[1] if len(parts) == 2 else None)
                    return self._reply(200, csv.encode(), "text/csv")
                if parts[:2] == ["instruments", "historical"] and len(parts) == 4:
                    return self._json(200, self._historical(parts[2], parts[3], query))
                raise _ApiError(404, "GeneralException", f"Route not found: {url.path}")
            except _ApiError as err:
                self._json(err.status, {"status": "error", "error_type": err.error_type,
                                        "message": err.message, "data": None})
            except Exception as exc:  # noqa: BLE001 - a bug in the simulator is a 500, not a hang
                self._json(500, {"status": "error", "error_type": "GeneralException",
                                 "message": f"simulator error: {exc}", "data": None})

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            """``POST /session/token`` (the login exchange): checksum = sha256(key + request + secret)."""
            try:
                size = int(self.headers.get("Content-Length") or 0)
                form = {k: v[-1] for k, v in parse_qs(self.rfile.read(size).decode()).items()}
                if urlsplit(self.path).path.rstrip("/") != "/session/token":
                    raise _ApiError(404, "GeneralException", f"Route not found: {self.path}")
                want = hashlib.sha256((sim.api_key + form.get("request_token", "") + sim.api_secret)
                                      .encode()).hexdigest()
                if form.get("api_key") != sim.api_key or not form.get("request_token") \
                        or form.get("checksum") != want:
                    raise _ApiError(403, "TokenException", "Invalid `checksum` or `request_token`.")
                data = {**_PROFILE, "access_token": sim.access_token, "public_token": "sim-public",
                        "refresh_token": "", "login_time": "2026-11-26 09:00:00", "api_key": sim.api_key}
                return self._json(200, {"status": "success", "data": data})
            except _ApiError as err:
                self._json(err.status, {"status": "error", "error_type": err.error_type,
                                        "message": err.message, "data": None})

        def _historical(self, token_s: str, interval: str, query: dict[str, str]) -> dict:
            sim.count_historical_request()
            if interval not in SPAN_LIMIT_DAYS:
                raise _ApiError(400, "InputException", f"invalid interval: {interval}")
            try:
                token = int(token_s)
            except ValueError:
                raise _ApiError(400, "InputException", f"invalid token: {token_s}") from None
            if sim.instrument(token) is None:
                raise _ApiError(400, "InputException", f"invalid token: {token}")
            start = _parse_kite_time(query.get("from"), "from")
            end = _parse_kite_time(query.get("to"), "to")
            if end < start:
                raise _ApiError(400, "InputException", "invalid date range: from is after to")
            limit = SPAN_LIMIT_DAYS[interval]
            if end - start > limit * DAY_NS:
                raise _ApiError(400, "InputException", f"interval exceeds max limit: {limit} days")
            candles = sim.historical(token, interval, start, end, oi=query.get("oi") == "1")
            return {"status": "success", "data": {"candles": candles}}

    server = ThreadingHTTPServer((sim.host, sim.http_port), Handler)
    server.daemon_threads = True
    return server


_PROFILE = {
    "user_id": "SIM001", "user_name": "Kite Simulator", "user_shortname": "Simulator",
    "email": "simulator@example.invalid", "user_type": "individual", "broker": "ZERODHA",
    "exchanges": ["NSE", "BSE", "NFO", "CDS", "MCX"], "products": ["CNC", "NRML", "MIS"],
    "order_types": ["MARKET", "LIMIT", "SL", "SL-M"], "avatar_url": None,
    "meta": {"demat_consent": "physical"},
}
