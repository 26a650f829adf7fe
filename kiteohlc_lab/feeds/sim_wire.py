"""The simulator's ticker wire: a client's subscriptions, and fault injection (the mess real Kite
feeds send, as extra packets on the wire).

``SimClient.on_message`` applies a client's subscribe / unsubscribe / mode messages as Kite does.
``KiteSimulator.inject`` checks a request (``check_injection``) and queues it; each broadcast then
takes the packets due (``take_injections``, under the simulator's lock) and places each one right
after its instrument's market packet (``with_injections``). Deterministic: no randomness, no clock.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..core.ticks import TickBatch
from ..core.timeframes import NS
from .frames import encode_packets
from .sim_market import SimInstrument, SimMarket

MODES = ("ltp", "quote", "full")
MAX_TOKENS_PER_CONNECTION = 3000
# What inject() can put on the wire (see KiteSimulator.inject).
INJECT_KINDS = ("zero_volume", "stale_volume", "swap", "bogus_stamp", "zero_price", "late")
_VOLUME_KINDS = ("zero_volume", "stale_volume", "swap")
_TEN_YEARS_S = 3653 * 86400

# row of the broadcast -> the packets (kind, ts_s, price, volume, oi) that follow it
Extra = dict[int, list[tuple[str, int, float, float, float]]]


@dataclass(eq=False)
class SimClient:
    """One ticker connection: its socket, its subscriptions ``{token: mode}``, when it was last sent to."""

    ws: Any
    modes: dict[int, str] = field(default_factory=dict)
    last_sent: float = field(default_factory=time.monotonic)

    def on_message(self, message: str | bytes) -> str | None:
        """Apply a client message (subscribe / unsubscribe / mode); the error to send back, or None."""
        try:
            msg = json.loads(message)
            action, value = msg["a"], msg["v"]
        except (ValueError, TypeError, KeyError):
            return f"Invalid message: {str(message)[:100]}"
        try:
            if action == "subscribe":
                tokens = [int(t) for t in value]
                if len(set(self.modes) | set(tokens)) > MAX_TOKENS_PER_CONNECTION:
                    return f"Subscription limit of {MAX_TOKENS_PER_CONNECTION} instruments exceeded"
                for t in tokens:
                    self.modes.setdefault(t, "quote")
            elif action == "unsubscribe":
                for t in value:
                    self.modes.pop(int(t), None)
            elif action == "mode":
                mode, tokens = value[0], [int(t) for t in value[1]]
                if mode not in MODES:
                    return f"Invalid mode: {mode}"
                for t in tokens:
                    if t in self.modes:
                        self.modes[t] = mode
            else:
                return f"Invalid action: {action}"
        except (TypeError, ValueError, IndexError):
            return f"Invalid message: {str(message)[:100]}"
        return None


def check_injection(kind: str, token: int | None, count: int, opts: dict[str, Any],
                    instrument: Callable[[int], SimInstrument | None]) -> None:
    """Raise ValueError for an ``inject()`` request the simulator cannot honour."""
    if kind not in INJECT_KINDS:
        raise ValueError(f"kind {kind!r} is not accepted; use one of {', '.join(INJECT_KINDS)}")
    known = {"stale_volume": {"ago"}, "bogus_stamp": {"ahead", "stamp"}, "late": {"seconds"}}
    bad = set(opts) - known.get(kind, set()) - {"price", "volume"}
    if bad:
        raise ValueError(f"option(s) {sorted(bad)} are not accepted for {kind!r}")
    if opts.get("price") is not None and not float(opts["price"]) >= 0:
        raise ValueError("a frame's price is uint32 paise: a negative price cannot be sent; use 0")
    if token is not None:
        inst = instrument(int(token))
        if inst is None:
            raise ValueError(f"token {token} is not one of the simulator's instruments")
        if kind in _VOLUME_KINDS and inst.is_index:
            raise ValueError(f"{kind!r} needs a tradable instrument; {inst.tradingsymbol} is an "
                             "index (no volume)")
    if int(count) < 1:
        raise ValueError(f"count {count!r} must be at least 1")


def take_injections(pending: list[dict[str, Any]], batch: TickBatch, subscribed: set[int],
                    by_token: dict[int, SimInstrument],
                    recent: dict[int, list[tuple[float, float]]]) -> Extra:
    """The packets the ``pending`` requests put in this broadcast (each request's ``left`` counted
    down, finished ones removed). The caller holds the simulator's lock."""
    toks = batch.token.tolist()
    extra: Extra = {}
    for p in list(pending):
        kind, opts = p["kind"], p["opts"]
        row = None
        for i, t in enumerate(toks):
            if t not in subscribed or (p["token"] is not None and t != p["token"]):
                continue
            if kind in _VOLUME_KINDS and by_token[t].is_index:
                continue
            if p["token"] is None and any(e[0] == kind for e in extra.get(i, ())):
                continue
            row = i
            break
        if row is None:
            continue
        t = toks[row]
        ts_s = int(batch.ts[row]) // NS
        price, vol, oi = float(batch.price[row]), float(batch.volume[row]), float(batch.oi[row])
        past = recent.get(t, [])
        if kind == "zero_volume":
            vol = 0.0
        elif kind == "stale_volume":
            ago = int(opts.get("ago", 1))
            vol = past[-ago][1] if len(past) >= ago else 0.0
        elif kind == "swap":
            prev_p, prev_v = past[-1] if past else (price, 0.0)
            price, vol = prev_p, float(np.floor(prev_v + (vol - prev_v) / 2))
        elif kind == "bogus_stamp":
            ts_s = int(opts["stamp"]) if "stamp" in opts else ts_s + int(opts.get("ahead", _TEN_YEARS_S))
        elif kind == "zero_price":
            price = 0.0
        elif kind == "late":
            ts_s -= int(opts.get("seconds", 10))
        if opts.get("price") is not None:
            price = float(opts["price"])
        if opts.get("volume") is not None and not by_token[t].is_index:
            vol = float(opts["volume"])
        extra.setdefault(row, []).append((kind, ts_s, price, vol, oi))
        p["left"] -= 1
        if p["left"] <= 0:
            pending.remove(p)
    return extra


