"""``%ohlc_status``'s result: the streams' status rows as an HTML or text table."""

from __future__ import annotations

import html
from typing import Any

from ..config import mask_url
from .args import one_line as _one_line


class StatusTable:
    """``%ohlc_status`` result: rows from ``Manager.status()``, shown as an HTML or text table."""

    COLUMNS = ("stream", "source", "state", "ticks/s", "last tick", "reconnects", "late", "glitches",
               "bad ticks", "store", "error")

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    @staticmethod
    def _store(value: Any) -> str:
        if isinstance(value, dict):
            parts = []
            for k, v in value.items():
                if isinstance(v, dict):
                    v = v.get("state") or v.get("status") or ("ok" if v.get("ok") else v)
                parts.append(f"{k}: {mask_url(str(v))}")
            return ", ".join(parts)
        return mask_url(str(value)) if value not in (None, "") else ""

    @staticmethod
    def _bad(value: Any) -> str:
        """``{"bad_price": 2, "bad_stamp": 1}`` -> ``"price 2, stamp 1"`` (0 when there are none)."""
        if not isinstance(value, dict) or not any(value.values()):
            return "0"
        return ", ".join(f"{k.removeprefix('bad_')} {n}" for k, n in value.items() if n)

    @staticmethod
    def _age(value: Any) -> str:
        if value is None:
            return "-"
        try:
            return f"{float(value):.1f} s"
        except (TypeError, ValueError):
            return str(value)

    def cells(self) -> list[list[str]]:
        out = []
        for r in self.rows:
            syms = ",".join(str(s) for s in r.get("symbols") or [])
            tfs = " ".join(str(t) for t in r.get("timeframes") or [])
            rate = r.get("ticks_per_s")
            out.append([
                f"{r.get('stream', '?')}" + (f" [{syms} {tfs}]" if syms or tfs else ""),
                str(r.get("source", "")),
                str(r.get("state", "")),
                "-" if rate is None else f"{float(rate):.1f}",
                self._age(r.get("last_tick_age")),
                str(r.get("reconnects", 0)),
                str(r.get("late", 0)),
                str(r.get("volume_glitches", 0)),
                self._bad(r.get("bad_ticks")),
                self._store(r.get("store")),
                _one_line(Exception(r["error"])) if r.get("error") else "",
            ])
        return out

    def _repr_html_(self) -> str:
        if not self.rows:
            return "<i>no streams</i>"
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.COLUMNS)
        body = "".join(
            "<tr>" + "".join(f"<td style='text-align:left'>{html.escape(v)}</td>" for v in row) + "</tr>"
            for row in self.cells())
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __repr__(self) -> str:
        if not self.rows:
            return "no streams"
        rows = [list(self.COLUMNS), *self.cells()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.COLUMNS))]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)
