"""Smoke tests of the benchmark scripts that need no training (``benchmarks/*.py`` are not a package)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

import stmcdi

SCRIPTS = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(script: str, argv: list[str], monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", [script, *argv])
    runpy.run_path(str(SCRIPTS / script), run_name="__main__")
    return capsys.readouterr().out


@pytest.mark.parametrize("before", [False, True])
def test_scored_genes_counts_genes_per_split(tmp_path, monkeypatch, capsys, before):
    adata = stmcdi.datasets.synthetic(n_spots=120, n_genes=60, seed=0)
    path = tmp_path / "toy.h5ad"
    adata.write_h5ad(path)
    argv = [str(path), "--n-genes", "40", "--seeds", "0", "1"] + (["--panel-before-hold-out"] if before else [])
    out = _run("scored_genes.py", argv, monkeypatch, capsys)
    rows = [line for line in out.splitlines() if line.startswith("| toy |")]
    assert len(rows) == 2 * 3  # two panels x three protocols
    for row in rows:
        counts = [int(c) for c in row.split("|")[4].split("/")]
        assert len(counts) == 2
        assert all(0 <= c <= 40 for c in counts)  # scored genes are panel genes
    # entries 10% hides 12 entries per gene of 120 spots: every panel gene is scored
    assert rows[0].split("|")[4].strip() == "40 / 40"
