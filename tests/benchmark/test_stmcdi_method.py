import numpy as np

import stmcdi
from stmcdi.benchmark import evaluate, stmcdi_method


def test_stmcdi_method_runs_in_the_harness_and_leaves_input_alone():
    adata = stmcdi.datasets.synthetic(n_spots=80, n_genes=16, seed=4)
    before = adata.X.copy()
    method = stmcdi_method({"n_channels": 8, "genes_per_token": 4}, {"max_epochs": 2, "batch_size": 32},
                           {"n_samples": 2, "n_steps": 3})
    df = evaluate(adata, {"stmcdi": method}, protocols=("entries", "thin"), ratio={"entries": 0.1, "thin": 0.5},
                  min_entries=3)
    assert list(df["protocol"]) == ["entries", "thin"]
    assert np.isfinite(df["rmse"]).all() and (df["n_scored"] > 0).all()
    assert method.last_model is not None and method.last_model.is_trained_
    assert (adata.X != before).nnz == 0
