"""Readers that follow the stores: bring a ``SeriesBuffer`` up to date with what a writer in another
process (a collector, another notebook) stored since.

Used by ``runtime.Manager`` for series that no stream of its own process writes (``candles()``
without a stream, the read API of ``kiteohlc-lab serve``). One refresh costs two small queries,
whatever the length of the history:

1. the live store (one pipelined round trip): the instrument's lease and its forming hash
   ``P{T}:forming:<tf>``. The forming candle is shown only while a writer holds the lease (a writer
   that stopped or died leaves its last forming candle in Redis; nothing is forming then);
2. the history store: candles from the newest start the buffer has (inclusive, so an amended last
   candle replaces it) onwards (``hist.read(token, tf, start_ns)``).

The live store is read first: a writer stores a closed candle in history before the live state says
it closed, so a forming candle read before history is never newer than history plus one candle.
"""

from __future__ import annotations

import logging
import time
from typing import Any


from ..core.candles import Candle, batch_from_frame

log = logging.getLogger("kiteohlc_lab")

KEEP = object()  # "the live store said nothing": leave the forming candle as it is
_DOWN_BACKOFF_S = 5.0


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class StoreFollower:
    """Refreshes series from ``live`` (Redis-like, optional) and ``hist`` (a history store)."""

    def __init__(self, live: Any, hist: Any) -> None:
        self.live = live
        self.hist = hist
        self.refreshes = 0
        self._live_down_until = 0.0

    def _key(self, token: int, kind: str, tf: str | None = None) -> str:
        key = getattr(self.live, "key", None)
        if callable(key):
            return key(token, kind, tf)
        k = f"{self.live.prefix}{{{int(token)}}}:{kind}"
        return f"{k}:{tf}" if tf else k

    def forming(self, token: int, tf: str) -> Any:
        """The forming candle a live writer publishes for ``token`` at ``tf``; None: no writer or
        nothing forming; ``KEEP``: the live store cannot say (none configured, or down)."""
        client = getattr(self.live, "client", None)
        if client is None or not hasattr(self.live, "prefix"):
            return KEEP
        now = time.monotonic()
        if now < self._live_down_until:
            return KEEP
        try:
            pipe = client.pipeline(transaction=False)
            pipe.get(self._key(token, "lease"))
            pipe.hgetall(self._key(token, "forming", tf))
            lease, h = pipe.execute()
        except Exception as exc:  # noqa: BLE001 - Redis away: history only, retry later
            log.debug("live store not readable for following: %s", exc)
            self._live_down_until = now + _DOWN_BACKOFF_S
            return KEEP
        if lease is None or not h:
            return None
        try:
            d = {_s(k): _s(v) for k, v in h.items()}
            return Candle(int(token), tf, int(d["start"]), float(d["open"]), float(d["high"]),
                          float(d["low"]), float(d["close"]), float(d["volume"]), float(d["oi"]),
                          int(d.get("ticks", 0)), closed=False)
        except (KeyError, ValueError):
            return KEEP

    def refresh(self, buf: Any) -> int:
        """Bring ``buf`` up to date; returns the number of closed candles read (new or replaced)."""
        token, tf = int(buf.token), buf.tf
        forming = KEEP if buf.engine_bound else self.forming(token, tf)
        n = 0
        try:
            df = self.hist.read(token, tf, buf.last_start())
        except Exception as exc:  # noqa: BLE001 - history away: keep what the buffer has
            log.debug("history not readable for following: %s", exc)
            df = None
        if df is not None and len(df):
            batch = batch_from_frame(token, tf, df)
            buf.upsert(batch)
            n = len(batch)
        if forming is not KEEP:
            buf.set_forming(forming)
        self.refreshes += 1
        return n
