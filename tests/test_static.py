"""Static checks CI runs with the tests: mypy on the core (STYLE.md), pyflakes-level ruff on the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import need_import

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_core_type_checks():
    need_import("mypy")
    res = _run("mypy", "kiteohlc_lab/core", "--ignore-missing-imports", "--follow-imports=silent")
    assert res.returncode == 0, res.stdout[-3000:]


def test_package_has_no_undefined_names_or_unused_imports():
    need_import("ruff")
    res = _run("ruff", "check", "kiteohlc_lab", "--select", "F", "--no-cache")
    assert res.returncode == 0, res.stdout[-3000:]
