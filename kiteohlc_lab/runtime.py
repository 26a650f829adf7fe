"""Manager: configuration, stores, streams and the candle series the researcher reads.

One per process (``kiteohlc_lab.api.manager()``); the magics, the Python API and the command line all
go through it. It resolves symbols, picks the source (Kite when credentials are configured, otherwise
the built-in simulator, or a replay tape), opens the stores, restores history and live state, and
keeps one ``SeriesBuffer`` per (instrument, timeframe) up to date from the stream threads.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .config import KiteOHLC
from .streaminfo import StreamInfo, split_symbols  # noqa: F401 - re-exported
from .errors import ConfigError, KiteOHLCError, SymbolError, TapeError
from .core.bounded import CallbackWorker, ErrorLog
from .core.candles import Candle, CandleBatch, empty_frame
from .core.engine import Engine
from .core.series import SeriesBuffer
from .core.stream import Stream, engine_lock
from .core.timeframes import bound_ns, parse_timeframe

log = logging.getLogger("kiteohlc_lab")

SOURCES = ("kite", "sim", "replay", "redis")


class Manager:
    """Process-wide owner of streams, stores and candle series."""

    def __init__(self, cfg: KiteOHLC | None = None) -> None:
        self.cfg = cfg or KiteOHLC()
        self._lock = threading.RLock()
        self.streams: dict[str, Stream] = {}
        self.buffers: dict[tuple[int, str], SeriesBuffer] = {}
        self.names: dict[int, str] = {}  # token -> display symbol
        self.symbol_tokens: dict[str, int] = {}  # SYMBOL (upper) -> token, learned from streams
        self._callbacks: dict[tuple[int, str], list[Callable[[Candle], Any]]] = {}
        self._failed_callbacks: set[int] = set()
        self._stores: tuple[Any, Any, str] | None = None
        self._stores_key: tuple | None = None
        self._sim: Any = None
        self._tables: dict[str, Any] = {}
        self._tapes: dict[tuple[str, float], Any] = {}
        self._seq = 0
        # one writer per instrument (kiteohlc_lab.lease): "strict" raises, "standby" (collector) waits
        self.lease_policy = "strict"
        self.lease_waiting: dict[str, int] = {}
        self.lease_ttl = 5.0  # seconds a lease lives without renewal (kiteohlc_lab.lease.DEFAULT_TTL)
        # the LeaseKeeper of this process's own feeds (lease_keeper() creates it; it fences the live
        # store's writes and calls lease.stand_down when a lease is lost)
        self.leases: Any = None
        # (stream, message), for the notebook to surface once: the last 1000 (``errors.total`` counts all)
        self.errors: ErrorLog = ErrorLog(1000)
        # series no stream of this process writes: least recently read last, at most
        # cfg.max_idle_series of them kept (those a stream, callback or pin uses are never dropped)
        self._lru: OrderedDict[tuple[int, str], None] = OrderedDict()
        self._pins: dict[tuple[int, str], int] = {}
        self.evicted = 0  # series dropped from memory (they reload from the store when read)
        self._follower: Any = None  # stores.follow.StoreFollower over the current stores
        self._callback_worker: CallbackWorker | None = None
        self._health_cache: tuple[float, str] | None = None
        self.messages: list[str] = []

    # ------------------------------------------------------------------ configuration
    def configure(self, cfg: KiteOHLC) -> None:
        self.cfg = cfg

    def lease_keeper(self) -> Any:
        """The LeaseKeeper (``self.leases``) on the current live store, created on first use; the
        live store stamps its writes with the keeper's generations (``set_fence``)."""
        from .lease import LeaseKeeper, stand_down, written_tokens

        live = self.stores()[0]
        with self._lock:
            k = self.leases
            if k is None or k.client is not live.client:
                if k is not None:
                    k.stop(release=True)
                k = self.leases = LeaseKeeper(live.client, live.prefix, ttl=self.lease_ttl,
                                              wanted=lambda: written_tokens(self),
                                              on_lost=lambda toks: stand_down(self, toks))
                set_fence = getattr(live, "set_fence", None)
                if set_fence is not None:
                    set_fence(k)
            return k

    def release_leases(self) -> None:
        """Stop renewing and give back every lease (after the streams flushed)."""
        with self._lock:
            k, self.leases = self.leases, None
        if k is not None:
            k.stop(release=True)

    @property
    def lock(self) -> threading.RLock:
        """Guards ``streams`` (and the stores' opening) between threads."""
        return self._lock

    def opened_stores(self) -> tuple[Any, Any, str] | None:
        """The stores if they are open, without opening them."""
        return self._stores

    def stores(self) -> tuple[Any, Any, str]:
        """(live store, history store, description), opened once per configuration."""
        c = self.cfg
        key = (c.redis_url, c.mongo_uri, c.data_dir, c.redis_prefix)
        with self._lock:
            if self._stores is None or self._stores_key != key:
                if self._stores is not None and not any(s.alive for s in self.streams.values()):
                    self._close_stores()
                if self._stores is None or self._stores_key != key:
                    from .stores.factory import open_stores

                    self._stores = open_stores(c.redis_url, c.mongo_uri, c.data_dir, prefix=c.redis_prefix)
                    self._stores_key = key
            return self._stores

    def _close_stores(self) -> None:
        if self._stores is None:
            return
        live, hist, _ = self._stores
        for s in (live, hist):
            try:
                s.close()
            except Exception as exc:  # closing must not raise at shutdown
                log.debug("closing store: %s", exc)
        self._stores = None
        self._stores_key = None

    # ------------------------------------------------------------------ symbols
    def _table(self, kite: Any = None, key: str = "cache") -> Any:
        from .feeds.instruments import InstrumentTable

        with self._lock:
            t = self._tables.get(key)
            if t is None:
                try:
                    t = InstrumentTable.load(kite, self.cfg.data_dir)
                except KiteOHLCError:
                    raise
                except Exception as exc:
                    log.warning("instruments table not available (%s); aliases and tokens only", exc)
                    t = InstrumentTable(None)
                self._tables[key] = t
            return t

    def resolve(self, symbol: str, extra: dict[str, int] | None = None, table: Any = None) -> int:
        """Symbol -> instrument token (tape symbols, aliases, the instruments table, a token)."""
        up = symbol.strip().upper()
        if extra is None and up in self.symbol_tokens:
            return self.symbol_tokens[up]
        t = table if table is not None else self._table()
        inst = t.resolve(symbol, extra)
        return int(inst.token)

    def _symbols_file(self) -> Path:
        return Path(self.cfg.data_dir) / "symbols.json"

    def _remember_symbols(self, pairs: list[tuple[str, int]]) -> None:
        """Keep symbol -> token across sessions, so candles('RELIANCE', ...) works after a restart."""
        known = self._known_symbols()
        new = {s.upper(): int(t) for s, t in pairs if known.get(s.upper()) != int(t)}
        if not new:
            return
        known.update(new)
        try:
            path = self._symbols_file()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(known, indent=0, sort_keys=True))
            tmp.replace(path)
        except OSError as exc:
            log.debug("symbols not saved: %s", exc)

    def _known_symbols(self) -> dict[str, int]:
        try:
            return {k: int(v) for k, v in json.loads(self._symbols_file().read_text()).items()}
        except (OSError, ValueError):
            return {}

    def token_of(self, symbol: str | int) -> int:
        """Token for a symbol the researcher reads (no network: streams, tapes, cache, aliases)."""
        if isinstance(symbol, (int, np.integer)):
            return int(symbol)
        up = str(symbol).strip().upper()
        if up in self.symbol_tokens:
            return self.symbol_tokens[up]
        known = self._known_symbols()
        if up in known:
            self.symbol_tokens[up] = known[up]
            return known[up]
        extra: dict[str, int] = {}
        for tape in self._tapes.values():
            extra.update(tape.symbols)
        for t in self._tables.values():
            try:
                return int(t.resolve(symbol, extra).token)
            except SymbolError:
                continue
        return self.resolve(symbol, extra)

    # ------------------------------------------------------------------ streams
    def start(
        self,
        symbols: str | list[str],
        timeframes: str | list[str],
        *,
        source: str | None = None,
        tape: str | None = None,
        speed: float = 0.0,
        mode: str | None = None,
        backfill: str | None = None,
        record: str | None = None,
        progress: Callable[[float, str], Any] | None = None,
    ) -> StreamInfo:
        """Start (or extend) a stream; returns at once, the stream runs in a background thread.

        ``progress(fraction, text)`` is called from the backfill thread as ``backfill`` loads.
        """
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
            source = "replay" if tape else ("kite" if self.cfg.has_credentials() else "sim")
        if source == "replay" and not tape:
            raise ConfigError("--source replay needs --tape PATH (a CSV or Parquet tape)")
        if source == "kite" and not self.cfg.has_credentials():
            from .errors import CredentialsError

            raise CredentialsError(
                "no Kite credentials: set KiteOHLC.api_key and KiteOHLC.access_token "
                "(or KITE_API_KEY / KITE_ACCESS_TOKEN, or a .env file), or use --source sim"
            )
        with self._lock:  # stopped and finished streams leave the status table at the next start
            for name in [n for n, s in self.streams.items() if not s.alive and s.state in ("stopped", "done")]:
                del self.streams[name]
        if source == "replay":
            return self._start_replay(syms, tfs, tape or "", speed, record)
        if source == "redis":
            return self._start_attached(syms, tfs)
        attached = None
        if auto:  # follow what another writer (a collector) already streams; the rest gets own feed
            from .attach import attach_leased

            syms, attached = attach_leased(self, syms, tfs)
            if not syms:
                return attached
        info = self._start_live(syms, tfs, source, mode, backfill, record, progress)
        if attached is not None:
            info.message = f"{attached.message}\n{info.message}"
        return info

    def _engine(self, tfs: list) -> Engine:
        c = self.cfg
        return Engine(tfs, grace=c.grace, late_policy=c.late_policy, fill_empty=c.fill_empty,
                      session_open=dict(c.session_open) or None)

    def new_stream_name(self, base: str) -> str:
        """``base``, or ``base#N`` when a stream of that name exists."""
        self._seq += 1
        return base if base not in self.streams else f"{base}#{self._seq}"

    def _read_tape(self, path: str) -> Any:
        from .feeds.replay import read_tape

        p = Path(path).expanduser()
        key = (str(p.resolve()) if p.exists() else str(p), p.stat().st_mtime if p.exists() else 0.0)
        tape = self._tapes.get(key)
        if tape is None:
            tape = self._tapes[key] = read_tape(p)
            while len(self._tapes) > 2:  # the last two tapes read (a tape is ~40 bytes a tick)
                self._tapes.pop(next(iter(self._tapes)))
        return tape

    def _start_replay(self, syms, tfs, tape_path, speed, record) -> StreamInfo:
        from .feeds.replay import ReplaySource

        tape = self._read_tape(tape_path)
        if len(tape.ticks) == 0 and tape.error:
            raise TapeError(tape.error)
        table = self._table()
        if [s.upper() for s in syms] in (["ALL"], ["*"]):
            tokens = sorted(tape.tokens())
            inv = {v: k for k, v in tape.symbols.items()}
            pairs = [(inv.get(t, str(t)), t) for t in tokens]
        else:
            present = tape.tokens()
            pairs, missing = [], []
            for s in syms:
                try:
                    pairs.append((s.upper(), self.resolve(s, tape.symbols, table)))
                except SymbolError:
                    missing.append(s)
            missing += [s for s, t in pairs if t not in present]
            if missing:
                raise SymbolError(
                    f"{', '.join(missing)} not on tape {Path(tape.path).name}; it has "
                    f"{', '.join(sorted(tape.symbols) or map(str, sorted(present)))[:200]}"
                )
        tokens = [t for _, t in pairs]
        src = ReplaySource(tape, tokens, speed=speed)
        name = self.new_stream_name(f"replay:{Path(tape.path).name}")
        first_ts = int(tape.ticks.ts[0]) if len(tape.ticks) else None
        info = self._launch(name, src, pairs, tfs, record, first_ts=first_ts)
        info.message = (
            f"Replaying {', '.join(s for s, _ in pairs)} {' '.join(t.label for t in tfs)} from "
            f"{Path(tape.path).name} at speed {speed:g}{' (as fast as possible)' if speed == 0 else 'x'}; "
            f"{self.stores()[2]}"
        )
        if tape.error:
            info.message += f" [warning: {tape.error}]"
        return info

    def _simulator(self) -> Any:
        from .feeds.simulator import KiteSimulator

        with self._lock:
            if self._sim is None:
                self._sim = KiteSimulator().start()
            return self._sim

    def _start_live(self, syms, tfs, source, mode, backfill, record, progress=None) -> StreamInfo:
        from kiteconnect import KiteConnect

        from .feeds.kite import KiteSource

        c = self.cfg
        if source == "sim" and not c.ticker_url:
            sim = self._simulator()
            api_key, token = sim.api_key, sim.access_token
            ticker_url, api_url = sim.ticker_url, sim.api_url
        else:  # Kite, or an external simulator (--source sim --ticker-url ws://...)
            api_key, token = c.api_key or "sim", c.access_token or "sim-token"
            ticker_url, api_url = c.ticker_url or None, c.api_url or None
        kite = KiteConnect(api_key, access_token=token, root=api_url) if api_url else KiteConnect(api_key, access_token=token)
        table = self._table(kite, key=f"{source}:{api_url or 'kite'}")
        pairs = [(s.upper(), int(table.resolve(s).token)) for s in syms]
        # a failed stream of this source is restarted (its instruments and timeframes too) once its
        # source is closed: never a second connection beside one still open. A fresh source: the
        # credentials may have changed since (a fatal "token expired").
        failed = next((s for s in self.streams.values() if not s.alive and s.state == "failed"
                       and not getattr(s, "attached", False) and s.source.name == source), None)
        if failed is not None:
            failed.stop()  # it released its source when it failed; this is idempotent
            have = {t for _, t in pairs}
            pairs += [(failed.symbols.get(t, str(t)).upper(), int(t)) for t in failed.tokens
                      if t not in have]
            tfs = list({t.label: t for t in [*failed.engine.timeframes, *tfs]}.values())
        from .lease import claim

        pairs = claim(self, pairs)  # one writer per instrument
        if not pairs:  # standby: every instrument is written by another collector for now
            return StreamInfo("", source, [], [t.label for t in tfs], "waiting for leases held by other writers")
        if failed is not None:
            with self._lock:
                if self.streams.get(failed.name) is failed:
                    del self.streams[failed.name]
        # extend a running live stream of the same source rather than opening another connection
        existing = next((s for s in self.streams.values() if s.alive and s.source.name == source), None)
        if existing is not None:
            for tf in tfs:  # on the stream thread, between two batches
                existing.add_timeframe(tf)
            self.prepare(existing, pairs, [t for t in existing.engine.timeframes], resume=True)
            existing.subscribe([t for _, t in pairs], {t: s for s, t in pairs})
            self._backfill(existing, pairs, tfs, backfill, kite, progress)
            return StreamInfo(existing.name, source, pairs, [t.label for t in existing.engine.timeframes],
                              f"Added {', '.join(s for s, _ in pairs)} {' '.join(t.label for t in tfs)} "
                              f"to the running {source} stream (no reconnect)")
        from .feeds.historical import HistoricalClient

        hist_client = HistoricalClient(kite)
        src = KiteSource(api_key, token, [t for _, t in pairs], ticker_url=ticker_url, api_url=api_url,
                         mode=mode or c.mode, stall_timeout=c.stall_timeout, history=hist_client)
        src.name = source
        info = self._launch(source if source not in self.streams else self.new_stream_name(source), src, pairs, tfs, record)
        self._backfill(self.streams[info.name], pairs, tfs, backfill, kite, progress)
        where = ("the built-in Kite simulator (no credentials configured)" if source == "sim" and not c.ticker_url
                 else f"Kite ({ticker_url or 'wss://ws.kite.trade'})")
        info.message = (f"Streaming {', '.join(s for s, _ in pairs)} {' '.join(t.label for t in tfs)} "
                        f"from {where}; {self.stores()[2]}")
        if failed is not None:
            info.message += f" (restarted stream {failed.name}, which had failed)"
        return info

    def _backfill(self, stream: Stream, pairs, tfs, backfill: str | None, kite: Any,
                  progress: Callable[[float, str], Any] | None = None) -> None:
        if not backfill:
            return
        from .feeds.historical import HistoricalClient, parse_span

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

        def run() -> None:
            for k, (sym, tok, tf) in enumerate(jobs):
                what = f"backfill {sym} {tf.label} ({backfill})"
                try:
                    cb = client.backfill(tok, tf.label, backfill,
                                         progress=lambda d, t, k=k, w=what: report(k, d, t, w))
                except Exception as exc:
                    stream.on_error(f"backfill of {sym} {tf.label} failed: {exc}", False)
                    continue
                stream.on_history(tok, tf.label, cb)
                report(k, 1, 1, what)
            if progress is not None:
                report(len(jobs) - 1, 1, 1, f"backfill {backfill} done")

        threading.Thread(target=run, name="kiteohlc-backfill", daemon=True).start()

    def _start_attached(self, syms, tfs) -> StreamInfo:
        from .attach import attach_leased

        return attach_leased(self, syms, tfs, force=True)[1]

    def prepare(self, stream: Stream | None, pairs, tfs, first_ts: int | None = None,
                 engine: Engine | None = None, resume: bool = False) -> dict[int, dict]:
        """Load history into the series and continue the live state from Redis.

        ``resume``: a live source continues the state after a gap of unknown length (the kernel or
        collector was down): each instrument's first tick sets its volume baseline (README rule 4).
        Returns the states continued.
        """
        live = self.stores()[0]
        self._remember_symbols(pairs)
        for sym, tok in pairs:
            self.names.setdefault(tok, sym)
            self.symbol_tokens[sym.upper()] = tok
        with self._lock:
            for tf in tfs:
                self._load_buffers([tok for _sym, tok in pairs], tf.label)
                for _sym, tok in pairs:  # a stream writes them now: never evicted while it runs
                    self._lru.pop((tok, tf.label), None)
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
            for _sym, tok in pairs:
                for tf in eng.timeframes:
                    buf = self.buffers.get((tok, tf.label))
                    if buf is not None:
                        buf.bind_engine(eng, lock)

        if stream is not None and hasattr(stream, "call"):
            stream.call(apply)
        else:
            with lock:
                apply()
        return usable

    def _launch(self, name, source, pairs, tfs, record, first_ts: int | None = None) -> StreamInfo:
        live, hist, _ = self.stores()
        eng = self._engine(tfs)
        usable = self.prepare(None, pairs, tfs, first_ts=first_ts, engine=eng, resume=bool(source.live))
        if source.live and usable:
            from .feeds.kite import KiteSource

            if isinstance(source, KiteSource):  # the outage since the last writer: gap repair
                source.repair_since({tok: last_stamp(st) for tok, st in usable.items()})
        recorder = None
        if record:
            from .feeds.replay import TapeRecorder

            recorder = TapeRecorder(record, {t: s for s, t in pairs})
        stream = Stream(name, source, eng, [t for _, t in pairs], listener=self, history=hist,
                        live_store=live, recorder=recorder, symbols={t: s for s, t in pairs})
        with self._lock:
            self.streams[name] = stream
        stream.start()
        return StreamInfo(name, getattr(source, "name", "?"), pairs, [t.label for t in tfs], "")

    def stop(self, symbols: list[str] | str | None = None) -> list[str]:
        """Stop every stream (or only the given symbols' subscriptions: their streams stop when empty)."""
        stopped = []
        with self._lock:
            streams = list(self.streams.items())
        if symbols:
            toks = {self.token_of(s) for s in split_symbols(symbols)}
            for name, s in streams:
                if set(s.tokens) <= toks:
                    s.stop()
                    stopped.append(name)
                elif set(s.tokens) & toks:
                    gone = sorted(toks & set(s.tokens))
                    if hasattr(s, "unsubscribe"):
                        s.unsubscribe(gone)
                    else:  # an attached stream just stops following them
                        s.tokens = [t for t in s.tokens if t not in toks]
                    stopped.append(f"{name} ({', '.join(self.names.get(t, str(t)) for t in toks)})")
        else:
            for name, s in streams:
                s.stop()
                stopped.append(name)
        from .lease import sync

        sync(self)  # give back the leases of instruments no own stream writes any more
        return stopped

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every replay stream is consumed and the on_candle calls of its candles have
        run (True), or ``timeout`` seconds pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        replays = 0
        for s in list(self.streams.values()):
            if s.source.live:
                continue
            replays += 1
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not s.done.wait(left):
                return False
        w = self._callback_worker
        if w is not None and replays:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            return w.wait_idle(left)
        return True

    def status(self) -> list[dict]:
        out = []
        store_health = self.store_health()
        callbacks = self.callbacks_status() if self._callback_worker is not None else None
        for s in list(self.streams.values()):
            st = s.status()
            st["store"] = store_health
            if callbacks is not None:  # on_candle calls of this process (one worker for all)
                st["callbacks"] = dict(callbacks)
            out.append(st)
        return out

    def memory_status(self) -> dict:
        """What the reading side keeps: series in memory (and idle ones), series dropped, pins,
        on_candle calls backlogged/dropped, errors kept/dropped."""
        with self._lock:
            kept, idle = len(self.buffers), len(self._lru)
        return {"series": kept, "idle_series": idle, "max_idle_series": int(self.cfg.max_idle_series),
                "evicted": self.evicted, "pinned": len(self._pins), "callbacks": self.callbacks_status(),
                "errors": len(self.errors), "errors_dropped": self.errors.dropped}

    def store_health(self) -> str:
        """One line: each store's health (cached for a second)."""
        if self._stores is None:
            return "not opened"
        cached = self._health_cache
        if cached is not None and time.monotonic() - cached[0] < 1.0:
            return cached[1]
        text = self._probe_health()
        self._health_cache = (time.monotonic(), text)
        return text

    def _probe_health(self) -> str:
        assert self._stores is not None
        parts = []
        for s in self._stores[:2]:
            try:
                h = s.health()
            except Exception as exc:
                h = {"name": type(s).__name__, "ok": False, "error": str(exc)}
            txt = f"{h.get('name', '?')} {'ok' if h.get('ok') else 'DOWN'}"
            if h.get("spooled"):
                txt += f" ({h['spooled']} spooled)"
            parts.append(txt)
        return ", ".join(parts)

    # ------------------------------------------------------------------ reading
    def series(self, symbol: str | int, tf: str) -> SeriesBuffer:
        """The series of ``symbol`` at ``tf``; one that no stream of this process writes follows the
        stores (what another process's writer stored shows within ``cfg.follow_interval`` s)."""
        tok = self.token_of(symbol)
        label = parse_timeframe(tf).label
        key = (tok, label)
        with self._lock:
            self._load_buffers([tok], label)
            buf = self.buffers[key]
            self._lru[key] = None
            self._lru.move_to_end(key)
            if len(self._lru) > self.cfg.max_idle_series:
                self._evict()
        self._follow(key, buf)
        return buf

    def in_use(self, key: tuple[int, str]) -> bool:
        """True while a stream of this process (own or attached), a callback or a pin uses the
        series ``key`` = (token, timeframe label)."""
        return bool(self._callbacks.get(key) or self._pins.get(key)) or self._written_here(key)

    def pin(self, symbol: str | int, tf: str) -> Callable[[], None]:
        """Keep the series of ``symbol`` at ``tf`` in memory (a live view uses it); returns the unpin."""
        key = (self.token_of(symbol), parse_timeframe(tf).label)
        with self._lock:
            self._pins[key] = self._pins.get(key, 0) + 1
        done = []

        def unpin() -> None:
            if done:
                return
            done.append(1)
            with self._lock:
                left = self._pins.get(key, 0) - 1
                if left > 0:
                    self._pins[key] = left
                else:
                    self._pins.pop(key, None)

        return unpin

    def _evict(self) -> None:
        """Drop the least recently read series beyond ``cfg.max_idle_series`` (under ``_lock``)."""
        limit = max(0, int(self.cfg.max_idle_series))
        while len(self._lru) > limit:
            key = next(iter(self._lru))
            del self._lru[key]
            if self.in_use(key):
                continue  # not idle: back in the LRU when it is read again
            if self.buffers.pop(key, None) is not None:
                self.evicted += 1

    def _follow(self, key: tuple[int, str], buf: SeriesBuffer) -> None:
        """Re-read the stores for a series no stream of this process writes, at most every
        ``cfg.follow_interval`` seconds (new candles and the forming one only)."""
        interval = float(self.cfg.follow_interval)
        if time.monotonic() - buf.refreshed < interval or self._written_here(key):
            return
        if not buf.refresh_lock.acquire(blocking=False):
            return  # another reader is refreshing it right now
        try:
            if time.monotonic() - buf.refreshed < interval:
                return
            follower = self._store_follower()
            follower.refresh(buf)
            buf.refreshed = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - a read never fails for following
            log.debug("following the stores for %s: %s", key, exc)
        finally:
            buf.refresh_lock.release()

    def _written_here(self, key: tuple[int, str]) -> bool:
        """A stream of this process (own or attached) that has not ended feeds the series ``key``."""
        tok, label = key
        for s in list(self.streams.values()):
            if s.done.is_set() or tok not in s.tokens:  # done: stopped, failed or finished
                continue
            if any(t.label == label for t in s.engine.timeframes):
                return True
        return False

    def _store_follower(self) -> Any:
        from .stores.follow import StoreFollower

        live, hist, _ = self.stores()
        f = self._follower
        if f is None or f.hist is not hist or f.live is not live:
            f = self._follower = StoreFollower(live, hist)
        return f

    def _load_buffers(self, tokens: list[int], tf: str) -> None:
        """Create the series of ``tokens`` at ``tf`` that do not exist yet, with their stored history
        (one query for thousands of instruments where the store can)."""
        new = [tok for tok in tokens if (tok, tf) not in self.buffers]
        if not new:
            return
        hist = self.stores()[1]
        read_many = getattr(hist, "read_many", None)
        try:
            if read_many is not None:
                found = read_many(new, tf)
            else:
                found = {}
                for tok in new:
                    df = hist.read(tok, tf)
                    if len(df):
                        found[tok] = _batch_from_frame(tok, tf, df)
        except Exception as exc:
            log.warning("history at %s not readable: %s", tf, exc)
            found = {}
        for tok in new:
            buf = SeriesBuffer(tok, tf)
            if tok in found:
                buf.upsert(found[tok])
            self.buffers[(tok, tf)] = buf

    def candles(self, symbol: str | int, tf: str, closed_only: bool = False,
                start: Any = None, end: Any = None) -> pd.DataFrame:
        """History + closed + forming candles of ``symbol`` at ``tf`` (see ``kiteohlc_lab.candles``)."""
        return self.series(symbol, tf).frame(closed_only=closed_only, start=bound_ns(start), end=bound_ns(end))

    def history(self, symbol: str | int, tf: str, start: Any = None, end: Any = None) -> pd.DataFrame:
        """Closed candles straight from the history store (no stream needed)."""
        tok = self.token_of(symbol)
        label = parse_timeframe(tf).label
        df = self.stores()[1].read(tok, label, bound_ns(start), bound_ns(end))
        df.attrs["forming"] = None
        return df

    def on_candle(self, symbol: str | int, tf: str, fn: Callable[[Candle], Any]) -> Callable[[], None]:
        """Call ``fn(candle)`` for each closed candle of ``symbol`` at ``tf``; returns an unsubscribe."""
        if not callable(fn):
            raise TypeError("on_candle needs a callable taking one Candle")
        key = (self.token_of(symbol), parse_timeframe(tf).label)
        self._callbacks_worker()  # its thread runs the calls (started here, not on a stream thread)
        with self._lock:
            self._callbacks.setdefault(key, []).append(fn)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._callbacks.get(key, []):
                    self._callbacks[key].remove(fn)

        return unsubscribe

    # ------------------------------------------------------------------ Listener (stream threads)
    # grace the stream thread gives an idle callback worker (see CallbackWorker), seconds
    callback_grace = 0.05

    def on_closed(self, stream: Stream, batches: list[CandleBatch]) -> None:
        jobs: list[tuple[Callable, Candle]] = []
        for b in batches:
            order = np.argsort(b.token, kind="stable")
            toks = b.token[order]
            cuts = np.flatnonzero(toks[1:] != toks[:-1]) + 1
            for idx in np.split(order, cuts):
                tok = int(b.token[idx[0]])
                part = b.select(idx)
                buf = self.buffers.get((tok, b.tf))
                if buf is not None:
                    buf.upsert(part)
                fns = self._callbacks.get((tok, b.tf))
                if fns:
                    fns = list(fns)
                    jobs += [(fn, candle) for candle in part for fn in fns]
        if jobs:  # on their own thread: a slow callback never holds up (or grows) the stream
            worker = self._callback_worker or self._callbacks_worker()
            if worker.submit(jobs):
                worker.wait_idle(self.callback_grace)

    def _callbacks_worker(self) -> CallbackWorker:
        with self._lock:
            w = self._callback_worker
            if w is None:
                w = self._callback_worker = CallbackWorker(self._call, maxsize=self.cfg.callback_queue)
            return w

    def callbacks_status(self) -> dict:
        """on_candle calls: queued (backlog now), called, dropped (queue full), max_backlog, limit."""
        w = self._callback_worker
        if w is None:
            return {"queued": 0, "called": 0, "dropped": 0, "max_backlog": 0,
                    "limit": int(self.cfg.callback_queue)}
        return w.status()

    def _call(self, fn: Callable, candle: Candle) -> None:
        try:
            fn(candle)
        except Exception as exc:  # a user's callback never stops the stream; reported once
            if id(fn) not in self._failed_callbacks:
                self._failed_callbacks.add(id(fn))
                name = getattr(fn, "__name__", repr(fn))
                msg = f"on_candle callback {name} raised {type(exc).__name__}: {exc} (reported once; the stream goes on)"
                log.warning(msg)
                self.errors.append(("callback", msg))

    def on_forming(self, stream: Stream, batches: list[CandleBatch]) -> None:
        for b in batches:
            for c in b:
                buf = self.buffers.get((c.token, b.tf))
                if buf is not None:
                    buf.set_forming(c)

    def on_gap(self, stream: Stream, token: int, start_ns: int, end_ns: int) -> None:
        for (tok, _tf), buf in list(self.buffers.items()):
            if tok == token:
                buf.mark_gap(start_ns, end_ns)

    def on_error(self, stream: Stream, message: str) -> None:
        log.warning("%s: %s", stream.name, message)
        self.errors.append((stream.name, message))

    # ------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        """Stop all streams, flush and close the stores, stop the simulator."""
        for s in list(self.streams.values()):
            s.stop()
        self.streams.clear()
        w, self._callback_worker = self._callback_worker, None
        if w is not None:  # what the streams closed last is called, for up to 2 s
            w.stop(2.0)
        self.release_leases()  # after the streams flushed: the next writer continues from their state
        if self._sim is not None:
            try:
                self._sim.stop()
            finally:
                self._sim = None
        self._close_stores()


def _batch_from_frame(token: int, tf: str, df: pd.DataFrame) -> CandleBatch:
    n = len(df)
    start = df.index.as_unit("ns").asi8 if hasattr(df.index, "as_unit") else df.index.asi8
    oi = df["oi"].to_numpy(float) if "oi" in df.columns else np.full(n, np.nan)
    return CandleBatch(tf, np.full(n, token, np.int64), np.asarray(start, np.int64),
                       df["open"].to_numpy(float), df["high"].to_numpy(float), df["low"].to_numpy(float),
                       df["close"].to_numpy(float), df["volume"].to_numpy(float), oi,
                       np.zeros(n, np.int64))


__all__ = ["Manager", "StreamInfo", "split_symbols", "empty_frame"]


def last_stamp(state: dict) -> int:
    """The newest tick stamp a saved live state knows (volume baseline or a forming candle), 0: none."""
    stamps = [(state.get("vol") or {}).get("prev_ts")]  # indices have no volume baseline
    stamps += [f.get("last_ts") for f in (state.get("forming") or {}).values()]
    return max((int(x) for x in stamps if x is not None and int(x) > 0), default=0)
