"""The live view in a real browser: JupyterLab + headless Chromium (Debian's), driven by Playwright.

A JupyterLab server runs on a free loopback port with a token, from a temporary HOME with no Kite
credentials (so ticks come from the built-in simulator). Chromium opens a small notebook, runs its
cells (``%load_ext``, ``%ohlc_stream NIFTY 10s``, ``live.view()``) and the test takes two
screenshots a few seconds apart: the chart image in the widget must have changed between them. The
screenshots go to the test's temp dir; ``UPDATE_SCREENSHOTS=1 python3 -m pytest tests/test_browser.py``
also copies them to ``docs/live_view.png`` and ``docs/live_view_later.png`` (shown in the README).

Chromium comes from the system (``apt-get install chromium``, which ``.ci/run`` does); Playwright is
only the driver, no browser is ever downloaded. The test skips when no Chromium can be found.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import need, need_import

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TOKEN = "kiteohlc-browser-test"
CELLS = [
    "%load_ext kiteohlc_lab\n%config KiteOHLC.refresh_interval = 0.5",
    "live = %ohlc_stream NIFTY 10s",
    "live.view()",
]
MIN_CANDLES = 5  # on the chart before the first screenshot
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(path: Path, cells: list[str] = CELLS) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def lab_settings(settings: Path) -> None:
    """No news/update toasts over the notebook."""
    d = settings / "@jupyterlab" / "apputils-extension"
    d.mkdir(parents=True)
    (d / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))


def wait_until(pred, timeout: float, what: str, step: float = 0.25) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def chromium() -> str:
    """Path of the system Chromium; skips (before any server starts) when there is none."""
    path = find_chromium()
    need(path is not None, "no Chromium found (apt-get install chromium); .ci/run installs it")
    return path


@pytest.fixture
def lab(chromium, tmp_path):
    """A JupyterLab server in a fresh HOME; yields (base url, home); stopped with its kernels."""
    home = tmp_path / "home"
    home.mkdir()
    write_notebook(home / "live.ipynb")
    lab_settings(home / "lab-settings")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KITE_", "KITEOHLC_", "JUPYTER"))}
    env.update(HOME=str(home), JUPYTERLAB_SETTINGS_DIR=str(home / "lab-settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "lab-workspaces"),
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               MPLBACKEND="module://matplotlib_inline.backend_inline")
    port = free_port()
    log = open(tmp_path / "lab.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         "--port-retries=0", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={home}",
         "--LabApp.expose_app_in_browser=True", "--ServerApp.terminals_enabled=False",
         *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])],
        cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"jupyter lab exited: {(tmp_path / 'lab.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_until(up, 60, "jupyter lab to answer")
        yield base, home
    finally:
        proc.send_signal(signal.SIGTERM)  # the server shuts its kernels down (streams stop, flush)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()


def changed_share(png_a: bytes, png_b: bytes) -> float:
    """Share of pixels that differ visibly between two screenshots of the same element."""
    import numpy as np
    from PIL import Image

    a, b = (np.asarray(Image.open(io.BytesIO(p)).convert("RGB"), dtype=np.int16)
            for p in (png_a, png_b))
    assert a.shape == b.shape and a.shape[1] > 300, (a.shape, b.shape)
    return float((np.abs(a - b).sum(axis=2) > 30).mean())


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_live_view_refreshes_in_a_real_browser(chromium, lab, tmp_path):
    from playwright.sync_api import sync_playwright

    base, home = lab
    t0 = time.monotonic()
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=chromium, headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{base}/lab/tree/live.ipynb?token={TOKEN}")
            page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell"
                                   " && document.querySelector('.jp-Notebook .jp-Cell')")
            # the kernel is up when the toolbar's status says idle
            page.wait_for_selector(".jp-Notebook .jp-Cell", state="visible")
            page.wait_for_function(
                "() => { const p = window.jupyterapp.shell.currentWidget;"
                " return p && p.sessionContext && p.sessionContext.session"
                " && p.sessionContext.session.kernel"
                " && p.sessionContext.session.kernel.status === 'idle'; }", timeout=90_000)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.evaluate("() => window.jupyterapp.commands.execute('application:toggle-left-area')"
                          " .catch(() => null)")
            chart = page.locator(".jp-OutputArea-output .widget-image, .jp-OutputArea-output img").first
            chart.wait_for(state="visible", timeout=90_000)
            page.wait_for_function(
                "() => { const i = document.querySelector('.jp-OutputArea-output img');"
                " return i && i.complete && i.naturalWidth > 100; }")
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
                                  " , .jp-RenderedText[data-mime-type='application/vnd.jupyter.error']")
            assert errors.count() == 0, errors.first.inner_text()
            # a few candles first (a sensible picture); the forming 10 s candle keeps moving after
            page.wait_for_function(
                "() => { const h = document.querySelector('.jp-OutputArea-output .widget-html');"
                " const m = h && h.innerText.match(/(\\d+) candles/);"
                f" return m && +m[1] >= {MIN_CANDLES}; }}", timeout=90_000)
            header = page.locator(".jp-OutputArea-output .widget-html").first
            chart.scroll_into_view_if_needed()
            first = chart.screenshot()
            page.screenshot(path=str(tmp_path / "live_view.png"))
            status = [header.inner_text()]
            # a few seconds later, then each second until the chart moved (a flat tick draws the same)
            time.sleep(4)
            deadline = time.monotonic() + 30
            while True:
                second = chart.screenshot()
                changed = changed_share(first, second)
                if changed > 0.001 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            page.screenshot(path=str(tmp_path / "live_view_later.png"))
            status.append(header.inner_text())
        finally:
            ctx.close()

    assert changed > 0.001, f"chart did not change in 30 s ({changed:.5f} of pixels): {status}"
    assert all("NIFTY 10s" in s for s in status), status
    if os.environ.get("UPDATE_SCREENSHOTS"):  # refresh the README's pictures
        DOCS.mkdir(exist_ok=True)
        for name in ("live_view.png", "live_view_later.png"):
            shutil.copyfile(tmp_path / name, DOCS / name)
    print(f"browser test: {time.monotonic() - t0:.1f} s in the browser, {changed:.2%} of chart pixels"
          " changed", file=sys.stderr)


# -- the interactive live chart (live.chart(): anywidget + lightweight-charts)
CHART_CELLS = [
    "%load_ext kiteohlc_lab",
    # a simulator ticking 20 times a second, reached like Kite (the built-in one ticks once a second)
    "from kiteohlc_lab.feeds.simulator import KiteSimulator\n"
    "sim = KiteSimulator(tick_interval=0.05).start()\n"
    "for k, v in dict(ticker_url=sim.ticker_url, api_url=sim.api_url, api_key=sim.api_key,\n"
    "                 access_token=sim.access_token).items():\n"
    "    get_ipython().run_line_magic('config', f'KiteOHLC.{k} = {v!r}')",
    "live = %ohlc_stream NSE:RELIANCE 1m 5m --source kite --backfill 1d",
    "chart = live.chart(height=460)\n"
    "chart.add_line('sma20', lambda df: df.close.rolling(20).mean())\n"
    "chart",
]
CHART_JS = "() => { const c = document.querySelector('.kohlc-chart'); return c && c.parentElement; }"


def chart_data(page) -> dict:
    return page.evaluate(f"() => {{ const el = ({CHART_JS})(); return el ? {{...el.dataset}} : null; }}")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_live_chart_in_a_real_browser(chromium, lab, tmp_path):
    from playwright.sync_api import sync_playwright

    from kiteohlc_lab.notebook.chart import STATIC

    need(STATIC.is_file(), "kiteohlc_lab/static/chart.js is not built (pip install -e . with npm)")
    base, home = lab
    write_notebook(home / "chart.ipynb", CHART_CELLS)
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=chromium, headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.set_default_timeout(60_000)
            console: list[str] = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
            page.goto(f"{base}/lab/tree/chart.ipynb?token={TOKEN}")
            page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell"
                                   " && document.querySelector('.jp-Notebook .jp-Cell')")
            page.wait_for_function(
                "() => { const p = window.jupyterapp.shell.currentWidget;"
                " return p && p.sessionContext && p.sessionContext.session"
                " && p.sessionContext.session.kernel"
                " && p.sessionContext.session.kernel.status === 'idle'; }", timeout=90_000)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.evaluate("() => window.jupyterapp.commands.execute('application:toggle-left-area')"
                          " .catch(() => null)")
            page.wait_for_selector(".kohlc-chart canvas", state="visible", timeout=120_000)
            t_shown = time.monotonic()
            # the candles are there at once: the first load is one message
            page.wait_for_function(f"() => {{ const el = ({CHART_JS})(); return el && +el.dataset.loads >= 1"
                                   " && +el.dataset.bars >= 20; }", timeout=10_000)
            first_paint = time.monotonic() - t_shown
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
                                  " , .jp-RenderedText[data-mime-type='application/vnd.jupyter.error']")
            assert errors.count() == 0, errors.first.inner_text()
            box = page.locator(".kohlc-chart").first
            box.scroll_into_view_if_needed()

            # 10 s of live updates: count how often the drawn last candle changed
            page.evaluate(f"""() => {{
                const el = ({CHART_JS})();
                window.__lastChanges = 0;
                let prev = el.dataset.last;
                new MutationObserver(() => {{
                    if (el.dataset.last !== prev) {{ prev = el.dataset.last; window.__lastChanges++; }}
                }}).observe(el, {{attributes: true, attributeFilter: ["data-last"]}});
            }}""")
            before = chart_data(page)
            time.sleep(10)
            after = chart_data(page)
            changes = page.evaluate("() => window.__lastChanges")
            assert changes >= 60, (changes, before, after)
            assert int(after["updates"]) - int(before["updates"]) >= 60, (before, after)
            assert after["loads"] == before["loads"], "a delta stream, not reloads"

            # wheel zoom changes the visible range; a drag pans back in time and shows the Live button
            plot = page.locator(".kohlc-chart .kohlc-plot").first
            pb = plot.bounding_box()
            cx, cy = pb["x"] + pb["width"] * 0.5, pb["y"] + pb["height"] * 0.35
            page.mouse.move(cx, cy)
            page.wait_for_timeout(200)
            r0 = chart_data(page)
            page.mouse.wheel(0, -400)
            page.wait_for_function(f"() => {{ const d = ({CHART_JS})().dataset;"
                                   f" return Math.abs((d.to - d.from) - ({r0['to']} - {r0['from']})) > 1; }}",
                                   timeout=5_000)
            r1 = chart_data(page)
            assert float(r1["to"]) - float(r1["from"]) < float(r0["to"]) - float(r0["from"]), (r0, r1)
            legend = page.locator(".kohlc-chart .kohlc-legend").first.inner_text()
            assert "O " in legend and "V " in legend, legend
            page.screenshot(path=str(tmp_path / "chart_page.png"))
            box.screenshot(path=str(tmp_path / "chart.png"))
            page.mouse.down()
            page.mouse.move(cx + 400, cy, steps=8)
            page.mouse.up()
            live_button = page.locator(".kohlc-chart .kohlc-live").first
            live_button.wait_for(state="visible", timeout=5_000)
            r2 = chart_data(page)
            assert float(r2["to"]) < float(r1["to"]) - 5, (r1, r2)
            live_button.click()
            live_button.wait_for(state="hidden", timeout=5_000)

            # the picker in the header switches the timeframe inside the widget: one reload
            loads = int(chart_data(page)["loads"])
            tf_select = page.locator(".kohlc-chart select.kohlc-tf").first
            assert sorted(tf_select.locator("option").all_inner_texts()) == ["1m", "5m"]
            tf_select.select_option("5m")
            page.wait_for_function(f"() => +({CHART_JS})().dataset.loads > {loads}", timeout=15_000)
            assert page.locator(".kohlc-chart input.kohlc-symbol").first.input_value() == "NSE:RELIANCE"
            assert not [c for c in console if "kohlc" in c or "lightweight" in c], console
        finally:
            ctx.close()
    if os.environ.get("UPDATE_SCREENSHOTS"):
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / "chart.png", DOCS / "chart.png")
    print(f"chart browser test: first paint {first_paint:.2f} s after the canvas, {changes} changes of"
          f" the last candle in 10 s", file=sys.stderr)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_served_chart_page_in_a_real_browser(chromium, tmp_path):
    """``kiteohlc-lab serve``'s /chart page: a login form first (the key goes in the POST body, a session
    cookie comes back), then the same module over server-sent events keeps updating."""
    import threading

    from playwright.sync_api import sync_playwright

    from conftest_notebook import FakeManager, FakeSeries
    from kiteohlc_lab.notebook.chart import STATIC

    need(STATIC.is_file(), "kiteohlc_lab/static/chart.js is not built (pip install -e . with npm)")
    uvicorn = need_import("uvicorn")
    from kiteohlc_lab.serve import build_app

    m = FakeManager()
    s = m.buffers[("NIFTY", "1m")] = FakeSeries("1m", n=500)
    m.streams["sim-1"] = dict(stream="sim-1", source="sim", state="running", symbols=["NIFTY"],
                              timeframes=["1m"])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(m, "k3y"), host="127.0.0.1", port=port,
                                           log_level="warning"))
    srv = threading.Thread(target=server.run, name="kiteohlc-test-uvicorn", daemon=True)
    srv.start()
    stop = threading.Event()

    def ticker() -> None:  # the forming candle moves 20 times a second
        i = 0
        while not stop.wait(0.05):
            i += 1
            s.tick(22000.0 + (i % 40) * 0.05)

    tick = threading.Thread(target=ticker, name="kiteohlc-test-ticker", daemon=True)
    tick.start()
    try:
        wait_until(lambda: server.started, 20, "uvicorn to start")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 700})
                base = f"http://127.0.0.1:{port}"
                seen: list[str] = []  # every URL the page asks for: the key is in none of them
                page.on("request", lambda req: seen.append(req.url))
                page.goto(f"{base}/chart/NIFTY/1m")  # no session yet: the login form, no chart
                assert page.locator("input[type=password]").count() == 1
                assert page.locator(".kohlc-chart").count() == 0
                page.fill("input[name=key]", "wrong")
                page.click("button[type=submit]")
                page.wait_for_selector("text=Wrong key", timeout=10_000)
                page.fill("input[name=key]", "k3y")
                page.click("button[type=submit]")  # -> 303 back to the chart, with the session cookie
                page.wait_for_selector(".kohlc-chart canvas", state="visible", timeout=20_000)
                assert page.url == f"{base}/chart/NIFTY/1m"
                cookie, = [c for c in page.context.cookies() if c["name"] == "kohlc_session"]
                assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and "k3y" not in cookie["value"]
                assert page.evaluate("() => document.cookie") == ""  # HttpOnly: not readable by scripts
                page.click("text=streams")
                page.click("text=NIFTY 1m")
                page.wait_for_selector(".kohlc-chart canvas", state="visible", timeout=20_000)
                page.wait_for_function("() => { const c = document.querySelector('.kohlc-chart');"
                                       " return c && +c.parentElement.dataset.bars === 500; }", timeout=10_000)
                get = "() => +document.querySelector('.kohlc-chart').parentElement.dataset.updates"
                u0 = page.evaluate(get)
                time.sleep(3)
                u1 = page.evaluate(get)
                assert u1 - u0 >= 15, (u0, u1)
                loads = page.evaluate("() => +document.querySelector('.kohlc-chart').parentElement.dataset.loads")
                assert loads == 1
                assert "k3y" not in page.content()
                assert seen and not [u for u in seen if "k3y" in u or "key=" in u], seen
            finally:
                browser.close()
    finally:
        stop.set()
        tick.join(2)
        server.should_exit = True
        srv.join(10)
