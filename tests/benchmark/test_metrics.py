from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from anndata import AnnData

from stmcdi.benchmark import (
    cosine,
    crps_ensemble,
    crps_gaussian,
    hold_out,
    interval_coverage,
    mae,
    pcc,
    per_gene_pcc,
    per_spot_pcc,
    rmse,
    score,
    split_half_ceiling,
)
from stmcdi.pp import log_normalize


def _data(seed: int = 0) -> AnnData:
    rng = np.random.default_rng(seed)
    n_side, n_genes = 12, 30
    xx, yy = np.meshgrid(np.arange(n_side), np.arange(n_side))
    coords = np.c_[xx.ravel(), yy.ravel()].astype(float)
    fields = np.c_[np.sin(coords[:, 0] / 3.0), np.cos(coords[:, 1] / 4.0)]
    rate = np.exp(rng.uniform(0, 2, n_genes) + fields @ rng.normal(0, 0.8, (2, n_genes)))
    adata = AnnData(sp.csr_matrix(rng.poisson(rate).astype(np.float32)))
    adata.obsm["spatial"] = coords
    return adata


def test_pooled_metrics_exact():
    assert pcc([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pcc([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pcc([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(pcc([1, 1, 1], [1, 2, 3]))
    assert cosine([1, 0], [0, 1]) == pytest.approx(0.0)
    assert cosine([1, 2], [2, 4]) == pytest.approx(1.0)
    assert cosine([1, 0], [1, 1]) == pytest.approx(1 / math.sqrt(2))
    assert rmse([0, 0], [3, 4]) == pytest.approx(math.sqrt(12.5))
    assert rmse([1, 2, 3], [1, 2, 3]) == 0.0
    assert mae([0, 0], [3, -4]) == pytest.approx(3.5)
    with pytest.raises(ValueError, match="same entries"):
        rmse([1, 2], [1, 2, 3])


def test_per_gene_and_per_spot_pcc():
    # 3 spots x 2 genes, gene 0 scored in all spots, gene 1 in spots 0 and 2
    mask = sp.csr_matrix(np.array([[1, 1], [1, 0], [1, 1]], dtype=bool))
    # row-major order: (0,0) (0,1) (1,0) (2,0) (2,1)
    truth = np.array([1.0, 5.0, 2.0, 3.0, 7.0])
    pred = np.array([3.0, 1.0, 2.0, 1.0, 2.0])
    g = per_gene_pcc(truth, pred, mask, min_entries=2)
    assert g[0] == pytest.approx(-1.0)  # [1, 2, 3] vs [3, 2, 1]
    assert g[1] == pytest.approx(1.0)  # [5, 7] vs [1, 2]
    g3 = per_gene_pcc(truth, pred, mask, min_entries=3)
    assert g3[0] == pytest.approx(-1.0) and np.isnan(g3[1])
    s = per_spot_pcc(truth, pred, mask, min_entries=2)
    assert s[0] == pytest.approx(-1.0)  # [1, 5] vs [3, 1]
    assert np.isnan(s[1])  # one entry
    assert s[2] == pytest.approx(1.0)  # [3, 7] vs [1, 2]
    # dense matrices of the mask's shape give the same values
    dense_t = np.zeros((3, 2))
    dense_p = np.zeros((3, 2))
    r, c = mask.nonzero()
    dense_t[r, c] = truth
    dense_p[r, c] = pred
    np.testing.assert_allclose(per_gene_pcc(dense_t, dense_p, mask, min_entries=2), g)
    # constant prediction -> NaN
    assert np.isnan(per_gene_pcc(truth, np.ones(5), mask, min_entries=2)).all()


def test_score_perfect_and_checks():
    held = hold_out(_data(), "entries", 0.2, seed=0)
    pred = np.zeros(held.mask.shape)
    r, c = held.mask.nonzero()
    pred[r, c] = held.truth
    s = score(held, pred, min_entries=5)
    assert s["n_scored"] == held.mask.nnz
    # every gene with >= 5 scored entries enters the per-gene median; a constant prediction enters none
    assert s["n_genes_scored"] == (np.asarray(held.mask.sum(0)).ravel() >= 5).sum() > 0
    assert score(held, np.ones(held.mask.shape), min_entries=5)["n_genes_scored"] == 0
    for k in ("per_gene_pcc", "per_spot_pcc", "pcc", "cosine", "pcc_z"):
        assert s[k] == pytest.approx(1.0), k
    for k in ("rmse", "mae", "rmse_z", "mae_z"):
        assert s[k] == pytest.approx(0.0, abs=1e-6), k
    with pytest.raises(ValueError, match="shape"):
        score(held, pred[:, :-1])
    bad = pred.copy()
    bad[r[0], c[0]] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        score(held, bad)
    bad = pred.copy()
    bad[~held.mask.toarray()] = np.nan  # NaN elsewhere is fine
    assert score(held, bad)["rmse"] == pytest.approx(0.0, abs=1e-6)


def test_score_z_scale_matches_manual():
    held = hold_out(_data(), "entries", 0.2, seed=1)
    x, _, _ = log_normalize(held.adata.X)
    x = x.astype(np.float64)
    mean = np.nanmean(x, axis=0)
    sd = np.nanstd(x, axis=0)
    pred = np.broadcast_to(mean, x.shape) + 0.1
    r, c = held.mask.nonzero()
    tz = (held.truth - mean[c]) / sd[c]
    pz = (pred[r, c] - mean[c]) / sd[c]
    s = score(held, pred)
    assert s["rmse_z"] == pytest.approx(np.sqrt(np.mean((tz - pz) ** 2)), rel=1e-5)
    assert s["mae_z"] == pytest.approx(np.mean(np.abs(tz - pz)), rel=1e-5)
    assert s["pcc_z"] == pytest.approx(np.corrcoef(tz, pz)[0, 1], rel=1e-5)
    assert s["rmse"] == pytest.approx(np.sqrt(np.mean((held.truth - pred[r, c]) ** 2)), rel=1e-5)
    assert set(s) == {
        "per_gene_pcc", "per_spot_pcc", "pcc", "cosine", "rmse", "mae", "pcc_z", "rmse_z", "mae_z", "n_scored",
        "n_genes_scored",
    }  # fmt: skip


def test_crps_gaussian():
    truth = np.array([0.0, 1.0, -2.0])
    mean = np.array([1.0, 1.0, 0.5])
    assert crps_gaussian(truth, mean, 0.0) == pytest.approx(mae(truth, mean))
    # y = mu, sigma = 1: 2 phi(0) - 1/sqrt(pi)
    assert crps_gaussian([0.0], [0.0], [1.0]) == pytest.approx(2 / math.sqrt(2 * math.pi) - 1 / math.sqrt(math.pi))
    # scale equivariance
    assert crps_gaussian([0.0], [0.0], [3.0]) == pytest.approx(3 * crps_gaussian([0.0], [0.0], [1.0]))
    with pytest.raises(ValueError, match="non-negative"):
        crps_gaussian([0.0], [0.0], [-1.0])


def test_crps_ensemble_exact_and_consistent():
    samples = np.array([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    # y=1: E|X-y|=1, E|X-X'|=1 -> 0.5; y=0: 1 - 0.5 = 0.5; y=3: 2 - 0.5 = 1.5
    assert crps_ensemble([1.0], samples[:, :1]) == pytest.approx(0.5)
    assert crps_ensemble([3.0], samples[:, :1]) == pytest.approx(1.5)
    assert crps_ensemble([1.0, 0.0, 3.0], samples) == pytest.approx((0.5 + 0.5 + 1.5) / 3)
    # one sample: absolute error
    assert crps_ensemble([1.0, 4.0], [[0.0, 1.0]]) == pytest.approx(2.0)
    # many Gaussian samples approach the closed form
    rng = np.random.default_rng(0)
    draws = rng.normal(0.0, 1.0, size=(4000, 5))
    truth = np.array([-1.0, 0.0, 0.5, 1.0, 2.0])
    assert crps_ensemble(truth, draws) == pytest.approx(crps_gaussian(truth, 0.0, 1.0), abs=0.02)
    with pytest.raises(ValueError, match="n_samples"):
        crps_ensemble([1.0, 2.0], np.zeros((3, 4)))


def test_interval_coverage():
    samples = np.tile(np.arange(11.0)[:, None], (1, 4))  # 10% and 90% quantiles: 1 and 9
    assert interval_coverage([5.0, 10.0, -1.0, 9.0], samples, level=0.8) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    draws = rng.normal(size=(2000, 3000))
    assert interval_coverage(rng.normal(size=3000), draws, level=0.9) == pytest.approx(0.9, abs=0.02)
    with pytest.raises(ValueError, match="level"):
        interval_coverage([1.0], [[1.0]], level=1.5)


@pytest.mark.parametrize("level", [0.5, 0.8, 0.9])
def test_interval_coverage_is_calibrated_with_few_samples(level):
    # 20 draws from the truth's own distribution: the interval must hold `level` of the truths (linear
    # interpolation between order statistics held only ~81% at 90%)
    rng = np.random.default_rng(1)
    truth, draws = rng.normal(size=40_000), rng.normal(size=(20, 40_000))
    assert interval_coverage(truth, draws, level=level) == pytest.approx(level, abs=0.01)


def test_split_half_ceiling_extremes():
    rng = np.random.default_rng(0)
    # deep counts with strong gene-specific variation across spots: halves agree almost perfectly
    rate = rng.gamma(1.0, 500.0, size=(200, 20))
    high, per_gene = split_half_ceiling(rng.poisson(rate), seed=1, return_per_gene=True)
    assert high > 0.98 and per_gene.shape == (20,)
    # pure Poisson noise around a constant rate: nothing to agree on
    noise = split_half_ceiling(sp.csr_matrix(rng.poisson(5.0, size=(400, 30)).astype(np.float32)))
    assert abs(noise) < 0.1
    # an all-zero gene is excluded, NaN entries are skipped
    counts = rng.poisson(rate).astype(float)
    counts[:, 0] = 0
    counts[:50, 1] = np.nan
    _, pg = split_half_ceiling(counts, return_per_gene=True)
    assert np.isnan(pg[0]) and np.isfinite(pg[1:]).all()
    adata = AnnData(counts.astype(np.float32))
    assert split_half_ceiling(adata) == pytest.approx(split_half_ceiling(counts))
    with pytest.raises(ValueError, match="integer"):
        split_half_ceiling(np.array([[0.5, 1.0]]))
