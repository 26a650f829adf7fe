"""Symbol resolution, the per-day instruments cache, and credentials loading."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from kiteohlc_lab.errors import CredentialsError, SymbolError
from kiteohlc_lab.feeds.auth import load_credentials, read_dotenv, redact
from kiteohlc_lab.feeds.instruments import InstrumentTable, ist_today

ROWS = [
    dict(instrument_token=256265, exchange_token=1001, tradingsymbol="NIFTY 50", name="NIFTY 50",
         last_price=0.0, expiry="", strike=0.0, tick_size=0.0, lot_size=0, instrument_type="EQ",
         segment="INDICES", exchange="NSE"),
    dict(instrument_token=738561, exchange_token=2885, tradingsymbol="RELIANCE", name="RELIANCE",
         last_price=0.0, expiry="", strike=0.0, tick_size=0.05, lot_size=1, instrument_type="EQ",
         segment="NSE", exchange="NSE"),
    dict(instrument_token=128083204, exchange_token=500325, tradingsymbol="RELIANCE",
         name="RELIANCE", last_price=0.0, expiry="", strike=0.0, tick_size=0.05, lot_size=1,
         instrument_type="EQ", segment="BSE", exchange="BSE"),
    dict(instrument_token=13368834, exchange_token=52222, tradingsymbol="NIFTY25DECFUT", name="NIFTY",
         last_price=0.0, expiry=dt.date(2025, 12, 30), strike=0.0, tick_size=0.1, lot_size=75,
         instrument_type="FUT", segment="NFO-FUT", exchange="NFO"),
    dict(instrument_token=1001, exchange_token=1, tradingsymbol="GOLDX", name="GOLD", last_price=0.0,
         expiry="", strike=0.0, tick_size=1.0, lot_size=1, instrument_type="FUT", segment="MCX-FUT",
         exchange="MCX"),
    dict(instrument_token=1002, exchange_token=2, tradingsymbol="GOLDX", name="GOLD", last_price=0.0,
         expiry="", strike=0.0, tick_size=1.0, lot_size=1, instrument_type="FUT", segment="CDS-FUT",
         exchange="CDS"),
]


class FakeKite:
    """Stands in for KiteConnect.instruments() only (counts calls to check the cache)."""

    def __init__(self) -> None:
        self.calls = 0

    def instruments(self) -> list[dict]:
        self.calls += 1
        return [dict(r) for r in ROWS]


@pytest.fixture
def table() -> InstrumentTable:
    return InstrumentTable(ROWS)


@pytest.mark.parametrize(
    "symbol, token, exchange",
    [
        ("NIFTY", 256265, "NSE"),
        ("nifty 50", 256265, "NSE"),
        ("BANKNIFTY", 260105, "NSE"),
        ("NSE:RELIANCE", 738561, "NSE"),
        ("BSE:RELIANCE", 128083204, "BSE"),
        ("RELIANCE", 738561, "NSE"),  # NSE before BSE
        ("reliance", 738561, "NSE"),
        ("NFO:NIFTY25DECFUT", 13368834, "NFO"),
        ("NIFTY25DECFUT", 13368834, "NFO"),
        ("738561", 738561, "NSE"),
        (738561, 738561, "NSE"),
    ],
)
def test_resolve(table: InstrumentTable, symbol, token, exchange) -> None:
    inst = table.resolve(symbol)
    assert (inst.token, inst.exchange) == (token, exchange)


def test_fields(table: InstrumentTable) -> None:
    inst = table.resolve("NFO:NIFTY25DECFUT")
    assert inst.tradingsymbol == "NIFTY25DECFUT" and inst.tick_size == 0.1
    assert inst.segment == "NFO-FUT" and inst.name == "NIFTY" and inst.key == "NFO:NIFTY25DECFUT"


def test_aliases_and_tokens_without_table() -> None:
    empty = InstrumentTable()
    assert empty.resolve("NIFTY").token == 256265
    assert empty.resolve("BANKNIFTY").tradingsymbol == "NIFTY BANK"
    assert empty.resolve("NSE:NIFTY 50").token == 256265
    assert empty.resolve("260105").token == 260105
    with pytest.raises(SymbolError, match="no instruments table"):
        empty.resolve("RELIANCE")


def test_unknown_names_closest(table: InstrumentTable) -> None:
    with pytest.raises(SymbolError) as e:
        table.resolve("RELIANC")
    assert "'RELIANC'" in str(e.value) and "RELIANCE" in str(e.value)
    with pytest.raises(SymbolError, match="'NSE:RELIANC'"):
        table.resolve("NSE:RELIANC")
    with pytest.raises(SymbolError, match="exchange 'XYZ'"):
        table.resolve("XYZ:RELIANCE")


def test_ambiguous_lists_candidates(table: InstrumentTable) -> None:
    with pytest.raises(SymbolError) as e:
        table.resolve("GOLDX")
    msg = str(e.value)
    assert "ambiguous" in msg and "MCX:GOLDX" in msg and "CDS:GOLDX" in msg
    assert table.resolve("MCX:GOLDX").token == 1001


def test_extra_mapping(table: InstrumentTable) -> None:
    assert table.resolve("TAPESYM", extra={"TAPESYM": 424242}).token == 424242
    t = InstrumentTable(None, extra={"INFY": 408065})
    assert t.resolve("infy").token == 408065
    assert t.resolve("INFY").tradingsymbol == "INFY"


def test_cache_per_day(tmp_path) -> None:
    kite = FakeKite()
    day = dt.date(2025, 1, 2)
    t1 = InstrumentTable.load(kite, tmp_path, today=day)
    t2 = InstrumentTable.load(kite, tmp_path, today=day)
    assert kite.calls == 1 and len(t1) == len(t2) == len(ROWS)
    assert list((tmp_path / "instruments").glob("2025-01-02.*"))
    assert t2.resolve("NFO:NIFTY25DECFUT").tick_size == 0.1
    InstrumentTable.load(kite, tmp_path, today=day + dt.timedelta(days=1))
    assert kite.calls == 2
    assert len(InstrumentTable.load(None, tmp_path, today=dt.date(2020, 1, 1))) == 0


def test_ist_today_is_ist() -> None:
    # 2025-01-01 20:00 UTC is already 2 January in India.
    ns = int(dt.datetime(2025, 1, 1, 20, 0, tzinfo=dt.timezone.utc).timestamp()) * 10**9
    assert ist_today(ns) == dt.date(2025, 1, 2)


# ---- credentials -------------------------------------------------------------------------
def test_load_credentials_precedence(tmp_path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nexport KITE_API_KEY='filekey'\nKITE_ACCESS_TOKEN=filetok # x\n")
    assert read_dotenv(env_file) == {"KITE_API_KEY": "filekey", "KITE_ACCESS_TOKEN": "filetok"}
    c = load_credentials(env={}, dotenv_path=env_file)
    assert (c.api_key, c.access_token, c.source) == ("filekey", "filetok", ".env")
    c = load_credentials(env={"KITE_API_KEY": "envkey", "KITE_ACCESS_TOKEN": "envtok"},
                         dotenv_path=env_file)
    assert (c.api_key, c.access_token) == ("envkey", "envtok")
    c = load_credentials("k", "tok-xyz", env={"KITE_ACCESS_TOKEN": "envtok"}, dotenv_path=env_file)
    assert (c.api_key, c.access_token, c.source) == ("k", "tok-xyz", "explicit")
    assert "tok-xyz" not in repr(c) and "***" in repr(c)
    with pytest.raises(CredentialsError, match="KITE_ACCESS_TOKEN"):
        load_credentials(api_key="k", env={}, dotenv_path=tmp_path / "missing.env")


def test_redact_and_log_guard(caplog) -> None:
    secret = "s3cr3t-token-value"
    assert redact(f"url?access_token={secret}&x", secret) == "url?access_token=***&x"
    load_credentials("key", secret, env={}, dotenv_path=None)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("kiteconnect.connect").debug("headers %s", {"Authorization": f"token key:{secret}"})
    assert caplog.records and secret not in caplog.text
