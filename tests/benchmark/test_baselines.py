from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from anndata import AnnData

from stmcdi.benchmark import BASELINES, expression_knn, gene_mean, hold_out, score, soft_impute, spatial_knn, spot_mean
from stmcdi.pp import log_normalize

X3 = np.array([[1.0, np.nan, 3.0], [np.nan, 5.0, 6.0], [7.0, 8.0, np.nan]])


def _data(seed: int = 0, n_side: int = 16, n_genes: int = 60) -> AnnData:
    """Counts with a smooth spatial, low-rank (3 fields) log-rate and varying library sizes."""
    rng = np.random.default_rng(seed)
    xx, yy = np.meshgrid(np.arange(n_side), np.arange(n_side))
    coords = np.c_[xx.ravel(), yy.ravel()].astype(float)
    fields = np.c_[np.sin(coords[:, 0] / 3.0), np.cos(coords[:, 1] / 4.0), np.sin((coords[:, 0] + coords[:, 1]) / 5.0)]
    rate = np.exp(rng.uniform(0, 2.5, n_genes) + fields @ rng.normal(0, 0.8, (3, n_genes)))
    lib = rng.lognormal(0, 0.3, size=(n_side**2, 1))
    adata = AnnData(sp.csr_matrix(rng.poisson(rate * lib).astype(np.float32)))
    adata.obsm["spatial"] = coords
    return adata


def test_gene_mean_exact():
    expected = np.array([[1.0, 6.5, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 4.5]])
    np.testing.assert_allclose(gene_mean(X3), expected)
    out = gene_mean(np.array([[np.nan, 1.0], [np.nan, 3.0]]))  # all-missing gene: the overall mean
    np.testing.assert_array_equal(out[:, 0], [2.0, 2.0])


def test_spot_mean_exact():
    expected = np.array([[1.0, 2.0, 3.0], [5.5, 5.0, 6.0], [7.0, 8.0, 7.5]])
    np.testing.assert_array_equal(spot_mean(X3), expected)
    x = X3.copy()
    x[1] = np.nan  # empty spot: gene means
    np.testing.assert_array_equal(spot_mean(x)[1], [4.0, 8.0, 3.0])


def test_spatial_knn_exact():
    x = np.array([[1.0, 2.0], [np.nan, np.nan], [3.0, np.nan], [9.0, 4.0]])
    coords = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [10.0, 0.0]])
    out = spatial_knn(x, coords, n_neighbors=2)
    # spot 1: neighbours 0 and 2 -> gene 0: (1 + 3) / 2; gene 1 only observed at spot 0 -> 2
    np.testing.assert_array_equal(out[1], [2.0, 2.0])
    assert out[2, 1] == 2.0
    with pytest.raises(ValueError, match="coords"):
        spatial_knn(x, coords[:3])


def test_soft_impute_recovers_a_low_rank_matrix():
    rng = np.random.default_rng(0)
    full = rng.normal(size=(80, 2)) @ rng.normal(size=(2, 40)) + rng.normal(size=40)
    x = full.copy()
    miss = rng.random(full.shape) < 0.2
    x[miss] = np.nan
    out = soft_impute(x, rank=2, fraction=0.01)
    err = np.sqrt(np.mean((out[miss] - full[miss]) ** 2))
    base = np.sqrt(np.mean((gene_mean(x)[miss] - full[miss]) ** 2))
    assert err < 0.1 * base
    np.testing.assert_array_equal(out[~miss], full[~miss])


@pytest.mark.parametrize("name", list(BASELINES))
def test_baselines_keep_observed_and_fill_all(name):
    held = hold_out(_data(), "entries", 0.1, seed=0)
    x, _, _ = log_normalize(held.adata.X)
    pred = BASELINES[name](held.adata, seed=0)
    assert pred.shape == x.shape and np.isfinite(pred).all()
    obs = ~np.isnan(x)
    np.testing.assert_array_equal(pred[obs], x[obs].astype(np.float64))
    np.testing.assert_array_equal(pred, BASELINES[name](held.adata, seed=0))  # seeded


def test_tuned_baselines_beat_gene_mean_and_the_stack_is_at_least_as_good_as_its_parts():
    held = hold_out(_data(), "entries", 0.1, seed=0)
    scores = {name: score(held, method(held.adata, seed=0)) for name, method in BASELINES.items()}
    base = scores["gene_mean"]["rmse"]
    for name in ("expression_knn", "spatial_knn", "soft_impute", "stack"):
        assert scores[name]["rmse"] < 0.8 * base, (name, scores[name]["rmse"], base)
        assert scores[name]["per_gene_pcc"] > 0.5, name
    assert scores["stack"]["rmse"] <= 1.01 * min(scores[n]["rmse"] for n in ("spatial_knn", "soft_impute"))
    assert np.isnan(scores["gene_mean"]["per_gene_pcc"])  # constant per gene


def test_under_thin_a_baseline_denoises_the_visible_matrix_and_keeps_its_zeros_as_data():
    held = hold_out(_data(), "thin", 0.5, seed=0)
    x, _, _ = log_normalize(held.adata.X)
    assert not np.isnan(x).any()
    for name in ("spatial_knn", "soft_impute", "stack"):
        pred = BASELINES[name](held.adata, seed=0, target="zeros")
        zero = x == 0
        np.testing.assert_array_equal(pred[~zero], x[~zero])
        assert (pred[zero] > 0).mean() > 0.5
    # the estimate at a zero is read with the zeros visible: lower than with zeros treated as missing
    dense = BASELINES["spatial_knn"](held.adata, seed=0, target="zeros")
    blind = spatial_knn(np.where(x == 0, np.nan, x), held.adata.obsm["spatial"], n_neighbors=6)
    assert dense[x == 0].mean() < 0.8 * blind[x == 0].mean()


def test_told_that_the_entries_are_nonzero_a_baseline_fits_on_the_nonzero_entries():
    held = hold_out(_data(), "nonzero", 0.1, seed=0)
    x, _, _ = log_normalize(held.adata.X)
    plain = BASELINES["gene_mean"](held.adata, seed=0)
    told = BASELINES["gene_mean"](held.adata, seed=0, nonzero=True)
    miss = np.isnan(x)
    nz_mean = np.nanmean(np.where(x == 0, np.nan, x), axis=0)
    np.testing.assert_allclose(told[miss], np.broadcast_to(nz_mean, x.shape)[miss], rtol=1e-5)
    assert told[miss].mean() > plain[miss].mean()
    assert score(held, told)["rmse"] < score(held, plain)["rmse"]


def test_functional_api_with_lognormalised_matrix():
    adata = _data()
    held = hold_out(adata, "entries", 0.1, seed=1)
    x, _, _ = log_normalize(held.adata.X)
    np.testing.assert_array_equal(expression_knn(x, n_neighbors=5, n_pcs=10, seed=0),
                                  expression_knn(x, n_neighbors=5, n_pcs=10, seed=0))


def test_spatial_method_needs_coordinates():
    held = hold_out(_data(), "entries", 0.1, seed=0)
    del held.adata.obsm["spatial"]
    with pytest.raises(KeyError, match="spatial"):
        BASELINES["spatial_knn"](held.adata)
    assert set(BASELINES) == {"gene_mean", "spot_mean", "expression_knn", "spatial_knn", "soft_impute", "stack"}
