"""Build hook: the live chart's JavaScript is bundled from the pinned npm packages in ``js/``.

Everything else is in pyproject.toml. ``pip install -e .``, ``pip install .`` and wheel builds run
``build_py``, which runs ``npm ci`` (when ``js/node_modules`` is older than the lockfile) and
``npm run build`` (esbuild) in ``js/``, writing ``kiteohlc_lab/static/chart.js`` (git-ignored, carried
by wheels as package data). Without Node.js/npm, or when npm fails, the install goes on and says in
one line that the chart is unavailable; ``live.view()`` (the PNG view) does not need it.
``KITEOHLC_SKIP_JS=1`` skips the step.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
JS = ROOT / "js"
OUT = ROOT / "kiteohlc_lab" / "static" / "chart.js"


def _newest(paths: list[Path]) -> float:
    return max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)


def _say(text: str) -> None:
    print(f"kiteohlc_lab: {text}", file=sys.stderr, flush=True)


def build_chart_js() -> bool:
    """Build ``kiteohlc_lab/static/chart.js``; True when it exists afterwards."""
    if os.environ.get("KITEOHLC_SKIP_JS") == "1" or not (JS / "package.json").exists():
        return OUT.exists()
    sources = [JS / "package.json", JS / "package-lock.json", *(JS / "src").rglob("*")]
    if OUT.exists() and OUT.stat().st_mtime >= _newest(sources):
        return True  # up to date
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        _say("Node.js/npm not found: the live chart (live.chart(), %ohlc_chart) is unavailable; "
             "live.view() works (install Node.js and npm, then reinstall to get the chart)")
        return OUT.exists()
    try:
        modules = JS / "node_modules"
        if not modules.exists() or modules.stat().st_mtime < _newest([JS / "package-lock.json"]):
            subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=JS,
                           check=True, stdout=sys.stderr)
            modules.touch()
        subprocess.run([npm, "run", "--silent", "build"], cwd=JS, check=True, stdout=sys.stderr)
    except (OSError, subprocess.CalledProcessError) as exc:
        _say(f"building the live chart's JavaScript failed ({exc}): live.chart() is unavailable; "
             "live.view() works")
    return OUT.exists()


class BuildPyWithChart(build_py):
    def run(self) -> None:
        build_chart_js()
        super().run()


setup(cmdclass={"build_py": BuildPyWithChart})
