"""The read API: Starlette's TestClient over a Manager that replayed a synthetic tape."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from conftest import need_import  # noqa: E402

need_import("starlette")
need_import("httpx")

from starlette.testclient import TestClient  # noqa: E402

from kiteohlc_lab.errors import ConfigError  # noqa: E402
from kiteohlc_lab.serve import OPENAPI, build_app  # noqa: E402

KEY = {"X-API-Key": "s3cret"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from kiteohlc_lab.config import KiteOHLC
    from kiteohlc_lab.feeds.synthetic import make_ticks, write_tape
    from kiteohlc_lab.runtime import Manager

    tmp = tmp_path_factory.mktemp("serve")
    ticks, symbols = make_ticks(3000, n_instruments=3, seed=1)
    tape = write_tape(tmp / "tape.csv", ticks, symbols)
    m = Manager(KiteOHLC(data_dir=str(tmp / "data")))
    m.start("RELIANCE", ["1m", "5m"], tape=str(tape))
    assert m.wait(30)
    with TestClient(build_app(m, "s3cret")) as c:
        c.manager = m
        yield c
    m.shutdown()


def test_api_key_required(client) -> None:
    for path in ("/candles/RELIANCE/1m", "/status"):
        assert client.get(path).status_code == 401
        r = client.get(path, headers={"X-API-Key": "nope"})
        assert r.status_code == 401 and "X-API-Key" in r.json()["error"]
    with pytest.raises(ConfigError, match="API key"):
        build_app(client.manager, "")
    from kiteohlc_lab.serve import main

    with pytest.raises(ConfigError, match="KITEOHLC_SERVE_API_KEY"):
        main(None, api_key="")  # refuses before serving anything


def test_candles_json_and_csv_equal_the_manager(client) -> None:
    want = client.manager.candles("RELIANCE", "5m")
    r = client.get("/candles/RELIANCE/5m", headers=KEY)
    assert r.status_code == 200
    body = r.json()
    assert body["symbol"] == "RELIANCE" and body["tf"] == "5m" and len(body["candles"]) == len(want)
    got = pd.DataFrame(body["candles"]).set_index("date")
    got.index = pd.to_datetime(got.index).tz_convert("Asia/Kolkata")
    assert list(got.index) == list(want.index)
    assert (got["close"].to_numpy() == want["close"].to_numpy()).all()
    assert body["candles"][0]["date"].endswith("+05:30")

    r = client.get("/candles/RELIANCE/1m", headers=KEY, params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    csv = pd.read_csv(io.StringIO(r.text), index_col="date")
    assert len(csv) == len(client.manager.candles("RELIANCE", "1m"))

    # from/to bound the candle starts (naive = IST)
    first = want.index[1]
    r = client.get("/candles/RELIANCE/5m", headers=KEY,
                   params={"from": first.tz_localize(None).isoformat(),
                           "to": want.index[3].isoformat()})
    dates = [c["date"] for c in r.json()["candles"]]
    assert dates == [d.isoformat() for d in want.index[1:3]]


def test_bad_requests_say_what_is_accepted(client) -> None:
    r = client.get("/candles/RELIANCE/7x", headers=KEY)
    assert r.status_code == 400 and "timeframe" in r.json()["error"]
    r = client.get("/candles/RELIANCE/1m", headers=KEY, params={"format": "xml"})
    assert r.status_code == 400 and "json or csv" in r.json()["error"]
    r = client.get("/candles/RELIANCE/1m", headers=KEY, params={"from": "not a date"})
    assert r.status_code == 400


def test_status_and_openapi(client) -> None:
    r = client.get("/status", headers=KEY)
    assert r.status_code == 200
    s = r.json()
    assert s["streams"][0]["symbols"] == ["RELIANCE"] and s["streams"][0]["state"] == "done"
    assert "ok" in s["stores"]
    spec = client.get("/openapi.json").json()
    assert spec == OPENAPI and spec["openapi"].startswith("3.")
    assert set(spec["paths"]) == {"/candles/{symbol}/{tf}", "/status"}
    assert spec["components"]["securitySchemes"]["apiKey"]["name"] == "X-API-Key"