def with_injections(batch: TickBatch, extra: Extra) -> tuple[TickBatch, np.ndarray]:
    """The broadcast with the ``extra`` packets after their rows (each with the book of the market
    tick it follows); and each tick's kind ("")."""
    kinds = np.full(len(batch), "", dtype=object)
    if not extra:
        return batch, kinds
    toks = batch.token.tolist()
    src: list[int] = []  # per output row: the market row it comes from (its book)
    rows: list[tuple[int, str, int, float, float, float]] = []
    for i in range(len(batch)):
        src.append(i)
        rows.append((toks[i], "", int(batch.ts[i]), float(batch.price[i]), float(batch.volume[i]),
                     float(batch.oi[i])))
        for kind, ts_s, price, vol, oi in extra.get(i, ()):
            src.append(i)
            rows.append((toks[i], kind, ts_s * NS, price, vol, oi))
    book = [x[src] for x in batch.book()] if batch.has_book else []
    out = TickBatch(np.array([r[0] for r in rows], np.int64), np.array([r[2] for r in rows], np.int64),
                    np.array([r[3] for r in rows]), np.array([r[4] for r in rows]),
                    np.array([r[5] for r in rows]), *book)
    return out, np.array([r[1] for r in rows], dtype=object)


def encode_batch(market: SimMarket, batch: TickBatch, sel: np.ndarray, modes: list[str]) -> bytes:
    """The frame of ``batch``'s rows ``sel`` in the clients' ``modes``, with the market's day OHLC,
    tick sizes and the batch's book (full packets)."""
    m = market
    idx = np.array([m.index_of[t] for t in batch.token[sel].tolist()], dtype=np.int64)
    bid, ask, bid_qty, ask_qty = batch.book()
    return encode_packets(
        batch.token[sel], batch.price[sel], modes,
        volume=np.nan_to_num(batch.volume[sel]), oi=np.nan_to_num(batch.oi[sel]),
        timestamp=batch.ts[sel] // NS,
        open=m.open[idx], high=m.high[idx], low=m.low[idx], close=m.prev_close[idx],
        tick_size=m.tick[idx], bid=bid[sel], ask=ask[sel], bid_qty=np.nan_to_num(bid_qty[sel]),
        ask_qty=np.nan_to_num(ask_qty[sel]),
    )
