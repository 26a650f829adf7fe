"""Reconciliation: candles built from ticks side by side with Kite's historical candles.

Kite's own candles are the reference a trader checks against; ticks are snapshots (about one a
second), so a tick-built high/low can miss an extreme traded between two snapshots, and volume from
``volume_traded`` deltas is usually a little *higher* than Kite's candle volume. Prices are therefore
compared to the instrument's tick size (equal when ``|a - b| < tick/2``) and volume with a relative
tolerance.

* ``reconcile(symbol, tf, start, end)``: one DataFrame row per complete candle both sides have.
* ``Reconciler``: the background option for a collector: every closed minute is checked once it is
  final on Kite's side (candle end + ``delay`` seconds, 10 s by default as Zerodha advises),
  mismatches are recorded (a list, and a Redis hash per instrument when a client is given); candles
  are replaced by Kite's only with ``replace=True``, and the source of each replaced candle
  (``"ticks"`` | ``"kite"``) is kept.
* ``reconcile_plot(df)``: a small matplotlib figure of both (for ``%ohlc_reconcile``); no IPython.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import types
from typing import Any, Callable

import numpy as np
import pandas as pd

from .core.candles import CandleBatch
from .core.repair import REPAIR_SETTLE_S
from .core.timeframes import IST, NS, bound_ns, parse_timeframe
from .errors import ConfigError
from .stores import keys

log = logging.getLogger("kiteohlc_lab.reconcile")

FIELDS = ("open", "high", "low", "close", "volume")
PRICES = ("open", "high", "low", "close")
DEFAULT_TICK = 0.05
SETTLE_S = REPAIR_SETTLE_S  # Kite's minute candle is final a little after the minute (core.repair)


# ---------------------------------------------------------------------------------------- compare
def compare(live: pd.DataFrame, kite: pd.DataFrame, *, tick_size: float = DEFAULT_TICK,
            volume_tolerance: float = 0.02) -> pd.DataFrame:
    """Side-by-side frame of two candle frames (public shape), one row per start both have.

    Columns ``open_live, open_kite, ..., volume_live, volume_kite``, ``match`` (bool) and
    ``mismatched`` (comma-separated fields that differ, ``""`` when they match).

    >>> compare(live_df, kite_df, tick_size=0.05).query("~match")   # doctest: +SKIP
    """
    tick = float(tick_size) if tick_size and tick_size > 0 else DEFAULT_TICK
    idx = live.index.intersection(kite.index).sort_values()
    idx.name = "date"
    out = pd.DataFrame(index=idx)
    ok = np.ones(len(idx), bool)
    bad: dict[str, np.ndarray] = {}
    for f in FIELDS:
        a = live[f].reindex(idx).to_numpy(float)
        b = kite[f].reindex(idx).to_numpy(float)
        out[f"{f}_live"], out[f"{f}_kite"] = a, b
        if f == "volume":
            # relative to the larger side; both zero (indices) is a match
            same = np.abs(a - b) <= volume_tolerance * np.maximum(np.abs(a), np.abs(b)) + 1e-9
        else:
            same = np.abs(a - b) < tick / 2 - 1e-9
        bad[f] = ~same
        ok &= same
    out["match"] = ok
    out["mismatched"] = [",".join(f for f in FIELDS if bad[f][i]) for i in range(len(idx))]
    return out


# ---------------------------------------------------------------------------------------- sources
def historical_client(manager: Any) -> Any:
    """A ``HistoricalClient`` on the manager's Kite connection (the simulator's when it streams
    from it, else Kite with the configured credentials)."""
    from kiteconnect import KiteConnect

    from .feeds.historical import HistoricalClient

    running = getattr(manager, "running_simulator", None)  # a Session; test doubles may lack it
    sim = running() if callable(running) else None
    streams = list(getattr(manager, "streams", {}).values())
    on_sim = any(getattr(s.source, "name", "") == "sim" for s in streams)
    cfg = manager.cfg
    if sim is not None and (on_sim or not cfg.has_credentials()):
        kite = KiteConnect(sim.api_key, access_token=sim.access_token, root=sim.api_url)
    elif cfg.has_credentials():
        kw = {"root": cfg.api_url} if cfg.api_url else {}
        kite = KiteConnect(cfg.api_key, access_token=cfg.access_token, **kw)
    else:
        raise ConfigError(
            "reconcile needs Kite's historical API: configure KiteOHLC.api_key/access_token, "
            "or stream from the simulator (--source sim) first"
        )
    return HistoricalClient(kite)


def tick_size_of(manager: Any, symbol: str | int) -> float:
    """The instrument's tick size from the tables the manager has loaded (0.05 if unknown)."""
    lookup = getattr(manager, "tick_size", None)  # a Session; test doubles may lack it
    ts = lookup(symbol) if callable(lookup) else None
    return float(ts) if ts else DEFAULT_TICK


