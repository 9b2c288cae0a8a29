"""The tutorials are stored executed: every code cell ran, in order, without errors, within the time limit."""

import re
from pathlib import Path

import nbformat
import pytest

TUTORIALS = Path(__file__).parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
MAX_SECONDS = 15 * 60  # each notebook must run top to bottom in <= 15 min on the 2-core CPU machine


def test_every_notebook_is_in_the_index():
    index = (TUTORIALS / "index.md").read_text()
    toctree = re.search(r"```\{toctree\}(.*?)```", index, re.S).group(1)
    listed = {line.strip() for line in toctree.splitlines() if line.strip() and not line.strip().startswith(":")}
    assert listed == {nb.stem for nb in NOTEBOOKS}
    assert len(NOTEBOOKS) >= 4


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_executed_in_order_without_errors(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "no code cells"
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), f"cells not run top to bottom in one kernel: {counts}"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name} stored an error: {errors[0].ename}: {errors[0].evalue}"
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "a tutorial shows at least one figure"
    seconds = nb.metadata.get("stmcdi_execution", {}).get("wall_seconds")
    assert seconds is not None, "execution time not recorded in the metadata (stmcdi_execution.wall_seconds)"
    assert seconds <= MAX_SECONDS, f"{path.name} took {seconds:.0f} s to run, over {MAX_SECONDS} s"
    assert nb.metadata["kernelspec"]["language"] == "python"
