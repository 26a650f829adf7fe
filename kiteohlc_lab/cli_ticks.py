"""``kiteohlc-lab ticks``: what the tick store holds, and exporting a range of it.

    kiteohlc-lab ticks                              one line per day: hosts, files, size, ticks,
                                                    instruments, rejected ticks
    kiteohlc-lab ticks NIFTY,RELIANCE --from T --to T [--export PATH.parquet|PATH.csv]
                                                    count the range, or write it to one file
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from .errors import TickStoreError


def add_parser(sub: Any, add_options: Callable[[argparse.ArgumentParser], None]) -> None:
    t = sub.add_parser("ticks", help="the tick store: days, sizes, instruments; export a range",
                       description="List the tick store's days, or count/export a range of ticks.")
    t.add_argument("symbols", nargs="?", default=None, help="comma-separated symbols or tokens (default: all)")
    t.add_argument("--from", dest="start", default=None, help="start (IST wall-clock unless zoned)")
    t.add_argument("--to", dest="end", default=None, help="end (exclusive)")
    t.add_argument("--export", default=None, metavar="PATH",
                   help="write the range to PATH: .parquet (zstd) or .csv")
    t.add_argument("--rejected", action="store_true", help="the rejected ticks instead (with their reason)")
    add_options(t)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def cmd_ticks(args: argparse.Namespace, cfg: Any) -> int:
    from .stores.tickread import days, read
    from .stores.ticks import store_url
    from .tickapi import span

    url = store_url(cfg)
    ranged = args.symbols or args.start or args.end or args.export or args.rejected
    if not ranged:
        rows = days(url)
        if not rows:
            print(f"the tick store {url} holds no ticks", file=sys.stderr)
            return 0
        print(f"tick store {url}")
        print(f"{'date':<12}{'hosts':<20}{'files':>6}{'size':>11}{'ticks':>12}{'instruments':>13}{'rejected':>10}")
        for d in rows:
            print(f"{d['date']:<12}{','.join(d['hosts'])[:19]:<20}{d['files']:>6}{_size(d['bytes']):>11}"
                  f"{d['ticks']:>12}{d['instruments']:>13}{d['rejected']:>10}")
        return 0
    export = Path(args.export).expanduser() if args.export else None
    if export is not None and export.suffix.lower() not in (".parquet", ".csv"):
        raise TickStoreError(f"--export {args.export}: {export.suffix or 'no suffix'} is not accepted; "
                             "use a .parquet or .csv file name")
    lo, hi = span(args.start, args.end)
    tokens = None
    if args.symbols:
        from .runtime import Manager
        from .tickapi import tokens_of

        tokens = [t for _, t in tokens_of(Manager(cfg), args.symbols, url)]
    table = read(url, tokens, lo, hi, rejected=args.rejected)
    if table.num_rows == 0:
        raise TickStoreError(f"no {'rejected ' if args.rejected else ''}ticks of "
                             f"{args.symbols or 'any instrument'} in the tick store {url} between "
                             f"{args.start or 'the first tick'} and {args.end or 'the last'}")
    if export is None:
        import pyarrow.compute as pc

        print(f"{table.num_rows} ticks of {len(pc.unique(table.column('token')))} instruments")
        return 0
    export.parent.mkdir(parents=True, exist_ok=True)
    if export.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, export, compression="zstd")
    else:
        from pyarrow import csv

        csv.write_csv(table, export)
    print(f"{table.num_rows} ticks written to {export}")
    return 0
