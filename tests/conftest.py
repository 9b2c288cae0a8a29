from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config):
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets of ../shared/data (skips when absent)."""
    if not (SHARED_DATA / "stahl2016_mob_rep11.h5ad").exists():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (the ../shared checkout beside the repo)")
    return SHARED_DATA


@pytest.fixture
def small_adata():
    """A 120-spot, 40-gene synthetic section with its spatial graph."""
    import stmcdi

    adata = stmcdi.datasets.synthetic(n_spots=120, n_genes=40, seed=1)
    stmcdi.pp.spatial_graph(adata)
    return adata


@pytest.fixture
def rng():
    return np.random.default_rng(0)
