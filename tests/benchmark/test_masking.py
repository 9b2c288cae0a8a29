from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from anndata import AnnData

from stmcdi.benchmark import PROTOCOLS, HeldOut, hold_out
from stmcdi.pp import log_normalize


def _data(n_side: int = 12, n_genes: int = 30, seed: int = 0, sparse: bool = True) -> AnnData:
    rng = np.random.default_rng(seed)
    xx, yy = np.meshgrid(np.arange(n_side), np.arange(n_side))
    coords = np.c_[xx.ravel(), yy.ravel()].astype(float)
    fields = np.c_[np.sin(coords[:, 0] / 3.0), np.cos(coords[:, 1] / 4.0)]
    rate = np.exp(rng.uniform(-1, 2, n_genes) + fields @ rng.normal(0, 0.8, (2, n_genes)))
    counts = rng.poisson(rate).astype(np.float32)
    adata = AnnData(sp.csr_matrix(counts) if sparse else counts)
    adata.obsm["spatial"] = coords
    return adata


def _dense(X) -> np.ndarray:
    return X.toarray() if sp.issparse(X) else np.asarray(X)


def test_entries_counts_per_gene_and_nan_at_mask():
    adata = _data()
    before = adata.X.copy()
    held = hold_out(adata, "entries", 0.2, seed=3)
    assert isinstance(held, HeldOut)
    assert (adata.X != before).nnz == 0  # input untouched
    assert sp.issparse(held.adata.X) and held.mask.dtype == bool
    per_gene = np.asarray(held.mask.sum(axis=0)).ravel()
    assert np.array_equal(per_gene, np.full(adata.n_vars, round(0.2 * adata.n_obs)))
    masked = _dense(held.adata.X)
    assert np.array_equal(np.isnan(masked), held.mask.toarray())
    full = _dense(adata.X)
    assert np.array_equal(masked[~held.mask.toarray()], full[~held.mask.toarray()])
    # zeros are held out too
    r, c = held.mask.nonzero()
    assert (full[r, c] == 0).any() and (full[r, c] > 0).any()
    assert held.truth.dtype == np.float32 and held.truth.shape == (held.mask.nnz,)
    assert "entries" in repr(held)


def test_truth_is_on_the_lognormalize_scale_of_the_masked_data():
    adata = _data()
    held = hold_out(adata, "entries", 0.1, seed=0)
    _, lib, target = log_normalize(held.adata.X)
    assert held.target_sum == pytest.approx(target)
    r, c = held.mask.nonzero()
    expected = np.log1p(_dense(adata.X)[r, c] * target / lib[r])
    np.testing.assert_allclose(held.truth, expected, rtol=1e-6)
    assert np.all(np.diff(r) >= 0)  # row-major order


def test_seeded_and_reproducible():
    adata = _data()
    a = hold_out(adata, "entries", 0.1, seed=1)
    b = hold_out(adata, "entries", 0.1, seed=1)
    c = hold_out(adata, "entries", 0.1, seed=2)
    assert (a.mask != b.mask).nnz == 0 and np.array_equal(a.truth, b.truth)
    assert (a.mask != c.mask).nnz > 0


def test_existing_nan_never_held_out():
    adata = _data(sparse=False)
    x = adata.X.copy()
    x[:, 0] = np.nan  # gene 0 fully missing
    x[:40, 1] = np.nan
    adata.X = x
    held = hold_out(adata, "entries", 0.25, seed=0)
    m = held.mask.toarray()
    assert not m[np.isnan(x)].any()
    assert m[:, 0].sum() == 0
    assert m[:, 1].sum() == round(0.25 * (adata.n_obs - 40))
    assert isinstance(held.adata.X, np.ndarray)
    assert np.isnan(held.adata.X).sum() == np.isnan(x).sum() + m.sum()


def test_nonzero_protocol():
    adata = _data()
    held = hold_out(adata, "nonzero", 0.3, seed=0)
    full = _dense(adata.X)
    r, c = held.mask.nonzero()
    assert (full[r, c] > 0).all()
    nnz = (full > 0).sum(axis=0)
    assert np.array_equal(np.asarray(held.mask.sum(axis=0)).ravel(), np.round(0.3 * nnz))
    assert (held.truth > 0).all()


def test_spots_protocol_uses_full_library_for_empty_spots():
    adata = _data()
    held = hold_out(adata, "spots", 0.1, seed=0)
    m = held.mask.toarray()
    rows = np.flatnonzero(m.any(axis=1))
    assert rows.size == round(0.1 * adata.n_obs)
    assert m[rows].all()
    full = _dense(adata.X)
    _, lib_masked, target = log_normalize(held.adata.X)
    assert (lib_masked[rows] == 0).all()
    r, c = held.mask.nonzero()
    np.testing.assert_allclose(held.truth, np.log1p(full[r, c] * target / full.sum(axis=1)[r]), rtol=1e-6)


