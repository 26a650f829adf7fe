"""Reading the tick store (``stores/ticks.py`` writes it): ranges of ticks, days, usage, replay.

Only the ``date=`` directories a range touches are listed (every ``host=``), and only published
files are read; within that, pyarrow prunes by token and time from the files' statistics. Rows come
back in the store's order: files by (opened ns, seq), each file in the order it was written, which
is the order the live stream processed the ticks in.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from ..core.ticks import TickBatch
from ..core.timeframes import DAY_NS, IST_OFFSET_NS
from .tickfiles import REJECTED_DIR, SYMBOLS_DIR, ZONE, list_dirs, parse_part, resolve, schema


def _day(ns: int) -> str:
    return str(np.datetime64((int(ns) + IST_OFFSET_NS) // DAY_NS, "D"))


def files(filesystem: Any, root: str, start_ns: int | None = None, end_ns: int | None = None,
          rejected: bool = False) -> list[str]:
    """Published part files whose date lies in ``[start_ns, end_ns)``, in the store's order."""
    from pyarrow import fs

    base = f"{root}/{REJECTED_DIR}" if rejected else root
    lo = _day(start_ns) if start_ns is not None else ""
    hi = _day(end_ns - 1) if end_ns is not None else "9999"
    found = []
    for hdir in list_dirs(filesystem, base, "host="):
        for ddir in list_dirs(filesystem, hdir, "date="):
            if not lo <= ddir.rsplit("date=", 1)[1] <= hi:
                continue
            for info in filesystem.get_file_info(fs.FileSelector(ddir)):
                key = parse_part(info.base_name)
                if info.type == fs.FileType.File and key is not None and not info.base_name.startswith("."):
                    found.append((key, info.path))
    return [p for _, p in sorted(found)]


def read(url: str, tokens: Iterable[int] | None = None, start_ns: int | None = None,
         end_ns: int | None = None, columns: list[str] | None = None, rejected: bool = False) -> Any:
    """A ``pyarrow.Table`` of the store's ticks of ``tokens`` with exchange time in
    ``[start_ns, end_ns)`` (all when None), in the store's order."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    filesystem, root = resolve(url)
    sch = schema(rejected)
    _check_columns(columns, sch)
    paths = files(filesystem, root, start_ns, end_ns, rejected)
    if not paths:
        table = sch.empty_table()
        return table if columns is None else table.select(columns)
    cond = None
    ts = pa.timestamp("ns", tz=ZONE)
    if tokens is not None:
        cond = ds.field("token").isin(pa.array(sorted({int(t) for t in tokens}), pa.int64()))
    for op, bound in (("ge", start_ns), ("lt", end_ns)):
        if bound is not None:
            scalar = pa.scalar(int(bound), pa.int64()).cast(ts)
            c = ds.field("exchange_time") >= scalar if op == "ge" else ds.field("exchange_time") < scalar
            cond = c if cond is None else cond & c
    dataset = ds.dataset(paths, schema=sch, format="parquet", filesystem=filesystem)
    return dataset.to_table(columns=columns, filter=cond)  # fragments in the order given


def _check_columns(columns: list[str] | None, sch: Any) -> None:
    unknown = [c for c in columns or () if c not in sch.names]
    if unknown:
        raise ValueError(f"column(s) {', '.join(unknown)} not in the tick store; it has "
                         f"{', '.join(sch.names)}")


def scan(url: str, tokens: Iterable[int] | None = None, start_ns: int | None = None,
         end_ns: int | None = None, columns: list[str] | None = None) -> Any:
    """``read``'s rows (same order, same types) as a ``polars.DataFrame`` read by polars, or None
    when polars is not installed or the store is not on the local filesystem.

    polars' Parquet reader filters rows while it decodes (the token and time columns first, then
    only the matching rows of the others); pyarrow's dataset decodes every row of a row group
    before it filters, which for a few instruments of a day costs several times as much.
    """
    try:
        import polars as pl
    except ImportError:
        return None
    from pyarrow import fs

    filesystem, root = resolve(url)
    if not isinstance(filesystem, fs.LocalFileSystem):
        return None
    sch = schema()
    _check_columns(columns, sch)
    paths = files(filesystem, root, start_ns, end_ns)
    if not paths:
        table = sch.empty_table()
        return pl.from_arrow(table if columns is None else table.select(columns))
    cond = []
    if tokens is not None:
        cond.append(pl.col("token").is_in(sorted({int(t) for t in tokens})))

    def at(ns: int) -> Any:
        return pl.lit(int(ns), pl.Int64).cast(pl.Datetime("ns", "UTC")).dt.convert_time_zone(ZONE)

    if start_ns is not None:
        cond.append(pl.col("exchange_time") >= at(start_ns))
    if end_ns is not None:
        cond.append(pl.col("exchange_time") < at(end_ns))
    pl_schema = pl.from_arrow(sch.empty_table()).schema
    try:  # files written before a column was added read it as null
        lazy = pl.scan_parquet(paths, schema=pl_schema, missing_columns="insert",
                               hive_partitioning=False)
    except TypeError:  # polars < 1.2x: no missing_columns
        return None
    if cond:
        lazy = lazy.filter(pl.all_horizontal(cond) if len(cond) > 1 else cond[0])
    if columns is not None:
        lazy = lazy.select(columns)
    return lazy.collect()


def batch_of(table: Any) -> TickBatch:
    """A ``TickBatch`` of a table with the store's columns (nulls -> NaN)."""
    import pyarrow as pa

    def num(name: str) -> np.ndarray:
        return table.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False)

    ts = table.column("exchange_time").cast(pa.int64()).to_numpy(zero_copy_only=False)
    tok = table.column("token").to_numpy(zero_copy_only=False)
    return TickBatch(tok, ts, num("last_price"), num("volume"), num("oi"))


