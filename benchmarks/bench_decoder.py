"""Decode throughput: kiteohlc_lab's decode_frame vs kiteconnect's KiteTicker._parse_binary.

Run: ``python benchmarks/bench_decoder.py [--rounds 3]`` (about half a minute). Both decoders get the
same frames, built as Kite sends them for a realistic subscription: 3000 instruments (NSE equities,
NFO contracts, a few indices), each subscribed in one mode (60% full, 30% quote, 10% ltp), so a
frame mixes 184-byte full, 44-byte quote and 8-byte ltp packets of equities with 32/28-byte index
packets; a frame of k packets holds k of those instruments in random order, k from 1 to 3000. The
uniform cases (every packet one layout) are there for comparison. Runs alternate (ours, kite's,
ours, ...) so noise from other processes hits both; the ratio range is over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from kiteconnect import KiteTicker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kiteohlc_lab.feeds.frames import decode_frame, encode_packets  # noqa: E402

SIZES = (1, 10, 50, 200, 1000, 3000)


def subscription(n: int = 3000, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Tokens (segment in the low byte: 1 NSE, 2 NFO, 9 index) and each one's mode."""
    rng = np.random.default_rng(seed)
    seg = rng.choice([1, 2, 9], n, p=[0.6, 0.37, 0.03])
    tokens = (rng.choice(np.arange(1_000, 200_000), n, replace=False) << 8) | seg
    modes = rng.choice(np.array(["full", "quote", "ltp"], dtype=object), n, p=[0.6, 0.3, 0.1])
    return tokens.astype(np.int64), modes


def make_frames(n_frames: int, per_frame: int, modes: str | None = None, seed: int = 0,
                tokens: np.ndarray | None = None, token_modes: np.ndarray | None = None) -> list[bytes]:
    """``n_frames`` frames of ``per_frame`` packets; ``modes`` one mode for every packet (uniform
    layout for equities, indices still get theirs), None: each instrument's subscribed mode."""
    if tokens is None:
        tokens, token_modes = subscription()
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        pick = rng.choice(len(tokens), per_frame, replace=per_frame > len(tokens))
        tok = tokens[pick]
        prices = np.round(rng.uniform(100, 30000, per_frame) / 0.05) * 0.05
        m = modes or list(token_modes[pick])
        frames.append(encode_packets(tok, prices, m, volume=rng.integers(0, 10**8, per_frame),
                                     oi=rng.integers(0, 10**7, per_frame),
                                     timestamp=np.full(per_frame, int(time.time()))))
    return frames


def rate(fn, frames: list[bytes], min_time: float) -> float:
    """Packets decoded per second over at least ``min_time`` seconds."""
    n = 0
    start = time.perf_counter()
    while True:
        for f in frames:
            n += fn(f)
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per case")
    ap.add_argument("--min-time", type=float, default=0.25, help="seconds per contender per round")
    args = ap.parse_args()
    kt = KiteTicker("bench", "bench")
    now = time.time_ns()

    def ours(frame: bytes) -> int:
        return len(decode_frame(frame, now)[0])

    def kite(frame: bytes) -> int:
        return len(kt._parse_binary(frame))

    # the same frames decode to the same ticks (tests/test_frames.py checks every field)
    for f in make_frames(3, 200):
        assert ours(f) == kite(f)

    cases = [(f"{k} mixed packets/frame", make_frames(max(4, 6000 // k), k)) for k in SIZES]
    cases += [(f"{k} full packets/frame (all one mode)", make_frames(max(4, 6000 // k), k, "full")) for k in (50, 3000)]
    cases += [(f"{k} ltp packets/frame (all one mode)", make_frames(max(4, 6000 // k), k, "ltp")) for k in (50, 3000)]
    print(f"{'frames':<34} {'decode_frame':>14} {'_parse_binary':>14} {'ratio (range)':>18}")
    for name, frames in cases:
        a, b = [], []
        for _ in range(args.rounds):
            a.append(rate(ours, frames, args.min_time))
            b.append(rate(kite, frames, args.min_time))
        ratios = [x / y for x, y in zip(a, b)]
        print(f"{name:<34} {statistics.median(a):>10,.0f} t/s {statistics.median(b):>10,.0f} t/s "
              f"{statistics.median(ratios):>6.1f}x ({min(ratios):.1f}-{max(ratios):.1f})", flush=True)


if __name__ == "__main__":
    main()