def test_genes_protocol_one_half_of_spots():
    adata = _data()
    held = hold_out(adata, "genes", 0.1, seed=0)
    m = held.mask.toarray()
    genes = np.flatnonzero(m.any(axis=0))
    assert genes.size == round(0.1 * adata.n_vars)
    assert (m[:, genes].sum(axis=0) == adata.n_obs // 2).all()
    # the same half for every held-out gene
    assert (m[:, genes] == m[:, genes[:1]]).all()
    assert hold_out(adata, "genes", 0.01, seed=0).mask.toarray().any(axis=0).sum() == 1


def test_thin_protocol():
    adata = _data()
    full = _dense(adata.X)
    held = hold_out(adata, "thin", 0.5, seed=0)
    vis = _dense(held.adata.X)
    assert not np.isnan(vis).any()
    assert np.array_equal(vis, np.round(vis)) and (vis <= full).all()
    assert vis.sum() / full.sum() == pytest.approx(0.5, abs=0.02)
    assert np.array_equal(held.mask.toarray(), vis == 0)
    held_counts = full - vis
    _, vis_lib, target = log_normalize(vis)
    assert held.target_sum == pytest.approx(target)
    hl = held_counts.sum(axis=1)
    r, c = held.mask.nonzero()
    np.testing.assert_allclose(held.truth, np.log1p(held_counts[r, c] * target / hl[r]), rtol=1e-6)
    assert (held.truth > 0).any()


def test_layer_and_format_preserved():
    adata = _data()
    adata.layers["counts"] = adata.X.copy()
    adata.X = sp.csr_matrix(adata.shape, dtype=np.float32)
    held = hold_out(adata, "entries", 0.1, seed=0, layer="counts")
    assert held.layer == "counts"
    assert sp.issparse(held.adata.layers["counts"])
    assert np.isnan(held.adata.layers["counts"].data).sum() == held.mask.nnz
    assert held.adata.X is None  # only the counts layer reaches the methods
    assert not np.isnan(adata.layers["counts"].data).any()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_protocol_scores_only_observed_entries(protocol):
    held = hold_out(_data(), protocol, 0.2, seed=5)
    assert held.mask.nnz > 0 and np.isfinite(held.truth).all() and (held.truth >= 0).all()
    assert held.protocol == protocol and held.seed == 5 and held.ratio == 0.2


def test_errors():
    adata = _data()
    with pytest.raises(ValueError, match="entries.*nonzero.*spots.*genes.*thin"):
        hold_out(adata, "bogus")
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="between 0 and 1"):
            hold_out(adata, ratio=bad)
    with pytest.raises(KeyError, match="counts"):
        hold_out(adata, layer="counts")
    neg = AnnData(-np.ones((5, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="negative"):
        hold_out(neg)
    with pytest.raises(ValueError, match="selects no entry"):
        hold_out(AnnData(np.ones((4, 3), dtype=np.float32)), "entries", 0.05)


def test_entries_exact_counts_across_column_chunks():
    rng = np.random.default_rng(0)
    counts = rng.poisson(1.0, size=(20, 2500)).astype(np.float32)
    counts[:5, 1500:] = np.nan
    held = hold_out(AnnData(counts), "entries", 0.3, seed=0)
    per_gene = np.asarray(held.mask.sum(axis=0)).ravel()
    assert np.array_equal(per_gene[:1500], np.full(1500, 6))  # round(0.3 * 20)
    assert np.array_equal(per_gene[1500:], np.full(1000, round(0.3 * 15)))
    assert not held.mask.toarray()[:5, 1500:].any()


@pytest.mark.parametrize("protocol", ["entries", "nonzero", "thin"])
def test_panel_is_chosen_on_the_masked_counts(protocol):
    from stmcdi.pp import select_genes

    adata = _data(n_genes=40)
    panel = {"n_top_genes": 12, "flavor": "cv", "min_detection": 0.0}
    ratio = 0.5 if protocol == "thin" else 0.2
    full = hold_out(adata, protocol, ratio, seed=1)
    held = hold_out(adata, protocol, ratio, seed=1, panel=panel)
    # the same split, restricted to the genes select_genes picks on the masked (visible) counts
    chosen = full.adata.copy()
    select_genes(chosen, **panel)
    keep = chosen.var["highly_variable"].to_numpy()
    assert list(held.adata.var_names) == list(adata.var_names[keep])
    assert (held.mask != full.mask[:, np.flatnonzero(keep)]).nnz == 0
    np.testing.assert_array_equal(_dense(held.adata.X), _dense(full.adata.X)[:, keep])
    # truth and target sum on the panel's own library sizes
    _, lib, target = log_normalize(held.adata.X)
    assert held.target_sum == pytest.approx(target)
    if protocol != "thin":
        counts = _dense(adata.X)[:, keep]
        lib = np.where(lib > 0, lib, counts.sum(axis=1))  # spots with no visible panel count: full library
        r, c = held.mask.nonzero()
        np.testing.assert_allclose(held.truth, np.log1p(counts[r, c] * target / lib[r]), rtol=1e-6)


def test_panel_does_not_see_the_held_out_counts():
    adata = _data(n_genes=40)
    panel = {"n_top_genes": 10, "flavor": "seurat_v3"}
    held = hold_out(adata, "entries", 0.2, seed=2, panel=panel)
    full = hold_out(adata, "entries", 0.2, seed=2)
    r, c = full.mask.nonzero()
    loud = _dense(adata.X).copy()
    loud[r, c] += 500.0  # the held-out counts change a lot; the visible ones do not
    other = hold_out(AnnData(sp.csr_matrix(loud), obsm=dict(adata.obsm)), "entries", 0.2, seed=2, panel=panel)
    assert list(other.adata.var_names) == list(held.adata.var_names)
    # whereas a panel chosen on all counts follows them
    from stmcdi.pp import select_genes

    before, after = adata.copy(), AnnData(sp.csr_matrix(loud))
    select_genes(before, 10)
    select_genes(after, 10)
    assert list(before.var_names[before.var["highly_variable"]]) != list(after.var_names[after.var["highly_variable"]])
