import numpy as np
import pytest
import scipy.sparse as sp

from stmcdi import _estimators as est


def low_rank_counts(rng, n=80, g=30):
    rate = np.outer(rng.gamma(2.0, 1.0, n), rng.gamma(2.0, 1.0, g))
    return np.log1p(rng.poisson(rate)).astype(np.float32)


def test_column_means_ignore_nan_and_give_the_overall_mean_to_empty_columns():
    x = np.array([[1.0, np.nan, np.nan], [3.0, 6.0, np.nan]])
    assert est.column_means(x).tolist() == [2.0, 6.0, 10.0 / 3.0]


def test_held_back_entries_are_a_seeded_subset_of_the_observed_entries_of_few_spots():
    rng = np.random.default_rng(0)
    observed = rng.random((300, 40)) < 0.7
    held = est.held_back_entries(observed, seed=3, fraction=0.1, max_spots=50)
    assert held.dtype == bool and held.shape == observed.shape
    r, c = held.nonzero()
    assert observed[r, c].all()
    assert np.unique(r).size <= 50
    assert abs(held.nnz / observed[np.unique(r)].sum() - 0.1) < 0.05
    assert (est.held_back_entries(observed, seed=3, fraction=0.1, max_spots=50) != held).nnz == 0
    assert (est.held_back_entries(observed, seed=4, fraction=0.1, max_spots=50) != held).nnz > 0
    nonzero = rng.random((300, 40)) < 0.5
    r, c = est.held_back_entries(observed, seed=3, nonzero=nonzero).nonzero()
    assert (observed & nonzero)[r, c].all()


def test_every_gene_with_two_candidates_gets_a_held_back_entry():
    observed = np.zeros((20, 3), dtype=bool)
    observed[:2, 0] = True  # two candidates only
    observed[:, 1] = True
    observed[0, 2] = True  # a single candidate: never held back (it would leave the gene unobserved)
    held = est.held_back_entries(observed, seed=0, fraction=0.01).toarray()
    assert held[:, 0].any() and held[:, 1].any() and not held[:, 2].any()


def test_neighbour_mean_excludes_the_spot_and_reads_observed_neighbours_only():
    x = np.array([[1.0, 9.0], [3.0, np.nan], [5.0, 2.0], [np.nan, np.nan]], dtype=np.float32)
    table = np.array([[1, 2], [0, 2], [0, 1], [1, 1]])
    values = est.NeighbourMean(x, table).dense()
    assert values[0].tolist() == [4.0, 2.0]  # spots 1 and 2; spot 1's gene 1 is missing
    assert values[1].tolist() == [3.0, 5.5]
    assert values[3, 1] == pytest.approx(est.column_means(x)[1])  # no neighbour observes it: the gene mean
    low = est.NeighbourMean(est.GeneMean(x), table)  # averaging an estimate
    assert np.allclose(low.dense(), est.GeneMean(x).dense())


def test_estimate_at_matches_dense():
    rng = np.random.default_rng(1)
    x = low_rank_counts(rng)
    e = est.TwoWay(x)
    rows, cols = rng.integers(0, 80, 50), rng.integers(0, 30, 50)
    assert np.allclose(e.at(rows, cols), e.dense()[rows, cols])


def test_two_way_adds_the_spots_mean_deviation_from_the_gene_means():
    x = np.array([[1.0, 3.0], [3.0, np.nan]])
    e = est.TwoWay(x).dense()
    # gene means 2 and 3; spot 0 deviates by (-1 + 0) / 2, spot 1 by +1
    assert e.tolist() == [[1.5, 2.5], [3.0, 4.0]]


def test_low_rank_recovers_a_hidden_entry_of_a_rank_one_matrix():
    rng = np.random.default_rng(0)
    full = np.outer(rng.normal(size=40), rng.normal(size=12)).astype(np.float32) + 3.0
    x = full.copy()
    x[0, 0] = x[5, 3] = np.nan
    fit = est.LowRank(x, rank=1, fraction=0.0)
    assert abs(fit.dense()[0, 0] - full[0, 0]) < 0.1
    assert abs(fit.at(np.array([5]), np.array([3]))[0] - full[5, 3]) < 0.1


def test_expression_neighbours_never_list_the_spot_itself():
    x = np.array([[9, 0, 1], [8, 0, 2], [0, 9, 1], [0, 8, 2]], dtype=float)
    space = est.ExpressionNeighbours(x, n_pcs=2)
    assert space.table(1)[:, 0].tolist() == [1, 0, 3, 2]
    table = space.table(3)
    assert not (table == np.arange(4)[:, None]).any()
    hidden = x.copy()
    hidden[0, 0] = np.nan  # placing a spot without an entry
    placed = space.query(space.place(hidden[[0]]), np.array([0]), 2)[0]
    assert placed.size == 2 and 0 not in placed
    with pytest.raises(ValueError, match="n_neighbors"):
        space.table(4)


def test_tuning_picks_the_neighbourhood_that_predicts_best():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(10), 8)  # 10 groups of 8 identical spots
    x = (groups[:, None] + 0.1 * rng.normal(size=(80, 5))).astype(np.float32)
    order = np.argsort(groups, kind="stable")
    table = np.array([[j for j in order if groups[j] == groups[i] and j != i] + [j for j in order if groups[j] != groups[i]]
                      for i in range(80)])
    held = est.held_back_entries(np.ones(x.shape, bool), seed=0, fraction=0.2)
    k = est.tune_neighbours(est.hide(x, held), x, held, table, [1, 7, 40])
    assert k == 7  # the whole group, and nothing beyond it


def test_hide_sets_entries_to_nan_and_leaves_the_input_alone():
    x = np.ones((3, 2), dtype=np.float32)
    out = est.hide(x, sp.csr_matrix(np.array([[True, False], [False, False], [False, True]])))
    assert np.isnan(out).sum() == 2 and not np.isnan(x).any()
