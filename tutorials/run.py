"""Execute tutorials top to bottom in one kernel, store their outputs and record the wall time.

The docs render the notebooks from their stored outputs and ``tests/test_tutorials.py`` reads the recorded
time (``metadata.stmcdi_execution.wall_seconds``, limit 15 minutes on a 2-core CPU). Re-run a notebook whenever
the code it shows changes, on an otherwise idle machine, one notebook at a time::

    python tutorials/run.py                       # every notebook in this folder
    python tutorials/run.py quickstart_mob        # one of them
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).parent


def run(path: Path, timeout: int = 1800) -> float:
    """Execute ``path`` in place (working directory: this folder) and return its wall time in seconds."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}})
    t0 = time.perf_counter()
    try:
        client.execute()
    finally:
        seconds = time.perf_counter() - t0
        nb.metadata["stmcdi_execution"] = {"wall_seconds": round(seconds, 1)}
        nbformat.write(nb, path)
    return seconds


def main() -> None:
    """Command line: the notebooks to run (stems or paths; default all)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="notebook names (default: every .ipynb here)")
    args = parser.parse_args()
    paths = [HERE / f"{Path(n).stem}.ipynb" for n in args.notebooks] or sorted(HERE.glob("*.ipynb"))
    for path in paths:
        print(f"{path.name}: {run(path):.1f} s", flush=True)


if __name__ == "__main__":
    main()
