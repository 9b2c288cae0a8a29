import numpy as np
import pytest
import torch

import stmcdi
from stmcdi.benchmark import ABLATIONS, ablation, compare


def test_every_study_names_real_module_arguments():
    import inspect

    params = set(inspect.signature(stmcdi.STMCDIModule).parameters)
    for study, variants in ABLATIONS.items():
        assert len(variants) >= 2, study
        for kwargs in variants.values():
            assert set(kwargs) <= params, (study, kwargs)
    assert set(ABLATIONS["encoder"]) == {"gcn", "gat", "gin", "mlp", "none"}
    assert set(ABLATIONS["mask-strategy"]) == {"entries", "spots", "genes"}


def test_ablation_variants_share_splits_and_differ():
    adata = stmcdi.datasets.synthetic(n_spots=80, n_genes=16, seed=2)
    df = ablation(adata, "encoder", variants=["gcn", "none"], seeds=(0, 1), min_entries=3,
                  model_kwargs={"n_channels": 8, "genes_per_token": 4},
                  train_kwargs={"max_epochs": 2, "batch_size": 32}, impute_kwargs={"n_samples": 3, "n_steps": 2})
    assert list(df["method"]) == ["encoder=gcn", "encoder=none"] * 2
    assert df.groupby("seed")["n_scored"].nunique().eq(1).all()
    assert np.isfinite(df["crps"]).all() and df["coverage_90"].between(0, 1).all()
    assert df.loc[0, "rmse"] != df.loc[1, "rmse"]
    cmp = compare(df, reference="encoder=gcn", metrics=("rmse",))
    assert list(cmp["method"]) == ["encoder=none"] and int(cmp["n_seeds"].iloc[0]) == 2


def test_ablation_rejects_unknown_study_and_variant():
    adata = stmcdi.datasets.synthetic(n_spots=40, n_genes=8)
    with pytest.raises(ValueError, match="Unknown ablation study"):
        ablation(adata, "dropout")
    with pytest.raises(ValueError, match="Unknown variant"):
        ablation(adata, "encoder", variants=["transformer"])


def test_mae_objective_predicts_in_one_deterministic_pass():
    module = stmcdi.STMCDIModule(6, np.zeros(6), np.ones(6), 100.0, n_encoder_hidden=8, n_latent=4, n_channels=8,
                                 objective="mae")
    counts = torch.tensor([[3.0, float("nan"), 0.0, 5.0, 1.0, 2.0], [0.0, 4.0, 2.0, 1.0, 3.0, 0.0]])
    batch = {"counts": counts.nan_to_num(), "library": counts.nan_to_num().sum(1),
             "edge_index": torch.tensor([[1], [0]]), "row": torch.tensor([0])}
    inf, gen, loss = module(batch)
    # the regression target is the value itself (residual from the detached read-out), with no noise
    torch.testing.assert_close(gen["noise"], inf["x"] - inf["base"])
    assert (gen["t"] == 0).all() and loss.loss.requires_grad
    samples = module.eval().sample(counts, counts.nan_to_num().sum(1), torch.tensor([[1], [0]]), n_seed=1,
                                   n_samples=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(samples[0], samples[3])  # no noise: every sample is the same
    with pytest.raises(ValueError, match="objective"):
        stmcdi.STMCDIModule(6, np.zeros(6), np.ones(6), 100.0, objective="vae")
