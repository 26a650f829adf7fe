"""Starting streams: validation of ``start``'s arguments, replay and live (Kite or simulator)
streams, backfill threads, and the history/live-state preparation every new stream goes through.

Functions, not a class: each takes the parts it needs (the Manager, for what the lease and attach
modules also ask of it; the SymbolBook and SeriesRegistry for preparing series).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable

from ..config import KiteOHLC
from ..core.engine import Engine
from ..core.stream import Stream, engine_lock
from ..core.timeframes import parse_timeframe
from ..errors import ConfigError, SymbolError, TapeError
from ..streaminfo import StreamInfo, split_symbols

log = logging.getLogger("kiteohlc_lab")

SOURCES = ("kite", "sim", "replay", "redis")


def last_stamp(state: dict) -> int:
    """The newest tick stamp a saved live state knows (volume baseline or a forming candle), 0: none."""
    stamps = [(state.get("vol") or {}).get("prev_ts")]  # indices have no volume baseline
    stamps += [f.get("last_ts") for f in (state.get("forming") or {}).values()]
    return max((int(x) for x in stamps if x is not None and int(x) > 0), default=0)


def new_engine(cfg: KiteOHLC, tfs: list) -> Engine:
    return Engine(tfs, grace=cfg.grace, late_policy=cfg.late_policy, fill_empty=cfg.fill_empty,
                  session_open=dict(cfg.session_open) or None)


def start(m: Any, symbols: str | list[str], timeframes: str | list[str], *, source: str | None = None,
          tape: str | None = None, speed: float = 0.0, mode: str | None = None, backfill: str | None = None,
          record: str | None = None, progress: Callable[[float, str], Any] | None = None) -> StreamInfo:
    """``Manager.start`` (see there) for the Manager ``m``."""
    syms = split_symbols(symbols)
    tf_list = [timeframes] if isinstance(timeframes, str) else list(timeframes)
    tfs = [parse_timeframe(t) for t in tf_list]
    if not tfs:
        raise ConfigError("no timeframe given; use e.g. 1m 5m 15m 1h 1d")
    if source is not None and source not in SOURCES:
        raise ConfigError(f"source {source!r} is not accepted; use one of {', '.join(SOURCES)}")
    try:
        speed = float(speed)
    except (TypeError, ValueError):
        raise ConfigError(f"speed {speed!r} is not accepted; use 0 (as fast as possible) or a positive factor") from None
    if speed < 0:
        raise ConfigError(f"speed {speed} is not accepted; use 0 (as fast as possible) or a positive factor")
    if mode is not None and mode not in ("ltp", "quote", "full"):
        raise ConfigError(f"mode {mode!r} is not accepted; use ltp, quote or full")
    auto = source is None
    if source is None:
        source = "replay" if tape else ("kite" if m.cfg.has_credentials() else "sim")
    if source == "replay" and not tape:
        raise ConfigError("--source replay needs --tape PATH (a CSV or Parquet tape), or --from/--to "
                          "for a range of the tick store")
    if source == "kite" and not m.cfg.has_credentials():
        from ..errors import CredentialsError

        raise CredentialsError(
            "no Kite credentials: set KiteOHLC.api_key and KiteOHLC.access_token "
            "(or KITE_API_KEY / KITE_ACCESS_TOKEN, or a .env file), or use --source sim"
        )
    with m.lock:  # stopped and finished streams leave the status table at the next start
        for name in [n for n, s in m.streams.items() if not s.alive and s.state in ("stopped", "done")]:
            del m.streams[name]
    if source == "replay":
        return start_replay(m, syms, tfs, tape or "", speed, record)
    from ..attach import attach_leased

    if source == "redis":
        return attach_leased(m, syms, tfs, force=True)[1]
    attached = None
    if auto:  # follow what another writer (a collector) already streams; the rest gets own feed
        syms, attached = attach_leased(m, syms, tfs)
        if not syms:
            return attached
    info = start_live(m, syms, tfs, source, mode, backfill, record, progress)
    if attached is not None:
        info.message = f"{attached.message}\n{info.message}"
    return info


def _open_quietly(m: Any) -> None:
    try:
        m.stores()
    except Exception as exc:  # noqa: BLE001 - launch() opens them again and says why
        log.debug("opening the stores early failed: %s", exc)


def start_replay(m: Any, syms, tfs, tape_path, speed, record) -> StreamInfo:
    from ..feeds.replay import ReplaySource

    book = m.symbols
    # the stores start (the embedded Redis server spawns) while the tape opens; launch() waits for
    # them, and opens them itself, raising, if this failed
    threading.Thread(target=_open_quietly, args=(m,), name="kiteohlc-stores", daemon=True).start()
    tape = book.read_tape(tape_path)
    if tape.empty and tape.error:
        raise TapeError(tape.error)
    every = [s.upper() for s in syms] in (["ALL"], ["*"])
    table = None if every else book.table()  # ALL needs no instruments table (nor pandas)
    streamed = getattr(tape, "streamed", False)  # feeds.tapefile.TapeStream: read block by block
    if every:
        tokens = sorted(tape.tokens())
        inv = {v: k for k, v in tape.symbols.items()}
        pairs = [(inv.get(t, str(t)), t) for t in tokens]
    else:
        for scanned in ((False, True) if streamed else (True,)):
            present = tape.tokens()
            pairs, missing = [], []
            for s in syms:
                try:
                    pairs.append((s.upper(), book.resolve(s, tape.symbols, table)))
                except SymbolError:
                    missing.append(s)
            missing += [s for s, t in pairs if t not in present]
            if not missing or scanned:
                break
            tape.scan()  # a named instrument not in the first block: learn the whole tape's
        if missing:
            raise SymbolError(
                f"{', '.join(missing)} not on tape {Path(tape.path).name}; it has "
                f"{', '.join(sorted(tape.symbols) or map(str, sorted(present)))[:200]}"
            )
    tokens = [t for _, t in pairs]
    joining = every and streamed
    src = ReplaySource(tape, None if joining else tokens, speed=speed)
    name = m.new_stream_name(f"replay:{Path(tape.path).name}")
    first_ts = tape.first_ts
    if joining:  # instruments the first block did not have join as their ticks come
        def joined(new: list[tuple[str, int]]) -> None:
            stream = m.streams.get(name)
            if stream is not None:
                m.prepare(stream, new, tfs, first_ts=first_ts)
                stream.subscribe([t for _, t in new], {t: s for s, t in new})

        src.on_new_tokens = joined
    if streamed:  # the blocks after the first decode while launch() waits for the stores
        tape.read_ahead()
    try:
        info = launch(m, name, src, pairs, tfs, record, first_ts=first_ts)
    except BaseException:
        if streamed:
            tape.close_ahead()  # no replay: the reading ends
        raise
    info.message = (
        f"Replaying {', '.join(s for s, _ in pairs)} {' '.join(t.label for t in tfs)} from "
        f"{Path(tape.path).name} at speed {speed:g}{' (as fast as possible)' if speed == 0 else 'x'}; "
        f"{m.stores()[2]}"
    )
    if tape.error:
        info.message += f" [warning: {tape.error}]"
    return info


def start_live(m: Any, syms, tfs, source, mode, backfill, record, progress=None) -> StreamInfo:
    from kiteconnect import KiteConnect

    from ..feeds.kite import KiteSource

    c = m.cfg
    if source == "sim" and not c.ticker_url:
        sim = m.simulator()
        api_key, token = sim.api_key, sim.access_token
        ticker_url, api_url = sim.ticker_url, sim.api_url
    else:  # Kite, or an external simulator (--source sim --ticker-url ws://...)
        api_key, token = c.api_key or "sim", c.access_token or "sim-token"
        ticker_url, api_url = c.ticker_url or None, c.api_url or None
    kite = KiteConnect(api_key, access_token=token, root=api_url) if api_url else KiteConnect(api_key, access_token=token)
    table = m.symbols.table(kite, key=f"{source}:{api_url or 'kite'}")
    pairs = [(s.upper(), int(table.resolve(s).token)) for s in syms]
    # a failed stream of this source is restarted (its instruments and timeframes too) once its
    # source is closed: never a second connection beside one still open. A fresh source: the
    # credentials may have changed since (a fatal "token expired").
    failed = next((s for s in m.streams.values() if not s.alive and s.state == "failed"
                   and not s.attached and s.source_name == source), None)
    if failed is not None:
        failed.stop()  # it released its source when it failed; this is idempotent
        have = {t for _, t in pairs}
        pairs += [(failed.symbols.get(t, str(t)).upper(), int(t)) for t in failed.tokens
                  if t not in have]
        tfs = list({t.label: t for t in [*failed.timeframes, *tfs]}.values())
    from ..lease import claim

    pairs = claim(m, pairs)  # one writer per instrument
    if not pairs:  # standby: every instrument is written by another collector for now
        return StreamInfo("", source, [], [t.label for t in tfs], "waiting for leases held by other writers")
    if failed is not None:
        with m.lock:
            if m.streams.get(failed.name) is failed:
                del m.streams[failed.name]
    # extend a running live stream of the same source rather than opening another connection
    existing = next((s for s in m.streams.values() if s.alive and s.source_name == source), None)
    if existing is not None:
        for tf in tfs:  # on the stream thread, between two batches
            existing.add_timeframe(tf)
        m.prepare(existing, pairs, existing.timeframes, resume=True)
        existing.subscribe([t for _, t in pairs], {t: s for s, t in pairs})
        start_backfill(existing, pairs, tfs, backfill, kite, progress, m.history_service)
        return StreamInfo(existing.name, source, pairs, [t.label for t in existing.timeframes],
                          f"Added {', '.join(s for s, _ in pairs)} {' '.join(t.label for t in tfs)} "
                          f"to the running {source} stream (no reconnect)")
    from ..feeds.historical import HistoricalClient

    hist_client = HistoricalClient(kite)
    src = KiteSource(api_key, token, [t for _, t in pairs], ticker_url=ticker_url, api_url=api_url,
                     jobs=m.history_service.submit,
                     mode=mode or c.mode, stall_timeout=c.stall_timeout, history=hist_client)
    src.name = source
    info = launch(m, source if source not in m.streams else m.new_stream_name(source), src, pairs, tfs, record)
    start_backfill(m.streams[info.name], pairs, tfs, backfill, kite, progress, m.history_service)
    where = ("the built-in Kite simulator (no credentials configured)" if source == "sim" and not c.ticker_url
             else f"Kite ({ticker_url or 'wss://ws.kite.trade'})")
    info.message = (f"Streaming {', '.join(s for s, _ in pairs)} {' '.join(t.label for t in tfs)} "
                    f"from {where}; {m.stores()[2]}")
    if failed is not None:
        info.message += f" (restarted stream {failed.name}, which had failed)"
    from .warmstart import from_kite

    if from_kite(c, m.streams[info.name], pairs, tfs, kite, progress, service=m.history_service):  # the day so far (warm start)
        info.message += "; warm start: today's candles so far from Kite's history and the tick store"
    return info


def start_backfill(stream: Stream, pairs, tfs, backfill: str | None, kite: Any,
                   progress: Callable[[float, str], Any] | None = None, service: Any = None) -> None:
    """Load ``backfill`` (a span) of Kite's historical candles into ``stream``: one job per
    instrument and timeframe on the session's history thread (``service``: runtime.history), or
    on a thread of its own without one."""
    if not backfill:
        return
    from ..feeds.historical import HistoricalClient, parse_span

    try:  # a bad span is one clear line now, not an error in the thread
        parse_span(backfill)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    client = HistoricalClient(kite)
    jobs = [(sym, tok, tf) for sym, tok in pairs for tf in tfs]

    def report(k: int, done: int, total: int, what: str) -> None:
        if progress is not None:
            try:
                progress((k + (done / total if total else 1.0)) / len(jobs), what)
            except Exception:  # a closed progress widget must not stop the backfill
                pass

    def one(k: int, sym: str, tok: int, tf: Any) -> None:
        what = f"backfill {sym} {tf.label} ({backfill})"
        try:
            cb = client.backfill(tok, tf.label, backfill,
                                 progress=lambda d, t, k=k, w=what: report(k, d, t, w))
        except Exception as exc:
            stream.on_error(f"backfill of {sym} {tf.label} failed: {exc}", False)
            return
        stream.on_history(tok, tf.label, cb)
        report(k, 1, 1, what)

    def done() -> None:
        if progress is not None:
            report(len(jobs) - 1, 1, 1, f"backfill {backfill} done")

    steps = [(lambda k=k, j=j: one(k, *j), f"backfill {j[0]} {j[2].label}") for k, j in enumerate(jobs)]
    steps.append((done, "backfill done"))
    if service is None:
        threading.Thread(target=lambda: [run() for run, _ in steps], name="kiteohlc-backfill",
                         daemon=True).start()
        return
    for run, what in steps:
        service.submit(run, cancelled=stream.done.is_set, what=what)


def prepare(live: Any, symbols: Any, registry: Any, stream: Stream | None, pairs, tfs,
            first_ts: int | None = None, engine: Engine | None = None, resume: bool = False) -> dict[int, dict]:
    """``Manager.prepare`` (see there) with the live store, the SymbolBook and the SeriesRegistry."""
    symbols.remember(pairs)
    registry.load_streamed([tok for _sym, tok in pairs], [tf.label for tf in tfs])
    eng = engine if engine is not None else (stream.engine if stream else None)
    if eng is None:
        return {}
    toks = [t for _, t in pairs]
    if stream is not None:  # instruments it streams already continue from its own state
        toks = [t for t in toks if t not in stream.tokens]
    try:
        states = live.load_states(toks) if toks else {}
    except Exception as exc:
        log.warning("live state not readable: %s", exc)
        states = {}
    usable = {}
    for tok, st in (states or {}).items():
        clock = st.get("clock")
        # a tape older than the saved state is a fresh replay, not a continuation
        if first_ts is not None and clock is not None and clock > first_ts:
            continue
        usable[int(tok)] = st
    lock = engine_lock(eng)

    def apply() -> None:  # the engine changes on its stream thread (Stream.call), I/O above
        if stream is not None:
            for tok in [t for t in usable if t in stream.tokens]:
                del usable[tok]  # subscribed meanwhile: streaming already
        eng.import_state(usable)
        if resume:
            eng.resume(list(usable))
        registry.bind_engine([tok for _sym, tok in pairs], eng, lock)

    if stream is not None:
        stream.call(apply)
    else:
        with lock:
            apply()
    return usable


def launch(m: Any, name, source, pairs, tfs, record, first_ts: int | None = None) -> StreamInfo:
    """Create and start the stream ``name`` over ``source`` (history and live state prepared)."""
    eng = new_engine(m.cfg, tfs)  # while the stores may still be starting (start_replay)
    eng.add_instruments([t for _, t in pairs])
    live, hist, _ = m.stores()
    usable = m.prepare(None, pairs, tfs, first_ts=first_ts, engine=eng, resume=bool(source.live))
    if source.live and usable:
        from ..feeds.kite import KiteSource

        if isinstance(source, KiteSource):  # the outage since the last writer: gap repair
            source.repair_since({tok: last_stamp(st) for tok, st in usable.items()})
    recorder = None
    if record:
        from ..feeds.replay import TapeRecorder

        recorder = TapeRecorder(record, {t: s for s, t in pairs})
    stream = Stream(name, source, eng, [t for _, t in pairs], listener=m, history=hist,
                    history_jobs=m.history_service.submit,
                    live_store=live, recorder=recorder, symbols={t: s for s, t in pairs})
    if source.live:  # every tick a live stream accepts, kept (KiteOHLC.record_ticks; stores.ticks)
        from ..stores.ticks import TickStoreSink, open_tick_store

        ticks = open_tick_store(m.cfg)
        if ticks is not None:
            stream.tick_store = TickStoreSink(stream.events, ticks, stream.filter,
                                              lambda: stream.symbols).store
    if source.live:  # the day so far, ahead of the feed's first frame (runtime.warmstart)
        from .warmstart import from_store

        from_store(m.cfg, stream, [t for _, t in pairs if t not in usable], tfs)
    with m.lock:
        m.streams[name] = stream
    stream.start()
    return StreamInfo(name, stream.source_name, pairs, [t.label for t in tfs], "")