def reconcile(symbol: str | int, tf: str = "1m", start: Any = None, end: Any = None, *,
              volume_tolerance: float = 0.02, manager: Any = None, client: Any = None,
              tick_size: float | None = None, now: Callable[[], int] = time.time_ns,
              settle: float = SETTLE_S) -> pd.DataFrame:
    """Tick-built candles of ``symbol`` at ``tf`` against Kite's historical candles.

    Parameters
    ----------
    symbol, tf : what to check (``tf`` of 1 minute or more: Kite has no sub-minute candles)
    start, end : bounds on the candle start (naive values are IST); default: every candle the
        manager holds, up to the last complete one
    volume_tolerance : relative volume difference still called a match (ticks overcount a little)
    manager : default the process-wide ``kiteohlc_lab.api.manager()``
    client : a ``HistoricalClient`` (default: on the manager's Kite or simulator connection)
    tick_size : price resolution (default: the instrument's, else 0.05)
    now, settle : only candles that ended ``settle`` seconds before ``now()`` are compared

    Returns
    -------
    DataFrame indexed by ``date`` (candle start, Asia/Kolkata) with ``open_live, open_kite, ...,
    volume_live, volume_kite, match, mismatched``; one row per complete candle both sides have.

    >>> kiteohlc_lab.reconcile("NIFTY", "1m").query("~match")     # doctest: +SKIP
    """
    if manager is None:
        from .current import manager as _m

        manager = _m()
    t = parse_timeframe(tf)
    if t.seconds < 60 or t.seconds % 60:
        raise ValueError(f"timeframe {t.label!r} cannot be reconciled: Kite's smallest candle is 1 minute")
    token = manager.token_of(symbol)
    live = manager.candles(token, t.label, closed_only=True, start=start, end=end)
    final_before = int(now()) - int(settle * NS) - t.ns  # starts below this are complete
    live = live[live.index.asi8 < final_before] if len(live) else live
    if not len(live):
        return compare(live, live, tick_size=tick_size or DEFAULT_TICK)
    lo = bound_ns(start)
    lo = int(live.index[0].value) if lo is None else lo
    hi = bound_ns(end)
    hi = min(final_before, int(live.index[-1].value) + t.ns) if hi is None else min(hi, final_before)
    client = client or historical_client(manager)
    kite = client.fetch(token, t.label, lo, hi).to_frame()
    ts = tick_size if tick_size else tick_size_of(manager, symbol)
    out = compare(live, kite, tick_size=ts, volume_tolerance=volume_tolerance)
    out.attrs.update(symbol=str(symbol), token=token, tf=t.label, tick_size=ts,
                     live_only=int(len(live) - len(out)), kite_only=int(len(kite) - len(out)))
    return out


