"""The quickstart notebook runs top to bottom in a real kernel on a fresh machine (no credentials)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def run_quickstart(home: Path, timeout: int = 120) -> tuple[object, float]:
    """Execute the quickstart in a fresh kernel with HOME=home and no KITE_*/KITEOHLC_* variables."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KITE_", "KITEOHLC_"))}
    env["HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join([str(NOTEBOOK.parents[1]), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(home)}},
                            store_widget_state=True)
    t0 = time.perf_counter()
    client.execute(env=env, cwd=str(home))
    return nb, time.perf_counter() - t0


def _outputs(nb, source_start: str) -> list[dict]:
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.startswith(source_start):
            return cell.outputs
    raise AssertionError(f"no cell starting {source_start!r}")


@pytest.mark.slow
def test_quickstart_runs_from_a_fresh_home(tmp_path):
    nb, seconds = run_quickstart(tmp_path)
    assert seconds < 120
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    # the first stream came from the simulator, in one line
    text = "".join(o.get("text", "") for o in _outputs(nb, "live = %ohlc_stream"))
    assert "simulator" in text and text.count("\n") == 1
    # the static chart is a PNG in the saved outputs
    chart = _outputs(nb, "%ohlc_plot RELIANCE")
    assert any("image/png" in o.get("data", {}) for o in chart)
    # the live widget was displayed from the cell (a widget view), its state stored
    view = _outputs(nb, "view = live.view()")
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in view)
    # history came back from the store after the restart
    hist = _outputs(nb, "# after a restart")
    assert any("text/html" in o.get("data", {}) for o in hist)
    assert (tmp_path / ".kiteohlc_lab").is_dir()


if __name__ == "__main__":  # refresh the committed outputs: python tests/test_quickstart.py
    import nbformat
    import tempfile

    with tempfile.TemporaryDirectory() as home:
        nb, seconds = run_quickstart(Path(home))
    nbformat.write(nb, NOTEBOOK)
    print(f"executed in {seconds:.1f} s -> {NOTEBOOK}", file=sys.stderr)
