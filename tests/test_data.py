import numpy as np
import pytest
import scipy.sparse as sp

import stmcdi
from stmcdi._data import NeighborhoodCollate

# chain 0 -> 1 -> 2 -> 3 -> 4 (row i lists i's single neighbour)
TABLE = np.array([[0, 1], [1, 2], [2, 3], [3, 4], [4, 3]])


def counts():
    c = np.arange(10, dtype=np.float32).reshape(5, 2)
    c[2, 1] = np.nan
    return c


def test_neighbourhood_nodes_edges_and_missing():
    col = NeighborhoodCollate(counts(), TABLE, n_hops=2)
    out = col({"spatial_nn": TABLE[[0]]})
    assert out["row"].tolist() == [0]
    assert out["counts"].shape == (3, 2)  # nodes 0 (seed), 1, 2
    np.testing.assert_array_equal(out["counts"][:, 0].numpy(), [0, 2, 4])
    assert np.isnan(out["counts"][2, 1].item())
    src, dst = out["edge_index"].numpy()
    assert sorted(zip(src.tolist(), dst.tolist())) == [(1, 0), (2, 1)]
    # the library sums observed entries only
    np.testing.assert_allclose(out["library"].numpy(), [1.0, 5.0, 4.0])


def test_seeds_come_first_and_are_not_duplicated():
    col = NeighborhoodCollate(counts(), TABLE, n_hops=3)
    out = col({"spatial_nn": TABLE[[3, 1]]})
    assert out["row"].tolist() == [3, 1]
    np.testing.assert_array_equal(out["counts"][:2, 0].numpy(), [6, 2])
    assert out["counts"].shape[0] == 4  # 3, 1, then 4, 2
    dst = out["edge_index"][1].numpy()
    assert set(dst.tolist()) <= {0, 1, 2, 3}


def test_zero_hops_hidden_entries_and_entries_to_fill():
    mask = sp.csr_matrix(([True], ([1], [1])), shape=(5, 2))
    col = NeighborhoodCollate(counts(), TABLE, n_hops=0, missing=mask)
    out = col({"spatial_nn": TABLE[[0, 1]]})
    assert out["edge_index"].shape == (2, 0) and "target" not in out
    c = out["counts"].numpy()
    assert np.isnan(c[1, 1]) and c[0, 1] == 1.0
    np.testing.assert_allclose(out["library"].numpy(), [1.0, 2.0])  # hidden entries leave the library


def test_entries_to_fill_are_targets_of_their_spot_only_and_keep_their_values_there():
    c = counts()
    c[1, 0] = 0.0
    fill = np.zeros(c.shape, dtype=bool)
    fill[0, 1] = fill[1, 0] = True  # an entry of the batch spot and one of its neighbour
    col = NeighborhoodCollate(c, TABLE, n_hops=1, fill=sp.csr_matrix(fill))
    out = col({"spatial_nn": TABLE[[0]]})
    np.testing.assert_array_equal(out["target"].numpy(), [[False, True]])  # the spot's own entry
    np.testing.assert_array_equal(out["counts"].numpy(), [[0.0, 1.0], [0.0, 3.0]])
    with pytest.raises(ValueError, match="`fill` has shape"):
        NeighborhoodCollate(c, TABLE, n_hops=1, fill=fill[:2])
    # held-back entries: hidden from every spot, but a batch spot predicting them keeps their values in its row
    held = sp.csr_matrix(fill)
    val = NeighborhoodCollate(c, TABLE, n_hops=1, missing=held, fill=held)
    out = val({"spatial_nn": TABLE[[0]]})
    assert out["counts"][0, 1] == 1.0 and np.isnan(out["counts"][1, 0].item())  # the neighbour's is hidden
    np.testing.assert_allclose(out["library"].numpy(), [0.0, 3.0])  # libraries without the held-back entries


def test_neighbourhood_size_does_not_grow_with_section(rng):
    sizes = []
    for n in (400, 4000):
        adata = stmcdi.datasets.synthetic(n_spots=n, n_genes=5, seed=0)
        table = stmcdi.pp.spatial_graph(adata, copy=True)
        col = NeighborhoodCollate(adata.X, table, n_hops=3)
        seeds = rng.choice(n, 32, replace=False)
        sizes.append(col({"spatial_nn": table[seeds]})["counts"].shape[0])
    assert max(sizes) <= 32 * (1 + 5 + 25 + 125)
    assert sizes[1] < 2 * sizes[0] + 200  # bounded by batch and k, not by the number of spots


def test_deepcopy_shares_the_store():
    import copy

    col = NeighborhoodCollate(counts(), TABLE, n_hops=1)
    assert copy.deepcopy(col) is col


@pytest.mark.parametrize("n_hops", [1, 2, 3])
def test_gathered_encoder_equals_full_graph_encoder(n_hops, small_adata):
    import torch

    from stmcdi.nn import SpatialEncoder

    table = small_adata.obsm["spatial_nn"]
    col = NeighborhoodCollate(small_adata.X, table, n_hops=n_hops)
    torch.manual_seed(0)
    enc = SpatialEncoder(small_adata.n_vars, 8, 4, n_layers=n_hops).eval()
    full_x = torch.log1p(torch.as_tensor(small_adata.X.toarray()))
    full_x = torch.cat([full_x, torch.ones_like(full_x)], 1)
    full_edges = torch.as_tensor(np.stack([table[:, 1:].ravel(), np.repeat(np.arange(len(table)), 5)]))
    full = enc(full_x, full_edges)
    seeds = np.array([3, 50, 77])
    out = col({"spatial_nn": table[seeds]})
    x = torch.log1p(out["counts"])
    local = enc(torch.cat([x, torch.ones_like(x)], 1), out["edge_index"])[:3]
    torch.testing.assert_close(local, full[seeds], rtol=1e-4, atol=1e-5)


