"""Frame decoder/encoder: round trips through kiteconnect's own parser, bad frames, time zones."""

from __future__ import annotations

import os
import struct
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kiteconnect import KiteTicker

from kiteohlc_lab.core.ticks import TickBatch
from kiteohlc_lab.feeds.frames import (
    HEARTBEAT,
    decode_frame,
    encode_packets,
    packet_length,
    parse_text,
)

RELIANCE = 738561  # NSE, segment 1
NIFTY = 256265  # index, segment 9
USDINR = 1234567 * 256 + 3  # CDS
NIFTYFUT = 13238786  # NFO, segment 2
RECV = 1_764_000_000_123_456_789
TS = 1_764_130_500  # 2025-11-26 09:45:00 IST


@pytest.fixture(params=["UTC", "Asia/Kolkata"])
def tz(request):
    """Run the test with the machine's local zone set (kiteconnect makes naive local datetimes)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    yield request.param
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


@pytest.fixture(scope="module")
def kt():
    return KiteTicker("dummy", "dummy")


def kite_reference(kt: KiteTicker, frame: bytes) -> TickBatch:
    """What a client aggregating kiteconnect's own dicts would see."""
    return TickBatch.from_ticks(kt._parse_binary(frame), receive_ns=RECV)


def assert_same(a: TickBatch, b: TickBatch) -> None:
    np.testing.assert_array_equal(a.token, b.token)
    np.testing.assert_array_equal(a.ts, b.ts)
    np.testing.assert_allclose(a.price, b.price, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(a.volume, b.volume)  # NaN == NaN here
    # kiteconnect reports oi=0 for cash equities in full mode; we report "no open interest"
    cash = np.isin(b.token & 0xFF, [1, 4, 9])
    np.testing.assert_array_equal(a.oi, np.where(cash, np.nan, b.oi))
    # the top of the book: kiteconnect's depth["buy"][0] / ["sell"][0] (from_ticks), NaN without
    for ours, ref in zip(a.book(), b.book()):
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)  # NaN == NaN here


@pytest.mark.parametrize("mode", ["ltp", "quote", "full"])
@pytest.mark.parametrize(
    "token,price",
    [(RELIANCE, 2512.35), (NIFTY, 26015.8), (USDINR, 84.1275), (NIFTYFUT, 26100.05)],
)
def test_round_trip_matches_kiteconnect(kt, tz, mode, token, price):
    frame = encode_packets([token], [price], mode, volume=[123456], oi=[98765], timestamp=[TS])
    ours, info = decode_frame(frame, RECV)
    ref = kite_reference(kt, frame)

    assert_same(ours, ref)
    assert info.packets == 1 and info.malformed == 0 and not info.heartbeat
    assert getattr(info, mode) == 1
    assert ours.price[0] == pytest.approx(price, abs=1e-9)
    tradable = token & 0xFF != 9
    has_ts = mode == "full"
    assert ours.ts[0] == (TS * 1_000_000_000 if has_ts else RECV)
    assert (ours.volume[0] == 123456) if (tradable and mode != "ltp") else np.isnan(ours.volume[0])
    derivative = token & 0xFF not in (1, 4, 9)
    assert (ours.oi[0] == 98765) if (derivative and mode == "full") else np.isnan(ours.oi[0])
    bid, ask, bid_qty, ask_qty = (float(x[0]) for x in ours.book())
    if tradable and mode == "full":  # encode_packets' default book: a tick either side, 100 each
        tick = 0.05
        assert (bid, ask, bid_qty, ask_qty) == (pytest.approx(price - tick, abs=1e-9),
                                                pytest.approx(price + tick, abs=1e-9), 100, 100)
    else:
        assert not ours.has_book and np.isnan([bid, ask, bid_qty, ask_qty]).all()


def test_timestamps_identical_across_time_zones(kt):
    frame = encode_packets([RELIANCE, NIFTY], [100.0, 200.0], "full", timestamp=[TS, TS + 1])
    seen = {}
    for zone in ("UTC", "Asia/Kolkata"):
        os.environ["TZ"] = zone
        time.tzset()
        try:
            ref = kite_reference(kt, frame)
            ours, _ = decode_frame(frame, RECV)
        finally:
            os.environ.pop("TZ", None)
            time.tzset()
        np.testing.assert_array_equal(ours.ts, ref.ts)
        seen[zone] = ours.ts
    np.testing.assert_array_equal(seen["UTC"], seen["Asia/Kolkata"])
    assert seen["UTC"].tolist() == [TS * 10**9, (TS + 1) * 10**9]


def test_mixed_frame_keeps_packet_order(kt):
    tokens = [RELIANCE, NIFTY, USDINR, NIFTYFUT, RELIANCE, NIFTY]
    modes = ["full", "quote", "ltp", "full", "quote", "full"]
    prices = [1.05, 2.5, 83.0001, 4.0, 5.1, 6.2]
    frame = encode_packets(tokens, prices, modes, volume=np.arange(6) + 1, oi=7, timestamp=TS)
    ours, info = decode_frame(frame, RECV)
    assert ours.token.tolist() == tokens
    assert (info.ltp, info.quote, info.full) == (1, 2, 3)
    assert_same(ours, kite_reference(kt, frame))


