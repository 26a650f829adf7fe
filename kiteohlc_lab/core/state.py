"""The engine's state: its columns, their field names (defined here once), export and import.

``Engine`` (``core.engine``) keeps, per instrument slot, a volume baseline (``VOLUME_FIELDS`` plus the
``resume`` flag and the ``glitches`` count, see ``alloc_volume``) and, per timeframe, a ``Series``: the
forming and the last closed candle (``CANDLE_FIELDS``). The live stores save what ``export_state`` /
``export_columns`` give (per instrument: ``{"vol": {VOLUME_FIELDS}, "forming": {tf: {CANDLE_FIELDS}},
"clock": ns}``) and a new engine continues from it with ``import_state``. Everything here works on the
arrays the engine hands in: no engine object is touched.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np

from .timeframes import Timeframe

NONE = np.iinfo(np.int64).min  # "no value" in the int64 columns (no bucket, no timestamp, no day)
# a candle's columns, forming or last closed, in this order (the live store's blobs too)
CANDLE_FIELDS = ("bucket", "open", "high", "low", "close", "vol", "oi", "ticks", "last_ts")
# an instrument's exported volume baseline
VOLUME_FIELDS = ("prev", "prev_ts", "segmax", "day")
# an instrument's exported state: {"vol": {VOLUME_FIELDS}, "forming": {tf: {CANDLE_FIELDS}}, "clock": ns}
STATE_FIELDS = ("vol", "forming", "clock")


def alloc_candles(n: int) -> dict[str, np.ndarray]:
    """``CANDLE_FIELDS`` columns for ``n`` slots, all empty."""
    return {
        "bucket": np.full(n, NONE, np.int64),
        "open": np.full(n, np.nan),
        "high": np.full(n, np.nan),
        "low": np.full(n, np.nan),
        "close": np.full(n, np.nan),
        "vol": np.zeros(n),
        "oi": np.full(n, np.nan),
        "ticks": np.zeros(n, np.int64),
        "last_ts": np.full(n, NONE, np.int64),
    }


def alloc_volume(n: int) -> dict[str, np.ndarray]:
    """The per-instrument volume state for ``n`` slots (``VOLUME_FIELDS`` and two more)."""
    return {
        "prev": np.full(n, np.nan),  # previous cumulative volume (NaN: none yet)
        "prev_ts": np.full(n, NONE, np.int64),
        "segmax": np.zeros(n),  # highest cumulative since the last reset
        "day": np.full(n, NONE, np.int64),
        "resume": np.zeros(n, bool),  # the next tick follows a gap of unknown length (adds 0)
        "glitches": np.zeros(n, np.int64),  # volume figures below the day's running maximum
    }


def grow_columns(cols: dict[str, np.ndarray], fresh: dict[str, np.ndarray]) -> None:
    """Replace ``cols``' arrays (in place) by ``fresh``, larger ones, keeping the values held."""
    for k, arr in cols.items():
        fresh[k][: len(arr)] = arr
    cols.update(fresh)


class Series:
    """Forming and last-closed candle state of every instrument for one timeframe (columnar)."""

    FIELDS = CANDLE_FIELDS

    def __init__(self, tf: Timeframe, capacity: int) -> None:
        self.tf = tf
        self.f = alloc_candles(capacity)  # forming
        self.c = alloc_candles(capacity)  # last closed (for amend and fill_empty)

    def grow(self, n: int) -> None:
        for store in (self.f, self.c):
            grow_columns(store, alloc_candles(n))

    def remember_closed(self, slots, bucket, o, h, l, c, v, oi, ticks, last_ts) -> None:  # noqa: E741
        """Remember candles as the last closed ones of ``slots``."""
        C = self.c
        # a slot may appear several times (several candles closed in one batch): last one wins,
        # which numpy fancy assignment guarantees for repeated indices in order
        for k, arr in zip(CANDLE_FIELDS, (bucket, o, h, l, c, v, oi, ticks, last_ts)):
            C[k][slots] = arr


def _none_nan(vals: list) -> list:
    return [None if math.isnan(x) else x for x in vals]


def export_columns(slots: np.ndarray, slot_tokens: np.ndarray, v: dict[str, np.ndarray],
                   series: Mapping[str, Series], clock: int) -> "StateColumns":
    """The state of ``slots`` as columns (see ``Engine.export_columns``)."""
    forming = {}
    for label, s in series.items():
        have = s.f["bucket"][slots] != NONE
        idx = np.flatnonzero(have)
        sl = slots[idx]
        forming[label] = {"index": idx, **{k: s.f[k][sl] for k in CANDLE_FIELDS}}
    return StateColumns(
        tokens=slot_tokens[slots], prev=v["prev"][slots], prev_ts=v["prev_ts"][slots],
        segmax=v["segmax"][slots], day=v["day"][slots], clock=int(clock), forming=forming,
    )