def test_data_splitter_hides_held_back_entries_and_validates_on_them(small_adata):
    from stmcdi import STMCDI
    from stmcdi._data import NeighborhoodDataSplitter

    a = small_adata
    STMCDI.setup_anndata(a)
    model = STMCDI(a)
    x = a.X.toarray() if sp.issparse(a.X) else np.asarray(a.X)
    rows, cols = np.nonzero(~np.isnan(x))
    pick = np.arange(0, rows.size, 7)
    held = sp.csr_matrix((np.ones(pick.size, dtype=bool), (rows[pick], cols[pick])), shape=a.shape)
    splitter = NeighborhoodDataSplitter(model.adata_manager, n_hops=1, held_back=held, batch_size=32)
    splitter.setup()
    assert splitter.train_idx.size == a.n_obs  # every spot trains
    for batch in splitter.train_dataloader():
        seeds = batch["row"].numpy()
        counts = batch["counts"].numpy()[: seeds.size]
        assert np.isnan(counts[held[seeds].toarray()]).all()
    val = list(splitter.val_dataloader())
    assert sorted(np.concatenate([b["row"].numpy() for b in val]).tolist()) == sorted(set(held.nonzero()[0]))
    for batch in val:
        seeds = batch["row"].numpy()
        target = batch["target"].numpy()
        np.testing.assert_array_equal(target, held[seeds].toarray())
        np.testing.assert_array_equal(batch["counts"].numpy()[: seeds.size][target], x[seeds][target])
    assert NeighborhoodDataSplitter(model.adata_manager, n_hops=1).val_dataloader() is None


def two_groups(n=40, g=30, seed=0):
    """Counts of two groups of spots with different expressed genes (rows alternate between the groups)."""
    rng = np.random.default_rng(seed)
    rate = np.full((n, g), 0.5)
    rate[0::2, : g // 2] = 20.0
    rate[1::2, g // 2:] = 20.0
    return rng.poisson(rate).astype(np.float32)


def test_expression_neighbours_are_chosen_on_what_the_batches_show():
    c = two_groups()
    hidden = np.zeros(c.shape, dtype=bool)
    hidden[::3, ::2] = True
    table = np.column_stack([np.arange(40), (np.arange(40) + 1) % 40])
    a = NeighborhoodCollate(c, table, n_hops=1, missing=sp.csr_matrix(hidden), n_expression_neighbors=5)
    assert ((a.expression_table % 2) == (np.arange(40)[:, None] % 2)).all()  # the same group, never itself
    changed = c.copy()
    changed[hidden] = 500.0  # what is hidden cannot move the neighbours
    b = NeighborhoodCollate(changed, table, n_hops=1, missing=sp.csr_matrix(hidden), n_expression_neighbors=5)
    np.testing.assert_array_equal(a.expression_table, b.expression_table)


def test_collate_carries_the_expression_neighbours_counts():
    c = two_groups()
    c[3, 0] = np.nan
    table = np.column_stack([np.arange(40), (np.arange(40) + 1) % 40])
    col = NeighborhoodCollate(c, table, n_hops=1, n_expression_neighbors=4)
    out = col({"spatial_nn": table[[0, 2]]})
    expr = col.expression_table[[0, 2]].ravel()
    assert out["expression_counts"].shape == (8, 30) and out["expression_library"].shape == (8,)
    np.testing.assert_array_equal(np.nan_to_num(out["expression_counts"].numpy(), nan=-1.0),
                                  np.nan_to_num(c[expr], nan=-1.0))
    np.testing.assert_allclose(out["expression_library"].numpy(), np.nansum(c[expr], axis=1))
    assert "expression_counts" not in NeighborhoodCollate(c, table, n_hops=1)({"spatial_nn": table[[0]]})
    assert NeighborhoodCollate(c[:4], table[:4] % 4, n_hops=1, n_expression_neighbors=10).n_expression_neighbors == 3


def test_collate_with_a_target_sampler_hides_the_targets_from_the_neighbour_choice():
    import torch

    from stmcdi._targets import draw_targets

    c = two_groups()
    c[3, 0] = np.nan
    table = np.column_stack([np.arange(40), (np.arange(40) + 1) % 40])
    sampler = lambda observed, nonzero: draw_targets(observed, nonzero, mask_ratio=(0.5, 0.5))
    col = NeighborhoodCollate(c, table, n_hops=1, n_expression_neighbors=4, target_sampler=sampler)
    torch.manual_seed(0)
    seeds = np.array([0, 3, 8])
    out = col({"spatial_nn": table[seeds]})
    target = out["target"].numpy()
    assert target.shape == (3, 30) and target.any(axis=1).all()
    assert not target[1, 0]  # never a missing entry
    expr = col._place(c[seeds], seeds, target).ravel()
    np.testing.assert_array_equal(np.nan_to_num(out["expression_counts"].numpy(), nan=-1.0),
                                  np.nan_to_num(c[expr], nan=-1.0))
    changed = c[seeds].copy()
    changed[target] = 500.0  # a target has no say in which spots the profile is read from
    np.testing.assert_array_equal(col._place(changed, seeds, target).ravel(), expr)
    # when filling, the batches carry the entries to fill instead of drawn targets
    fill = sp.csr_matrix((np.ones(1, bool), ([0], [1])), shape=c.shape)
    assert NeighborhoodCollate(c, table, n_hops=1, fill=fill, target_sampler=sampler).target_sampler is None