@pytest.mark.parametrize("payload", [b"", b"\x00", HEARTBEAT])
def test_heartbeat(payload):
    batch, info = decode_frame(payload, RECV)
    assert info.heartbeat and len(batch) == 0 and info.malformed == 0


def test_truncated_frame_decodes_whole_packets():
    frame = encode_packets([RELIANCE, 408065, 341249], [10.0, 20.0, 30.0], "full", timestamp=TS)
    batch, info = decode_frame(frame[:-50], RECV)
    assert batch.token.tolist() == [RELIANCE, 408065]
    assert info.packets == 2 and info.malformed == 1
    # cut inside a length prefix: kiteconnect raises (and drops the connection), we do not
    with pytest.raises(struct.error):
        KiteTicker("k", "t")._parse_binary(frame[: 2 + 186 + 1])
    batch, info = decode_frame(frame[: 2 + 186 + 1], RECV)
    assert batch.token.tolist() == [RELIANCE] and info.malformed == 2


def test_count_overrunning_buffer_and_unknown_length():
    frame = bytearray(encode_packets([RELIANCE, NIFTY], [1.0, 2.0], "ltp"))
    frame[0:2] = (500).to_bytes(2, "big")  # declares 500 packets, holds 2
    batch, info = decode_frame(bytes(frame), RECV)
    assert batch.token.tolist() == [RELIANCE, NIFTY] and info.malformed == 498

    odd = struct.pack(">HH", 2, 12) + b"x" * 12 + encode_packets([NIFTY], [5.0], "ltp")[2:]
    batch, info = decode_frame(odd, RECV)
    assert batch.token.tolist() == [NIFTY] and info.malformed == 1 and info.packets == 1


@given(st.binary(max_size=600))
@settings(max_examples=300, deadline=None)
def test_garbage_never_raises(payload):
    batch, info = decode_frame(payload, RECV)
    assert len(batch) == info.packets
    assert len(batch.ts) == len(batch.price) == len(batch.volume) == len(batch.oi)


_packet = st.tuples(
    st.sampled_from([RELIANCE, NIFTY, USDINR, NIFTYFUT, 779521, 260105]),
    st.sampled_from(["ltp", "quote", "full"]),
    st.integers(1, 400_000_000),  # integer price units, so prices round-trip exactly
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(1, 2**31 - 1),  # 0 means 'no timestamp' to decode_frame (receive time)
)


@given(st.lists(_packet, max_size=60), st.integers(0, 200))
@settings(max_examples=150, deadline=None)
def test_random_packet_mixes_match_kiteconnect(packets, cut):
    kt = KiteTicker("k", "t")
    if not packets:
        frame = b"\x00\x00"
    else:
        tokens, modes, units, vols, ois, stamps = map(list, zip(*packets))
        div = np.array([1e7 if t & 0xFF == 3 else 100.0 for t in tokens])
        frame = encode_packets(
            tokens, np.array(units) / div, modes, volume=vols, oi=ois, timestamp=stamps
        )
    ours, info = decode_frame(frame, RECV)
    assert_same(ours, kite_reference(kt, frame))
    assert info.packets == len(packets) and info.malformed == 0
    assert info.ltp + info.quote + info.full == len(packets)

    # chopping bytes off the end loses whole packets only, never raises
    short = frame[: max(2, len(frame) - cut)]
    part, pinfo = decode_frame(short, RECV)
    assert pinfo.packets + pinfo.malformed == len(packets)
    assert_same(part, ours.take(slice(0, pinfo.packets)))


def test_long_uniform_and_long_mixed_frames_match(kt):
    rng = np.random.default_rng(1)
    n = 3000
    tokens = rng.choice([RELIANCE, NIFTY, USDINR, NIFTYFUT], n)
    prices = rng.integers(100, 10**6, n) / 100
    prices[tokens & 0xFF == 3] = rng.integers(10**8, 10**9, int((tokens & 0xFF == 3).sum())) / 1e7
    for modes in ("full", list(rng.choice(["ltp", "quote", "full"], n))):
        frame = encode_packets(tokens, prices, modes, volume=rng.integers(0, 10**9, n), timestamp=TS)
        ours, info = decode_frame(frame, RECV)
        assert info.packets == n
        assert_same(ours, kite_reference(kt, frame))


