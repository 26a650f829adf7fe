"""Static candlestick charts (mplfinance) for the notebook layer.

Figures are built on a plain ``matplotlib.figure.Figure`` (never through pyplot): the inline backend
then never auto-displays them, no global figure registry grows, and the live view can render from its
refresh thread. mplfinance draws into the figure's axes ("external axes" mode), which also keeps its
style out of the global ``rcParams`` of the user's own plots.
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
from typing import Any

import numpy as np
import pandas as pd

IST = "Asia/Kolkata"
STYLE = "charles"
# mplfinance itself is not thread-safe (it enters an rcParams context): one render at a time.
_RENDER_LOCK = threading.Lock()


def _wall_clock(df: pd.DataFrame) -> pd.DataFrame:
    """Index as naive IST wall-clock time (mplfinance wants a plain DatetimeIndex)."""
    idx = pd.DatetimeIndex(df.index)
    if idx.tz is not None:
        idx = idx.tz_convert(IST).tz_localize(None)
    out = df[["open", "high", "low", "close", "volume"]].copy()
    out.index = idx
    out.index.name = "date"
    return out


def _time_format(index: pd.DatetimeIndex) -> str:
    """Tick label format: seconds for sub-minute candles, no date within one day."""
    if len(index) > 1 and (index[1:] - index[:-1]).min() < pd.Timedelta(minutes=1):
        return "%H:%M:%S"
    if len(index) and index[0].normalize() == index[-1].normalize():
        return "%H:%M"
    return "%d %b %H:%M"


def _has_volume(df: pd.DataFrame) -> bool:
    v = df["volume"].to_numpy(dtype=float, na_value=np.nan)
    return bool(len(v)) and bool(np.nansum(np.abs(v)) > 0)


def plot_candles(
    df: pd.DataFrame,
    last: int | None = None,
    title: str | None = None,
    volume: bool = True,
    figsize: tuple[float, float] = (10.0, 5.0),
    dpi: float = 80.0,
) -> Any:
    """Candlestick (+ volume) chart of a candle frame, as a matplotlib ``Figure``.

    Parameters
    ----------
    df : DataFrame
        The public candle shape: index ``date`` (tz-aware IST), columns open high low close volume
        (an ``oi`` column is ignored).
    last : int, optional
        Only the last ``last`` rows.
    title : str, optional
        Title above the chart.
    volume : bool
        Draw a volume panel (skipped when the instrument has no volume, e.g. an index).

    Returns
    -------
    matplotlib.figure.Figure
        Not attached to pyplot: display it, or ``png_bytes(fig)``.

    Examples
    --------
    >>> fig = plot_candles(kiteohlc_lab.candles("NIFTY", "5m"), last=100, title="NIFTY 5m")
    """
    import mplfinance as mpf
    from matplotlib.figure import Figure

    if last is not None and last > 0:
        df = df.tail(last)
    fig = Figure(figsize=figsize, dpi=dpi)
    if df is None or len(df) == 0:
        ax = fig.add_subplot(1, 1, 1)
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no candles yet", ha="center", va="center", fontsize=14, color="0.4",
                transform=ax.transAxes)
        if title:
            ax.set_title(title)
        return fig
    data = _wall_clock(df)
    data = data[data[["open", "high", "low", "close"]].notna().all(axis=1)]
    with_volume = volume and _has_volume(data)
    if with_volume:
        data["volume"] = data["volume"].fillna(0.0)
        gs = fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.05)
        ax = fig.add_subplot(gs[0])
        vax = fig.add_subplot(gs[1], sharex=ax)
    else:
        ax = fig.add_subplot(1, 1, 1)
        vax = None
    kwargs: dict[str, Any] = dict(type="candle", style=STYLE, ax=ax, warn_too_much_data=len(data) + 1,
                                  datetime_format=_time_format(data.index), xrotation=0)
    if vax is not None:
        kwargs["volume"] = vax
    with _RENDER_LOCK:
        mpf.plot(data, **kwargs)
    if vax is not None:
        ax.tick_params(labelbottom=False)
    with contextlib.suppress(AttributeError):  # plain prices, never "+2.6e4" offsets
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    if title:
        ax.set_title(title, fontsize=11, loc="left")
    fig.subplots_adjust(left=0.07, right=0.91, top=0.92, bottom=0.1)
    return fig


def png_bytes(fig: Any, dpi: float | None = None) -> bytes:
    """PNG of a figure (Agg), as bytes; releases the figure's drawing state afterwards."""
    buf = io.BytesIO()
    with _RENDER_LOCK:
        # fast zlib level: a third of the encode time for a few % more bytes
        fig.savefig(buf, format="png", dpi=dpi or fig.dpi, pil_kwargs={"compress_level": 1})
    plt = sys.modules.get("matplotlib.pyplot")  # a pyplot-made figure is closed, never imported here
    if plt is not None and getattr(fig, "number", None) is not None and plt.fignum_exists(fig.number):
        plt.close(fig)
    return buf.getvalue()
