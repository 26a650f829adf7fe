"""The Redis key schema, defined once: every module that names a key takes it from here.

``P`` is the prefix (default ``kohlc:``); ``{T}`` is the instrument token inside a hash tag, so
every key of one instrument lands in the same Redis Cluster slot::

    P{T}:state            STRING  engine state of the instrument (core.state field names)
    P{T}:forming:<tf>     HASH    forming candle: start open high low close volume oi ticks updated
    P{T}:last             HASH    last price seen
    P{T}:closed:<tf>      STREAM  closed (and amended) candles
    P{T}:lease            STRING  the writer holding the instrument (lease.py), expires unless renewed
    P{T}:lease:gen        STRING  the lease's generation (fencing: a stale writer's write is refused)
    P{T}:source:<tf>      HASH    start -> "ticks" or "kite" (reconcile.py replaced it)
    P{T}:recon:<tf>       HASH    start -> the mismatch reconciliation found
    Ptokens               SET     tokens that have state
    Pforming              PUB/SUB one message per live write
    Psymbols              HASH    SYMBOL -> token, published by collectors (attach.py)
    Pcollector:<host>:<pid> STRING a running collector's heartbeat entry (collector.py)

(The live store's Lua write script, stores/redis_lua.py, builds the same keys from the prefix and the
token with the names below, filled in from here.)
"""

from __future__ import annotations

STATE, FORMING, LAST, CLOSED, LEASE, LEASE_GEN, SOURCE, RECON = (
    "state", "forming", "last", "closed", "lease", "lease:gen", "source", "recon")
TOKENS, FORMING_CHANNEL, SYMBOLS = "tokens", "forming", "symbols"  # after the prefix


def instrument(prefix: str, token: int, kind: str, tf: str | None = None) -> str:
    """``P{T}:<kind>`` or ``P{T}:<kind>:<tf>``."""
    k = f"{prefix}{{{int(token)}}}:{kind}"
    return f"{k}:{tf}" if tf else k


def lease(prefix: str, token: int) -> str:
    return instrument(prefix, token, LEASE)


def lease_generation(prefix: str, token: int) -> str:
    return instrument(prefix, token, LEASE_GEN)


def tokens(prefix: str) -> str:
    return prefix + TOKENS


def forming_channel(prefix: str) -> str:
    return prefix + FORMING_CHANNEL


def symbols(prefix: str) -> str:
    return prefix + SYMBOLS


def collector(prefix: str, cid: str) -> str:
    """A collector's entry (``cid`` = ``host:pid``, or ``*`` for a SCAN pattern)."""
    return f"{prefix}collector:{cid}"
