"""Readers that follow a collector through Redis instead of opening their own Kite connection.

An ``AttachedStream`` is a stream like an own one (``streaminfo.StreamHandle``: name, tokens,
timeframes, state, ``stop()``, ``subscribe()``, ``status()``, ``forming()``, ``events``) and emits the
same events (core.events), which the Manager's listener takes the way it takes a ``Stream``'s:

- closed candles: the instrument's closed-candle Redis Streams (``P{T}:closed:<tf>``), first read
  whole (``XRANGE``, into the series without callbacks), then followed with ``XREAD BLOCK`` from the
  last id seen -> ``CandlesClosed`` (``listener.on_closed``). Candles are upserted by start, so an
  amended or re-sent candle replaces the old one: no duplicate, and a collector that dies and is
  replaced simply continues the same streams (no gap, no restart of the reader).
- the forming candle: the ``P{T}:forming:<tf>`` hashes, read at most every ``poll`` seconds after
  each wake-up, but not within ``CLOSE_QUIET`` of closed candles (the writer sends the new forming
  candles after them; the next closed ones come first) -> ``FormingChanged`` carrying the candles
  (``listener.on_forming``).
- ``on_candle`` callbacks run on the registry's worker while this thread reads on (it does not wait
  for them as a stream thread does).

``attach_leased`` decides which symbols of a ``%ohlc_stream`` to follow: those whose lease another
live writer holds (a collector, another notebook); ``--source redis`` follows every symbol.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterable

import numpy as np

from .core.candles import CandleBatch
from .core.events import Bus, CandlesClosed, FormingChanged, StreamError, listen
from .core.timeframes import Timeframe, parse_timeframe
from .errors import ConfigError, SymbolError
from .stores import keys
from .stores.redis_lua import is_cluster

log = logging.getLogger("kiteohlc_lab.attach")

_F = ("open", "high", "low", "close", "volume", "oi")
CLOSE_QUIET = 0.05  # seconds without a forming read after closed candles arrived


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _rows_to_batch(tf: str, rows: list[tuple], closed: bool = True) -> CandleBatch:
    """rows: (token, start, o, h, l, c, v, oi, ticks, amended)."""
    if not rows:
        return CandleBatch.empty(tf, closed)
    cols = list(zip(*rows))
    return CandleBatch(tf, np.array(cols[0], np.int64), np.array(cols[1], np.int64),
                       *(np.array(c, np.float64) for c in cols[2:8]), np.array(cols[8], np.int64),
                       closed, np.array(cols[9], bool) if closed else None)


def _row(token: int, fields: dict) -> tuple:
    d = {_s(k): _s(v) for k, v in fields.items()}
    return (int(token), int(d["start"]), *(float(d[k]) for k in _F), int(d.get("ticks", 0)),
            d.get("amended", "0") == "1")


class RedisFollow:
    """What an attached stream reads from, described as a feed describes itself (name, live,
    status); the reading is the AttachedStream's own thread."""

    name = "redis"
    live = True

    def __init__(self, stream: "AttachedStream") -> None:
        self._stream = stream

    def status(self) -> dict:
        s = self._stream
        return {"name": "redis", "state": s.state, "writers": sorted(set(s.writers.values())),
                "last_tick_age": s.last_update_age(), "candles": s.received}


