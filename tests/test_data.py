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


def test_zero_hops_and_zeros_missing_and_mask():
    mask = sp.csr_matrix(([True], ([1], [1])), shape=(5, 2))
    col = NeighborhoodCollate(counts(), TABLE, n_hops=0, missing=mask, zeros_missing=True)
    out = col({"spatial_nn": TABLE[[0, 1]]})
    assert out["edge_index"].shape == (2, 0)
    c = out["counts"].numpy()
    assert c[0, 0] == 0.0 and np.isnan(c[1, 1]) and c[0, 1] == 1.0  # a zero to fill keeps its count
    # the targets: missing entries, and the zero of spot 0
    np.testing.assert_array_equal(out["target"].numpy(), [[True, False], [False, True]])
    np.testing.assert_allclose(out["library"].numpy(), [1.0, 2.0])
    assert "target" not in NeighborhoodCollate(counts(), TABLE, n_hops=0)({"spatial_nn": TABLE[[0]]})


def test_entries_to_fill_are_targets_of_their_spot_only():
    c = counts()
    c[1, 0] = 0.0
    fill = np.zeros(c.shape, dtype=bool)
    fill[0, 1] = fill[1, 0] = True  # an entry of the batch spot and one of its neighbour
    col = NeighborhoodCollate(c, TABLE, n_hops=1, fill=sp.csr_matrix(fill))
    out = col({"spatial_nn": TABLE[[0]]})
    np.testing.assert_array_equal(out["target"].numpy(), [[False, True]])  # the spot's own entry
    # both keep their counts: the spot's is hidden by the module, the neighbour shows its zero, as in training
    np.testing.assert_array_equal(out["counts"].numpy(), [[0.0, 1.0], [0.0, 3.0]])
    np.testing.assert_allclose(out["library"].numpy(), [1.0, 3.0])
    with pytest.raises(ValueError, match="`fill` has shape"):
        NeighborhoodCollate(c, TABLE, n_hops=1, fill=fill[:2])


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


def test_data_splitter_hides_extra_missing_entries(small_adata):
    from stmcdi import STMCDI
    from stmcdi._data import NeighborhoodDataSplitter

    a = small_adata
    STMCDI.setup_anndata(a)
    model = STMCDI(a)
    x = a.X.toarray() if sp.issparse(a.X) else np.asarray(a.X)
    rows, cols = np.nonzero(~np.isnan(x))
    extra = sp.csr_matrix((np.ones(5, dtype=bool), (rows[:5], cols[:5])), shape=a.shape)
    splitter = NeighborhoodDataSplitter(model.adata_manager, train_size=1.0, n_hops=1, extra_missing=extra)
    splitter.setup()
    batch = next(iter(splitter.train_dataloader()))
    seeds = batch["row"].numpy()
    counts = batch["counts"].numpy()[: seeds.size]
    hidden = extra[seeds].toarray()
    assert hidden.any() or seeds.size < a.n_obs  # the first batch holds some held-back entries
    assert np.isnan(counts[hidden]).all()
    assert np.isfinite(counts[~hidden & ~np.isnan(x[seeds])]).all()


