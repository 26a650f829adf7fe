"""Kite ticker binary frames: a vectorised decoder (frame -> TickBatch) and an encoder.

A frame is ``uint16 count`` then, per packet, ``uint16 length`` + packet bytes, all big-endian.
Packet lengths say the layout: 8 (ltp), 28/32 (index quote/full), 44/184 (tradable quote/full);
see ``/work/shared/KITE_PROTOCOL.md``. kiteconnect parses each packet with ``struct.unpack`` and
builds dicts; here a frame of one packet length (one mode) is read with one strided numpy view, and a
mixed frame with one short Python step a packet (its offset) then one gather of every field of every
packet through per-length offset tables: a few numpy calls instead of ~100k Python calls. Integers are read unsigned, exactly as kiteconnect does.

The decoder never raises on bad input: whole, well-formed packets are decoded, the rest are counted
in ``FrameInfo.malformed``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..core.ticks import TickBatch
from ..core.timeframes import NS

__all__ = [
    "FrameInfo",
    "decode_frame",
    "encode_packets",
    "parse_text",
    "packet_length",
    "price_divisor",
    "HEARTBEAT",
    "PACKET_LENGTHS",
]

HEARTBEAT = b"\x00"
INDEX_SEGMENT = 9
PACKET_LENGTHS = (8, 28, 32, 44, 184)
_MODE_OF_LENGTH = {8: "ltp", 28: "quote", 32: "full", 44: "quote", 184: "full"}

# Price divisor per segment (token & 0xFF): CDS 1e7, BCD and NCO 1e4 (as kiteconnect 5.2), else 100.
_DIVISOR = np.full(256, 100.0)
_DIVISOR[3] = 10_000_000.0
_DIVISOR[6] = 10_000.0
_DIVISOR[12] = 10_000.0

# Byte offsets of the fields the decoder needs, per packet length (None: not in this packet).
#               token price volume  oi   exchange_timestamp
_FIELDS: dict[int, tuple[int, int, int | None, int | None, int | None]] = {
    8: (0, 4, None, None, None),
    28: (0, 4, None, None, None),
    32: (0, 4, None, None, 28),
    44: (0, 4, 16, None, None),
    184: (0, 4, 16, 48, 60),
}
_U4 = np.dtype(">u4")
# The top of the book in full tradable packets (184 bytes): the first buy and the first sell depth
# entries (12 bytes each: uint32 quantity, uint32 price, uint16 orders, 2 bytes padding).
#            bid_qty bid ask_qty ask
_BOOK_OFF = (64, 68, 124, 128)
_BOOK_LEN = 184


def price_divisor(tokens: np.ndarray) -> np.ndarray:
    """Divisor turning Kite's integer prices into rupees, per token (by segment)."""
    return _DIVISOR[np.asarray(tokens, dtype=np.int64) & 0xFF]


def packet_length(mode: str, token: int) -> int:
    """Packet length Kite uses for ``mode`` (ltp/quote/full) and this token (index or tradable)."""
    index = (int(token) & 0xFF) == INDEX_SEGMENT
    if mode == "ltp":
        return 8
    if mode == "quote":
        return 28 if index else 44
    if mode == "full":
        return 32 if index else 184
    raise ValueError(f"mode {mode!r} is not accepted; use 'ltp', 'quote' or 'full'")


@dataclass(slots=True)
class FrameInfo:
    """What a frame held besides its ticks.

    Attributes
    ----------
    packets : well-formed packets decoded (== len of the TickBatch)
    malformed : declared packets not decoded (unknown length, or overrunning the buffer)
    heartbeat : the frame was a heartbeat (empty or 1 byte)
    ltp, quote, full : decoded packets per mode
    """

    packets: int = 0
    malformed: int = 0
    heartbeat: bool = False
    ltp: int = 0
    quote: int = 0
    full: int = 0


