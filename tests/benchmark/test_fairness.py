"""Every method of a comparison sees the same data and is told the same things, under every protocol."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from anndata import AnnData

from stmcdi.benchmark import BASELINES, PROTOCOLS, evaluate, hold_out
from stmcdi.pp import log_normalize


def _data(seed: int = 0) -> AnnData:
    rng = np.random.default_rng(seed)
    xx, yy = np.meshgrid(np.arange(10), np.arange(10))
    coords = np.c_[xx.ravel(), yy.ravel()].astype(float)
    rate = np.exp(rng.uniform(0, 2, 30) + np.sin(coords[:, :1] / 3.0) @ rng.normal(0, 0.8, (1, 30)))
    X = sp.csr_matrix(rng.poisson(rate).astype(np.float32))
    adata = AnnData(X)
    adata.obsm["spatial"] = coords
    # slots a careless pipeline fills from the full counts
    adata.layers["raw"] = X.copy()
    adata.obs["total_counts"] = np.asarray(X.sum(axis=1)).ravel()
    adata.obs["section"] = "A"
    adata.var["total_counts"] = np.asarray(X.sum(axis=0)).ravel()
    adata.obsm["X_pca"] = rng.normal(size=(100, 5))
    adata.uns["full_totals"] = adata.obs["total_counts"].to_numpy()
    return adata


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_masked_data_carries_nothing_computed_from_the_full_counts(protocol):
    ratio = 0.5 if protocol == "thin" else 0.2
    held = hold_out(_data(), protocol, ratio, seed=0)
    a = held.adata
    assert list(a.layers) == [] and list(a.obsm) == ["spatial"] and len(a.uns) == 0 and len(a.obsp) == 0
    assert list(a.obs.columns) == ["section"] and list(a.var.columns) == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_method_reading_other_slots_cannot_score_better(protocol):
    """A cheat looks for the full counts in every slot and would return the truth from them; it finds nothing."""

    def cheat(a, *, layer=None, seed=0, target="missing", nonzero=False):
        found = [a.layers[k] for k in a.layers] + list(a.uns.values())
        found += [a.obs[c].to_numpy() for c in a.obs.columns if np.issubdtype(a.obs[c].dtype, np.number)]
        honest = BASELINES["gene_mean"](a, layer=layer, seed=seed, target=target, nonzero=nonzero)
        if found:
            return honest + 1.0  # a different answer, visible in the scores
        return honest

    ratio = 0.5 if protocol == "thin" else 0.2
    df = evaluate(_data(), {"cheat": cheat, "gene_mean": BASELINES["gene_mean"]}, protocols=[(protocol, ratio)],
                  min_entries=3).set_index("method")
    assert df.loc["cheat", "rmse"] == df.loc["gene_mean", "rmse"]


def test_every_method_is_told_the_same_things_under_each_protocol():
    seen = []

    def spy(name):
        def method(a, *, layer=None, seed=0, target="missing", nonzero=False):
            x, _, _ = log_normalize(a.X)
            seen.append((name, target, nonzero, int(np.isnan(x).sum()), int((x == 0).sum()), seed))
            return np.nan_to_num(x)
        return method

    evaluate(_data(), {"a": spy("a"), "b": spy("b")}, protocols=[("entries", 0.1), ("thin", 0.5), ("nonzero", 0.1)],
             seeds=(3,), min_entries=3)
    by_protocol = [seen[i:i + 2] for i in range(0, len(seen), 2)]
    for (a, b), (target, nonzero, has_nan) in zip(by_protocol, [("missing", False, True), ("zeros", False, False),
                                                               ("missing", True, True)], strict=True):
        assert a[1:] == b[1:]  # the same input and the same knowledge for both methods
        assert a[1] == target and a[2] is nonzero and (a[3] > 0) is has_nan and a[5] == 3
    assert by_protocol[1][0][4] > 0  # thin: the visible zeros are data, not NaN


def test_thin_scores_the_visible_zeros_against_the_held_out_part():
    held = hold_out(_data(), "thin", 0.5, seed=0)
    x, _, _ = log_normalize(held.adata.X)
    r, c = held.mask.nonzero()
    assert (x[r, c] == 0).all() and held.mask.nnz == int((x == 0).sum())