def two_groups(n=40, g=30, seed=0):
    """Counts of two groups of spots with different expressed genes (rows alternate between the groups)."""
    rng = np.random.default_rng(seed)
    rate = np.full((n, g), 0.5)
    rate[0::2, : g // 2] = 20.0
    rate[1::2, g // 2:] = 20.0
    return rng.poisson(rate).astype(np.float32)


def test_expression_neighbours_are_alike_in_expression_and_never_the_spot_itself():
    from stmcdi._data import expression_neighbor_table

    c = two_groups()
    table = expression_neighbor_table(c, n_neighbors=5)
    assert table.shape == (40, 5) and table.dtype == np.int64
    assert (table != np.arange(40)[:, None]).all()
    assert ((table % 2) == (np.arange(40)[:, None] % 2)).all()  # the same group
    # duplicate profiles: still never the spot itself
    dup = np.repeat(c[:5], 4, axis=0)
    t = expression_neighbor_table(dup, n_neighbors=3, n_pcs=2)
    assert (t != np.arange(20)[:, None]).all()
    with pytest.raises(ValueError, match="n_neighbors"):
        expression_neighbor_table(c, n_neighbors=40)


def test_expression_neighbours_are_chosen_on_observed_entries_only():
    from stmcdi._data import expression_neighbor_table

    c = two_groups()
    hidden = np.zeros(c.shape, dtype=bool)
    hidden[::3, ::2] = True
    a = expression_neighbor_table(c, sp.csr_matrix(hidden), n_neighbors=5)
    changed = c.copy()
    changed[hidden] = 500.0  # what is hidden cannot move the neighbours
    np.testing.assert_array_equal(expression_neighbor_table(changed, sp.csr_matrix(hidden), n_neighbors=5), a)
    nan = c.copy()
    nan[hidden] = np.nan  # NaN is the same as a hidden entry
    np.testing.assert_array_equal(expression_neighbor_table(nan, n_neighbors=5), a)


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
    # zeros to fill stay observed for the expression neighbours: chosen and shown as without them
    zero = NeighborhoodCollate(c, table, n_hops=1, n_expression_neighbors=4, zeros_missing=True)
    out = zero({"spatial_nn": table[[0, 2]]})
    np.testing.assert_array_equal(zero.expression_table, col.expression_table)
    np.testing.assert_array_equal(np.nan_to_num(out["expression_counts"].numpy(), nan=-1.0),
                                  np.nan_to_num(c[expr], nan=-1.0))
    assert (out["expression_counts"] == 0).any()


def test_expression_space_query_places_a_spot_from_its_visible_entries_only():
    from stmcdi._data import ExpressionSpace

    c = two_groups()
    c[5, 3] = np.nan
    space = ExpressionSpace(c)
    rows = np.array([0, 5, 7])
    # nothing hidden: the query is the table
    np.testing.assert_array_equal(space.query(c[rows], rows, 5), space.table(5)[rows])
    hidden = np.zeros((3, c.shape[1]), dtype=bool)
    hidden[:, ::2] = True
    a = space.query(c[rows], rows, 5, hidden=hidden)
    assert a.shape == (3, 5) and a.dtype == np.int64 and (a != rows[:, None]).all()
    changed = c[rows].copy()
    changed[hidden] = 500.0  # a hidden entry has no say in the neighbours
    np.testing.assert_array_equal(space.query(changed, rows, 5, hidden=hidden), a)
    # and it does have one when visible
    assert not np.array_equal(space.query(changed, rows, 5), a)
    with pytest.raises(ValueError, match="n_neighbors"):
        space.query(c[rows], rows, 40)


def test_collate_with_a_target_sampler_hides_the_targets_from_the_neighbour_choice():
    import torch

    from stmcdi._module import draw_targets

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
    expr = col.expression_space.query(c[seeds], seeds, 4, hidden=target).ravel()
    np.testing.assert_array_equal(np.nan_to_num(out["expression_counts"].numpy(), nan=-1.0),
                                  np.nan_to_num(c[expr], nan=-1.0))
    # without expression neighbours, or when filling, the module draws the targets
    assert "target" not in NeighborhoodCollate(c, table, n_hops=1, target_sampler=sampler)({"spatial_nn": table[[0]]})
    zero = NeighborhoodCollate(c, table, n_hops=1, n_expression_neighbors=4, zeros_missing=True, target_sampler=sampler)
    assert zero.target_sampler is None


def test_collate_can_leave_the_targets_out_of_the_library():
    import torch

    from stmcdi._module import draw_targets

    c = two_groups()
    c[3, 0] = np.nan
    table = np.column_stack([np.arange(40), (np.arange(40) + 1) % 40])
    sampler = lambda observed, nonzero: draw_targets(observed, nonzero, mask_ratio=(0.5, 0.5))
    seeds = np.array([0, 3, 8])
    full = NeighborhoodCollate(c, table, n_hops=1)({"spatial_nn": table[seeds]})["library"].numpy()
    col = NeighborhoodCollate(c, table, n_hops=1, target_sampler=sampler, library_without_targets=True)
    torch.manual_seed(0)
    out = col({"spatial_nn": table[seeds]})
    target = out["target"].numpy()
    lib = out["library"].numpy()
    np.testing.assert_allclose(lib[:3], np.nansum(np.where(target, 0.0, c[seeds]), axis=1))
    assert (lib[:3] < full[:3]).all()
    np.testing.assert_array_equal(lib[3:], full[3:])  # the neighbour nodes keep their libraries
    # neither option: the module draws the targets
    off = NeighborhoodCollate(c, table, n_hops=1, target_sampler=sampler)
    assert off.target_sampler is None and "target" not in off({"spatial_nn": table[seeds]})