# Per packet kind (a small code per packet length, 0 unknown): byte offsets of (token, price,
# volume, oi, exchange_timestamp), 0 where the packet has no such field (read harmlessly, then
# masked: NaN added to a missing volume/oi, -1 for a missing stamp), and the mode.
_KINDS = sorted(_FIELDS)
_CODE = np.zeros(65536, np.uint8)
# frames holding a full tradable packet gather the top of the book too (4 more columns: its
# offsets in 184-byte packets, 0 and NaN added in the others)
_OFF = np.zeros((len(_KINDS) + 1, 9), np.int64)
_NAN = np.zeros((len(_KINDS) + 1, 6))  # added to (volume, oi, bid_qty, bid, ask_qty, ask)
_HAS_TS = np.zeros(len(_KINDS) + 1, bool)
_MODE = np.zeros(len(_KINDS) + 1, np.int64)  # 1 ltp, 2 quote, 3 full
for _k, _len in enumerate(_KINDS, 1):
    _CODE[_len] = _k
    _OFF[_k, :5] = [0 if o is None else o for o in _FIELDS[_len]]
    _NAN[_k, :2] = [0.0 if _FIELDS[_len][i] is not None else np.nan for i in (2, 3)]
    _OFF[_k, 5:] = _BOOK_OFF if _len == _BOOK_LEN else 0
    _NAN[_k, 2:] = 0.0 if _len == _BOOK_LEN else np.nan
    _HAS_TS[_k] = _FIELDS[_len][4] is not None
    _MODE[_k] = ("ltp", "quote", "full").index(_MODE_OF_LENGTH[_len]) + 1
_OFF5 = np.ascontiguousarray(_OFF[:, :5])  # frames without full tradable packets


def _uniform(buf: bytes, u8: np.ndarray, count: int) -> int:
    """The packet length when all ``count`` packets have the first one's (one mode per frame, the
    usual case) and fill the frame exactly; else 0."""
    if len(buf) < 4:
        return 0
    length = (buf[2] << 8) | buf[3]
    if length not in _FIELDS or 2 + count * (length + 2) != len(buf):
        return 0
    if count > 1:
        pos = 2 + (length + 2) * np.arange(1, count)
        if ((u8[pos].astype(np.int64) << 8) | u8[pos + 1] != length).any():
            return 0
    return length


def _walk(buf: bytes, count: int) -> list[int]:
    """Header offset of each declared packet whose header is inside the buffer (a packet's place
    depends on the lengths before it: one short Python step a packet, nothing else in the loop)."""
    heads: list[int] = []
    add = heads.append
    j = 2
    try:
        for _ in range(count):
            j2 = j + 1
            add(j)
            j += buf[j] * 256 + buf[j2] + 2
    except IndexError:  # a header past the end: that packet and the rest overrun
        heads.pop()
    return heads


_BOOK_CODE = int(_CODE[_BOOK_LEN])
assert _BOOK_CODE == len(_KINDS)  # the longest packet has the highest code (_decode_mixed)
# A frame of a few packets: one struct.unpack_from a packet beats a dozen numpy calls a frame (mixed
# frames, best of 5: 4 packets 14.7 against 49.3 us, 32 packets 35.4 against 43.7, 48 packets
# 53.8 against 44.5).
SMALL = 32
_UNPACK = {8: struct.Struct(">II"), 28: struct.Struct(">II"), 32: struct.Struct(">II20xI"),
           44: struct.Struct(">II8xI"), 184: struct.Struct(">II8xI28xI8xIII52xII")}
_NAN_ = float("nan")
_NO_BOOK = (_NAN_,) * 4


