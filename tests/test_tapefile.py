"""Tapes streamed block by block (feeds/tapefile.py): the same candles as the whole tape in memory,
instruments that first appear in a later block, a malformed row in a later block, bounded read-ahead."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import kiteohlc_lab
from kiteohlc_lab.core.ticks import TickBatch
from kiteohlc_lab.feeds import tapefile
from kiteohlc_lab.feeds.replay import ReplaySource
from kiteohlc_lab.feeds.synthetic import make_ticks, write_tape
from oracle import Oracle


def late_joiner_tape(tmp_path, suffix):
    """Ticks of 5 instruments, then a sixth that trades only in the second half of the tape."""
    ticks, syms = make_ticks(4000, n_instruments=6, seed=3)
    last = ticks.token == max(syms)
    early = np.arange(len(ticks)) < len(ticks) // 2
    keep = ~(last & early)
    ticks = ticks.take(keep)
    return write_tape(tmp_path / f"t{suffix}", ticks, syms), ticks, syms


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_all_instruments_of_a_streamed_tape_even_late_joiners(tmp_path, monkeypatch, suffix):
    monkeypatch.setattr(tapefile, "BLOCK_ROWS", 500)
    monkeypatch.setattr(tapefile, "CSV_BLOCK_BYTES", 16_000)
    path, ticks, syms = late_joiner_tape(tmp_path, suffix)
    tape = tapefile.open_tape(path)
    assert isinstance(tape, tapefile.TapeStream) and len(tape.first) < len(ticks)
    assert max(syms) not in tape.tokens()  # not in the first block
    info = kiteohlc_lab.stream("ALL", "1m", "5m", source="replay", tape=str(path))
    assert kiteohlc_lab.wait(60), info
    ref = Oracle(["1m", "5m"])
    ref.feed(ticks)
    ref.flush()
    for tok, sym in syms.items():
        for tf in ("1m", "5m"):
            pd.testing.assert_frame_equal(kiteohlc_lab.candles(sym, tf), ref.frame(tok, tf), check_freq=False)
    [st] = kiteohlc_lab.status()
    assert st["state"] == "done" and st["ticks"] == len(ticks)
    assert st["feed"]["progress"]["fraction"] == 1.0


def test_named_instrument_only_in_a_later_block_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(tapefile, "BLOCK_ROWS", 500)
    path, ticks, syms = late_joiner_tape(tmp_path, ".parquet")
    sym = syms[max(syms)]
    kiteohlc_lab.stream(sym, "1m", source="replay", tape=str(path))
    assert kiteohlc_lab.wait(60)
    ref = Oracle(["1m"])
    ref.feed(ticks)
    ref.flush()
    pd.testing.assert_frame_equal(kiteohlc_lab.candles(sym, "1m"), ref.frame(max(syms), "1m"), check_freq=False)


def test_malformed_row_in_a_later_block_keeps_the_rows_before(tmp_path, monkeypatch):
    monkeypatch.setattr(tapefile, "CSV_BLOCK_BYTES", 16_000)
    ticks, syms = make_ticks(3000, seed=5)
    p = write_tape(tmp_path / "t.csv", ticks, syms)
    lines = p.read_text().splitlines()
    lines.insert(2001, "2026-11-25T12:00:00,738561,RELIANCE,oops,5")
    p.write_text("\n".join(lines) + "\n")
    assert isinstance(tapefile.open_tape(p), tapefile.TapeStream)  # the first block is fine
    kiteohlc_lab.stream("RELIANCE", "1m", source="replay", tape=str(p))
    assert kiteohlc_lab.wait(30)
    [st] = kiteohlc_lab.status()
    assert "line 2002" in (st["error"] or "")
    ref = Oracle(["1m"])
    ref.feed(ticks.take(slice(0, 2000)))
    ref.flush()
    pd.testing.assert_frame_equal(kiteohlc_lab.candles("RELIANCE", "1m"), ref.frame(738561, "1m"),
                                  check_freq=False)


def test_read_ahead_is_bounded(tmp_path, monkeypatch):
    """The replay thread never queues more than MAX_BACKLOG chunks ahead of a slow stream."""
    monkeypatch.setattr(tapefile, "BLOCK_ROWS", 256)
    ticks, syms = make_ticks(5000, seed=2)
    tape = tapefile.open_tape(write_tape(tmp_path / "t.parquet", ticks, syms))
    seen: list[int] = []

    class Slow:
        def __init__(self):
            self.q: list[TickBatch] = []
            self.done = False

        def backlog(self):
            if len(self.q) > 2:  # the consumer takes one now and then
                self.q.pop(0)
            seen.append(len(self.q))
            return len(self.q)

        def on_batch(self, b):
            self.q.append(b)

        def on_done(self):
            self.done = True

        def on_error(self, message, fatal):
            raise AssertionError(message)

    sink = Slow()
    src = ReplaySource(tape, chunk=100)
    src.MAX_BACKLOG = 3
    src.start(sink)
    src._thread.join(10)
    assert sink.done and max(seen) <= 3


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_blocks_read_ahead_before_the_replay_starts_are_its_blocks(tmp_path, monkeypatch, suffix):
    """``read_ahead`` starts decoding the next blocks before a replay (while its stores open): the
    replay then takes those, every tick once and in order; a second replay of the same cached tape
    reads it again from the start; a replay that cannot start (its store is not accepted) ends the
    reading it started (the autouse fixture fails a test that leaves a kiteohlc-* thread)."""
    import threading

    from kiteohlc_lab.errors import ConfigError

    monkeypatch.setattr(tapefile, "BLOCK_ROWS", 500)
    monkeypatch.setattr(tapefile, "CSV_BLOCK_BYTES", 16_000)
    path, ticks, syms = late_joiner_tape(tmp_path, suffix)
    tape = tapefile.open_tape(path)
    tape.read_ahead()
    reader = [t for t in threading.enumerate() if t.name == "kiteohlc-tape-read"]
    assert reader, "read_ahead started no reader"
    got = [b for b, _n, _sym in tape.blocks()]
    assert sum(len(b) for b in got) == len(ticks)
    np.testing.assert_array_equal(np.concatenate([b.ts for b in got]), ticks.ts)
    np.testing.assert_array_equal(np.concatenate([b.price for b in got]), ticks.price)
    again = [b for b, _n, _sym in tape.blocks()]  # no reader left: from the start
    np.testing.assert_array_equal(np.concatenate([b.token for b in again]), ticks.token)
    for t in reader:
        t.join(5)
        assert not t.is_alive()

    monkeypatch.setenv("KITEOHLC_MONGO_URI", "bogus://nowhere")
    with pytest.raises(ConfigError, match="not accepted"):
        kiteohlc_lab.stream("ALL", "1m", source="replay", tape=str(path))
    for t in [t for t in threading.enumerate() if t.name == "kiteohlc-tape-read"]:
        t.join(5)
        assert not t.is_alive(), "a replay that did not start left its tape reader running"


def test_csv_whose_first_block_has_whole_rupee_prices(tmp_path, monkeypatch):
    """Column types come from the first block; a first block of whole-rupee prices (and volumes
    written as integers) must not make last_price an integer column that a later 2280.05 breaks."""
    monkeypatch.setattr(tapefile, "CSV_BLOCK_BYTES", 16_000)
    ticks, syms = make_ticks(3000, seed=7)
    head = np.arange(len(ticks)) < 400  # the first block: well under 16 kB of lines
    ticks.price[head] = np.round(ticks.price[head])
    p = write_tape(tmp_path / "t.csv", ticks, syms)
    assert "." not in p.read_text().splitlines()[1].split(",")[3]  # a whole price on line 2
    tape = tapefile.open_tape(p)
    assert isinstance(tape, tapefile.TapeStream) and len(tape.first) < 400
    from kiteohlc_lab.feeds import taperead

    def checking_path(*a, **k):
        raise AssertionError("the block-by-block path fell back to reading the tape whole")

    monkeypatch.setattr(taperead, "read_tape", checking_path)
    kiteohlc_lab.stream("ALL", "1m", source="replay", tape=str(p))
    assert kiteohlc_lab.wait(30)
    [st] = kiteohlc_lab.status()
    assert st["error"] is None and st["ticks"] == len(ticks)
    ref = Oracle(["1m"])
    ref.feed(ticks)
    ref.flush()
    for tok, sym in syms.items():
        pd.testing.assert_frame_equal(kiteohlc_lab.candles(sym, "1m"), ref.frame(tok, "1m"), check_freq=False)


def test_parquet_symbols_are_read_only_where_an_instrument_first_appears(tmp_path, monkeypatch):
    """A Parquet tape decodes only the columns the engine takes; the tradingsymbol column is read for
    the blocks that bring a new instrument (the late joiner's), also where a block spans two row
    groups, and every instrument keeps its symbol. The first row group's symbols come with its
    decode (every instrument a replay starts with is named from them): no read of its own."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(tapefile, "BLOCK_ROWS", 500)
    path, ticks, syms = late_joiner_tape(tmp_path, ".parquet")
    tab = pq.read_table(path)
    odd = tmp_path / "groups.parquet"
    pq.write_table(tab, odd, row_group_size=700)  # blocks of 500 rows straddle groups of 700
    assert pq.ParquetFile(odd).metadata.num_row_groups > 3
    reads: list[tuple[int, int]] = []
    column = tapefile._ParquetSymbols.column

    def counted(self):
        reads.append((self.start, self.n))
        got = column(self)
        kind = got.type.value_type if pa.types.is_dictionary(got.type) else got.type
        assert len(got) == self.n and (pa.types.is_string(kind) or pa.types.is_large_string(kind))
        return got

    monkeypatch.setattr(tapefile._ParquetSymbols, "column", counted)
    kiteohlc_lab.stream("ALL", "1m", source="replay", tape=str(odd))
    assert kiteohlc_lab.wait(60)
    [st] = kiteohlc_lab.status()
    assert st["error"] is None and st["ticks"] == len(ticks)
    n_blocks = -(-len(ticks) // 500)
    # the late joiner's block (maybe split over two groups), not the first group's
    assert 1 <= len(reads) <= 2 < n_blocks and all(start >= 700 for start, _ in reads), reads
    ref = Oracle(["1m"])
    ref.feed(ticks)
    ref.flush()
    for tok, sym in syms.items():
        pd.testing.assert_frame_equal(kiteohlc_lab.candles(sym, "1m"), ref.frame(tok, "1m"), check_freq=False)


@pytest.mark.parametrize("start, n", [(0, 300), (300, 300), (600, 300), (900, 100), (0, 1000),
                                      (1000, 300), (800, 400), (150, 300)])
def test_parquet_symbols_of_a_block_are_its_rows(tmp_path, start, n):
    """The tradingsymbol column of rows start .. start + n: a block read in batches out of a big
    row group (its first, a later one, the short last one), a whole group, and a block that
    straddles two groups or is not on a batch boundary, each the rows pyarrow reads from the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 1300
    syms = [f"S{(i * 7919) % 53}" for i in range(rows)]
    tab = pa.table({"timestamp": pa.array(np.arange(rows, dtype="int64")), "tradingsymbol": syms})
    path = tmp_path / "sym.parquet"
    pq.write_table(tab, path, row_group_size=1000)  # groups of 1000 and 300 rows
    got = tapefile._ParquetSymbols(path, "tradingsymbol", start, n).column()
    assert len(got) == n
    values = got.dictionary.take(got.indices).to_pylist() if pa.types.is_dictionary(got.type) else got.to_pylist()
    assert values == pq.read_table(path).column("tradingsymbol").to_pylist()[start:start + n]


@pytest.mark.parametrize("newline, trailing", [("\n", True), ("\r\n", True), ("\n", False)])
@pytest.mark.parametrize("block", [40, 1_000, 16_000])
def test_csv_chunks_give_every_row_once_where_it_lies(tmp_path, monkeypatch, newline, trailing, block):
    """The CSV is memory-mapped and cut at the last whole line of each chunk: chunks smaller than a
    line (each then runs to its line's end), CRLF lines and a last line without a newline give every
    row once, in order, with the values pandas reads from the same file."""
    monkeypatch.setattr(tapefile, "CSV_BLOCK_BYTES", block)
    monkeypatch.setattr(tapefile, "CSV_FIRST_BYTES", 200)
    rng = np.random.default_rng(7)
    n = 700
    rows = [f"2026-11-25T09:{15 + i // 60:02d}:{i % 60:02d},{1000 + i % 7},SYM{i % 7},"
            f"{100 + rng.random() * 50:.2f},{i * 3}" for i in range(n)]
    text = newline.join(["timestamp,instrument_token,tradingsymbol,last_price,volume_traded", *rows])
    path = tmp_path / "t.csv"
    path.write_bytes((text + (newline if trailing else "")).encode())
    first, took = tapefile._csv_first(path)
    parts = [first] + [rb for rb, _lazy in tapefile._csv_chunks(path, first.schema, took)]
    got = {c: np.concatenate([p.column(c).to_numpy() for p in parts])
           for c in ("instrument_token", "last_price", "volume_traded")}
    ref = pd.read_csv(path)
    assert len(got["instrument_token"]) == n
    np.testing.assert_array_equal(got["instrument_token"], ref["instrument_token"].to_numpy())
    np.testing.assert_array_equal(got["last_price"], ref["last_price"].to_numpy())
    np.testing.assert_array_equal(got["volume_traded"], ref["volume_traded"].to_numpy(np.float64))
    ts = np.concatenate([p.column("timestamp").cast("int64").to_numpy() for p in parts])
    np.testing.assert_array_equal(ts, pd.to_datetime(ref["timestamp"]).to_numpy("datetime64[s]").astype(np.int64))


def test_first_rows_of_new_instruments_equal_numpy_unique_even_with_hash_collisions():
    """``learn``'s grouping by the 16-bit token hash gives what ``np.unique(..., return_index=True)``
    gives: every distinct token once, sorted, with the row of its first tick; tokens that share a
    hash slot included."""
    rng = np.random.default_rng(0)
    cand = rng.integers(1, 10**8, size=400_000)
    slots = tapefile._slot(cand)
    for trial in range(200):
        n = int(rng.integers(1, 3000))
        pool = rng.integers(1, 10**7, size=int(rng.integers(1, 60)))
        if trial % 3 == 0:  # three more tokens in the slot of the pool's first one
            pool = np.concatenate([pool, cand[slots == tapefile._slot(pool[:1])[0]][:3]])
        tok = rng.choice(pool, size=n).astype(np.int64)
        at = np.sort(rng.choice(n, size=int(rng.integers(1, n + 1)), replace=False))
        toks, rows = tapefile._first_rows(tok, tapefile._slot(tok), at)
        ref, first = np.unique(tok[at], return_index=True)
        np.testing.assert_array_equal(toks, ref)
        np.testing.assert_array_equal(rows, at[first])


def test_learn_finds_instruments_first_seen_anywhere_in_a_long_batch():
    """``learn`` probes a batch in growing spans: an instrument whose first tick lies in any span
    (the first row, the span edges, the last row), one sharing a hash slot with a known one, and one
    only in a later batch are each reported once, in token order, named from their first row;
    reference: a dict of first occurrences in plain Python."""
    import pyarrow as pa

    rng = np.random.default_rng(7)
    cand = rng.integers(1, 10**8, size=400_000)
    slots = tapefile._slot(cand)
    base = [int(t) for t in rng.integers(1, 10**7, size=40)]
    twin = int(cand[(slots == tapefile._slot(np.array(base[:1]))[0]) & (cand != base[0])][0])
    n = 300_000
    tok = rng.choice(np.array(base[:30], np.int64), size=n)
    late = {0: base[30], 4095: base[31], 4096: base[32], 4096 + 32767: base[33], 36_864: base[34],
            200_000: twin, n - 1: base[35]}
    for row, t in late.items():
        tok[row] = t
    names = np.array([f"S{t}" for t in tok.tolist()], dtype=object)
    names[200_000] = "twin"  # the twin's only tick: its symbol
    batch = TickBatch(tok, np.arange(n, dtype=np.int64), np.ones(n), None, None)
    tape = tapefile.TapeStream("x.parquet", batch)

    def reference(tokens, symbols, seen):
        first: dict[int, str] = {}
        for t, s in zip(tokens, symbols):
            if t not in seen and t not in first:
                first[t] = s.upper()
        return sorted(first.items())

    got = tape.learn(batch, pa.array(names.tolist()))
    want = reference(tok.tolist(), names.tolist(), set())
    assert [(t, s) for s, t in got] == [(t, s) for t, s in want]
    assert len(got) == len(set(tok.tolist())) == 37
    assert tape.learn(batch, pa.array(names.tolist())) == []  # nothing new a second time
    more = np.concatenate([tok[:1000], np.array(base[36:], np.int64), tok[:1000]])
    got2 = tape.learn(TickBatch(more, np.arange(len(more), dtype=np.int64), np.ones(len(more)), None, None), None)
    assert got2 == [(str(t), t) for t in sorted(base[36:])]
    assert tape.tokens() == set(tok.tolist()) | set(base[36:])
