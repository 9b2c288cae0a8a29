import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import stmcdi
from stmcdi.pp import log_normalize


def test_log_normalize_exact_values_and_observed_library():
    counts = np.array([[1.0, 3.0, np.nan], [2.0, 0.0, 2.0]])
    x, lib, target = log_normalize(counts)
    np.testing.assert_array_equal(lib, [4.0, 4.0])  # the NaN entry does not count
    assert target == 4.0
    np.testing.assert_allclose(x[0, :2], np.log1p([1.0, 3.0]), rtol=1e-6)
    assert np.isnan(x[0, 2]) and x[1, 1] == 0.0


def test_sparse_and_dense_agree_and_mask():
    rng = np.random.default_rng(0)
    dense = rng.poisson(2.0, (20, 7)).astype(np.float32)
    mask = rng.random((20, 7)) < 0.2
    a, lib_a, _ = log_normalize(sp.csr_matrix(dense), missing=sp.csr_matrix(mask))
    dense_nan = dense.copy()
    dense_nan[mask] = np.nan
    b, lib_b, _ = log_normalize(dense_nan)
    np.testing.assert_allclose(a, b, equal_nan=True)
    np.testing.assert_allclose(lib_a, np.where(mask, 0, dense).sum(1))


def test_normalize_writes_layer_and_uns():
    adata = ad.AnnData(sp.csr_matrix(np.array([[1.0, 1.0], [0.0, 4.0]], dtype=np.float32)))
    stmcdi.pp.normalize(adata, target_sum=2.0)
    np.testing.assert_allclose(adata.layers["lognorm"], np.log1p([[1.0, 1.0], [0.0, 2.0]]), rtol=1e-6)
    assert adata.uns["stmcdi"]["normalize"]["target_sum"] == 2.0
    assert stmcdi.pp.normalize(adata, copy=True).shape == (2, 2)


@pytest.mark.parametrize(
    ("values", "match"),
    [([[1.0, -1.0]], "negative"), ([[1.5, 1.0]], "non-integer"), ([[np.inf, 1.0]], "infinite")],
)
def test_normalize_rejects_non_counts(values, match):
    with pytest.raises(ValueError, match=match):
        stmcdi.pp.normalize(ad.AnnData(np.array(values, dtype=np.float32)))


def test_normalize_missing_layer_message():
    with pytest.raises(KeyError, match="layers\\['counts'\\] not found"):
        stmcdi.pp.normalize(ad.AnnData(np.ones((2, 2), np.float32)), layer="counts")