def _decode_small(buf: bytes, count: int, receive_ns: int) -> tuple[TickBatch, FrameInfo]:
    """A frame of a few packets, each read with one ``struct.unpack_from`` and finished in Python
    (price divisor, receive time for packets without a stamp, no open interest for cash, the top
    of the book): the columns become arrays once, at the end, where the large-frame path's dozen
    numpy calls a frame cost more than a few packets' arithmetic (a 1-packet frame: 0.8x -> 1.8x
    kiteconnect's parser). The values are the large path's to the bit: the same IEEE divisions,
    stamps below 2**63 ns."""
    book: list[tuple] = []
    tok: list[int] = []
    px: list[float] = []
    vol: list[float] = []
    oi: list[float] = []
    ts: list[int] = []
    modes = [0, 0, 0]
    n = len(buf)
    j = 2
    for _ in range(count):
        if j + 2 > n:
            break
        length = buf[j] * 256 + buf[j + 1]
        j += 2
        if j + length > n:
            break
        st = _UNPACK.get(length)
        if st is not None:
            v = st.unpack_from(buf, j)
            token = v[0]
            seg = token & 0xFF
            div = _DIVISOR_PY[seg]
            tok.append(token)
            px.append(v[1] / div)
            if length == 184:
                vol.append(float(v[2]))
                oi.append(_NAN_ if _CASH_PY[seg] else float(v[3]))
                ts.append(v[4] * NS)  # a corrupt 0 kept: core.sanity rejects it as a bad stamp
                b = (float(v[5]), v[6] / div or _NAN_, float(v[7]), v[8] / div or _NAN_)
                book.append(b)  # an empty side (price 0): NaN price, quantity 0
                modes[2] += 1
            else:
                vol.append(float(v[2]) if length == 44 else _NAN_)
                oi.append(_NAN_)
                ts.append(v[2] * NS if length == 32 else receive_ns)
                book.append(_NO_BOOK)
                modes[0 if length == 8 else (2 if length == 32 else 1)] += 1
        j += length
    info = FrameInfo(malformed=count - len(tok), ltp=modes[0], quote=modes[1], full=modes[2],
                     packets=len(tok))
    if not tok:
        return TickBatch.empty(), info
    cols = (np.array(tok, np.int64), np.array(ts, np.int64), np.array(px, np.float64),
            np.array(vol, np.float64), np.array(oi, np.float64))
    if not modes[2] or all(b is _NO_BOOK for b in book):
        return TickBatch(*cols), info
    bid_qty, bid, ask_qty, ask = np.array(book, np.float64).T
    return TickBatch(*cols, bid, ask, bid_qty, ask_qty), info


_CASH = np.zeros(256, bool)
_CASH[[1, 4, 9]] = True  # NSE, BSE cash and indices
_DIVISOR_PY, _CASH_PY = _DIVISOR.tolist(), _CASH.tolist()  # the same tables for _decode_small


