"""``kiteohlc-lab``: option precedence, one-line errors with exit code 2, config, status, history."""

from __future__ import annotations

import json
import os
import socket
import time

import numpy as np
import pytest

from kiteohlc_lab.cli import build_parser, main
from kiteohlc_lab.config import KiteOHLC

SUBCOMMANDS_WITH_OPTIONS = ("collect", "status", "history", "config", "serve")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def config_lines(out: str) -> dict[str, tuple[str, str]]:
    """``name = value (origin)`` lines -> {name: (value, origin)}."""
    res = {}
    for line in out.splitlines():
        name, _, rest = line.partition("=")
        value, _, origin = rest.rpartition("(")
        res[name.strip()] = (value.strip(), origin.rstrip(")").strip())
    return res


# ---------------------------------------------------------------------- precedence
def test_every_option_is_a_flag_on_every_subcommand():
    parser = build_parser()
    subs = parser._subparsers._group_actions[0].choices
    for cmd in SUBCOMMANDS_WITH_OPTIONS:
        flags = {s for a in subs[cmd]._actions for s in a.option_strings}
        for name in KiteOHLC.option_names():
            assert "--" + name.replace("_", "-") in flags, (cmd, name)
        assert "--config" in flags


def test_precedence_flag_env_dotenv_file_default(capsys, tmp_path, monkeypatch):
    (tmp_path / "kohlc.toml").write_text(
        '[kiteohlc]\nredis_prefix = "file:"\ngrace = 2.5\nmode = "quote"\nstall_timeout = 7\n'
        'late_policy = "amend"\n')
    (tmp_path / ".env").write_text("KITEOHLC_REDIS_PREFIX=dotenv:\nKITEOHLC_GRACE=3.5\n"
                                   "export KITEOHLC_MODE='ltp'\n")
    monkeypatch.setenv("KITEOHLC_REDIS_PREFIX", "env:")
    monkeypatch.setenv("KITEOHLC_GRACE", "4.5")
    code, out, err = run(capsys, "config", "--config", str(tmp_path / "kohlc.toml"),
                         "--redis-prefix", "flag:")
    assert code == 0, err
    got = config_lines(out)
    assert got["redis_prefix"] == ("flag:", "flag")
    assert got["grace"] == ("4.5", "env KITEOHLC_GRACE")
    assert got["mode"] == ("ltp", ".env KITEOHLC_MODE")
    assert got["stall_timeout"] == ("7.0", "config file")
    assert got["late_policy"] == ("amend", "config file")
    assert got["refresh_interval"] == ("0.5", "default")
    assert got["data_dir"][1] == "env KITEOHLC_DATA_DIR"  # conftest's isolated data dir


def test_json_config_file_and_credential_aliases(capsys, tmp_path, monkeypatch):
    (tmp_path / "c.json").write_text(json.dumps({"api_key": "fromfile", "redis_prefix": "j:"}))
    monkeypatch.setenv("KITE_API_KEY", "fromenv")
    monkeypatch.setenv("KITE_ACCESS_TOKEN", "very-secret-token")
    code, out, err = run(capsys, "config", "--config", str(tmp_path / "c.json"))
    assert code == 0, err
    got = config_lines(out)
    assert got["api_key"] == ("fromenv", "env KITE_API_KEY")
    assert got["access_token"] == ("***", "env KITE_ACCESS_TOKEN")
    assert got["redis_prefix"] == ("j:", "config file")
    assert "very-secret-token" not in out + err


def test_config_masks_secrets_and_passwords(capsys):
    code, out, _ = run(capsys, "config", "--access-token", "tok-123456", "--api-secret", "sec-987654",
                       "--redis-url", "redis://user:pw1234@localhost:6379/0")
    assert code == 0
    assert "tok-123456" not in out and "sec-987654" not in out and "pw1234" not in out
    assert config_lines(out)["redis_url"][0] == "redis://user:***@localhost:6379/0"


