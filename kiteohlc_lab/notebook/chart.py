"""``LiveChart``: an interactive live candlestick chart (anywidget + TradingView's lightweight-charts).

``live.chart()`` / ``%ohlc_chart NIFTY 1m``. The JavaScript (``kiteohlc_lab/static/chart.js``) is
built from the pinned npm packages in ``js/`` when the package is installed; nothing loads from a CDN.

The protocol (kernel -> front end, custom widget messages):

- ``{"kind": "full", "seq": s, "n": N, "cols": [...], "tick": 0.05, "overlays": [...], "markers": [...]}``
  with one float64 buffer per column (time, open, high, low, close, volume) and one per overlay: the
  whole series in one compact message. Sent when a view asks for it (every render sends
  ``{"type": "sync"}``: a re-displayed widget or a reloaded page resyncs), and when the series was
  rewritten under the chart (gap repair, a new series).
- ``{"kind": "bars", "seq": s + 1, "bars": [[t, o, h, l, c, v], ...]}``: only what changed since the
  last message, the forming candle, newly closed ones, amended ones; the front end calls
  ``series.update(bar)``. ``seq`` numbers each message; a view that sees a gap asks for a full sync.
- ``{"kind": "overlay", ...}`` and ``{"kind": "markers", ...}`` for overlays and markers.

Times are UTC seconds shifted by +19800 s, so the chart's (UTC) axis reads IST.

A background thread polls the series' ``version`` at ``rate`` per second (default 10): nothing is
read or sent unless it moved, and several ticks between two polls become one message. It holds the
chart weakly and stops when the chart is closed (``chart.close()``, or the front end closing its
comm) or dropped. Widget messages are sent from that thread; ``display()`` never is. The series the
chart shows is pinned in the manager (the idle-series LRU never drops it) until the chart closes,
switches to another series, or is dropped.
"""

from __future__ import annotations

import contextlib
import html
import json
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..errors import KiteOHLCError
from .handle import SeriesHandle, stream_state

from .chart_data import (  # noqa: F401 - re-exported (serve_chart, tests)
    IST_SHIFT,
    DEFAULT_RATE,
    DEFAULT_TICK,
    WINDOW,
    STATIC,
    COLS,
    ChartUnavailable,
    _base,
    _seconds,
    chart_time,
    Overlay,
    Snapshot,
    _tf_ns,
    snapshot,
    stream_choices,
)



CHOICES_EVERY_S = 2.0  # how often the picker's lists are refreshed from the running streams


def chart_js() -> Path:
    """Path of the built front-end module; raises ``ChartUnavailable`` saying how to build it."""
    if not STATIC.is_file() or STATIC.stat().st_size == 0:
        raise ChartUnavailable(
            "the live chart's JavaScript is not built (kiteohlc_lab/static/chart.js is missing): install "
            "Node.js and npm, then reinstall with `pip install -e .` (or run `npm ci && npm run build` "
            "in js/); live.view() shows the PNG chart without it")
    return STATIC


_ESM: tuple[float, str] | None = None


def _esm_text() -> str:
    """The built module's text (read again only when the file changed: a rebuild shows up)."""
    global _ESM
    path = chart_js()
    mtime = path.stat().st_mtime
    if _ESM is None or _ESM[0] != mtime:
        _ESM = (mtime, path.read_text(encoding="utf-8"))
    return _ESM[1]


_CHARTS: "weakref.WeakSet[Any]" = weakref.WeakSet()  # every LiveChart alive (close_all)


def _updater(ref: "weakref.ref[LiveChart]", stop: threading.Event, wake: threading.Event,
             interval: float) -> None:
    while not stop.is_set():
        wake.wait(interval)
        wake.clear()
        if stop.is_set():
            return
        chart = ref()
        if chart is None:
            return
        try:
            chart.poll()
        except Exception as exc:  # never die silently
            chart.report_failure(exc)
        del chart  # only a weak hold while sleeping: a dropped chart ends the thread


def _json_size(obj: Any) -> int:
    return len(json.dumps(obj, separators=(",", ":"), allow_nan=False))


