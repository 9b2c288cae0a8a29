import numpy as np
import pytest
import torch

import stmcdi
from stmcdi.benchmark import ABLATIONS, ablation, compare


def test_every_study_names_real_module_arguments():
    import inspect

    params = set(inspect.signature(stmcdi.STMCDIModule).parameters) | set(inspect.signature(stmcdi.STMCDI).parameters)
    for study, variants in ABLATIONS.items():
        assert len(variants) >= 2, study
        for kwargs in variants.values():
            assert set(kwargs) <= params, (study, kwargs)
    assert set(ABLATIONS["encoder"]) == {"gcn", "gat", "gin", "mlp", "none"}
    assert set(ABLATIONS["mask-strategy"]) == {"entries", "spots", "genes"}
    conditions = ABLATIONS["conditions"]
    assert {(v["n_expression_neighbors"] > 0, v["spot_features"]) for v in conditions.values()} == {
        (True, True), (True, False), (False, True), (False, False)}


def test_ablation_variants_share_splits_and_differ():
    adata = stmcdi.datasets.synthetic(n_spots=80, n_genes=16, seed=2)
    df = ablation(adata, "encoder", variants=["gcn", "none"], seeds=(0, 1), min_entries=3,
                  model_kwargs={"n_channels": 8, "genes_per_token": 4},
                  train_kwargs={"max_epochs": 2, "batch_size": 32}, impute_kwargs={"n_samples": 3})
    assert list(df["method"]) == ["encoder=gcn", "encoder=gcn:network", "encoder=none", "encoder=none:network"] * 2
    df = df[df["method"].str.endswith(":network")].reset_index(drop=True)  # the networks are what differ
    df["method"] = df["method"].str.removesuffix(":network")
    assert df.groupby("seed")["n_scored"].nunique().eq(1).all()

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


def test_hybrid_objective_trains_both_tasks_and_predicts_in_one_pass():
    module = stmcdi.STMCDIModule(6, np.zeros(6), np.ones(6), 100.0, n_encoder_hidden=8, n_latent=4, n_channels=8,
                                 n_diffusion_steps=20, objective="hybrid", point_fraction=0.5)
    assert module.point_step == 20  # its own step index, outside the diffusion steps 0..19
    counts = torch.rand(40, 6) * 5
    edge_index = torch.stack([torch.arange(1, 40), torch.zeros(39, dtype=torch.long)])
    batch = {"counts": counts, "library": counts.sum(1), "edge_index": edge_index, "row": torch.arange(40)}
    torch.manual_seed(0)
    inf, gen, loss = module(batch)
    point = gen["t"] == 20
    assert 5 < int(point.sum()) < 35  # about half the spots get the one-pass task
    assert (gen["t"][~point] < 20).all()
    # one-pass spots regress their value (residual from the read-out); the others predict noise
    torch.testing.assert_close(gen["noise"][point], (inf["x"] - inf["base"])[point])
    assert not torch.allclose(gen["noise"][~point], (inf["x"] - inf["base"])[~point])
    assert loss.loss.requires_grad
    counts = torch.tensor([[3.0, float("nan"), 0.0, 5.0, 1.0, 2.0], [0.0, 4.0, 2.0, 1.0, 3.0, 0.0]])
    lib, ei = counts.nan_to_num().sum(1), torch.tensor([[1], [0]])
    module.eval()
    p1, p2 = module.predict(counts, lib, ei, n_seed=1), module.predict(counts, lib, ei, n_seed=1)
    assert torch.equal(p1, p2) and p1.shape == (1, 6)  # deterministic
    draws = module.sample(counts, lib, ei, n_seed=1, n_samples=4, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(draws[0], draws[3])  # the samples still spread
    assert torch.equal(draws[0, 0, [0, 2, 3, 4, 5]], p1[0, [0, 2, 3, 4, 5]])  # observed entries agree
    with pytest.raises(ValueError, match="point_fraction"):
        stmcdi.STMCDIModule(6, np.zeros(6), np.ones(6), 100.0, objective="hybrid", point_fraction=1.0)


def test_predict_needs_a_one_pass_task():
    module = stmcdi.STMCDIModule(6, np.zeros(6), np.ones(6), 100.0, n_encoder_hidden=8, n_latent=4, n_channels=8,
                                 objective="diffusion")
    counts = torch.tensor([[3.0, float("nan"), 0.0, 5.0, 1.0, 2.0], [0.0, 4.0, 2.0, 1.0, 3.0, 0.0]])
    with pytest.raises(ValueError, match="no one-pass predictor"):
        module.eval().predict(counts, counts.nan_to_num().sum(1), torch.tensor([[1], [0]]), n_seed=1)


def test_hybrid_model_writes_the_one_pass_estimate_and_the_samples_spread():
    import scvi

    held = stmcdi.benchmark.hold_out(stmcdi.datasets.synthetic(n_spots=80, n_genes=16, seed=1), "entries", 0.1)
    a = held.adata
    scvi.settings.seed = 0
    stmcdi.STMCDI.setup_anndata(a)
    model = stmcdi.STMCDI(a, n_channels=8, genes_per_token=4, n_diffusion_steps=20, objective="hybrid")
    model.train(max_epochs=2, batch_size=32, enable_progress_bar=False)
    out = model.impute(n_samples=4, inplace=False, return_samples=True)
    miss = np.isnan(stmcdi.pp.normalize(a, copy=True))
    assert not np.allclose(out["mean"][miss], out["samples"].mean(0)[miss])  # not the samples' mean
    np.testing.assert_allclose(out["std"][miss], out["samples"].std(0, ddof=1)[miss], rtol=1e-4, atol=1e-5)
    # the mean is the module's one-pass prediction, spot by spot
    model.impute(n_samples=2, seed=9)
    np.testing.assert_allclose(a.layers["imputed"][miss], out["mean"][miss], rtol=1e-5, atol=1e-6)