# ---------------------------------------------------------------------------------------- plot
def reconcile_plot(df: pd.DataFrame, title: str | None = None) -> Any:
    """A matplotlib ``Figure``: closes of both sides (mismatches marked) over volumes of both."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.5))
    ax, axv = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if len(df):
        x = df.index.tz_convert(IST).tz_localize(None)
        ax.plot(x, df["close_kite"], color="tab:blue", lw=1.2, label="Kite")
        ax.plot(x, df["close_live"], color="tab:orange", lw=1.0, ls="--", label="ticks")
        ax.fill_between(x, df["low_kite"], df["high_kite"], color="tab:blue", alpha=0.12, lw=0)
        bad = ~df["match"].to_numpy(bool)
        if bad.any():
            ax.scatter(x[bad], df["close_live"].to_numpy()[bad], color="red", s=18, zorder=3,
                       label=f"mismatch ({int(bad.sum())})")
        width = (x[1] - x[0]) * 0.4 if len(x) > 1 else pd.Timedelta(seconds=20)
        axv.bar(x - width / 2, df["volume_kite"], width=width, color="tab:blue", label="Kite")
        axv.bar(x + width / 2, df["volume_live"], width=width, color="tab:orange", label="ticks")
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no complete candles on both sides", ha="center", va="center",
                transform=ax.transAxes)
    attrs = df.attrs
    ax.set_title(title or f"{attrs.get('symbol', '')} {attrs.get('tf', '')}: ticks vs Kite".strip())
    ax.set_ylabel("price")
    axv.set_ylabel("volume")
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------- background
class Reconciler:
    """Check each closed minute against Kite once it is final there; record mismatches.

    Parameters
    ----------
    manager : the Manager whose candles are checked (default the process-wide one)
    symbols : what to check (default: every instrument the manager streams)
    tf : timeframe compared (1 minute by default: what Kite finalises first)
    client : ``HistoricalClient`` (default on the manager's connection); its rate limiter is shared
        with gap repair and backfill, so K instruments cost K requests per cycle (3 per second)
    delay : seconds after a candle's end before Kite's candle counts as final
    replace : write Kite's candle over a mismatching tick-built one (history store and the series
        the researcher reads); off by default, candles are never replaced unless asked
    redis : a Redis client for ``<prefix>{token}:recon:<tf>`` (HASH start -> JSON of both sides) and
        ``<prefix>{token}:source:<tf>`` (HASH start -> "kite" for replaced candles); default the
        manager's live store client when it has one, ``False`` for none
    clock : epoch-ns wall clock (tests)

    ``check()`` runs one cycle and returns the rows compared; ``start()``/``stop()`` run it every
    ``interval`` seconds in a daemon thread. ``mismatches`` holds one dict per mismatching candle;
    ``source_of(token, start)`` tells ``"ticks"`` or ``"kite"``.
    """

    def __init__(self, manager: Any = None, symbols: list[str | int] | None = None, tf: str = "1m", *,
                 client: Any = None, delay: float = SETTLE_S, volume_tolerance: float = 0.02,
                 tick_size: float | None = None, replace: bool = False, redis: Any = None,
                 prefix: str | None = None, interval: float = 5.0,
                 clock: Callable[[], int] = time.time_ns) -> None:
        if manager is None:
            from .current import manager as _m

            manager = _m()
        self.manager = manager
        self.tf = parse_timeframe(tf)
        self.symbols = symbols
        self._client = client
        self.delay, self.volume_tolerance, self.tick_size = float(delay), volume_tolerance, tick_size
        self.replace, self.interval, self.clock = replace, float(interval), clock
        self.prefix = prefix if prefix is not None else getattr(manager.cfg, "redis_prefix", "kohlc:")
        self._redis = redis
        self.checked: dict[int, int] = {}  # token -> first candle start not yet checked
        self.mismatches: list[dict] = []
        self.sources: dict[tuple[int, int], str] = {}
        self.stats = {"cycles": 0, "compared": 0, "mismatches": 0, "replaced": 0, "errors": 0}
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- plumbing
    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = historical_client(self.manager)
        return self._client

    @property
    def redis(self) -> Any:
        if self._redis is None:
            try:
                live = self.manager.stores()[0]
                self._redis = getattr(live, "client", None) or False
            except Exception:  # noqa: BLE001 - no live store: record in memory only
                self._redis = False
        return self._redis or None

    def _key(self, token: int, kind: str) -> str:
        return keys.instrument(self.prefix, token, kind, self.tf.label)

    def tokens(self) -> list[int]:
        if self.symbols is not None:
            return [self.manager.token_of(s) for s in self.symbols]
        toks: list[int] = []
        for s in list(self.manager.streams.values()):
            toks += [t for t in s.tokens if t not in toks]
        return toks

    def source_of(self, token: int, start: int) -> str:
        return self.sources.get((int(token), int(start)), "ticks")

    # -- one cycle
    def check(self, now_ns: int | None = None) -> pd.DataFrame:
        """Reconcile every candle that became final since the last cycle; returns those rows."""
        now = int(self.clock() if now_ns is None else now_ns)
        frames = []
        for token in self.tokens():
            try:
                df = self._check_token(token, now)
            except Exception as exc:  # noqa: BLE001 - recorded, the next cycle retries
                self.stats["errors"] += 1
                self.error = f"reconcile of {token} failed: {type(exc).__name__}: {exc}"
                log.warning(self.error)
                continue
            if len(df):
                frames.append(df.assign(token=token))
        self.stats["cycles"] += 1
        return pd.concat(frames) if frames else pd.DataFrame()

    def _check_token(self, token: int, now: int) -> pd.DataFrame:
        label = self.tf.label
        final_before = now - int(self.delay * NS) - self.tf.ns
        lo = self.checked.get(token)
        live = self.manager.candles(token, label, closed_only=True,
                                    start=None if lo is None else pd.Timestamp(lo, tz="UTC"))
        live = live[live.index.asi8 < final_before]
        if not len(live):
            return live
        a, b = int(live.index[0].value), int(live.index[-1].value) + self.tf.ns
        kite_b = self.client.fetch(token, label, a, b)
        df = compare(live, kite_b.to_frame(), volume_tolerance=self.volume_tolerance,
                     tick_size=self.tick_size or tick_size_of(self.manager, token))
        self.checked[token] = b
        self.stats["compared"] += len(df)
        bad = df[~df["match"]]
        if len(bad):
            self._record(token, bad)
            if self.replace:
                self._replace(token, kite_b, bad)
        return df

    def _record(self, token: int, bad: pd.DataFrame) -> None:
        r = self.redis
        pipe = r.pipeline(transaction=False) if r is not None else None
        for date, row in bad.iterrows():
            rec = {"token": token, "tf": self.tf.label, "start": int(date.value),
                   "date": date.isoformat(), "fields": row["mismatched"],
                   **{c: float(row[c]) for c in bad.columns if c.endswith(("_live", "_kite"))}}
            self.mismatches.append(rec)
            if pipe is not None:
                pipe.hset(self._key(token, "recon"), str(rec["start"]), json.dumps(rec))
        self.stats["mismatches"] += len(bad)
        if pipe is not None:
            try:
                pipe.execute()
            except Exception as exc:  # noqa: BLE001 - Redis down: the list still has them
                self.error = f"recording mismatches in Redis failed: {exc}"

    def _replace(self, token: int, kite_b: CandleBatch, bad: pd.DataFrame) -> None:
        starts = bad.index.asi8
        sel = kite_b.select(np.isin(kite_b.start, starts))
        if not len(sel):
            return
        sel.tf = self.tf.label
        _live, hist, _ = self.manager.stores()
        hist.write(sel)
        self.manager.series(token, self.tf.label).upsert(sel)
        for s in sel.start.tolist():
            self.sources[(token, int(s))] = "kite"
        self.stats["replaced"] += len(sel)
        r = self.redis
        if r is not None:
            try:
                r.hset(self._key(token, "source"), mapping={str(s): "kite" for s in sel.start.tolist()})
            except Exception as exc:  # noqa: BLE001
                self.error = f"recording candle sources in Redis failed: {exc}"

    # -- background thread
    def start(self) -> "Reconciler":
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="kiteohlc-reconcile", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - the thread never dies silently
                self.error = f"reconciler failed: {type(exc).__name__}: {exc}"
                log.exception("reconciler cycle failed")

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def status(self) -> dict:
        return {**self.stats, "error": self.error, "tf": self.tf.label,
                "instruments": len(self.checked)}


class _CallableModule(types.ModuleType):
    """``kiteohlc_lab.reconcile`` is this module once imported (Python binds a submodule on its
    package) and the function before: calling the module calls the function, so both work."""

    def __call__(self, *args: Any, **kw: Any) -> pd.DataFrame:
        return reconcile(*args, **kw)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["reconcile", "compare", "reconcile_plot", "Reconciler", "historical_client", "tick_size_of"]
