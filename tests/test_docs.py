"""The documentation builds without warnings (skipped when Sphinx is not installed: ``pip install -e ".[doc]"``)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_docs_build(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_nb")
    env = {**os.environ, "STMCDI_DOCS_INTERSPHINX": "0"}  # offline: no inventory downloads
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(tmp_path / "html")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout[-5000:]}\n{result.stderr[-10000:]}"
    html = tmp_path / "html"
    for page in ("faq", "installation", "method", "api", "benchmarks", "tutorials/index"):
        assert (html / f"{page}.html").is_file(), f"{page} was not built"
    notebooks = sorted((DOCS.parent / "tutorials").glob("*.ipynb"))
    assert notebooks
    for nb in notebooks:  # rendered from the stored outputs, figures included
        text = (html / "tutorials" / f"{nb.stem}.html").read_text()
        assert "<img" in text and "Traceback" not in text, nb.stem
