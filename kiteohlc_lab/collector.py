"""The headless collector: the notebook's Manager/feed/engine/stores, without a notebook.

``kiteohlc-lab collect NIFTY,RELIANCE 1m 5m`` runs a ``Collector``:

- streams the instruments whose lease it gets (``kiteohlc_lab.lease``) and stands by for the others,
  taking them over when their holder stops or dies;
- continues each instrument's forming candle from Redis (``Engine.import_state``) and, after a
  crash, repairs the outage from Kite's historical minute candles (``KiteSource`` gap repair);
- logs to stderr and to ``data_dir/logs/collector.log`` (rotated, 5 x 5 MB), never the token;
- publishes a heartbeat every ``heartbeat`` seconds, with a TTL of three beats, in Redis
  (``P collector:<host>:<pid>``) and in ``data_dir/collectors/<host>-<pid>.json``;
  ``list_collectors`` (``kiteohlc-lab status``) reads both and shows only live collectors;
- on SIGTERM / Ctrl-C stops the streams, flushes the stores, gives its leases back and exits 0
  (a shutdown stuck past ``shutdown_timeout`` exits 1 instead of hanging).

Readers (notebooks) attach to what it streams through Redis: see ``kiteohlc_lab.attach``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.handlers
import os
import signal
import socket
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from .config import KiteOHLC
from .errors import ConfigError
from .stores import keys

log = logging.getLogger("kiteohlc_lab.collector")
_OURS: "weakref.WeakSet[logging.Handler]" = weakref.WeakSet()  # handlers setup_logging added


def remove_log_handlers() -> None:
    """Take the handlers ``setup_logging`` added off the root logger and close them."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if h in _OURS:
            root.removeHandler(h)
            h.close()

LOG_NAME = "collector.log"
HEARTBEAT_TTL_BEATS = 3
# seconds between the closed candles of a live write and the state of its instruments: readers
# attached to the collector read the candles (and run their callbacks) while the server has nothing
# else to do; the state of 3000 instruments, all of them at a close, is ~50 ms of Redis time, and
# readers' reads queued behind it (RedisLive.set_close_pause)
CLOSE_PAUSE = 0.08