def test_from_sources_origins_directly():
    from kiteohlc_lab.config import from_sources

    origins: dict = {}
    cfg = from_sources({"grace": "1.5"}, env={"KITE_API_KEY": "k"}, dotenv={"KITEOHLC_MODE": "ltp"},
                       config_file={"mode": "quote", "fill_empty": True}, origins=origins)
    assert (cfg.grace, cfg.api_key, cfg.mode, cfg.fill_empty, cfg.session_open) == (1.5, "k", "ltp", True, {})
    assert origins["grace"] == "flag" and origins["api_key"] == "env KITE_API_KEY"
    assert origins["mode"] == ".env KITEOHLC_MODE" and origins["fill_empty"] == "config file"
    assert origins["session_open"] == "default"


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("argv, words", [
    (["collect", "NIFTY", "7x"], ["7x", "1m"]),
    (["collect", "NIFTY", "1m", "--source", "bogus"], ["bogus", "kite"]),
    (["collect", "NIFTY", "1m", "--source", "replay"], ["--tape"]),
    (["collect", "NIFTY", "1m", "--speed", "-1"], ["-1", "positive"]),
    (["collect", "NIFTY"], ["required"]),
    (["config", "--grace", "soon"], ["grace", "float"]),
    (["config", "--redis-url", "http://x"], ["redis_url", "redis://"]),
    (["config", "--config", "nope.toml"], ["nope.toml", ".toml"]),
    (["config", "--config", "bad.toml"], ["bad.toml", "TOML"]),
    (["config", "--config", "unknown.json"], ["colour", "accepted"]),
    (["status", "--late-policy", "maybe"], ["late_policy"]),
    (["history", "NIFTY", "2q"], ["2q"]),
    (["frobnicate"], ["frobnicate", "collect"]),
    (["serve", "--port", "eighty"], ["--port", "eighty"]),
    ([], ["command"]),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, words):
    (tmp_path / "bad.toml").write_text("this is = = not toml")
    (tmp_path / "unknown.json").write_text('{"colour": "red"}')
    code, out, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_help_and_sim_help_exit_0(capsys):
    assert main(["--help"]) == 0
    assert main(["sim", "--help"]) == 0
    out, _ = capsys.readouterr()
    assert "--tick-interval" in out


# ---------------------------------------------------------------------- status
def _entry(pid: int, expires: float, host: str | None = None) -> dict:
    host = host or socket.gethostname()
    return {"id": f"{host}:{pid}", "host": host, "pid": pid, "source": "sim", "symbols": ["NIFTY"],
            "waiting": [], "tfs": ["1m"], "ticks_per_s": 2.0, "last_tick_age": 0.4, "health": "ok",
            "started": "2025-01-01T00:00:00+00:00", "updated": time.time(), "expires": expires}


def test_status_lists_live_collectors_only(capsys, isolated_env):
    folder = isolated_env / "collectors"
    folder.mkdir(parents=True)
    dead_pid = 2 ** 22 + 12345  # above pid_max on most systems: no such process
    alive = _entry(os.getpid(), time.time() + 30)
    (folder / "alive.json").write_text(json.dumps(alive))
    (folder / "dead.json").write_text(json.dumps(_entry(dead_pid, time.time() + 30)))
    (folder / "expired.json").write_text(json.dumps(_entry(os.getppid(), time.time() - 5)))
    code, out, err = run(capsys, "status", "--json")
    assert code == 0, err
    ids = [json.loads(line)["id"] for line in out.splitlines()]
    assert ids == [alive["id"]]
    assert not (folder / "dead.json").exists()  # a dead process's file is cleaned up
    code, out, _ = run(capsys, "status")
    assert "NIFTY" in out and "ok" in out and str(os.getpid()) in out


def test_status_without_collectors(capsys):
    code, out, _ = run(capsys, "status")
    assert code == 0 and "no collector running" in out


# ---------------------------------------------------------------------- history
def test_history_prints_csv(capsys, isolated_env):
    from kiteohlc_lab.core.candles import CandleBatch
    from kiteohlc_lab.stores.sqlite import SQLiteHistory

    isolated_env.mkdir(parents=True, exist_ok=True)
    h = SQLiteHistory(isolated_env / "history.sqlite3")
    start = np.array([1_700_000_040, 1_700_000_100], np.int64) * 1_000_000_000
    h.write(CandleBatch("1m", np.full(2, 256265, np.int64), start, np.array([1.0, 2.0]),
                        np.array([3.0, 4.0]), np.array([0.5, 1.5]), np.array([2.0, 3.0]),
                        np.array([10.0, 20.0]), np.full(2, np.nan), np.array([5, 6], np.int64)))
    h.close()
    code, out, err = run(capsys, "history", "NIFTY", "1m", "--csv", "--redis-url",
                         "redis://127.0.0.1:1/0")  # Redis unreachable: resolves locally
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("date,open,high,low,close,volume")
    assert len(lines) == 3 and lines[1].split(",")[1:5] == ["1.0", "3.0", "0.5", "2.0"]
    code, out, _ = run(capsys, "history", "256265", "1m", "--from", "2023-11-15 03:45", "--csv",
                       "--redis-url", "redis://127.0.0.1:1/0")
    assert code == 0 and len(out.strip().splitlines()) == 2


def test_every_option_reads_its_environment_variable_in_a_notebook_too(monkeypatch, tmp_path):
    # numbers and switches, not only the URLs: KITEOHLC_<OPTION> works for KiteOHLC() as for the CLI
    from traitlets.config import Config

    from kiteohlc_lab.config import KiteOHLC
    from kiteohlc_lab.errors import ConfigError

    monkeypatch.setenv("KITEOHLC_GRACE", "2.5")
    monkeypatch.setenv("KITEOHLC_MAX_IDLE_SERIES", "9")
    monkeypatch.setenv("KITEOHLC_FILL_EMPTY", "true")
    c = KiteOHLC()
    assert (c.grace, c.max_idle_series, c.fill_empty) == (2.5, 9, True)
    assert KiteOHLC(grace=1.0).grace == 1.0  # explicit beats the environment
    cf = Config()
    cf.KiteOHLC.grace = 3.0
    assert KiteOHLC(config=cf).grace == 3.0  # %config / ipython_config.py too
    monkeypatch.setenv("KITEOHLC_GRACE", "soon")
    with pytest.raises(ConfigError, match="KiteOHLC.grace = 'soon' is not accepted"):
        KiteOHLC()
