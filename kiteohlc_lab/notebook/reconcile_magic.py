"""``%ohlc_reconcile SYMBOL TF``: tick-built candles against Kite's historical candles.

Parses the arguments, calls ``kiteohlc_lab.reconcile.reconcile`` on the notebook's Manager and shows
a ``ReconcileReport``: one summary line ("N of M candles match"), the mismatching rows and the small
chart of ``reconcile_plot``. Bad arguments and failures (no Kite connection, a refused request) are
one-line ``UsageError``s.
"""

from __future__ import annotations

import argparse
import base64
import html
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from .args import friendly
from .args import one_line as _one_line
from .args import when as _when

if TYPE_CHECKING:  # pandas loads when a report is shown: %load_ext registers this magic
    import pandas as pd

# columns of the mismatches table, in reading order
_SHOWN = ("mismatched", "open_live", "open_kite", "high_live", "high_kite", "low_live", "low_kite",
          "close_live", "close_kite", "volume_live", "volume_kite")


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not accepted; use a relative volume tolerance from 0 to <1, e.g. 0.02")
    return value


class ReconcileReport:
    """What ``%ohlc_reconcile`` returns: the full comparison and how it is shown.

    Attributes
    ----------
    df : DataFrame
        Every compared candle (``reconcile()``'s frame: ``open_live, open_kite, ..., match,
        mismatched``).
    mismatches : DataFrame
        The rows that do not match, with the columns that matter to read them.
    summary : str
        One line: ``"N of M candles match"`` plus what only one side had.
    """

    def __init__(self, df: pd.DataFrame, title: str | None = None) -> None:
        self.df = df
        self.title = title
        bad = df[~df["match"].astype(bool)] if len(df) else df
        self.mismatches = bad[[c for c in _SHOWN if c in bad.columns]]
        self._png: bytes | None = None

    @property
    def summary(self) -> str:
        n, ok = len(self.df), int(self.df["match"].sum()) if len(self.df) else 0
        a = self.df.attrs
        head = f"{a.get('symbol', '')} {a.get('tf', '')}: ".lstrip() if a.get("symbol") else ""
        if not n:
            return f"{head}no complete candles on both sides yet (0 of 0 candles match)"
        extra = [f"{a[k]} {label}" for k, label in (("live_only", "only in ticks"),
                                                   ("kite_only", "only at Kite")) if a.get(k)]
        return f"{head}{ok} of {n} candles match" + (f" ({', '.join(extra)})" if extra else "")

    def figure(self) -> Any:
        from ..reconcile import reconcile_plot

        return reconcile_plot(self.df, title=self.title)

    def png(self) -> bytes:
        """The chart as PNG (rendered once)."""
        if self._png is None:
            from .plots import png_bytes

            self._png = png_bytes(self.figure())
        return self._png

    def _table_html(self) -> str:
        if not len(self.mismatches):
            return ""
        return self.mismatches.to_html(float_format=lambda x: f"{x:,.2f}")

    def _repr_html_(self) -> str:
        img = base64.b64encode(self.png()).decode("ascii")
        return (f"<div><b>{html.escape(self.summary)}</b>{self._table_html()}"
                f"<img alt='ticks vs Kite' style='max-width:700px' src='data:image/png;base64,{img}'/>"
                "</div>")

    def __repr__(self) -> str:
        if not len(self.mismatches):
            return self.summary
        import pandas as pd

        with pd.option_context("display.width", 160, "display.max_columns", 20):
            return f"{self.summary}\n{self.mismatches.to_string(float_format=lambda x: f'{x:,.2f}')}"


@magics_class
class ReconcileMagics(Magics):
    """``%ohlc_reconcile``; shares the configured Manager of ``KiteOHLCMagics``."""

    def __init__(self, shell: Any, main: Any) -> None:
        super().__init__(shell)
        self.main = main  # the KiteOHLCMagics: its ``manager`` applies %config once

    @magic_arguments()
    @argument("symbol", help="Symbol, e.g. NIFTY (a stream must carry it).")
    @argument("tf", metavar="TF", help="Timeframe of 1 minute or more, e.g. 1m or 5m.")
    @argument("--from", dest="start", type=_when, default=None,
              help="First candle start (IST if no zone), e.g. '2024-05-02 09:15'.")
    @argument("--to", dest="end", type=_when, default=None, help="Last candle start (IST if no zone).")
    @argument("--tolerance", type=_tolerance, default=0.02,
              help="Relative volume difference still called a match (default 0.02: ticks overcount).")
    @line_magic
    @friendly
    def ohlc_reconcile(self, line: str) -> ReconcileReport:
        """Compare SYMBOL's tick-built TF candles with Kite's historical candles.

        Shows "N of M candles match", the mismatching rows (both sides of each field) and a chart of
        both closes and volumes; ``.df`` of the result holds every compared candle.
        """
        args = parse_argstring(self.ohlc_reconcile, line)
        from ..reconcile import reconcile

        try:
            df = reconcile(args.symbol, args.tf, args.start, args.end,
                           volume_tolerance=args.tolerance, manager=self.main.manager)
        except UsageError:
            raise
        except ValueError as exc:  # sub-minute timeframe, bad bounds
            raise UsageError(_one_line(exc)) from None
        return ReconcileReport(df)


MAGICS = ("ohlc_reconcile",)