# ---------------------------------------------------------------------- logging
def setup_logging(data_dir: str, level: int = logging.INFO, stderr: bool = True) -> Path:
    """Log to stderr and ``data_dir/logs/collector.log`` (rotated) through the secret filter."""
    from .feeds.auth import _FILTER

    logs = Path(data_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / LOG_NAME
    fmt = logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
    root = logging.getLogger()
    for h in list(root.handlers):
        if h in _OURS:
            root.removeHandler(h)
            h.close()
    handlers: list[logging.Handler] = [
        logging.handlers.RotatingFileHandler(path, maxBytes=5 * 1024 * 1024, backupCount=5,
                                             encoding="utf-8")]
    if stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    for h in handlers:
        h.setFormatter(fmt)
        h.addFilter(_FILTER)  # handler level: records propagated from any logger are redacted
        _OURS.add(h)
        root.addHandler(h)
    root.setLevel(level)
    logging.getLogger("kiteohlc_lab").setLevel(level)
    return path


# ---------------------------------------------------------------------- registry
def collector_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _registry_key(prefix: str, cid: str) -> str:
    return keys.collector(prefix, cid)


def _file_for(data_dir: str, cid: str) -> Path:
    return Path(data_dir) / "collectors" / (cid.replace(":", "-") + ".json")


def _redis_for_status(cfg: KiteOHLC) -> Any:
    """A client on the configured Redis without starting an embedded server (None if none runs)."""
    if cfg.redis_url:
        from .stores.redis_live import redis_client

        return redis_client(cfg.redis_url)
    from .stores.embedded import connect_embedded

    try:
        return connect_embedded(cfg.data_dir)
    except (OSError, FileNotFoundError):
        return None


def list_collectors(cfg: KiteOHLC) -> list[dict]:
    """Live collectors on this configuration's Redis and data_dir (dead and expired ones left out)."""
    from .lease import owner_alive

    found: dict[str, dict] = {}
    now = time.time()
    folder = Path(cfg.data_dir) / "collectors"
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            entry = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        dead = entry.get("expires", 0) < now or not owner_alive(f"{entry.get('id')}:x")
        if dead:
            if not owner_alive(f"{entry.get('id')}:x"):
                f.unlink(missing_ok=True)  # its process is gone: the file is stale for good
            continue
        found[entry["id"]] = entry
    r = None
    try:
        r = _redis_for_status(cfg)
        if r is not None:
            pattern = _registry_key(cfg.redis_prefix, "*")
            keys = list(r.scan_iter(match=pattern, count=500))
            for raw in r.mget(keys) if keys else []:
                if raw is None:
                    continue
                entry = json.loads(raw)
                if owner_alive(f"{entry.get('id')}:x"):
                    found[entry["id"]] = entry
    except Exception as exc:  # noqa: BLE001 - Redis down: the files still tell
        log.debug("registry in Redis not readable: %s", exc)
    finally:
        if r is not None:
            try:
                r.close()
            except Exception:  # noqa: BLE001
                pass
    return sorted(found.values(), key=lambda e: e.get("started", ""))


# ---------------------------------------------------------------------- the collector
class Collector:
    """Run ``symbols`` x ``timeframes`` headless until stopped.

    Parameters
    ----------
    cfg : configuration (``config.from_sources`` on the command line).
    symbols : symbols or tokens (``"NIFTY,RELIANCE"`` or a list).
    timeframes : labels, e.g. ``["10s", "1m"]``.
    source : ``"kite"``, ``"sim"`` or ``"replay"`` (default: replay with a tape, kite with
        credentials, else sim: the ``ticker_url`` simulator, or a built-in one).
    heartbeat : seconds between registry updates; entries expire after three.
    lease_ttl : seconds an instrument lease lives without renewal.
    """

    def __init__(self, cfg: KiteOHLC, symbols: str | list[str], timeframes: list[str], *,
                 source: str | None = None, tape: str | None = None, speed: float = 1.0,
                 heartbeat: float = 1.0, lease_ttl: float = 5.0, shutdown_timeout: float = 4.5,
                 reconcile: bool = False, reconcile_replace: bool = False,
                 start: Any = None, end: Any = None) -> None:
        from .runtime import Manager, split_symbols

        if source == "redis":
            raise ConfigError("a collector writes; --source redis only makes sense for a reader "
                              "(use kite, sim or replay)")
        if cfg.record_ticks == "auto":  # a collector keeps every tick it streams (stores.ticks)
            cfg.record_ticks = "on"
        self.cfg = cfg
        self.symbols = split_symbols(symbols)
        self.timeframes = list(timeframes)
        self.source = source or ("replay" if tape else ("kite" if cfg.has_credentials() else "sim"))
        self.tape, self.speed = tape, speed
        self.range = (start, end)  # --source replay without a tape: this range of the tick store
        self.heartbeat = float(heartbeat)
        self.shutdown_timeout = float(shutdown_timeout)
        self.id = collector_id()
        self.started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.manager = Manager(cfg)
        self.manager.lease_policy = "standby"
        self.manager.lease_ttl = float(lease_ttl)
        # thousands of instruments that no one reads in this process: no series buffers for them
        self.manager.registry.preload_streamed = False
        self.stop_event = threading.Event()
        self.pairs: dict[str, int] = {}
        self.message = ""
        # background check of each closed minute against Kite's own candle (mismatches recorded
        # in Redis; candles replaced only with reconcile_replace)
        self.reconcile, self.reconcile_replace = reconcile, reconcile_replace
        self.reconciler: Any = None
        # the streams' symbol lists, sorted, as JSON: a beat at thousands of instruments re-sorts
        # and re-prints them only when a stream's list changed
        self._streaming: tuple[list[list[str]], list[str], str] = ([], [], "[]")

    # -- heartbeat ----------------------------------------------------------------------------
    def entry(self) -> dict:
        """The registry entry: pid, host, symbols, tfs, ticks/s, last tick age, health, started."""
        m = self.manager
        streams = [s for s in m.status() if s.get("source") != "redis"]
        rate = sum(s.get("ticks_per_s") or 0 for s in streams)
        ages = [s["last_tick_age"] for s in streams if s.get("last_tick_age") is not None]
        problems = [f"{s['stream']} {s['state']}" for s in streams
                    if s.get("state") not in ("running", "connected", "done")]
        problems += [f"{s['stream']}: {s['error']}" for s in streams if s.get("error")][:1]
        store = streams[0]["store"] if streams else m.store_health()
        if "DOWN" in store:
            problems.append(store)
        if ages and min(ages) > self.cfg.stall_timeout:
            problems.append(f"no tick for {min(ages):.0f} s")
        waiting = sorted(m.lease_waiting)
        health = "ok" if not problems else "degraded: " + "; ".join(problems)
        if waiting:
            health += f" (standby for {', '.join(waiting)}: leased by another writer)"
        lists = [s.get("symbols", []) for s in streams]
        if lists != self._streaming[0]:
            names = sorted({sym for syms in lists for sym in syms})
            self._streaming = (lists, names, json.dumps(names, separators=(",", ":")))
        streaming = list(self._streaming[1])
        return {
            "id": self.id, "host": socket.gethostname(), "pid": os.getpid(),
            "source": self.source, "symbols": streaming, "waiting": waiting,
            "tfs": self.timeframes, "ticks_per_s": round(rate, 1),
            "last_tick_age": None if not ages else round(min(ages), 2), "health": health,
            "started": self.started, "updated": time.time(),
            "expires": time.time() + HEARTBEAT_TTL_BEATS * self.heartbeat,
            "data_dir": self.cfg.data_dir, "redis_prefix": self.cfg.redis_prefix,
        }

    def publish(self) -> dict:
        e = self.entry()
        rest = json.dumps({k: v for k, v in e.items() if k != "symbols"}, separators=(",", ":"))
        text = '{"symbols":' + self._streaming[2] + "," + rest[1:]  # the symbols printed once
        path = _file_for(self.cfg.data_dir, self.id)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
        except OSError as exc:
            log.debug("heartbeat file not written: %s", exc)
        try:
            live = self.manager.stores()[0]
            live.client.set(_registry_key(self.cfg.redis_prefix, self.id), text,
                            px=int(HEARTBEAT_TTL_BEATS * self.heartbeat * 1000))
        except Exception as exc:  # noqa: BLE001 - Redis down: the file still tells
            log.debug("heartbeat not published in Redis: %s", exc)
        return e

    def unpublish(self) -> None:
        _file_for(self.cfg.data_dir, self.id).unlink(missing_ok=True)
        try:
            self.manager.stores()[0].client.delete(_registry_key(self.cfg.redis_prefix, self.id))
        except Exception:  # noqa: BLE001
            pass

    # -- run ----------------------------------------------------------------------------------
    def start(self) -> str:
        """Open the stores, take leases, start streaming (returns the one-line summary)."""
        from .attach import publish_symbols

        m = self.manager
        live = m.stores()[0]
        live.set_close_pause(CLOSE_PAUSE)
        # where a previous writer stopped (crash, kill -9), the stream's start repairs the outage
        # from Kite's historical minutes and starts each volume baseline afresh (runtime._launch)
        from .runtime.tickreplay import start_from_store, wants_store

        if wants_store(self.source, self.tape, *self.range):
            info = start_from_store(m, self.symbols, self.timeframes, *self.range, speed=self.speed)
        else:
            info = m.start(self.symbols, self.timeframes, source=self.source, tape=self.tape,
                           speed=self.speed)
        self.pairs.update({s: t for s, t in info.instruments})
        self.pairs.update(m.lease_waiting)
        try:
            publish_symbols(live, self.pairs.items())
        except Exception as exc:  # noqa: BLE001
            log.debug("symbols not published: %s", exc)
        self.message = info.message
        if self.reconcile and self.source != "replay":
            from .reconcile import Reconciler

            rec = Reconciler(m, replace=self.reconcile_replace)
            rec.start()
            self.message += "; reconciling each closed minute with Kite's historical candles"
            self.reconciler = rec  # published once the message says so (status readers)
        if m.lease_waiting:
            self.message += (f"; standing by for {', '.join(sorted(m.lease_waiting))} "
                             "(streamed by another writer)")
        return self.message

    def _take_over(self) -> None:
        m = self.manager
        if not m.lease_waiting:
            return
        waiting, m.lease_waiting = dict(m.lease_waiting), {}
        info = m.start(list(waiting), self.timeframes, source=self.source, tape=self.tape,
                       speed=self.speed)
        if info.instruments:
            log.info("took over %s: %s", ", ".join(s for s, _ in info.instruments), info.message)

    def _failed(self) -> str | None:
        for s in self.manager.streams.values():
            if s.state == "failed":
                return s.error or f"stream {s.name} failed"
        return None

    def _finished(self) -> bool:
        streams = list(self.manager.streams.values())
        return bool(streams) and self.source == "replay" and all(s.done.is_set() for s in streams)

    def run(self, install_signals: bool = True) -> int:
        """Collect until SIGTERM/SIGINT (or ``stop_event``); returns the exit code."""
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda signum, frame: self.stop_event.set())
        code = 0
        try:
            log.info("collector %s starting: %s %s, source %s; %r", self.id, ",".join(self.symbols),
                     " ".join(self.timeframes), self.source, self.cfg)
            log.info("%s", self.start())
            while True:
                self.publish()
                if self.stop_event.wait(self.heartbeat):
                    log.info("collector %s stopping (signal)", self.id)
                    break
                err = self._failed()
                if err:
                    log.error("collector %s: %s", self.id, err)
                    code = 1
                    break
                if self._finished():
                    log.info("collector %s: replay finished", self.id)
                    break
                if self.source == "replay":  # how far each tape is: ticks/s, ETA
                    from .feeds.replay import ReplaySource

                    for s in list(self.manager.streams.values()):
                        if isinstance(s.source, ReplaySource) and not s.done.is_set():
                            log.info("collector %s: %s", self.id, s.source.progress_line())
                try:
                    self._take_over()
                except Exception as exc:  # noqa: BLE001 - retried at the next beat
                    log.warning("taking over instruments failed: %s", exc)
        except KeyboardInterrupt:
            pass
        finally:
            code = self.shutdown(code)
        return code

    def shutdown(self, code: int = 0) -> int:
        """Stop streams, flush stores, release leases, remove the heartbeat (bounded in time)."""
        done = threading.Event()

        def hard_stop() -> None:
            if not done.wait(self.shutdown_timeout):
                log.error("collector %s: shutdown took over %.1f s; exiting without a clean flush",
                          self.id, self.shutdown_timeout)
                logging.shutdown()
                os._exit(1)

        if threading.current_thread() is threading.main_thread():
            threading.Thread(target=hard_stop, name="kiteohlc-shutdown-guard", daemon=True).start()
        try:
            self.unpublish()
            if self.reconciler is not None:
                self.reconciler.stop()
            live = self.manager.opened_stores()[0] if self.manager.opened_stores() else None
            self.manager.shutdown()  # streams stop (final write), leases released, stores closed
            if live is not None and getattr(live, "spool", None) is not None and len(live.spool):
                log.warning("collector %s: %d live writes stay spooled for the next run", self.id,
                            len(live.spool))
            log.info("collector %s stopped", self.id)
        finally:
            done.set()
        return code
