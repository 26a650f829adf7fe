"""Decode throughput: kiteohlc_lab's vectorised decode_frame vs kiteconnect's KiteTicker._parse_binary.

Run: ``python benchmarks/bench_decoder.py`` (a few seconds). Both decoders get the same frames:
full-mode frames of 3000 packets (a heavy subscription) and small frames of 50 mixed packets.
"""

from __future__ import annotations

import time

import numpy as np
from kiteconnect import KiteTicker

from kiteohlc_lab.feeds.frames import decode_frame, encode_packets

TOKENS = np.array([738561, 408065, 341249, 2953217, 779521, 256265, 260105, 13238786, 54000903])


def make_frames(n_frames: int, per_frame: int, modes: str | None, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        tokens = rng.choice(TOKENS, per_frame)
        prices = np.round(rng.uniform(100, 30000, per_frame) / 0.05) * 0.05
        m = modes or list(rng.choice(["ltp", "quote", "full"], per_frame, p=[0.1, 0.3, 0.6]))
        frames.append(
            encode_packets(
                tokens, prices, m,
                volume=rng.integers(0, 10**8, per_frame),
                oi=rng.integers(0, 10**7, per_frame),
                timestamp=np.full(per_frame, int(time.time())),
            )
        )
    return frames


def ticks_per_second(fn, frames: list[bytes], min_time: float = 0.6) -> float:
    n = 0
    start = time.perf_counter()
    while True:
        for f in frames:
            n += fn(f)
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return n / elapsed


def main() -> None:
    kt = KiteTicker("bench", "bench")
    now = time.time_ns()

    def ours(frame: bytes) -> int:
        return len(decode_frame(frame, now)[0])

    def kite(frame: bytes) -> int:
        return len(kt._parse_binary(frame))

    cases = [
        ("3000 full packets/frame", make_frames(4, 3000, "full")),
        ("3000 mixed packets/frame", make_frames(4, 3000, None)),
        ("50 full packets/frame", make_frames(200, 50, "full")),
        ("50 mixed packets/frame", make_frames(200, 50, None)),
    ]
    print(f"{'frames':<26} {'decode_frame':>16} {'_parse_binary':>16} {'ratio':>7}")
    for name, frames in cases:
        a = ticks_per_second(ours, frames)
        b = ticks_per_second(kite, frames)
        print(f"{name:<26} {a:>12,.0f} t/s {b:>12,.0f} t/s {a / b:>6.1f}x")


if __name__ == "__main__":
    main()