class AttachedStream:
    """Follow the collector's candles of ``tokens`` x ``tfs`` in Redis; see the module docstring.

    Parameters
    ----------
    name : stream name in ``status``.
    live : the live store (``RedisLive`` or its ``Resilient`` wrapper).
    tokens, tfs : instruments and timeframes to follow.
    listener : subscribed to its events (``on_closed`` / ``on_forming`` / ``on_error``, core.events.listen).
    symbols : token -> display symbol.
    on_initial : called with the closed candles already in Redis at attach time (no callbacks).
    block_ms, poll : XREAD BLOCK timeout; minimum seconds between forming-candle reads.
    """

    attached = True  # streaminfo.StreamHandle: follows another writer, writes nothing
    source_name = "redis"
    realtime = True

    def __init__(self, name: str, live: Any, tokens: list[int], tfs: list[Any], *, listener: Any,
                 symbols: dict[int, str] | None = None, on_initial: Any = None,
                 block_ms: int = 250, poll: float = 0.2) -> None:
        self.name = name
        self.live = live
        self.client = live.client
        self._cluster = is_cluster(self.client)  # asked once: an isinstance of redis-py's class costs tens of us
        self.prefix = live.prefix
        self.tokens = [int(t) for t in tokens]
        self.symbols = dict(symbols or {})
        self._tfs: list[Timeframe] = []
        for tf in tfs:
            self.add_timeframe(tf)
        self.source = RedisFollow(self)
        self.events = Bus()
        self.listener = listener
        listen(self.events, self, listener)
        self.on_initial = on_initial
        self.block_ms = int(block_ms)
        self.poll = float(poll)
        self.state = "starting"
        self.error: str | None = None
        self.errors: list[str] = []
        self.done = threading.Event()
        self.writers: dict[int, str] = {}
        self.received = 0
        self._last_update: float | None = None
        self._ids: dict[str, str] = {}
        self._keys: dict[str, tuple[int, str]] = {}
        self._last_closed: dict[tuple[int, str], int] = {}
        self._forming_seen: dict[tuple[int, str], tuple] = {}
        self._forming: dict[tuple[int, str], tuple] = {}  # the last forming row read, per (token, tf)
        self._pending: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"kiteohlc-attach-{name}", daemon=True)

    # -- what every stream is (streaminfo.StreamHandle) -----------------------------------------
    @property
    def timeframes(self) -> list[Timeframe]:
        return list(self._tfs)

    def add_timeframe(self, tf: Any) -> Timeframe:
        t = parse_timeframe(tf)
        if t.label not in {x.label for x in self._tfs}:
            self._tfs.append(t)
        return t

    def call(self, fn: Any, timeout: float | None = None) -> Any:
        """Run ``fn()`` now, under the lock the reader thread takes for its subscriptions."""
        with self._lock:
            return fn()

    def forming(self, tf: Any, token: int | None = None) -> CandleBatch:
        """The forming candles of ``tf`` last read from the store (all instruments or one)."""
        label = parse_timeframe(tf).label
        with self._lock:
            rows = [r for (tok, t), r in self._forming.items()
                    if t == label and (token is None or tok == int(token))]
        return _rows_to_batch(label, sorted(rows), closed=False)

    def written_tokens(self) -> list[int]:
        return []

    def unsubscribe(self, tokens: list[int]) -> None:
        """Stop following some instruments (their candles so far stay)."""
        drop = {int(t) for t in tokens}
        with self._lock:
            self.tokens = [t for t in self.tokens if t not in drop]

    def _key(self, token: int, kind: str, tf: str) -> str:
        return keys.instrument(self.prefix, token, kind, tf)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "AttachedStream":
        with self._lock:
            self._pending = [(t, tf.label) for t in self.tokens for tf in self._tfs]
        self._thread.start()
        return self

    def subscribe(self, tokens: list[int], symbols: dict[int, str] | None = None,
                  tfs: Iterable[Any] = ()) -> None:
        """Follow more instruments (or timeframes) without restarting."""
        for tf in tfs:
            self.add_timeframe(tf)
        self.symbols.update(symbols or {})
        with self._lock:
            for t in tokens:
                if int(t) not in self.tokens:
                    self.tokens.append(int(t))
            have = set(self._keys.values()) | set(self._pending)
            self._pending += [(t, tf.label) for t in self.tokens for tf in self._tfs
                              if (t, tf.label) not in have]

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self.state != "failed":
            self.state = "stopped"
        self.done.set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def reads(self, live: Any) -> bool:
        """True if it follows the live store ``live``."""
        return self.live is live

    def last_update_age(self) -> float | None:
        return None if self._last_update is None else time.monotonic() - self._last_update

    # -- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        self.state = "running"
        next_forming = next_writer = quiet_until = 0.0
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    self._add_pending()
                    got = self._read_closed()
                    now = time.monotonic()
                    if got:
                        # no other read for a moment after closed candles: their writer sends
                        # the new forming candles after them (RedisLive.set_close_pause) and may
                        # append more closed ones, which this thread should read first
                        quiet_until = now + CLOSE_QUIET
                    quiet = now < quiet_until
                    if now >= next_forming and (not quiet or now >= next_forming + self.poll):
                        self._read_forming()
                        next_forming = now + self.poll
                    if now >= next_writer and not quiet:
                        self._check_writers()
                        next_writer = now + 2.0
                    failures = 0
                except Exception as exc:  # noqa: BLE001 - Redis away: report once, retry
                    failures += 1
                    msg = f"attached stream {self.name}: Redis read failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                    self._record_error(msg)
                    self.state = "reconnecting"
                    self._stop.wait(min(0.2 * failures, 2.0))
                    continue
                if self.state == "reconnecting":
                    self.state = "running"
        finally:
            self.done.set()

    def _add_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        initial: dict[str, list[tuple]] = {}
        for tok, tf in pending:
            key = self._key(tok, "closed", tf)
            last = "-"
            rows: list[tuple] = []
            while True:  # the whole stream, in pages
                entries = self.client.xrange(key, min=last, max="+", count=2000)
                if last != "-" and entries and _s(entries[0][0]) == last:
                    entries = entries[1:]
                if not entries:
                    break
                rows += [_row(tok, f) for _id, f in entries]
                last = _s(entries[-1][0])
            by_start = {r[1]: r for r in rows}  # an amended candle appears again: the last wins
            rows = [by_start[s] for s in sorted(by_start)]
            if rows:
                self._last_closed[(tok, tf)] = rows[-1][1]
                initial.setdefault(tf, []).extend(rows)
            self._ids[key] = last if last != "-" else "0-0"
            self._keys[key] = (tok, tf)
        batches = [_rows_to_batch(tf, rows) for tf, rows in initial.items()]
        if batches and self.on_initial is not None:
            self.on_initial(batches)
        self._read_forming()

    def _read_closed(self) -> bool:
        if not self._ids:
            self._stop.wait(self.block_ms / 1000)
            return False
        if self._cluster:
            # keys of different instruments live in different slots: no multi-key blocking XREAD
            pipe = self.client.pipeline(transaction=False)
            for key, last in self._ids.items():
                pipe.xread({key: last}, count=1000)
            resp = [item for r in pipe.execute() if r for item in r]
            if not resp:
                self._stop.wait(min(self.block_ms / 1000, 0.05))
                return False
        else:
            resp = self.client.xread(dict(self._ids), count=1000, block=self.block_ms)
            if not resp:
                return False
        by_tf: dict[str, list[tuple]] = {}
        self._take(resp, by_tf)
        if not self._cluster and len(resp) < len(self._ids):
            # a blocked XREAD is answered with the first stream that got an entry only; the writer
            # appended the others in the same script: read them now (no BLOCK), in one batch (one
            # hand-over to the listener instead of two: 5 of a reader's 35 ms of CPU per close of
            # 20 instruments in 12 scripts, which ten readers waking together on 2 cores wait for)
            more = self.client.xread(dict(self._ids), count=1000)
            if more:
                self._take(more, by_tf)
        batches = [_rows_to_batch(tf, rows) for tf, rows in by_tf.items()]
        self.received += sum(len(b) for b in batches)
        self._last_update = time.monotonic()
        if batches:
            self.events.emit(CandlesClosed(self.name, batches))
        return True

    def _take(self, resp: list, by_tf: dict[str, list[tuple]]) -> None:
        """XREAD entries -> rows per timeframe; the read positions move past them."""
        for key, entries in resp:
            key = _s(key)
            tok, tf = self._keys[key]
            for _eid, fields in entries:
                r = _row(tok, fields)
                by_tf.setdefault(tf, []).append(r)
                self._last_closed[(tok, tf)] = max(self._last_closed.get((tok, tf), r[1]), r[1])
            self._ids[key] = _s(entries[-1][0])

    def _read_forming(self) -> None:
        keys = list(self._keys.values())
        if not keys:
            return
        pipe = self.client.pipeline(transaction=False)
        for tok, tf in keys:
            pipe.hgetall(self._key(tok, "forming", tf))
        by_tf: dict[str, list[tuple]] = {}
        for (tok, tf), h in zip(keys, pipe.execute()):
            if not h:
                continue
            d = {_s(k): _s(v) for k, v in h.items()}
            sig = (d.get("start"), d.get("updated"), d.get("ticks"), d.get("close"))
            if self._forming_seen.get((tok, tf)) == sig:
                continue
            r = _row(tok, h)
            # a forming candle at or before the last closed one is stale (written before the close)
            if r[1] <= self._last_closed.get((tok, tf), -1):
                continue
            self._forming_seen[(tok, tf)] = sig
            by_tf.setdefault(tf, []).append(r)
        if by_tf:
            self._last_update = time.monotonic()
            with self._lock:
                self._forming.update({(r[0], tf): r for tf, rows in by_tf.items() for r in rows})
            batches = tuple(_rows_to_batch(tf, rows, closed=False) for tf, rows in by_tf.items())
            self.events.emit(FormingChanged(self.name, frozenset(r[0] for rows in by_tf.values()
                                                                 for r in rows), batches))

    def _check_writers(self) -> None:
        if not self.tokens:
            return
        pipe = self.client.pipeline(transaction=False)
        for t in self.tokens:
            pipe.get(keys.lease(self.prefix, t))
        self.writers = {t: _s(o) for t, o in zip(self.tokens, pipe.execute()) if o is not None}

    def _record_error(self, message: str) -> None:
        if message not in self.errors:
            self.errors.append(message)
            self.error = message
            try:
                self.events.emit(StreamError(self.name, message))
            except Exception:  # noqa: BLE001
                log.warning(message)

    def status(self) -> dict:
        age = self.last_update_age()
        state = self.state
        if state == "running" and self.tokens and not self.writers:
            state = "no writer"
        return {
            "stream": self.name,
            "source": "redis",
            "state": state,
            "symbols": [self.symbols.get(t, str(t)) for t in self.tokens],
            "timeframes": [t.label for t in self._tfs],
            "ticks": 0,
            "ticks_per_s": 0.0,
            "last_tick_age": None if age is None else round(age, 2),
            "reconnects": 0,
            "late": 0,
            "error": self.error,
            "feed": self.source.status(),
        }