def test_top_of_book_given_and_empty_sides(kt):
    frame = encode_packets([RELIANCE, NIFTYFUT, USDINR, NIFTY], [2500.05, 26100.0, 84.1275, 26000.0],
                           ["full", "full", "full", "full"], timestamp=TS,
                           bid=[2500.0, np.nan, 84.125, 1.0], ask=[2500.15, 26100.5, np.nan, 1.0],
                           bid_qty=[7, 0, 1000, 1], ask_qty=[3, 75, 0, 1], tick_size=[0.05, 0.05, 0.0025, 0.05])
    ours, _ = decode_frame(frame, RECV)
    assert_same(ours, kite_reference(kt, frame))
    np.testing.assert_allclose(ours.bid, [2500.0, np.nan, 84.125, np.nan], atol=1e-9)
    np.testing.assert_allclose(ours.ask, [2500.15, 26100.5, np.nan, np.nan], atol=1e-9)
    np.testing.assert_array_equal(ours.bid_qty, [7, 0, 1000, np.nan])  # empty side: quantity 0
    np.testing.assert_array_equal(ours.ask_qty, [3, 75, 0, np.nan])  # an index has no depth
    depth = kt._parse_binary(frame)[0]["depth"]
    assert [d["price"] for d in depth["buy"]] == pytest.approx([2500.0, 2499.95, 2499.9, 2499.85, 2499.8])
    # the book survives take / concat, and a batch without one reads NaN beside it
    plain, _ = decode_frame(encode_packets([RELIANCE], [1.0], "quote"), RECV)
    both = TickBatch.concat([ours.take(slice(0, 1)), plain])
    assert not plain.has_book and both.has_book
    np.testing.assert_array_equal(both.bid_qty, [7, np.nan])


def test_packet_length():
    assert [packet_length(m, RELIANCE) for m in ("ltp", "quote", "full")] == [8, 44, 184]
    assert [packet_length(m, NIFTY) for m in ("ltp", "quote", "full")] == [8, 28, 32]
    with pytest.raises(ValueError, match="ltp"):
        packet_length("depth", RELIANCE)


@pytest.mark.parametrize(
    "payload,kind",
    [
        (b'{"type":"order","data":{"order_id":"1"}}', "order"),
        ('{"type":"error","data":"bad token"}', "error"),
        (b"\xff\xfe not json", "invalid"),
        ("[1,2]", "invalid"),
        ('{"data":1}', "unknown"),
        (None, "invalid"),
        ("[" * 100_000, "invalid"),
    ],
)
def test_parse_text(payload, kind):
    assert parse_text(payload)["type"] == kind


def test_parse_text_keeps_data():
    msg = parse_text('{"type":"error","data":"Invalid mode"}')
    assert msg == {"type": "error", "data": "Invalid mode"}


def test_zero_exchange_timestamp_is_kept_for_the_filter_to_reject():
    # a corrupt 0 in a full packet is a bad stamp (README rule 1), not "no stamp": only packets
    # without the field (ltp, quote) take the receive time
    frame = encode_packets([RELIANCE, NIFTY], [1.0, 2.0], "full", timestamp=[0, TS])
    batch, _ = decode_frame(frame, RECV)
    assert batch.ts.tolist() == [0, TS * 10**9]
    quote, _ = decode_frame(encode_packets([RELIANCE], [1.0], "quote"), RECV)
    assert quote.ts.tolist() == [RECV]


def test_a_few_packets_decode_to_the_bit_as_the_large_frame_path_does():
    """Frames of up to ``SMALL`` packets are finished in Python, longer ones in numpy: the same
    packets give the same columns to the bit either way (prices, receive times, cash open interest,
    empty book sides), mixed and one-mode frames alike."""
    from kiteohlc_lab.feeds import frames as F

    rng = np.random.default_rng(5)
    toks = [RELIANCE, NIFTY, USDINR, NIFTYFUT, 779521, 260105, 128083204]  # 128083204: BSE cash
    for trial in range(60):
        n = F.SMALL + 1
        tokens = rng.choice(toks, n)
        modes = "full" if trial % 5 == 0 else list(rng.choice(["ltp", "quote", "full"], n))
        div = np.where(tokens & 0xFF == 3, 1e7, 100.0)
        frame = encode_packets(
            tokens, rng.integers(1, 4 * 10**8, n) / div, modes, volume=rng.integers(0, 2**32, n),
            oi=rng.integers(0, 2**32, n), timestamp=np.where(rng.random(n) < 0.2, 0, TS),
            bid=np.where(rng.random(n) < 0.3, np.nan, 100.05), ask=np.where(rng.random(n) < 0.3, np.nan, 100.1),
            bid_qty=rng.integers(0, 1000, n), ask_qty=rng.integers(0, 1000, n))
        large, _ = decode_frame(frame, RECV)
        cut = int(rng.integers(1, F.SMALL + 1))  # the first ``cut`` packets as a frame of their own
        j = 2
        for _ in range(cut):
            j += 2 + int.from_bytes(frame[j:j + 2], "big")
        small, info = decode_frame(cut.to_bytes(2, "big") + frame[2:j], RECV)
        assert info.packets == cut and info.malformed == 0
        want = large.take(slice(0, cut))
        for col in ("token", "ts", "price", "volume", "oi"):
            np.testing.assert_array_equal(getattr(small, col), getattr(want, col), err_msg=col)
            assert getattr(small, col).dtype == getattr(want, col).dtype
        assert small.has_book == bool(want.has_book and not np.isnan(want.bid_qty).all())
        for a, b in zip(small.book(), want.book()):
            np.testing.assert_array_equal(a, b)
