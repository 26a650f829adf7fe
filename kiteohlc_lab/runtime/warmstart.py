"""Warm start: a live stream started after the open shows the day so far at once.

Two parts, both only for instruments the live store has no state of (a restarted writer continues
its own candles from Redis, and gap repair fills its outage):

1. ``from_store`` (before the stream starts; only with a sub-minute timeframe): today's ticks of
   those instruments from the tick store (what a collector recorded; its published files, so up to
   ``tick_file_seconds`` before now) are queued ahead of the feed's first frame. The engine aggregates them like live ticks, so every
   timeframe, sub-minute too, has the morning, and the volume baseline runs on into the live ticks.
   They are not recorded again (the stream's tick store skips its first that many ticks).
2. ``from_kite`` (after): minute and longer candles of the day from Kite's historical API on a
   thread (within its rate limit; ``progress`` as for a backfill), handed to the stream like a
   backfill: closed candles replace what the ticks made (Kite's are the exchange's); the candle
   forming at the start is replaced by Kite's once it is over (gap repair's rule), so the seam has
   no gap and no duplicate.

``KiteOHLC.warm_start``: ``on``, ``off``, or ``auto`` (on with Kite credentials, streaming from Kite
itself: a simulator's synthetic history is no morning of the ticks it sends).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any, Callable

from ..core.timeframes import DAY_NS, IST_OFFSET_NS

log = logging.getLogger("kiteohlc_lab")

# stream -> the instruments it started cold (no saved state): the ones warm start fills
_COLD: "weakref.WeakKeyDictionary[Any, list[int]]" = weakref.WeakKeyDictionary()


def enabled(cfg: Any, stream: Any) -> bool:
    """``on``; or ``auto`` with Kite credentials on Kite itself (not a simulator: a ``sim`` source
    or a ``ticker_url`` of its own)."""
    if cfg.warm_start == "auto":
        return cfg.has_credentials() and stream.source_name == "kite" and not cfg.ticker_url
    return cfg.warm_start == "on"


def day_start(now_ns: int) -> int:
    """00:00 IST of the IST day holding ``now_ns`` (epoch ns)."""
    return ((now_ns + IST_OFFSET_NS) // DAY_NS) * DAY_NS - IST_OFFSET_NS


def from_store(cfg: Any, stream: Any, tokens: list[int], tfs: list | None = None,
               now_ns: int | None = None) -> int:
    """Queue today's stored ticks of ``tokens`` on ``stream`` (not started yet). Returns how many.

    Only for a stream with a sub-minute timeframe (``tfs``; None: any): minute and longer candles
    come from Kite's history, and a whole market's morning of ticks is no start-up read."""
    if not tokens or not enabled(cfg, stream):
        return 0
    _COLD[stream] = list(tokens)
    if tfs is not None and not any(tf.seconds < 60 for tf in tfs):
        return 0
    from ..stores.tickread import batch_of, read
    from ..stores.ticks import store_url

    now = time.time_ns() if now_ns is None else int(now_ns)
    try:
        table = read(store_url(cfg), tokens, day_start(now), now,
                     columns=["token", "exchange_time", "last_price", "volume", "oi"])
    except Exception as exc:  # noqa: BLE001 - no store, unreadable store: start cold, say why
        log.info("warm start: the tick store is not readable (%s); starting from now", exc)
        return 0
    if table.num_rows == 0:
        return 0
    batch = batch_of(table)
    stream.on_batch(batch)
    if stream.tick_store is not None:  # never record the morning a second time: the stream's
        stream.tick_store.skip_first = len(batch)  # first ticks (stored ones, so the filter takes all)
    return len(batch)


def from_kite(cfg: Any, stream: Any, pairs: list[tuple[str, int]], tfs: list, kite: Any,
              progress: Callable[[float, str], Any] | None = None, now_ns: int | None = None,
              service: Any = None) -> int:
    """Fetch today's minute-and-longer candles of the cold instruments on the session's history
    thread (``service``: runtime.history.HistoryService; a thread of its own without one); returns
    the number of (instrument, timeframe) jobs started (0: nothing to do)."""
    cold = set(_COLD.get(stream, ()))
    jobs = [(sym, tok, tf) for sym, tok in pairs if tok in cold for tf in tfs if tf.seconds >= 60]
    if not jobs or not enabled(cfg, stream):
        return 0
    from ..feeds.historical import HistoricalClient

    client = HistoricalClient(kite, session_open=dict(cfg.session_open) or None)
    now = time.time_ns() if now_ns is None else int(now_ns)
    lo = day_start(now)

    def report(k: int, what: str) -> None:
        if progress is not None:
            try:
                progress(k / len(jobs), what)
            except Exception:  # noqa: BLE001 - a closed progress widget must not stop it
                pass

    def run() -> None:
        for k, (sym, tok, tf) in enumerate(jobs):
            if not stream.alive and stream.state != "starting":
                return
            what = f"warm start {sym} {tf.label} (today so far)"
            report(k, what)
            try:
                cb = client.fetch(tok, tf.label, lo, now)
            except Exception as exc:  # noqa: BLE001 - said once in status; the stream goes on
                stream.on_error(f"warm start of {sym} {tf.label} from Kite's history failed: {exc}", False)
                continue
            if len(cb):
                stream.on_history(tok, tf.label, cb)
        report(len(jobs), "warm start done")

    if service is not None:
        service.submit(run, cancelled=stream.done.is_set, what="warm start from Kite's history")
    else:
        threading.Thread(target=run, name="kiteohlc-warm-start", daemon=True).start()
    return len(jobs)


__all__ = ["enabled", "from_store", "from_kite", "day_start"]
