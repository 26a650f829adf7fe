"""``python -m kiteohlc_lab.demo``: the 60-second tour on the embedded default (no account needed).

Replays a generated tape instantly, then streams NIFTY and RELIANCE live from the built-in Kite
simulator through the real kiteconnect client until a few 10-second candles have closed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from . import api
from .feeds.synthetic import make_ticks, write_tape


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kiteohlc_lab.demo", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=35.0, help="how long to stream from the simulator")
    args = p.parse_args(argv)
    m = api.manager()
    print(f"kiteohlc_lab demo; data_dir = {m.cfg.data_dir}")

    tape = Path(tempfile.mkdtemp()) / "demo_tape.csv"
    ticks, symbols = make_ticks(50_000, seed=1)
    write_tape(tape, ticks, symbols)
    t0 = time.perf_counter()
    print(api.stream("NIFTY,RELIANCE", "1m", "15m", source="replay", tape=str(tape)).message)
    api.wait(60)
    print(f"replayed {len(ticks):,} ticks in {time.perf_counter() - t0:.2f} s")
    print(api.candles("RELIANCE", "15m").tail(5).to_string())

    print(api.stream("NIFTY,RELIANCE", "10s", "1m", source="sim").message)
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline and len(api.candles("RELIANCE", "10s", closed_only=True)) < 3:
        time.sleep(0.5)
    df = api.candles("RELIANCE", "10s")
    print(df.tail(5).to_string())
    print(f"forming candle: {df.attrs.get('forming')}")
    for row in api.status():
        print(f"{row['stream']}: {row['state']}, {row['ticks']} ticks, store {row['store']}")
    api.stop()
    api.reset()
    return 0


if __name__ == "__main__":
    sys.exit(main())
