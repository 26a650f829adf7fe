"""``LiveView``: a live candlestick widget that refreshes itself from a background timer.

Built in the cell (``live.view()``, ``%ohlc_plot NIFTY 5m --live``), then updated from its own thread:
widget values change from the thread, ``display()`` is never called there (ipywidgets #1794, #4001).
Refreshes are throttled to ``refresh`` seconds and coalesced: nothing is rendered unless the series'
``version`` moved. The thread holds the view only weakly and stops when the view is closed (by
``view.close()`` or the front end closing its comm) or dropped.
"""

from __future__ import annotations

import contextlib
import html
import threading
import time
import weakref
from typing import Any

import ipywidgets as widgets

from .handle import SeriesHandle, marked_tail
from .plots import plot_candles, png_bytes

DEFAULT_REFRESH = 0.5
# a render may use at most 1/BUDGET of a core: slow renders (big charts, busy machine) back off
BUDGET = 4.0
_VIEWS: "weakref.WeakSet[LiveView]" = weakref.WeakSet()


def _refresh_loop(ref: "weakref.ref[LiveView]", stop: threading.Event, interval: float) -> None:
    wait = interval
    while not stop.wait(wait):
        view = ref()
        if view is None:
            return
        rendered = False
        try:
            rendered = view.refresh()
        except Exception as exc:  # never die silently: the status line says what broke
            view.report_failure(exc)
        wait = view.next_wait(rendered)
        del view  # only a weak hold while sleeping: a dropped view ends the thread


class LiveView(widgets.VBox):
    """Status line, candlestick + volume chart (PNG) and the latest rows, kept current.

    Parameters
    ----------
    symbol, tf : str
        What to show (a stream must carry it, or the store must hold its history).
    last : int
        Candles on the chart.
    refresh : float, optional
        Seconds between refresh checks (default ``KiteOHLC.refresh_interval``, 0.5).
    rows : int
        Rows in the table.
    autostart : bool
        Start the refresh thread (tests drive ``refresh()`` by hand with ``False``).

    Attributes
    ----------
    renders, skipped, errors : int
        Refreshes that re-rendered, that found nothing new, that failed.
    render_seconds : float
        Total time spent rendering. A render that took ``r`` seconds delays the next check to at
        least ``4 r``, so rendering never takes more than about a quarter of a core.
    """

    def __init__(self, symbol: str, tf: str, last: int = 100, refresh: float | None = None,
                 manager: Any = None, rows: int = 10, autostart: bool = True, **kwargs: Any) -> None:
        self.live = SeriesHandle(symbol, tf, manager=manager, rows=rows)
        self.last = int(last)
        self.rows = int(rows)
        self.interval = float(refresh) if refresh else DEFAULT_REFRESH
        self.renders = 0
        self.skipped = 0
        self.errors = 0
        self.render_seconds = 0.0
        self.last_render_seconds = 0.0
        self._key: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.status = widgets.HTML(value=f"<b>{html.escape(symbol)} {html.escape(tf)}</b> starting")
        self.chart = widgets.Image(format="png", layout=widgets.Layout(width="100%", max_width="900px"))
        self.table = widgets.HTML()
        super().__init__(children=[self.status, self.chart, self.table], **kwargs)
        self.observe(self._comm_changed_view, names="comm")
        self._watch_comm(self.comm)
        self.refresh(force=True)
        _VIEWS.add(self)
        if autostart:
            self.start()

    # -- lifecycle
    def start(self) -> None:
        """Start the refresh thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=_refresh_loop, args=(weakref.ref(self), self._stop, self.interval),
            name=f"kiteohlc-view-{self.live.symbol}-{self.live.tf}", daemon=True,
        )
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop refreshing (the widget stays as last drawn)."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        self.stop()
        for child in (self.status, self.chart, self.table, self):
            # a widget's Layout and Style are widgets too: close them or they stay in the registry
            for part in ("layout", "style"):
                sub = getattr(child, part, None)
                if isinstance(sub, widgets.Widget):
                    sub.close()
            if child is not self:
                child.close()
        super().close()

    def _watch_comm(self, comm: Any) -> None:
        on_close = getattr(comm, "on_close", None)
        if on_close is None:
            return
        stop = self._stop
        on_close(lambda msg=None: stop.set())  # the front end closed the view

    def _comm_changed_view(self, change: dict) -> None:
        if change["new"] is None:
            self._stop.set()
        else:
            self._watch_comm(change["new"])

    # -- rendering
    def refresh(self, force: bool = False) -> bool:
        """Re-render if the series changed (or ``force``); True when it rendered."""
        with self._lock:
            series = self.live.series
            key = (id(series), int(series.version))
            if not force and key == self._key:
                self.skipped += 1
                return False
            t0 = time.perf_counter()
            df = series.frame()
            title = f"{self.live.symbol} {self.live.tf}"
            png = png_bytes(plot_candles(df, last=self.last, title=title))
            table = ("" if not len(df) else
                     marked_tail(df, self.rows).to_html(float_format=lambda x: f"{x:,.2f}"))
            head = self.live.header(df).removeprefix(f"{title}: ")
            status = f"<b>{html.escape(title)}</b> · {html.escape(head)}"
            with contextlib.ExitStack() as batch:
                for w in (self.status, self.chart, self.table):
                    batch.enter_context(w.hold_sync())
                self.chart.value = png
                self.table.value = table
                self.status.value = status
            self._key = key
            self.renders += 1
            self.last_render_seconds = time.perf_counter() - t0
            self.render_seconds += self.last_render_seconds
            return True

    def next_wait(self, rendered: bool = True) -> float:
        """Seconds until the next check: the refresh interval, longer right after a slow render."""
        return max(self.interval, BUDGET * self.last_render_seconds) if rendered else self.interval

    def report_failure(self, exc: BaseException) -> None:
        self.errors += 1
        msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
        with contextlib.suppress(Exception):
            self.status.value = f"<b>refresh failed</b>: {html.escape(msg)}"

    def counters(self) -> dict[str, float]:
        return {"renders": self.renders, "skipped": self.skipped, "errors": self.errors,
                "render_seconds": self.render_seconds}


def close_all() -> int:
    """Close every live view (extension unload, kernel shutdown); returns how many."""
    views = list(_VIEWS)
    for v in views:
        with contextlib.suppress(Exception):
            v.close()
    return len(views)
