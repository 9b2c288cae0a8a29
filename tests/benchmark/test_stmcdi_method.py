import numpy as np

import stmcdi
from stmcdi.benchmark import evaluate, stmcdi_method


def test_stmcdi_method_runs_in_the_harness_and_leaves_input_alone():
    adata = stmcdi.datasets.synthetic(n_spots=80, n_genes=16, seed=4)
    before = adata.X.copy()
    method = stmcdi_method({"n_channels": 8, "genes_per_token": 4}, {"max_epochs": 2, "batch_size": 32},
                           {"n_samples": 2})
    df = evaluate(adata, {"stmcdi": method}, protocols=("entries", "thin"), ratio={"entries": 0.1, "thin": 0.5},
                  min_entries=3)
    assert list(df["protocol"]) == ["entries", "entries", "thin", "thin"]
    assert list(df["method"]) == ["stmcdi", "stmcdi:network"] * 2
    assert np.isfinite(df["rmse"]).all() and (df["n_scored"] > 0).all()
    assert method.last_model is not None and method.last_model.is_trained_
    assert (adata.X != before).nnz == 0


def test_stmcdi_method_accepts_an_impute_seed():
    # the wrapper passes the split's seed to impute; a seed in impute_kwargs used to raise a TypeError
    adata = stmcdi.datasets.synthetic(n_spots=60, n_genes=12, seed=1)
    # diffusion objective: its mean is the samples' mean, so the sampling seed shows in it
    kwargs = ({"n_channels": 8, "genes_per_token": 4, "objective": "diffusion"}, {"max_epochs": 1, "batch_size": 32})
    held = stmcdi.benchmark.hold_out(adata, seed=0)
    a = stmcdi_method(*kwargs, {"n_samples": 2, "seed": 7})(held.adata, seed=0)
    b = stmcdi_method(*kwargs, {"n_samples": 2, "seed": 7})(held.adata, seed=0)
    c = stmcdi_method(*kwargs, {"n_samples": 2, "seed": 8})(held.adata, seed=0)
    np.testing.assert_array_equal(a["variants"]["network"], b["variants"]["network"])
    assert not np.array_equal(a["variants"]["network"], c["variants"]["network"])