def _clean(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def _make_class():
    import traitlets as t

    AnyWidget = _base()

    class LiveChart(AnyWidget):  # type: ignore[misc, valid-type]
        """A live, interactive candlestick + volume chart of one symbol and timeframe.

        Parameters
        ----------
        symbol, tf : str
            What to show (a stream must carry it, or the store must hold its history); both can be
            changed later (``chart.tf = "5m"``): the chart reloads.
        rate : float
            Most messages per second sent to the front end (default 10); ticks in between coalesce.
        height : int
            Pixels.
        tick_size : float, optional
            Price resolution on the axis (default: the instrument's, else 0.05).
        autostart : bool
            Start the updater thread (tests call ``poll()`` by hand with ``False``).

        Attributes
        ----------
        fulls, deltas : int
            Full loads and delta messages sent. ``bytes_sent``: their payload size.
        """

        _esm = t.Any().tag(sync=True)
        symbol = t.Unicode("").tag(sync=True)
        tf = t.Unicode("").tag(sync=True)
        title = t.Unicode("").tag(sync=True)
        tick_size = t.Float(DEFAULT_TICK).tag(sync=True)
        height = t.Int(420).tag(sync=True)
        seconds = t.Bool(False).tag(sync=True)
        visible = t.Int(150).tag(sync=True)
        # the picker in the chart's header: symbols streaming now, the timeframes streamed for the
        # shown symbol (refreshed every CHOICES_EVERY_S); a bad pick from it is reverted and said here
        symbol_choices = t.List(t.Unicode()).tag(sync=True)
        tf_choices = t.List(t.Unicode()).tag(sync=True)
        error = t.Unicode("").tag(sync=True)

        def __init__(self, symbol: str, tf: str, manager: Any = None, rate: float | None = None,
                     height: int = 420, tick_size: float | None = None, visible: int = 150,
                     autostart: bool = True, **kwargs: Any) -> None:
            from ..core.timeframes import parse_timeframe

            self._stop = threading.Event()  # first: close() (also from __del__) works from here on
            self._wake = threading.Event()
            self._thread: threading.Thread | None = None
            esm = _esm_text()
            self.live = SeriesHandle(symbol, tf, manager=manager)
            self._manager = self.live.manager
            self.live.series  # an unknown symbol or timeframe fails here, in the cell
            label = parse_timeframe(tf).label
            if tick_size is None:
                from ..reconcile import tick_size_of

                tick_size = tick_size_of(self._manager, symbol)
            self.rate = float(rate) if rate else DEFAULT_RATE
            if not self.rate > 0:
                raise ValueError(f"rate {rate!r} is not accepted; use a positive number of messages per second")
            self.fulls = 0
            self.deltas = 0
            self.polls = 0
            self.skipped = 0
            self.errors = 0
            self.bytes_sent = 0
            self.last_error: str | None = None
            self.overlays: dict[str, Overlay] = {}
            self.markers: list[dict] = []
            self._markers_dirty = False
            self._lock = threading.RLock()
            self._ready = False  # a view asked for its load: deltas make sense from then on
            self._reset_sent()
            super().__init__(_esm=esm, symbol=str(symbol), tf=label, title=f"{symbol} {label}",
                             tick_size=float(tick_size), height=int(height),
                             seconds=parse_timeframe(label).ns < 60 * 10**9, visible=int(visible),
                             **kwargs)
            self.on_msg(self._on_front)
            self._choices_at = 0.0
            self._reverting = False
            self._refresh_choices(force=True)
            self.observe(self._retarget, names=["symbol", "tf"])
            self.observe(self._comm_changed_chart, names="comm")
            self._watch_comm(self.comm)
            _CHARTS.add(self)
            if autostart:
                self.start()

        # -- lifecycle
        def start(self) -> None:
            """Start the updater thread (idempotent)."""
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(
                target=_updater, args=(weakref.ref(self), self._stop, self._wake, 1.0 / self.rate),
                name=f"kiteohlc-chart-{self.symbol}-{self.tf}", daemon=True)
            self._thread.start()

        def stop(self, timeout: float = 2.0) -> None:
            """Stop updating (the chart stays as last drawn)."""
            self._stop.set()
            self._wake.set()
            th = self._thread
            if th is not None and th is not threading.current_thread():
                th.join(timeout)

        @property
        def running(self) -> bool:
            return self._thread is not None and self._thread.is_alive()

        def close(self) -> None:
            self.stop()
            self.release_series()
            super().close()

        def release_series(self) -> None:
            """Unpin the series this chart shows (it is closed: the idle LRU may drop it)."""
            live = self.__dict__.get("live")
            if live is not None:
                live.release()

        def _watch_comm(self, comm: Any) -> None:
            on_close = getattr(comm, "on_close", None)
            if on_close is None:
                return
            stop, wake, ref = self._stop, self._wake, weakref.ref(self)

            def closed(msg: Any = None) -> None:
                stop.set()
                wake.set()
                chart = ref()
                if chart is not None:
                    chart.release_series()

            on_close(closed)

        def _comm_changed_chart(self, change: dict) -> None:
            if change["new"] is None:
                self._stop.set()
                self._wake.set()
                self.release_series()
            else:
                self._watch_comm(change["new"])

        def _retarget(self, change: dict) -> None:
            if self._reverting:
                return
            from_front = change["name"] in getattr(self, "_property_lock", {})
            try:
                self._show(self.symbol, self.tf)
            except (KiteOHLCError, ValueError) as exc:
                # a pick the chart cannot show changes nothing: back to what is shown
                self._reverting = True
                try:
                    self.set_trait(change["name"], change["old"])
                finally:
                    self._reverting = False
                if not from_front:
                    raise
                self.error = str(exc)

        def _show(self, symbol: str, tf: str) -> None:
            from ..core.timeframes import parse_timeframe

            with self._lock:
                label = parse_timeframe(tf).label
                live = SeriesHandle(symbol, label, manager=self._manager)
                live.series  # fails (and changes nothing) for an unknown symbol
                old, self.live = self.live, live
                if old is not live:
                    old.release()  # the chart's own handle: the old series is no longer shown
                with self.hold_trait_notifications():
                    self.title = f"{symbol} {label}"
                    self.seconds = parse_timeframe(label).ns < 60 * 10**9
                    self.error = ""
                    if self.tf != label:
                        self.set_trait("tf", label)
                for o in self.overlays.values():
                    o.sent = None
                self._reset_sent()
                self._refresh_choices(force=True)
                if self._ready:
                    self._send_full()

        def _refresh_choices(self, force: bool = False) -> None:
            """The picker's lists from the streams running now (cheap; at most every few seconds)."""
            now = time.monotonic()
            if not force and now - self._choices_at < CHOICES_EVERY_S:
                return
            self._choices_at = now
            symbols, tfs = stream_choices(self._manager, self.symbol)
            if self.symbol not in symbols:
                symbols = [self.symbol, *symbols]
            if self.tf not in tfs:
                tfs = sorted({*tfs, self.tf}, key=_tf_ns)
            with self.hold_sync():
                if symbols != self.symbol_choices:
                    self.symbol_choices = symbols
                if tfs != self.tf_choices:
                    self.tf_choices = tfs

        # -- front end
        def _on_front(self, _widget: Any, content: Any, buffers: Any) -> None:
            if isinstance(content, dict) and content.get("type") == "sync":
                with self._lock:
                    self._ready = True
                    self._send_full()

        def _emit(self, content: dict, buffers: list | None = None) -> None:
            self.bytes_sent += _json_size(content) + sum(memoryview(b).nbytes for b in buffers or [])
            self.send(content, buffers)

        def _reset_sent(self) -> None:
            self._seq = 0
            self._key: tuple[int, int] | None = None
            self._total = 0  # rows the front end has
            self._closed = -1
            self._last_t = -np.inf
            self._recent: dict[float, tuple] = {}  # time -> row, the last WINDOW rows sent

        def _remember(self, rows: np.ndarray) -> None:
            for r in rows[-WINDOW:]:
                self._recent[float(r[0])] = tuple(float(x) for x in r)
            if len(self._recent) > 2 * WINDOW:
                for k in sorted(self._recent)[: len(self._recent) - WINDOW]:
                    del self._recent[k]

        def _state(self) -> str:
            row = stream_state(self._manager, self.symbol, self.tf)
            if row is None:
                return "not streaming"
            return f"{row.get('state', '?')} ({row.get('source', '?')})"

        def _send_full(self) -> None:
            """One message with every candle (float64 columns), overlays and markers."""
            snap = snapshot(self.live.series, None)
            rows = snap.rows
            buffers = [np.ascontiguousarray(rows[:, j]).tobytes() for j in range(6)]
            specs = []
            if self.overlays:
                closed = self._closed_frame()
                for o in self.overlays.values():
                    vals = o.values(closed)
                    o.sent = vals
                    specs.append({**o.spec(), "n": len(vals)})
                    buffers.append(vals.tobytes())
            self._seq += 1
            msg = {"kind": "full", "seq": self._seq, "n": len(rows), "cols": list(COLS),
                   "tick": self.tick_size, "seconds": self.seconds, "title": self.title,
                   "overlays": specs, "markers": self._marker_list(rows), "state": self._state()}
            self._emit(msg, buffers)
            self.fulls += 1
            self._markers_dirty = False
            self._key, self._total, self._closed = snap.key, snap.total, snap.closed
            self._last_t = float(rows[-1, 0]) if len(rows) else -np.inf
            self._recent = {}
            self._remember(rows)

        def _closed_frame(self) -> pd.DataFrame:
            return self.live.series.frame(closed_only=True)

        # -- updates
        def poll(self) -> bool:
            """Send what changed since the last message (nothing if the series did not move).

            Returns True when something was sent.
            """
            with self._lock:
                self.polls += 1
                self._refresh_choices()
                if not self._ready:
                    self.skipped += 1
                    return False
                series = self.live.series
                key = (id(series), int(series.version))
                if key == self._key and not self._markers_dirty:
                    self.skipped += 1
                    return False
                sent = False
                if key != self._key:
                    if self._key is None or key[0] != self._key[0]:
                        self._send_full()
                        return True
                    sent = self._send_delta(series)
                if self._markers_dirty:
                    self._send_markers()
                    sent = True
                return sent

        def _send_delta(self, series: Any) -> bool:
            snap = snapshot(series, WINDOW)
            rows = snap.rows
            new = rows[:, 0] > self._last_t
            n_new = int(new.sum())
            if snap.total - n_new != self._total or (n_new and n_new == len(rows) and snap.total > n_new):
                # rows inserted or removed before the end (gap repair, a new history): reload
                self._send_full()
                return True
            changed = [r for r in rows[~new] if self._recent.get(float(r[0])) != tuple(float(x) for x in r)]
            bars = changed + list(rows[new])
            self._key = snap.key
            if not bars:
                return False
            self._seq += 1
            state = None
            closed_more = snap.closed != self._closed
            if closed_more:
                state = self._state()
            msg: dict[str, Any] = {"kind": "bars", "seq": self._seq,
                                   "bars": [[float(x) for x in r] for r in bars]}
            if state is not None:
                msg["state"] = state
            self._emit(msg)
            self.deltas += 1
            self._total = snap.total
            self._last_t = max(self._last_t, float(rows[-1, 0]))
            self._remember(np.asarray(bars))
            if closed_more or len(changed) and any(r[0] < rows[-1, 0] for r in changed):
                self._closed = snap.closed
                self._send_overlays()
            return True

        # -- overlays
        def add_line(self, name: str, fn: Callable[[pd.DataFrame], Any], color: str | None = None,
                     pane: int | None = None, width: int = 2) -> "LiveChart":
            """A line computed from the closed candles: ``fn(df)`` -> a Series indexed like ``df``
            (``lambda df: df.close.rolling(20).mean()``); re-evaluated when a candle closes."""
            return self._add(Overlay(name, fn, "line", color, pane, width))

        def add_histogram(self, name: str, fn: Callable[[pd.DataFrame], Any], color: str | None = None,
                          pane: int | None = 1) -> "LiveChart":
            """A histogram (by default in the volume pane), like ``add_line``."""
            return self._add(Overlay(name, fn, "histogram", color, pane))

        def remove(self, name: str) -> None:
            """Remove an overlay."""
            with self._lock:
                self.overlays.pop(name, None)
                if self._ready:
                    self._send_full()

        def _add(self, overlay: Overlay) -> "LiveChart":
            with self._lock:
                self.overlays[overlay.name] = overlay
                if self._ready:
                    self._send_overlay(overlay, self._closed_frame(), reset=True)
            return self

        def _send_overlays(self) -> None:
            if not self.overlays:
                return
            df = self._closed_frame()
            for o in self.overlays.values():
                self._send_overlay(o, df)

        def _send_overlay(self, o: Overlay, df: pd.DataFrame, reset: bool = False) -> None:
            vals = o.values(df)
            t = _seconds(df.index.asi8)
            prev = o.sent
            if not reset and prev is not None and len(prev) <= len(vals):
                same = np.append((prev == vals[: len(prev)]) | (np.isnan(prev) & np.isnan(vals[: len(prev)])),
                                 np.zeros(len(vals) - len(prev), bool))
                idx = np.flatnonzero(~same)
                if len(idx) <= 1000:
                    o.sent = vals
                    if len(idx):
                        self._emit({"kind": "overlay", **o.spec(),
                                    "points": [[float(t[i]), _clean(vals[i])] for i in idx]})
                    return
            o.sent = vals
            self._emit({"kind": "overlay", **o.spec(), "reset": True},
                       [t.tobytes(), np.ascontiguousarray(vals).tobytes()])

        # -- markers
        def add_marker(self, time: Any, text: str = "", position: str = "aboveBar",
                       shape: str | None = None, color: str | None = None) -> None:
            """A marker on the candle holding ``time`` (Timestamp/str, naive = IST). ``position``:
            aboveBar, belowBar or inBar; ``shape``: arrowUp, arrowDown, circle, square. Callable from
            any thread (an ``on_candle`` handler): the updater sends it."""
            if position not in ("aboveBar", "belowBar", "inBar"):
                raise ValueError(f"position {position!r} is not accepted; use aboveBar, belowBar or inBar")
            shape = shape or {"aboveBar": "arrowDown", "belowBar": "arrowUp"}.get(position, "circle")
            color = color or {"arrowDown": "#ef5350", "arrowUp": "#26a69a"}.get(shape, "#2962ff")
            with self._lock:
                self.markers.append({"t": chart_time(time), "text": str(text), "position": position,
                                     "shape": shape, "color": color})
                self._markers_dirty = True
            self._wake.set()

        def clear_markers(self) -> None:
            with self._lock:
                self.markers.clear()
                self._markers_dirty = True
            self._wake.set()

        def _marker_list(self, rows: np.ndarray | None = None) -> list[dict]:
            if not self.markers:
                return []
            if rows is None:
                rows = snapshot(self.live.series, None).rows
            times = rows[:, 0]
            out = []
            for m in sorted(self.markers, key=lambda m: m["t"]):
                i = int(np.searchsorted(times, m["t"], side="right")) - 1  # the candle holding it
                if i < 0:
                    continue
                out.append({"time": float(times[i]), "position": m["position"], "shape": m["shape"],
                            "color": m["color"], "text": m["text"]})
            return out

        def _send_markers(self) -> None:
            self._markers_dirty = False
            self._emit({"kind": "markers", "markers": self._marker_list()})

        # -- reporting
        def report_failure(self, exc: BaseException) -> None:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            with contextlib.suppress(Exception):
                self.send({"kind": "state", "state": f"update failed: {self.last_error}"})

        def counters(self) -> dict[str, Any]:
            return {"fulls": self.fulls, "deltas": self.deltas, "polls": self.polls,
                    "skipped": self.skipped, "errors": self.errors, "bytes_sent": self.bytes_sent}

        def __repr__(self) -> str:
            return f"LiveChart({html.escape(self.symbol)} {html.escape(self.tf)}, rate {self.rate:g}/s)"

    return LiveChart


_CLASS: Any = None


def live_chart_class() -> Any:
    """The ``LiveChart`` widget class (made on first use: anywidget loads only when a chart is made)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _make_class()
    return _CLASS


def LiveChart(symbol: str, tf: str, **kwargs: Any) -> Any:  # noqa: N802 - reads like the class
    """Make a live chart widget (see ``live_chart_class()`` for the parameters)."""
    chart_js()  # the one clear error when the JavaScript is missing
    return live_chart_class()(symbol, tf, **kwargs)


def close_all() -> int:
    """Close every live chart (extension unload, kernel shutdown); returns how many."""
    charts = list(_CHARTS)
    for c in charts:
        with contextlib.suppress(Exception):
            c.close()
    return len(charts)


__all__ = ["LiveChart", "ChartUnavailable", "chart_js", "close_all", "live_chart_class", "snapshot",
           "chart_time", "IST_SHIFT"]
