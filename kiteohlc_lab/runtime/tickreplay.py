"""Replay from the tick store: ``--source replay --from T --to T`` with no ``--tape``.

The store's ticks of the instruments in ``[start, end)`` are read once (``stores.tickread.tape``)
and fed to the ordinary ``ReplaySource`` in the order the live stream processed them, so the candles
equal, candle for candle, those the live stream made (for any timeframe, sub-minute too). A replay
from the store is never recorded into it again.
"""

from __future__ import annotations

from typing import Any

from ..core.timeframes import parse_timeframe
from ..errors import ConfigError, TickStoreError
from ..streaminfo import StreamInfo, split_symbols


def wants_store(source: str | None, tape: str | None, start: Any, end: Any) -> bool:
    """True when a start means a replay from the tick store (replay, no tape, a range given)."""
    ranged = start not in (None, "") or end not in (None, "")
    if ranged and (source != "replay" or tape):
        raise ConfigError("--from/--to replay a range of the tick store: use them with --source replay "
                          "and no --tape")
    if source == "replay" and not tape and not ranged:
        raise ConfigError("--source replay needs --tape PATH (a CSV or Parquet tape), or --from/--to "
                          "for a range of the tick store")
    return source == "replay" and not tape


def start_from_store(m: Any, symbols: Any, timeframes: Any, start: Any = None, end: Any = None,
                     speed: float = 0.0) -> StreamInfo:
    """Start a replay of the tick store's ``symbols`` between ``start`` and ``end`` (naive: IST)."""
    from ..feeds.replay import ReplaySource
    from ..stores.tickread import days, tape as store_tape
    from ..stores.ticks import store_url
    from ..tickapi import span, tokens_of
    from .launch import launch

    lo, hi = span(start, end)
    syms = split_symbols(symbols)
    tf_list = [timeframes] if isinstance(timeframes, str) else list(timeframes)
    tfs = [parse_timeframe(t) for t in tf_list]
    if not tfs:
        raise ConfigError("no timeframe given; use e.g. 1m 5m 15m 1h 1d")
    try:
        speed = float(speed)
    except (TypeError, ValueError):
        speed = -1.0
    if not speed >= 0:
        raise ConfigError(f"speed {speed!r} is not accepted; use 0 (as fast as possible) or a positive factor")
    url = store_url(m.cfg)
    pairs = tokens_of(m, syms, url)
    tokens = [t for _, t in pairs]
    tape = store_tape(url, tokens, lo, hi)
    where = f"between {start or 'the first tick'} and {end or 'the last'}"
    present = tape.tokens()
    missing = [s for s, t in pairs if t not in present]
    if missing:
        held = ", ".join(d["date"] for d in days(url)) or "no day at all"
        raise TickStoreError(f"no ticks of {', '.join(missing)} in the tick store {url} {where} "
                             f"(it holds {held})")
    with m.lock:  # stopped and finished streams leave the status table at the next start
        for name in [n for n, s in m.streams.items() if not s.alive and s.state in ("stopped", "done")]:
            del m.streams[name]
    src = ReplaySource(tape, tokens, speed=speed)
    name = m.new_stream_name("replay:ticks")
    info = launch(m, name, src, pairs, tfs, None, first_ts=int(tape.ticks.ts.min()))
    info.message = (f"Replaying {', '.join(s for s, _ in pairs)} {' '.join(t.label for t in tfs)} from "
                    f"the tick store ({len(tape.ticks)} ticks {where}) at speed {speed:g}"
                    f"{' (as fast as possible)' if speed == 0 else 'x'}; {m.stores()[2]}")
    return info


__all__ = ["start_from_store", "wants_store"]
