"""Synthetic tapes: realistic-looking ticks for demos, tests and benchmarks (seeded, reproducible)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..core.ticks import TickBatch
from ..core.timeframes import IST, NS

# token, tradingsymbol, start price, is index
DEFAULT_INSTRUMENTS = [
    (256265, "NIFTY 50", 24500.0, True),
    (260105, "NIFTY BANK", 52000.0, True),
    (738561, "RELIANCE", 1300.0, False),
    (408065, "INFY", 1800.0, False),
    (341249, "HDFCBANK", 1700.0, False),
]


def make_ticks(
    n_ticks: int = 10_000,
    n_instruments: int | None = None,
    start: str = "2026-11-25 09:15:00",
    days: int = 1,
    seed: int = 0,
    instruments: list[tuple[int, str, float, bool]] | None = None,
) -> tuple[TickBatch, dict[int, str]]:
    """Ticks spread over ``days`` sessions (09:15-15:30 IST), random-walk prices, cumulative volume.

    Timestamps are whole seconds like Kite's; each instrument's cumulative volume restarts each day.
    """
    rng = np.random.default_rng(seed)
    insts = list(instruments or DEFAULT_INSTRUMENTS)
    if n_instruments is not None and n_instruments > len(insts):
        for k in range(len(insts), n_instruments):
            insts.append((100_001 + 256 * k, f"SYN{k:04d}", float(rng.uniform(50, 5000)), False))
    insts = insts[: n_instruments or len(insts)]
    m = len(insts)
    day0 = pd.Timestamp(start, tz=IST)
    session = 6 * 3600 + 15 * 60
    per_day = n_ticks // days
    parts_ts, parts_tok = [], []
    for d in range(days):
        k = per_day if d < days - 1 else n_ticks - per_day * (days - 1)
        secs = np.sort(rng.integers(0, session, k))
        base = (day0 + pd.Timedelta(days=d)).value
        parts_ts.append(base + secs * NS)
        parts_tok.append(rng.integers(0, m, k))
    ts = np.concatenate(parts_ts)
    which = np.concatenate(parts_tok)
    tokens = np.array([i[0] for i in insts], np.int64)
    p0 = np.array([i[2] for i in insts])
    is_index = np.array([i[3] for i in insts])
    # per-instrument random walk in arrival order, on a 0.05 tick grid
    steps = rng.normal(0, 1, len(ts)) * (p0[which] * 0.0004)
    price = np.empty(len(ts))
    vol = np.empty(len(ts))
    day_of = (ts + 19_800 * NS) // (86_400 * NS)
    for j in range(m):
        sel = np.flatnonzero(which == j)
        walk = p0[j] + np.cumsum(steps[sel])
        price[sel] = np.maximum(np.round(np.round(walk / 0.05) * 0.05, 2), 0.05)
        inc = rng.integers(1, 500, len(sel)).astype(float)
        cum = np.zeros(len(sel))
        dsel = day_of[sel]
        for d in np.unique(dsel):
            mask = dsel == d
            cum[mask] = np.cumsum(inc[mask])
        vol[sel] = np.nan if is_index[j] else cum
    return TickBatch(tokens[which], ts, price, vol, None), {int(i[0]): i[1] for i in insts}


def write_tape(path: str | Path, batch: TickBatch, symbols: dict[int, str] | None = None) -> Path:
    """Write ticks as a CSV (naive IST timestamps) or Parquet tape, by the file's suffix."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    stamps = pd.to_datetime(batch.ts, unit="ns", utc=True).tz_convert(IST)
    df = pd.DataFrame({
        "timestamp": stamps.tz_localize(None).strftime("%Y-%m-%dT%H:%M:%S") if p.suffix == ".csv" else stamps,
        "instrument_token": batch.token,
        "tradingsymbol": [(symbols or {}).get(int(t), "") for t in batch.token],
        "last_price": batch.price,
        "volume_traded": batch.volume,
    })
    if not np.all(np.isnan(batch.oi)):
        df["oi"] = batch.oi
    if p.suffix in (".parquet", ".pq"):
        df.to_parquet(p, index=False)
    else:
        df.to_csv(p, index=False, float_format="%.10g")
    return p
