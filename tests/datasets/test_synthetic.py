from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.spatial import cKDTree

from stmcdi.datasets import synthetic
from stmcdi.datasets._synthetic import hex_lattice


@pytest.fixture(scope="module")
def adata():
    return synthetic()


def test_shape_and_format(adata):
    assert adata.shape == (600, 200)
    assert sp.isspmatrix_csr(adata.X)
    assert adata.X.dtype == np.float32
    assert adata.obsm["spatial"].dtype == np.float64
    assert adata.obsm["spatial"].shape == (600, 2)
    assert adata.obs_names.is_unique and adata.var_names.is_unique
    assert isinstance(adata.obs["domain"].dtype, pd.CategoricalDtype)
    assert adata.obs["domain"].nunique() == 4
    # nothing beyond counts, coordinates, domain, totals and provenance
    assert set(adata.obs.columns) == {"domain", "total_counts"}
    assert set(adata.var.columns) == {"total_counts"}
    assert list(adata.layers.keys()) == []
    assert list(adata.obsm.keys()) == ["spatial"]
    assert set(adata.uns.keys()) == {"provenance"}
    assert adata.uns["provenance"]["name"] == "stmcdi synthetic"
    assert adata.uns["provenance"]["seed"] == 0


def test_integer_counts_and_totals(adata):
    data = adata.X.data
    assert np.all(data >= 0)
    np.testing.assert_array_equal(data, np.round(data))
    np.testing.assert_allclose(adata.obs["total_counts"], np.asarray(adata.X.sum(1)).ravel())
    np.testing.assert_allclose(adata.var["total_counts"], np.asarray(adata.X.sum(0)).ravel())
    # library sizes around the requested depth
    assert 1500 < np.median(adata.obs["total_counts"]) < 2600


def test_deterministic():
    a = synthetic(n_spots=200, n_genes=30, seed=3)
    b = synthetic(n_spots=200, n_genes=30, seed=3)
    c = synthetic(n_spots=200, n_genes=30, seed=4)
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])
    assert (a.obs["domain"] == b.obs["domain"]).all()
    assert (a.X != c.X).nnz > 0


def test_lattice():
    coords = hex_lattice(600)
    assert coords.shape == (600, 2)
    assert len(np.unique(coords.round(9), axis=0)) == 600
    d, _ = cKDTree(coords).query(coords, k=7)
    np.testing.assert_allclose(d[:, 1], 1.0, atol=1e-9)
    interior = np.isclose(d[:, 6], 1.0)
    assert interior.mean() > 0.7  # most spots have 6 neighbours at distance 1
    span = np.ptp(coords, axis=0)
    assert 0.8 < span[1] / span[0] < 1.25  # roughly square


def test_domains_contiguous(adata):
    coords = adata.obsm["spatial"]
    dom = adata.obs["domain"].cat.codes.to_numpy()
    _, idx = cKDTree(coords).query(coords, k=7)
    agree = (dom[idx[:, 1:]] == dom[:, None]).mean()
    assert agree > 0.7
    assert np.bincount(dom).min() > 0.1 * adata.n_obs


def test_sparsity(adata):
    zeros = 1.0 - adata.X.nnz / np.prod(adata.shape)
    assert 0.2 < zeros < 0.8


def test_domain_markers(adata):
    x = adata.X.toarray()
    x = np.log1p(x / x.sum(1, keepdims=True) * 1e4)
    dom = adata.obs["domain"].cat.codes.to_numpy()
    for k in range(4):
        inside = x[dom == k].mean(0)
        outside = x[dom != k].mean(0)
        # every domain has several genes clearly up in it
        assert ((inside - outside) > 0.7).sum() >= 5


def test_other_sizes():
    a = synthetic(n_spots=37, n_genes=5, n_domains=3, depth=300.0, dispersion=1.0, seed=11)
    assert a.shape == (37, 5)
    assert a.obs["domain"].nunique() == 3
    one = synthetic(n_spots=20, n_genes=4, n_domains=1)
    assert one.obs["domain"].nunique() == 1


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"n_spots": 0}, ValueError),
        ({"n_spots": 3, "n_domains": 4}, ValueError),
        ({"n_genes": 0}, ValueError),
        ({"n_domains": 0}, ValueError),
        ({"n_spots": 10.5}, TypeError),
        ({"depth": -1.0}, ValueError),
        ({"depth": float("nan")}, ValueError),
        ({"dispersion": 0}, ValueError),
        ({"seed": -1}, ValueError),
        ({"seed": "a"}, TypeError),
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises(error):
        synthetic(**kwargs)