def decode_frame(payload: bytes, receive_ns: int) -> tuple[TickBatch, FrameInfo]:
    """Decode one binary frame into a TickBatch (packet order) and a FrameInfo.

    Parameters
    ----------
    payload : the WebSocket binary message
    receive_ns : epoch ns the frame arrived; the timestamp of packets that carry none (ltp, quote,
        index quote) or carry 0

    Examples
    --------
    >>> frame = encode_packets([738561], [2500.05], "full", volume=[10], timestamp=[1_700_000_000])
    >>> batch, info = decode_frame(frame, 0)
    >>> float(batch.price[0]), info.packets
    (2500.05, 1)
    """
    try:
        buf = bytes(payload)
    except Exception:  # noqa: BLE001 - junk in, empty out
        return TickBatch.empty(), FrameInfo(malformed=1)
    if len(buf) < 2:
        return TickBatch.empty(), FrameInfo(heartbeat=True)
    count = (buf[0] << 8) | buf[1]
    if count <= SMALL:
        return _decode_small(buf, count, receive_ns)
    length = _uniform(buf, np.frombuffer(buf, dtype=np.uint8), count)
    if length:  # one mode: one zero-copy strided view
        token, raw_price, volume, oi, raw_ts, raw_book = _decode_run(buf, 4, length, count)
        info = FrameInfo()
        setattr(info, _MODE_OF_LENGTH[length], count)
    else:  # mixed: walk the lengths, then one gather for every field of every packet
        heads = _walk(buf, count)
        token, raw_price, volume, oi, raw_ts, code, raw_book = _decode_mixed(buf, heads)
        info = FrameInfo(malformed=count - len(token))
        if not len(token):
            return TickBatch.empty(), info
        per_mode = np.bincount(_MODE.take(code), minlength=4)
        info.ltp, info.quote, info.full = int(per_mode[1]), int(per_mode[2]), int(per_mode[3])
    info.packets = len(token)
    seg = token & 0xFF
    div = _DIVISOR[seg]
    price = raw_price / div
    # packets without a timestamp field (ltp, quote) take the receive time; a full packet's stamp is
    # kept as it is, a corrupt 0 included (core.sanity rejects it as a bad stamp)
    ts = np.where(raw_ts >= 0, raw_ts * NS, receive_ns)
    # full packets of cash equities carry an oi field of 0: open interest exists for derivatives only
    oi = np.where(_CASH[seg], np.nan, oi)
    if raw_book is None:
        return TickBatch(token, ts, price, volume, oi), info
    # (bid_qty, bid, ask_qty, ask), NaN rows for packets without depth; a price of 0 is an empty
    # level (no bids or no offers): NaN price, quantity 0
    prices = raw_book[1::2] / div
    prices[prices == 0] = np.nan
    return TickBatch(token, ts, price, volume, oi, prices[0], prices[1], raw_book[0], raw_book[2]), info


