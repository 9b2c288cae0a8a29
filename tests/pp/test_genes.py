import anndata as ad
import numpy as np
import pytest

import stmcdi


def test_cv_panel_picks_the_most_variable_detected_genes():
    rng = np.random.default_rng(0)
    counts = rng.poisson(20, (200, 6)).astype(np.float32)
    counts[:, 0] = rng.poisson(20, 200) * (rng.random(200) < 0.5)  # detected in ~50%, high CV
    counts[:, 1] = 0
    counts[:5, 1] = 100  # highest CV but detected in 2.5% of spots
    adata = ad.AnnData(counts)
    stmcdi.pp.select_genes(adata, n_top_genes=1, flavor="cv", min_detection=0.1)
    assert adata.var["highly_variable"].to_numpy().nonzero()[0].tolist() == [0]
    stmcdi.pp.select_genes(adata, n_top_genes=1, flavor="cv", min_detection=0.0)
    assert adata.var["highly_variable"].to_numpy().nonzero()[0].tolist() == [1]


def test_seurat_v3_default_and_subset():
    adata = stmcdi.datasets.synthetic(n_spots=150, n_genes=60)
    stmcdi.pp.select_genes(adata, n_top_genes=25, subset=True)
    assert adata.n_vars == 25
    assert (adata.var["highly_variable_rank"].to_numpy() < 25).all()


def test_bad_flavor_and_too_few_genes():
    adata = stmcdi.datasets.synthetic(n_spots=50, n_genes=10)
    with pytest.raises(ValueError, match="flavor"):
        stmcdi.pp.select_genes(adata, flavor="dispersion")
    with pytest.raises(ValueError, match="qualify"):
        stmcdi.pp.select_genes(adata, n_top_genes=10, flavor="cv", min_detection=1.01)