# ---------------------------------------------------------------------- Manager glue
def published_tokens(live: Any, symbols: list[str]) -> dict[str, int]:
    """SYMBOL -> token from the map collectors publish in Redis (``P symbols``)."""
    if not symbols:
        return {}
    vals = live.client.hmget(keys.symbols(live.prefix), [s.upper() for s in symbols])
    return {s.upper(): int(_s(v)) for s, v in zip(symbols, vals) if v is not None}


def publish_symbols(live: Any, pairs: Iterable[tuple[str, int]]) -> None:
    mapping = {s.upper(): int(t) for s, t in pairs}
    if mapping:
        live.client.hset(keys.symbols(live.prefix), mapping=mapping)


def _resolve(manager: Any, live: Any, syms: list[str]) -> dict[str, int | None]:
    pub = published_tokens(live, syms)
    out: dict[str, int | None] = {}
    for s in syms:
        tok = pub.get(s.upper())
        if tok is None:
            try:
                tok = manager.token_of(s)
            except (SymbolError, Exception):  # noqa: BLE001 - unknown here: the own feed resolves it
                tok = None
        out[s] = tok
    return out


def attach_leased(manager: Any, syms: list[str], tfs: list[Any], force: bool = False) -> tuple[list[str], Any]:
    """Attach to the symbols another writer streams; returns (symbols left for an own feed, info).

    With ``force`` (``--source redis``) every symbol is attached, streamed by someone or not.
    """
    from .lease import owner_alive

    live = manager.stores()[0]
    try:
        toks = _resolve(manager, live, syms)
    except Exception as exc:  # noqa: BLE001 - Redis down: nothing to follow, own feed as before
        if force:
            raise ConfigError(f"cannot attach: the live store is not reachable ({exc})") from None
        return syms, None
    if force:
        unknown = [s for s, t in toks.items() if t is None]
        if unknown:
            raise SymbolError(f"{', '.join(unknown)} not known to any collector on this store; "
                              "start one (kiteohlc-lab collect ...) or use a token number")
        pairs = [(s.upper(), int(t)) for s, t in toks.items()]  # type: ignore[arg-type]
        return [], start_attached(manager, pairs, tfs)
    known = {s: t for s, t in toks.items() if t is not None}
    mine = manager.leases
    holders = {}
    if known:
        pipe = live.client.pipeline(transaction=False)
        for t in known.values():
            pipe.get(keys.lease(live.prefix, t))
        holders = {t: (None if o is None else _s(o)) for t, o in zip(known.values(), pipe.execute())}
    follow = [(s.upper(), int(t)) for s, t in known.items()
              if holders.get(t) and (mine is None or holders[t] != mine.owner) and owner_alive(holders[t])]
    if not follow:
        return syms, None
    followed = {s for s, _ in follow}
    return [s for s in syms if s.upper() not in followed], start_attached(manager, follow, tfs)


