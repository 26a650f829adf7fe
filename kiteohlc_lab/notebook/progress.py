"""Progress bars in the cell: the backfill's (``progress_bar``, updated from the backfill job) and a
replay's (ticks/s, ETA). Each bar is displayed in the cell; other threads only change its values
(``hold_sync``)."""

from __future__ import annotations

import threading
from typing import Any

MIN_TICKS = 1_000_000  # smaller tapes replay in well under a second: no bar


def _bar(description: str) -> tuple[Any, Any, Any]:
    import ipywidgets as w
    from IPython.display import display

    bar = w.FloatProgress(value=0.0, min=0.0, max=1.0, description=description,
                          layout=w.Layout(width="60%"))
    label = w.Label("")
    box = w.HBox([bar, label])
    display(box)
    return bar, label, box


def progress_bar(description: str) -> Any:
    """Display a bar; returns ``update(fraction, text)`` for the thread doing the work."""
    bar, label, _ = _bar(description)

    def update(fraction: float, text: str) -> None:
        with bar.hold_sync():
            bar.value = min(1.0, max(0.0, fraction))
            if fraction >= 1.0:
                bar.bar_style = "success"
        label.value = text

    return update


def show_replay_progress(stream: Any, interval: float = 0.25) -> Any:
    """Display a bar for ``stream``'s replay source and keep it current; None for a small tape or
    another kind of stream."""
    from ..feeds.replay import ReplaySource

    source = getattr(stream, "source", None)
    if not isinstance(source, ReplaySource):
        return None
    first = source.progress()
    if not first.get("total") or first["total"] < MIN_TICKS or stream.done.is_set():
        return None
    bar, label, box = _bar("replay")

    def update() -> None:
        while True:
            done = stream.done.wait(interval)
            try:
                text = source.progress_line()
                frac = source.progress()["fraction"]
            except Exception:  # noqa: BLE001 - the bar must not outlive a broken source
                return
            with bar.hold_sync():
                bar.value = 1.0 if done else frac
                if done:
                    bar.bar_style = "success" if stream.state == "done" else "danger"
            label.value = text
            if done:
                return

    threading.Thread(target=update, name="kiteohlc-replay-progress", daemon=True).start()
    return box
