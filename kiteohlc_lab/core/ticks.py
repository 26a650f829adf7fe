"""Tick batches: the columnar unit that flows from feeds into the engine.

One ``TickBatch`` is one WebSocket frame's packets or one chunk of a replay tape. Arrays, not objects:
the engine works on whole batches. Times are int64 epoch nanoseconds (UTC).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from .state import NONE
from .timeframes import IST_OFFSET_NS, NS


_GOLDEN = np.int64(0x9E3779B97F4A7C15 - (1 << 64))  # Fibonacci hashing's multiplier, as int64 bits


def token_hash(tokens: np.ndarray, bits: int) -> np.ndarray:
    """Fibonacci hashing of instrument tokens into ``bits`` bits (int64 in [0, 2**bits)): the top
    bits of token x golden (mod 2**64). In int64 (its product wraps the same; the arithmetic
    shift's sign bits are masked off): one array and two in-place steps, no conversions."""
    h = np.asarray(tokens, np.int64) * _GOLDEN
    h >>= 64 - bits
    h &= (1 << bits) - 1
    return h


class SlotTable:
    """Instrument token -> slot by ``token_hash``, for a batch in a few vector operations. Grown to
    stay at most a quarter full from 2**12 entries (a fixed 2**20 were 8 MB written at every
    engine's creation: 2-8 ms of a replay's start) up to 2**20. A token it cannot answer (a new one,
    or one sharing an entry) is left to the caller's sorted search."""

    def __init__(self, bits: int = 12, max_bits: int = 20) -> None:
        self.bits, self.max_bits = bits, max_bits
        self.table = np.full(1 << bits, -1, np.int64)  # hash -> slot (-1: none)
        self.probe = np.full(1, NONE, np.int64)  # token of each slot, then NONE (no token)

    def guess(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(each token's slot where the table knows it, whether it does)."""
        guess = self.table[token_hash(tokens, self.bits)]
        return guess, self.probe[guess] == tokens  # an empty entry (-1) reads the probe's last

    def add(self, slot_tokens: np.ndarray, new: np.ndarray, slots: np.ndarray) -> None:
        """``new`` tokens took ``slots``; ``slot_tokens``: the token of every slot now."""
        n = len(slot_tokens)
        self.probe = np.append(slot_tokens, NONE)
        bits = min(self.max_bits, max(self.bits, (4 * n - 1).bit_length()))
        if bits != self.bits:  # a bigger table, every token hashed again
            self.bits, self.table = bits, np.full(1 << bits, -1, np.int64)
            new, slots = slot_tokens, np.arange(n, dtype=np.int64)
        h = token_hash(new, self.bits)
        free = self.table[h] < 0
        self.table[h[free]] = slots[free]  # a token sharing an entry is found by the search


def run_starts(a: np.ndarray) -> np.ndarray:
    """True where a run of equal values of ``a`` starts (at 0 and where a value differs from the
    one before): each instrument's first tick in slot order, each bucket's first, each distinct
    value of a sorted array."""
    out = np.empty(len(a), bool)
    if len(a):
        out[0] = True
        np.not_equal(a[1:], a[:-1], out=out[1:])
    return out


def distinct(a: np.ndarray) -> np.ndarray:
    """``np.unique(a)`` (sorted distinct values) of a numeric array. numpy 2's ``unique`` and
    ``isin`` import ``numpy.ma`` on first use: 15-40 ms in the middle of a replay's first batch."""
    s = np.sort(a)
    if len(s) < 2:
        return s
    return s[run_starts(s)]


def lookup(sorted_values: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(where each of ``a`` is in ``sorted_values``, clipped to a valid index; whether it is there).
    Instrument tokens against a sorted table: the engine's slots, a tape's known instruments, a
    writer's fence."""
    if len(sorted_values) == 0:
        return np.zeros(len(a), np.intp), np.zeros(len(a), bool)
    pos = np.searchsorted(sorted_values, a)
    np.minimum(pos, len(sorted_values) - 1, out=pos)
    return pos, sorted_values[pos] == a


def token_array(tokens: Any) -> np.ndarray:
    """Instrument tokens (an array, or a collection of ints or of what ``int`` reads) as int64.

    A set of Python ints goes through ``np.fromiter`` without a generator: 1800 tokens, a live
    write's instruments, in 0.04 ms instead of 0.21."""
    if isinstance(tokens, np.ndarray):
        return tokens.astype(np.int64, copy=False)
    try:
        return np.fromiter(tokens, np.int64, len(tokens))
    except (TypeError, ValueError):  # no len(), or items int() reads but numpy does not ("42")
        return np.fromiter((int(t) for t in tokens), np.int64)


def member(a: np.ndarray, values: Any) -> np.ndarray:
    """``np.isin(a, values)`` for integer arrays (instrument tokens), by a sorted search."""
    return lookup(distinct(np.asarray(values, dtype=np.int64)), a)[1]


_NAN_BUFFERS: list[np.ndarray] = []  # read-only NaN columns that batches share (nan_column)
_NAN_SHARED_MAX = 1 << 20  # longer columns get their own array (a whole tape read at once)


def nan_column(n: int) -> np.ndarray:
    """``n`` NaN as a read-only view of a buffer that batches share: the column a source does not
    have (open interest on most tapes) costs no allocation, and the engine knows it for one
    without looking at its values (``is_nan_column``): no gather of it by instrument, no scan of
    it for values (a 20M-tick replay gathered 20M NaN, the coldest of its columns)."""
    if n > _NAN_SHARED_MAX:
        return np.full(n, np.nan)
    buf = _NAN_BUFFERS[-1] if _NAN_BUFFERS else None
    if buf is None or len(buf) < n:  # (this one: another thread may add a shorter one meanwhile)
        buf = np.full(max(n, 1 << 18), np.nan)
        buf.flags.writeable = False
        _NAN_BUFFERS.append(buf)  # views of an earlier, shorter one stay known
    return buf[:n]


def is_nan_column(a: np.ndarray) -> bool:
    """True when ``a`` is a ``nan_column`` (or a slice of one): all NaN, known without a look."""
    base = a.base
    return base is not None and any(base is b for b in _NAN_BUFFERS)


CORE = ("token", "ts", "price", "volume", "oi")  # always present
BOOK = ("bid", "ask", "bid_qty", "ask_qty")  # optional: None when no tick of the batch has a book


@dataclass(slots=True)
class TickBatch:
    """Columnar ticks in arrival order.

    Attributes
    ----------
    token : int64 instrument tokens
    ts : int64 epoch nanoseconds (exchange timestamp, else receive time)
    price : float64 last traded price in rupees
    volume : float64 cumulative day volume (``volume_traded``); NaN where the packet has none
    oi : float64 open interest; NaN where the packet has none
    bid, ask, bid_qty, ask_qty : float64 top of the book (full packets of tradable instruments:
        the first depth level of each side; an empty side has a NaN price and a 0 quantity), NaN
        where the packet carries no depth; or None when no tick of the batch has a book (ltp/quote
        packets, indices, replays): ``book()`` materialises NaN then. The engine ignores them.
    """

    token: np.ndarray
    ts: np.ndarray
    price: np.ndarray
    volume: np.ndarray
    oi: np.ndarray
    bid: np.ndarray | None = None
    ask: np.ndarray | None = None
    bid_qty: np.ndarray | None = None
    ask_qty: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.token = np.asarray(self.token, dtype=np.int64)
        self.ts = np.asarray(self.ts, dtype=np.int64)
        self.price = np.asarray(self.price, dtype=np.float64)
        n = len(self.token)
        self.volume = (
            np.full(n, np.nan) if self.volume is None else np.asarray(self.volume, dtype=np.float64)
        )
        self.oi = nan_column(n) if self.oi is None else np.asarray(self.oi, dtype=np.float64)
        if self.bid is not None or self.ask is not None or self.bid_qty is not None \
                or self.ask_qty is not None:  # one present: all four, NaN where not given
            for f in BOOK:
                v = getattr(self, f)
                setattr(self, f, np.full(n, np.nan) if v is None else np.asarray(v, dtype=np.float64))

    @property
    def has_book(self) -> bool:
        """The batch carries book columns (some tick of it may still have NaN there)."""
        return self.bid is not None

    def book(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(bid, ask, bid_qty, ask_qty)``, NaN arrays when the batch carries no book."""
        if self.bid is None:
            nan = np.full(len(self.token), np.nan)
            return nan, nan, nan, nan
        return self.bid, self.ask, self.bid_qty, self.ask_qty  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.token)

    @classmethod
    def empty(cls) -> "TickBatch":
        z = np.empty(0)
        return cls(z.astype(np.int64), z.astype(np.int64), z, z, z)

    @classmethod
    def concat(cls, batches: Iterable["TickBatch"]) -> "TickBatch":
        bs = [b for b in batches if len(b)]
        if not bs:
            return cls.empty()
        base = [np.concatenate([getattr(b, f) for b in bs]) for f in CORE]
        if not any(b.bid is not None for b in bs):
            return cls(*base)
        books = [b.book() for b in bs]
        return cls(*base, *(np.concatenate([bk[i] for bk in books]) for i in range(4)))

    def take(self, idx: Any) -> "TickBatch":
        if self.bid is None:
            return TickBatch(self.token[idx], self.ts[idx], self.price[idx], self.volume[idx],
                             self.oi[idx])
        return TickBatch(*(getattr(self, f)[idx] for f in self.__slots__))

    @classmethod
    def from_ticks(cls, ticks: list[dict], receive_ns: int | None = None) -> "TickBatch":
        """Build from kiteconnect-style tick dicts (``on_ticks`` payload).

        ``exchange_timestamp`` (or ``timestamp``/``last_trade_time``) is a naive datetime in the
        machine's local zone, as kiteconnect makes it; ticks without one take ``receive_ns``.
        ``depth`` (full mode) gives the top of the book: its first ``buy`` and ``sell`` levels.
        """
        recv = time.time_ns() if receive_ns is None else receive_ns
        n = len(ticks)
        token = np.empty(n, np.int64)
        ts = np.empty(n, np.int64)
        price = np.empty(n)
        vol = np.full(n, np.nan)
        oi = np.full(n, np.nan)
        book: np.ndarray | None = None  # rows bid, ask, bid_qty, ask_qty, made at the first depth
        for i, t in enumerate(ticks):
            token[i] = t["instrument_token"]
            price[i] = t.get("last_price", np.nan)
            stamp = t.get("exchange_timestamp") or t.get("timestamp")
            ts[i] = to_epoch_ns(stamp) if stamp is not None else recv
            v = t.get("volume_traded", t.get("volume"))
            if v is not None:
                vol[i] = v
            o = t.get("oi")
            if o is not None:
                oi[i] = o
            depth = t.get("depth")
            if depth:
                if book is None:
                    book = np.full((4, n), np.nan)
                for side, (p_row, q_row) in (("buy", (0, 2)), ("sell", (1, 3))):
                    level = (depth.get(side) or [None])[0]
                    if level:
                        q = level.get("quantity", 0)
                        book[q_row, i] = q
                        if level.get("price"):  # an empty level is price 0: no price
                            book[p_row, i] = level["price"]
        if book is None:
            return cls(token, ts, price, vol, oi)
        return cls(token, ts, price, vol, oi, *book)


def to_epoch_ns(value: Any) -> int:
    """Convert a timestamp to epoch ns.

    Naive ``datetime`` objects are taken in the machine's local zone (kiteconnect builds them with
    ``datetime.fromtimestamp``); tz-aware ones are exact; numbers are epoch seconds.
    """
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            # datetime.timestamp() on a naive value interprets it in the local zone (like
            # fromtimestamp did when kiteconnect built it), so the round trip is exact.
            return int(round(value.timestamp() * 1e6)) * 1000
        return int(round(value.timestamp() * 1e6)) * 1000
    if isinstance(value, (int, float, np.integer, np.floating)):
        return int(value * NS)
    raise TypeError(f"cannot read a timestamp from {value!r}")


def ist_naive_to_epoch_ns(values: np.ndarray) -> np.ndarray:
    """datetime64 values holding IST wall-clock times -> epoch ns."""
    return values.astype("datetime64[ns]").astype(np.int64) - IST_OFFSET_NS