def start_attached(manager: Any, pairs: list[tuple[str, int]], tfs: list[Any]) -> Any:
    """Follow ``pairs`` x ``tfs`` from Redis (extends a running attached stream of the same store)."""
    from .streaminfo import StreamInfo

    if not pairs:
        raise ConfigError("no symbol to attach to")
    tfs = [parse_timeframe(t) for t in tfs]
    live, _hist, _desc = manager.stores()
    existing = next((s for s in manager.streams.values()
                     if s.attached and s.alive and s.reads(live)), None)
    all_tfs = tfs if existing is None else list({t.label: t for t in [*existing.timeframes, *tfs]}.values())
    manager.prepare(None, pairs, all_tfs)

    def initial(batches: list[CandleBatch]) -> None:
        for b in batches:
            for tok in np.unique(b.token):
                buf = manager.buffers.get((int(tok), b.tf))
                if buf is not None:
                    buf.upsert(b.for_token(int(tok)))

    symbols = {t: s for s, t in pairs}
    writers = ""
    try:
        pipe = live.client.pipeline(transaction=False)
        for _, t in pairs:
            pipe.get(keys.lease(live.prefix, t))
        owners = sorted({_s(o).rsplit(":", 1)[0] for o in pipe.execute() if o is not None})
        writers = f" (collector {', '.join(owners)})" if owners else " (no collector writing them now)"
    except Exception:  # noqa: BLE001
        pass
    names = ", ".join(s for s, _ in pairs)
    labels = " ".join(t.label for t in tfs)
    if existing is not None:
        existing.subscribe([t for _, t in pairs], symbols, tfs)
        msg = f"Attached {names} {labels} to the running Redis follower{writers}; no Kite connection opened"
        return StreamInfo(existing.name, "redis", pairs, [t.label for t in existing.timeframes], msg)
    with manager.lock:
        name = "redis" if "redis" not in manager.streams else manager.new_stream_name("redis")
        stream = AttachedStream(name, live, [t for _, t in pairs], tfs, listener=manager,
                                symbols=symbols, on_initial=initial)
        manager.streams[name] = stream
    stream.start()
    msg = (f"Attached to {names} {labels} streamed by another process{writers} through "
           f"{live.describe() if hasattr(live, 'describe') else 'Redis'}; no Kite connection opened")
    return StreamInfo(name, "redis", pairs, [t.label for t in tfs], msg)