def _decode_run(
    buf: bytes, off: int, length: int, m: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    tok_o, px_o, vol_o, oi_o, ts_o = _FIELDS[length]
    names, offsets = ["t", "p"], [tok_o, px_o]
    for name, o in (("v", vol_o), ("o", oi_o), ("s", ts_o)):
        if o is not None:
            names.append(name)
            offsets.append(o)
    if length == _BOOK_LEN:
        names += ["bq", "bp", "aq", "ap"]
        offsets += list(_BOOK_OFF)
    dtype = np.dtype(
        {"names": names, "formats": [_U4] * len(names), "offsets": offsets, "itemsize": length}
    )
    view = np.ndarray((m,), dtype=dtype, buffer=buf, offset=off, strides=(length + 2,))
    nan = np.full(m, np.nan)
    return (
        view["t"].astype(np.int64),
        view["p"].astype(np.float64),
        view["v"].astype(np.float64) if vol_o is not None else nan,
        view["o"].astype(np.float64) if oi_o is not None else nan,
        view["s"].astype(np.int64) if ts_o is not None else np.full(m, -1, np.int64),
        np.array([view["bq"], view["bp"], view["aq"], view["ap"]], np.float64)
        if length == _BOOK_LEN else None,
    )


def _decode_mixed(buf: bytes, heads: list[int]) -> tuple[np.ndarray, ...]:
    """Packets of any lengths: every field of every packet with one gather, through a view whose
    element ``p`` is the big-endian word at byte ``p`` (unaligned), and per-kind offset tables."""
    n = len(buf)
    head = np.fromiter(heads, np.int64, len(heads))
    if n < 4 or not len(head):
        return (np.empty(0, np.int64),) * 6 + (None,)
    ln = np.ndarray((n - 1,), dtype=">u2", buffer=buf, strides=(1,))[head].astype(np.int64)
    ok = head + 2 + ln <= n
    if not ok.all():  # the first packet overrunning the buffer ends the frame
        cut = int(np.argmin(ok))
        head, ln = head[:cut], ln[:cut]
    code = _CODE.take(ln)
    if not code.all():  # unknown lengths: not decoded (counted malformed)
        keep = code > 0
        head, code = head[keep], code[keep]
    words = np.ndarray((n - 3,), dtype=_U4, buffer=buf, strides=(1,))
    has_book = len(code) > 0 and int(code.max()) == _BOOK_CODE  # 184 bytes: the highest code
    off = (_OFF if has_book else _OFF5).take(code, axis=0)
    w = words[(head + 2)[:, None] + off].astype(np.int64)  # (packets, 5 fields [+ 4 of the book])
    nan = _NAN.take(code, axis=0)
    token = w[:, 0]
    raw_price = w[:, 1].astype(np.float64)
    volume = w[:, 2] + nan[:, 0]
    oi = w[:, 3] + nan[:, 1]
    raw_ts = np.where(_HAS_TS.take(code), w[:, 4], -1)
    book = (w[:, 5:] + nan[:, 2:]).T if has_book else None
    return token, raw_price, volume, oi, raw_ts, code, book


def _column(values: Any, n: int, default: float = 0.0) -> np.ndarray:
    if values is None:
        return np.full(n, default, dtype=np.float64)
    arr = np.asarray(values, dtype=np.float64)
    return np.broadcast_to(arr, (n,)).astype(np.float64)


def _u32(values: np.ndarray) -> np.ndarray:
    v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
    return np.clip(np.rint(v), 0, 0xFFFFFFFF).astype(np.uint32)


def encode_packets(
    tokens: Sequence[int] | np.ndarray,
    prices: Sequence[float] | np.ndarray,
    modes: str | Sequence[str] = "quote",
    *,
    volume: Any = None,
    oi: Any = None,
    timestamp: Any = None,
    last_quantity: Any = None,
    open: Any = None,  # noqa: A002 - Kite's field name
    high: Any = None,
    low: Any = None,
    close: Any = None,
    depth: bool = True,
    tick_size: Any = 0.05,
    bid: Any = None,
    ask: Any = None,
    bid_qty: Any = None,
    ask_qty: Any = None,
) -> bytes:
    """Build one binary frame as Kite sends it (readable by ``KiteTicker._parse_binary``).

    Parameters
    ----------
    tokens, prices : instrument tokens and last prices in rupees
    modes : "ltp", "quote" or "full", one for all or one per packet; index tokens (segment 9)
        get the 28/32-byte index layouts
    volume : cumulative day volume (``volume_traded``), quote/full tradable packets
    oi : open interest, full tradable packets
    timestamp : exchange timestamp, epoch **seconds** (int), full packets
    last_quantity, open, high, low, close : the other quote fields (default: 1 and the price)
    depth : fill the 5+5 depth levels of full packets around the price (``tick_size`` apart, one
        for all or one per packet)
    bid, ask, bid_qty, ask_qty : the top of the book of full packets (default: a tick below and
        above the price, 100 each); the deeper levels step ``tick_size`` away from it with 100,
        200, ... A NaN price sends that side empty (every level 0)
    """
    tok = np.asarray(tokens, dtype=np.int64).ravel()
    n = len(tok)
    px = _column(prices, n)
    if isinstance(modes, str):
        mode_arr = np.full(n, modes, dtype=object)
    else:
        mode_arr = np.asarray(list(modes), dtype=object)
        if len(mode_arr) != n:
            raise ValueError(f"modes has {len(mode_arr)} entries for {n} tokens; give one per token")
    lengths = np.array([packet_length(m, t) for m, t in zip(mode_arr, tok)], dtype=np.int64)
    div = price_divisor(tok)
    vol = _column(volume, n)
    oi_ = _column(oi, n)
    ts = _column(timestamp, n)
    ltq = _column(last_quantity, n, 1.0)
    o, h, lo, c = (px if x is None else _column(x, n) for x in (open, high, low, close))

    out = np.zeros(2 + int((lengths + 2).sum()), dtype=np.uint8)
    out[0:2] = (n >> 8) & 0xFF, n & 0xFF
    starts = 2 + np.concatenate([[0], np.cumsum(lengths + 2)[:-1]]).astype(np.int64)
    out[starts] = (lengths >> 8) & 0xFF
    out[starts + 1] = lengths & 0xFF
    body = starts + 2

    def put(sel: np.ndarray, offset: int, values: np.ndarray, fmt: str = ">u4") -> None:
        width = np.dtype(fmt).itemsize
        raw = np.asarray(values).astype(fmt).view(np.uint8).reshape(len(sel), width)
        out[(body[sel] + offset)[:, None] + np.arange(width)] = raw

    p_int = _u32(px * div)
    for length in PACKET_LENGTHS:
        sel = np.flatnonzero(lengths == length)
        if not len(sel):
            continue
        put(sel, 0, tok[sel].astype(np.uint32))
        put(sel, 4, p_int[sel])
        if length in (28, 32):
            put(sel, 8, _u32(h[sel] * div[sel]))
            put(sel, 12, _u32(lo[sel] * div[sel]))
            put(sel, 16, _u32(o[sel] * div[sel]))
            put(sel, 20, _u32(c[sel] * div[sel]))
            chg = np.where(c[sel] > 0, (px[sel] - c[sel]) * 100 / np.where(c[sel] > 0, c[sel], 1), 0)
            put(sel, 24, _u32(np.abs(chg) * 100))
            if length == 32:
                put(sel, 28, _u32(ts[sel]))
        elif length in (44, 184):
            put(sel, 8, _u32(ltq[sel]))
            put(sel, 12, p_int[sel])  # average traded price: the last price is close enough
            put(sel, 16, _u32(vol[sel]))
            put(sel, 20, _u32(vol[sel] * 0.1))
            put(sel, 24, _u32(vol[sel] * 0.1))
            put(sel, 28, _u32(o[sel] * div[sel]))
            put(sel, 32, _u32(h[sel] * div[sel]))
            put(sel, 36, _u32(lo[sel] * div[sel]))
            put(sel, 40, _u32(c[sel] * div[sel]))
            if length == 184:
                put(sel, 44, _u32(ts[sel]))  # last_trade_time
                put(sel, 48, _u32(oi_[sel]))
                put(sel, 52, _u32(oi_[sel]))
                put(sel, 56, _u32(oi_[sel]))
                put(sel, 60, _u32(ts[sel]))
                if depth:
                    tick = _column(tick_size, n)[sel]
                    for side, top, qty in ((-1, bid, bid_qty), (1, ask, ask_qty)):
                        best = px[sel] + side * tick if top is None else _column(top, n)[sel]
                        empty = np.isnan(best)
                        q1 = np.full(len(sel), 100.0) if qty is None else _column(qty, n)[sel]
                        for step in range(5):
                            base = 64 + 12 * (step + (5 if side > 0 else 0))
                            lp = np.where(empty, 0.0, best + side * step * tick)
                            q = np.where(empty, 0.0, q1 if step == 0 else 100.0 * (step + 1))
                            put(sel, base, _u32(q))
                            put(sel, base + 4, _u32(lp * div[sel]))
                            put(sel, base + 8, np.where(empty, 0, step + 1).astype(np.uint16), ">u2")
    return out.tobytes()


def parse_text(payload: Any) -> dict[str, Any]:
    """Parse a text message (``{"type": "order"|"error"|..., "data": ...}``); never raises.

    Junk (not JSON, not an object) comes back as ``{"type": "invalid", "data": <text>}``.
    """
    try:
        text = payload.decode("utf-8", "replace") if isinstance(payload, (bytes, bytearray)) else str(payload)
    except Exception:  # noqa: BLE001
        return {"type": "invalid", "data": None}
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return {"type": "invalid", "data": text[:500]}
    if not isinstance(data, dict):
        return {"type": "invalid", "data": text[:500]}
    msg_type = data.get("type")
    return {**data, "type": msg_type if isinstance(msg_type, str) else "unknown"}