def tape(url: str, tokens: list[int], start_ns: int | None, end_ns: int | None) -> Any:
    """The store's ticks of ``tokens`` in ``[start_ns, end_ns)`` as a replay ``Tape``
    (``feeds.replay.ReplaySource`` takes it like one read from a file)."""
    from ..feeds.replay import Tape

    cols = ["token", "exchange_time", "last_price", "volume", "oi"]
    table = read(url, tokens, start_ns, end_ns, columns=cols)
    return Tape(f"tick store {url}", batch_of(table), {}, None)


def symbols(url: str) -> dict[str, int]:
    """``{SYMBOL: token}`` the writers of the store named (every host's ``_symbols`` file)."""
    import json

    from pyarrow import fs

    filesystem, root = resolve(url)
    out: dict[str, int] = {}
    infos = filesystem.get_file_info(fs.FileSelector(f"{root}/{SYMBOLS_DIR}", allow_not_found=True))
    for info in sorted(infos, key=lambda i: i.path):
        if info.type == fs.FileType.File and info.base_name.endswith(".json") and not info.base_name.startswith("."):
            with filesystem.open_input_stream(info.path) as fh:
                try:
                    out.update({k: int(v) for k, v in json.loads(fh.read()).items()})
                except ValueError:
                    continue
    return out


def days(url: str) -> list[dict]:
    """One dict per stored IST date: ``date``, ``files``, ``bytes``, ``ticks``, ``instruments``,
    ``rejected`` (ticks), ``hosts``."""
    from pyarrow import fs
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    filesystem, root = resolve(url)
    out: dict[str, dict] = {}
    for base, bad in ((root, False), (f"{root}/{REJECTED_DIR}", True)):
        for hdir in list_dirs(filesystem, base, "host="):
            host = hdir.rsplit("host=", 1)[1]
            for ddir in list_dirs(filesystem, hdir, "date="):
                date = ddir.rsplit("date=", 1)[1]
                d = out.setdefault(date, {"date": date, "files": 0, "bytes": 0, "ticks": 0,
                                          "instruments": set(), "rejected": 0, "hosts": set()})
                d["hosts"].add(host)
                for info in filesystem.get_file_info(fs.FileSelector(ddir)):
                    if info.type != fs.FileType.File or parse_part(info.base_name) is None \
                            or info.base_name.startswith("."):
                        continue
                    d["files"] += 1
                    d["bytes"] += info.size or 0
                    with filesystem.open_input_file(info.path) as fh:
                        t = pq.read_table(fh, columns=["token"])
                    if bad:
                        d["rejected"] += t.num_rows
                    else:
                        d["ticks"] += t.num_rows
                        d["instruments"].update(pc.unique(t.column("token")).to_pylist())
    rows = []
    for date in sorted(out):
        d = out[date]
        d["instruments"] = len(d["instruments"])
        d["hosts"] = sorted(d["hosts"])
        rows.append(d)
    return rows


__all__ = ["files", "read", "scan", "batch_of", "tape", "days", "symbols"]