def export_state(slots: np.ndarray, slot_tokens: np.ndarray, v: dict[str, np.ndarray],
                 series: Mapping[str, Series], clock: int) -> dict[int, dict]:
    """JSON-able state of ``slots`` per instrument token (see ``Engine.export_state``).

    Columns are read once per call (``tolist``), not per element: thousands of instruments
    per write stay cheap.
    """
    if not len(slots):
        return {}
    prev = _none_nan(v["prev"][slots].tolist())
    vol = zip(prev, v["prev_ts"][slots].tolist(), v["segmax"][slots].tolist(), v["day"][slots].tolist())
    clock = int(clock)
    out: dict[int, dict] = {
        tok: {"vol": dict(zip(VOLUME_FIELDS, row)), "forming": {}, "clock": clock}
        for tok, row in zip(slot_tokens[slots].tolist(), vol)
    }
    for label, s in series.items():
        F = s.f
        have = F["bucket"][slots] != NONE
        if not have.any():
            continue
        sl = slots[have]
        cols: list[list] = []
        for k in CANDLE_FIELDS:
            vals = F[k][sl].tolist()
            if F[k].dtype.kind == "f":
                vals = _none_nan(vals)
            cols.append(vals)
        for tok, frow in zip(slot_tokens[sl].tolist(), zip(*cols)):
            out[int(tok)]["forming"][label] = dict(zip(CANDLE_FIELDS, frow))
    return out


def import_state(states: "Mapping[int, dict] | Mapping[str, dict]",
                 slots_of: Callable[[np.ndarray], np.ndarray],
                 volume: Callable[[], dict[str, np.ndarray]],
                 series: Mapping[str, Series]) -> tuple[np.ndarray, int]:
    """Write exported ``states`` into the engine's columns; the slots written, and the highest
    clock among the states (``NONE`` if none has one).

    ``slots_of`` registers tokens (it may grow the columns, so ``volume`` is asked for the volume
    columns only afterwards).
    """
    toks = np.array([int(t) for t in states], np.int64)
    slots = slots_of(toks)
    V = volume()
    top = NONE
    for tok, sl in zip(toks, slots):
        st: Any = states.get(int(tok)) or states.get(str(tok)) or {}  # type: ignore[call-overload]
        v = st.get("vol") or {}
        if v.get("prev") is not None:
            V["prev"][sl] = v["prev"]
            V["prev_ts"][sl] = v.get("prev_ts", NONE)
            V["segmax"][sl] = v.get("segmax", v["prev"])
            V["day"][sl] = v.get("day", NONE)
        for label, f in (st.get("forming") or {}).items():
            s = series.get(label)
            if s is None:
                continue
            for k in CANDLE_FIELDS:
                val = f.get(k)
                s.f[k][sl] = np.nan if val is None else val
        clock = st.get("clock")
        if clock is not None and clock > top:
            top = int(clock)
    return slots, top


class StateColumns(Mapping):
    """Per-instrument engine state as columns; also a read-only mapping token -> state dict.

    The mapping view builds the same dicts as ``Engine.export_state`` lazily, so any store can
    treat it as ``dict[int, dict]``; a store that understands columns ships them as they are.
    """

    def __init__(self, tokens, prev, prev_ts, segmax, day, clock, forming) -> None:
        self.tokens, self.prev, self.prev_ts, self.segmax, self.day = tokens, prev, prev_ts, segmax, day
        self.clock = clock
        self.forming = forming  # tf -> {"index": rows of tokens, CANDLE_FIELDS arrays}

    # the mapping view's lookups, made on first use: a store that ships the columns never needs them
    @functools.cached_property
    def _row(self) -> dict[int, int]:
        return {int(t): i for i, t in enumerate(self.tokens.tolist())}

    @functools.cached_property
    def _frow(self) -> dict[str, dict[int, int]]:
        return {tf: {i: j for j, i in enumerate(f["index"].tolist())} for tf, f in self.forming.items()}

    def __len__(self) -> int:
        return len(self.tokens)

    def __iter__(self):
        return iter(self._row)

    def __getitem__(self, token: int) -> dict:
        i = self._row[int(token)]
        prev = float(self.prev[i])
        st: dict = {"vol": {"prev": None if math.isnan(prev) else prev, "prev_ts": int(self.prev_ts[i]),
                            "segmax": float(self.segmax[i]), "day": int(self.day[i])},
                    "forming": {}, "clock": self.clock}
        for label, f in self.forming.items():
            j = self._frow[label].get(i)
            if j is not None:
                row = {k: f[k][j].item() for k in CANDLE_FIELDS}
                st["forming"][label] = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                                        for k, v in row.items()}
        return st
