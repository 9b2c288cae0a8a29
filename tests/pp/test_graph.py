import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import stmcdi
from stmcdi.pp._graph import check_neighbor_table, neighbor_table


def line_adata(xs, **obs):
    coords = np.column_stack([np.asarray(xs, float), np.zeros(len(xs))])
    return ad.AnnData(np.ones((len(xs), 3), np.float32), obs=pd.DataFrame(obs or None, index=[f"s{i}" for i in
                      range(len(xs))]), obsm={"spatial": coords})


def test_table_rows_list_own_nearest_neighbours_in_order():
    adata = line_adata([0.0, 1.0, 3.0, 6.0])
    stmcdi.pp.spatial_graph(adata, n_neighs=2)
    table = adata.obsm["spatial_nn"]
    np.testing.assert_array_equal(table, [[0, 1, 2], [1, 0, 2], [2, 1, 0], [3, 2, 1]])
    # direction: row i of the squidpy graph lists i's neighbours, which are the spots i aggregates from
    conn = adata.obsp["spatial_connectivities"].toarray()
    assert conn[3, 2] == 1 and conn[2, 3] == 0
    assert adata.uns["stmcdi"]["spatial_graph"]["n_neighs"] == 2


def test_default_is_five_neighbours(small_adata):
    table = small_adata.obsm["spatial_nn"]
    assert table.shape == (small_adata.n_obs, 6) and table.dtype == np.int64
    np.testing.assert_array_equal(table[:, 0], np.arange(small_adata.n_obs))
    assert not (table[:, 1:] == table[:, :1]).any()


def test_library_key_keeps_sections_apart():
    xs = [0.0, 1.0, 2.0, 3.0]
    adata = ad.concat([line_adata(xs), line_adata([x + 0.1 for x in xs])], index_unique="-", keys=["a", "b"],
                      label="section")
    stmcdi.pp.spatial_graph(adata, n_neighs=2, library_key="section")
    table = adata.obsm["spatial_nn"]
    section = adata.obs["section"].to_numpy()
    assert (section[table[:, 1:]] == section[:, None]).all()
    without = stmcdi.pp.spatial_graph(adata, n_neighs=2, copy=True)
    assert (section[without[:, 1:]] != section[:, None]).any()


def test_copy_returns_table_and_leaves_adata_alone():
    adata = line_adata([0.0, 1.0, 3.0])
    table = stmcdi.pp.spatial_graph(adata, n_neighs=1, copy=True)
    np.testing.assert_array_equal(table, [[0, 1], [1, 0], [2, 1]])
    assert "spatial_nn" not in adata.obsm and len(adata.obsp) == 0


def test_duplicate_coordinates_raise_unless_allowed():
    adata = line_adata([0.0, 0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="share coordinates"):
        stmcdi.pp.spatial_graph(adata, n_neighs=2)
    stmcdi.pp.spatial_graph(adata, n_neighs=2, allow_duplicates=True)
    assert adata.obsm["spatial_nn"][0, 1] == 1


@pytest.mark.parametrize(
    ("coords", "match"),
    [
        (np.zeros((4, 1)), "expected \\(n_obs, 2\\)"),
        (np.array([[0, 0], [1, np.nan], [2, 0], [3, 0.0]]), "NaN or infinite"),
    ],
)
def test_bad_coordinates(coords, match):
    adata = ad.AnnData(np.ones((4, 2), np.float32), obsm={"spatial": coords})
    with pytest.raises(ValueError, match=match):
        stmcdi.pp.spatial_graph(adata, n_neighs=2)


def test_missing_key_and_too_few_spots_and_views():
    adata = line_adata([0.0, 1.0, 2.0])
    with pytest.raises(KeyError, match="obsm\\['xy'\\] not found"):
        stmcdi.pp.spatial_graph(adata, spatial_key="xy")
    with pytest.raises(ValueError, match="cannot each have 5 neighbours"):
        stmcdi.pp.spatial_graph(adata)
    with pytest.raises(ValueError, match="view"):
        stmcdi.pp.spatial_graph(line_adata(range(8))[:6], n_neighs=2)


def test_stale_table_detected_after_subsetting(small_adata):
    sub = small_adata[10:].copy()
    with pytest.raises(ValueError, match="stale"):
        check_neighbor_table(sub, "spatial_nn")
    stmcdi.pp.spatial_graph(sub)
    assert check_neighbor_table(sub, "spatial_nn", n_neighs=5).shape == (sub.n_obs, 6)


def test_neighbor_table_rejects_ragged_graph():
    conn = sp.csr_matrix(np.array([[0, 1, 1], [1, 0, 0], [1, 1, 0]]))
    with pytest.raises(ValueError, match="Spot 1 has 1 neighbours"):
        neighbor_table(conn, np.zeros((3, 2)), 2)
