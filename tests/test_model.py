import numpy as np
import pytest
import scipy.sparse as sp
import scvi
import torch

import stmcdi
from stmcdi import STMCDI

SMALL = {"n_channels": 8, "n_latent": 8, "n_encoder_hidden": 16, "genes_per_token": 4, "n_diffusion_steps": 20}
QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


def held_out(seed=0, n_spots=120, n_genes=40):
    adata = stmcdi.datasets.synthetic(n_spots=n_spots, n_genes=n_genes, seed=1)
    return adata, stmcdi.benchmark.hold_out(adata, "entries", 0.1, seed=seed)


def trained(adata, epochs=2, **kw):
    scvi.settings.seed = 0
    STMCDI.setup_anndata(adata)
    model = STMCDI(adata, **{**SMALL, **kw})
    model.train(max_epochs=epochs, batch_size=32, **QUIET)
    return model


def test_setup_registers_and_is_idempotent():
    _, held = held_out()
    a = held.adata
    STMCDI.setup_anndata(a)  # builds the graph when absent
    table = a.obsm["spatial_nn"].copy()
    STMCDI.setup_anndata(a)
    np.testing.assert_array_equal(a.obsm["spatial_nn"], table)
    model = STMCDI(a, **SMALL)
    assert model.summary_stats.n_vars == 40
    assert "STMCDI model: 40 genes" in model._model_summary_string


def test_tokens_group_genes_beyond_128():
    for n_genes, per_token in ((33, 1), (128, 1), (129, 2), (1000, 8)):
        adata = stmcdi.datasets.synthetic(n_spots=30, n_genes=n_genes, seed=0)
        STMCDI.setup_anndata(adata)
        assert STMCDI(adata, n_channels=8).module.denoiser.genes_per_token == per_token


def test_spot_feature_statistics_come_from_the_observed_entries():
    _, held = held_out()
    a = held.adata
    STMCDI.setup_anndata(a)
    model = STMCDI(a, **SMALL)
    x = stmcdi.pp.normalize(a, copy=True)
    obs = ~np.isnan(x)
    mean_value = np.where(obs, x, 0).sum(1) / obs.sum(1)
    assert float(model.module.spot_feature_mean[0]) == pytest.approx(mean_value.mean(), rel=1e-5)


def test_training_holds_back_entries_stops_early_and_fits_the_read_out():
    _, held = held_out()
    a = held.adata
    model = trained(a, epochs=30)
    hb = model.held_back_
    assert hb.nnz > 0 and hb.shape == a.shape
    r, c = hb.nonzero()
    assert not np.isnan(a.X.toarray()[r, c]).any()  # observed entries only
    assert "validation_mse" in model.history and len(model.history["validation_mse"]) >= 1
    record = model.readout_
    assert record["stack"]["names"][-1] == "network" and record["n_entries"] == hb.nnz
    assert all(w >= 0 for w in record["stack"]["weights"])
    assert 0.5 <= record["spread_scale"] <= 500.0 and record["coverage"] >= 0.89


def test_the_training_batches_never_show_the_held_back_entries(monkeypatch):
    from stmcdi import _data

    seen = []
    original = _data.NeighborhoodCollate.__call__

    def spy(self, batch):
        out = original(self, batch)
        if self.fill is None:  # training batches (validation batches predict the held-back entries)
            seen.append((out["row"].numpy(), out["counts"][: len(out["row"])].numpy()))
        return out

    monkeypatch.setattr(_data.NeighborhoodCollate, "__call__", spy)
    _, held = held_out()
    model = trained(held.adata, epochs=2)
    hb = model.held_back_.toarray()
    assert seen
    for rows, counts in seen:
        assert np.isnan(counts[hb[rows]]).all()


def test_train_impute_writes_layers_keeps_observed_and_records_how():
    _, held = held_out()
    a = held.adata
    x_before = a.X.copy()
    model = trained(a)
    model.impute(n_samples=3)
    imp, std = a.layers["imputed"], a.layers["imputed_std"]
    lognorm = stmcdi.pp.normalize(a, copy=True)
    observed = ~np.isnan(lognorm)
    np.testing.assert_array_equal(imp[observed], lognorm[observed])  # exactly, not up to round-off
    assert np.isfinite(imp).all() and (imp >= 0).all() and imp.dtype == np.float32
    assert (std[observed] == 0).all() and (std[~observed] > 0).mean() > 0.9
    np.testing.assert_array_equal(a.X.toarray(), x_before.toarray())  # NaN compare equal here
    assert set(a.layers) == {"imputed", "imputed_std"}
    record = a.uns["stmcdi"]["impute"]
    assert record["target"] == "missing" and record["readout"] == "ensemble" and record["n_samples"] == 3
    assert record["seed"] == 0 and record["n_filled"] == int((~observed).sum()) and record["version"]
    from stmcdi._calibration import scale_for

    assert record["spread_scale"] == scale_for(model.readout_, 3)  # the scale converted to 3 samples
    model.impute(n_samples=0, layer_added="point")
    assert "point_std" not in a.layers
    np.testing.assert_array_equal(a.layers["point"], imp)


def test_the_ensemble_is_the_weighted_sum_of_its_estimates():
    from stmcdi._calibration import spatial_neighbours, stack_of
    from stmcdi._stack import classical_estimates

    _, held = held_out()
    a = held.adata
    model = trained(a)
    ens = model.impute(n_samples=0, inplace=False)["mean"]
    net = model.impute(n_samples=0, readout="network", inplace=False)["mean"]
    stack = stack_of(model)
    x, _, _ = stmcdi.pp.log_normalize(a.X, target_sum=float(model.module.target_sum))
    est = classical_estimates(x, spatial_neighbours(a, "spatial"), stack.params, 0)
    parts = {name: (net if name == "network" else est[name].dense()) for name in stack.names}
    expected = np.maximum(sum(w * parts[n] for n, w in zip(stack.names, stack.weights)), 0)
    miss = np.isnan(x)
    np.testing.assert_allclose(ens[miss], expected[miss], rtol=1e-4, atol=1e-5)
    assert not np.allclose(ens[miss], net[miss])


def test_same_seed_same_values_and_seed_matters():
    _, held = held_out()
    model = trained(held.adata)
    r1 = model.impute(n_samples=2, seed=3, inplace=False)
    r2 = model.impute(n_samples=2, seed=3, inplace=False)
    r3 = model.impute(n_samples=2, seed=4, inplace=False)
    np.testing.assert_array_equal(r1["mean"], r2["mean"])
    np.testing.assert_array_equal(r1["std"], r2["std"])
    assert not np.array_equal(r1["std"], r3["std"])  # the seed drives the samples
    np.testing.assert_array_equal(r1["mean"], r3["mean"])  # the estimate is one deterministic pass
    assert model.impute(n_samples=2, return_samples=True, inplace=False)["samples"].shape == (2, 120, 40)


def test_imputation_does_not_depend_on_held_out_truth():
    adata, held = held_out()
    changed = adata.copy()
    dense = changed.X.toarray()
    r, c = held.mask.nonzero()
    dense[r, c] += 50.0  # different true values at exactly the held-out entries
    changed.X = sp.csr_matrix(dense)
    held2 = stmcdi.benchmark.hold_out(changed, "entries", 0.1, seed=0)
    outs = [trained(h.adata).impute(n_samples=2, seed=0, inplace=False)["mean"] for h in (held, held2)]
    np.testing.assert_array_equal(outs[0], outs[1])


def test_target_zeros_and_target_mask():
    _, held = held_out()
    a = held.adata
    model = trained(a)
    res = model.impute(n_samples=2, target="zeros", inplace=False)
    counts = a.X.toarray()
    lognorm = stmcdi.pp.normalize(a, copy=True)
    nonzero = counts > 0
    np.testing.assert_allclose(res["mean"][nonzero], lognorm[nonzero], rtol=1e-5, atol=1e-5)
    assert (res["mean"][counts == 0] > 0).mean() > 0.5
    mask = np.zeros(a.shape, dtype=bool)
    mask[:, 0] = True
    res = model.impute(n_samples=4, target=mask, inplace=False)
    assert (res["std"][:, 0] > 0).mean() > 0.8
    expected, _, _ = stmcdi.pp.log_normalize(a.X, sp.csr_matrix(mask), target_sum=float(model.module.target_sum))
    observed_rest = ~np.isnan(expected[:, 1:])
    np.testing.assert_array_equal(res["mean"][:, 1:][observed_rest], expected[:, 1:][observed_rest])
    with pytest.raises(ValueError, match="target"):
        model.impute(target="everything")
    with pytest.raises(ValueError, match="shape"):
        model.impute(target=mask[:5])


def test_zeros_are_filled_in_rounds_with_the_other_zeros_visible(monkeypatch):
    from stmcdi import _data

    _, held = held_out()
    a = held.adata
    model = trained(a)
    targets = []
    original = _data.NeighborhoodCollate.__call__

    def spy(self, batch):
        out = original(self, batch)
        if "target" in out and self.fill is not None and self.hidden.nnz == int(np.isnan(a.X.toarray()).sum()):
            targets.append((out["row"].numpy(), out["target"].numpy(), out["counts"][: len(out["row"])].numpy()))
        return out

    monkeypatch.setattr(_data.NeighborhoodCollate, "__call__", spy)
    model.impute(target="zeros", n_samples=0, inplace=False)
    zeros = a.X.toarray() == 0
    hit = np.zeros(a.shape, dtype=int)
    for rows, target, counts in targets:
        hit[rows] += target & ~np.isnan(counts)
        assert (counts[target & ~np.isnan(counts)] == 0).all()  # the zeros to fill show their zero count
    assert (hit[zeros] == 1).all() and (hit[~zeros] == 0).all()  # each zero in exactly one round


def test_nothing_to_fill_and_output_options_are_checked():
    adata = stmcdi.datasets.synthetic(n_spots=60, n_genes=20, seed=0)
    model = trained(adata)
    with pytest.raises(ValueError, match="Nothing to fill"):
        model.impute()
    genes = list(adata.var_names[[3, 1]])
    out = model.impute(target="zeros", genes=genes, inplace=False, n_samples=2)
    full = model.impute(target="zeros", inplace=False, n_samples=2)
    assert out["mean"].shape == (60, 2) and list(out["genes"]) == genes
    np.testing.assert_array_equal(out["mean"], full["mean"][:, [3, 1]])
    with pytest.raises(ValueError, match="inplace=False"):
        model.impute(target="zeros", genes=genes)
    with pytest.raises(ValueError, match="Genes not in"):
        model.impute(target="zeros", genes=["nope"], inplace=False)
    with pytest.raises(ValueError, match="readout"):
        model.impute(target="zeros", readout="magic")
    with pytest.raises(ValueError, match="n_samples"):
        model.impute(target="zeros", n_samples=-1)


def test_memory_guard_refuses_outputs_that_do_not_fit(monkeypatch):
    import psutil

    _, held = held_out()
    model = trained(held.adata)

    class Tiny:
        available = 1000

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny())
    with pytest.raises(MemoryError, match="gene subset"):
        model.impute()


def test_latent_representation_and_new_adata():
    adata, held = held_out()
    model = trained(held.adata)
    z = model.get_latent_representation()
    assert z.shape == (120, 8) and np.isfinite(z).all()
    new = held.adata[:60].copy()  # a new AnnData with the same genes; its graph is built on the fly
    del new.obsm["spatial_nn"]
    out = model.impute(new, n_samples=1, inplace=False)
    assert out["mean"].shape == (60, 40) and "spatial_nn" in new.obsm
    with pytest.raises(ValueError, match="differ from"):
        model.impute(adata[:, :30].copy())
    with pytest.raises(ValueError, match="differ from"):
        model.impute(adata[:, ::-1].copy())  # the same genes in another order


def test_save_load_roundtrip_and_old_models(tmp_path):
    _, held = held_out()
    a = held.adata
    model = trained(a)
    before = model.impute(n_samples=2, seed=0, inplace=False)
    model.save(tmp_path / "m", overwrite=True)
    loaded = STMCDI.load(tmp_path / "m", adata=a)
    after = loaded.impute(n_samples=2, seed=0, inplace=False)
    np.testing.assert_array_equal(before["mean"], after["mean"])
    np.testing.assert_array_equal(before["std"], after["std"])
    assert loaded.readout_ == model.readout_ and (loaded.held_back_ != model.held_back_).nnz == 0
    other = a.copy()
    other.var_names = [f"other{i}" for i in range(other.n_vars)]
    with pytest.raises(ValueError, match="genes differ"):
        STMCDI.load(tmp_path / "m", adata=other)
    # a model saved by an earlier version (no read-out version) is refused with a message, not a crash
    saved = torch.load(tmp_path / "m" / "model.pt", weights_only=False)
    del saved["attr_dict"]["readout_version_"]
    torch.save(saved, tmp_path / "m" / "model.pt")
    with pytest.raises(ValueError, match="earlier version of stmcdi"):
        STMCDI.load(tmp_path / "m", adata=a)


def test_end_to_end_beats_the_gene_mean_on_synthetic():
    adata = stmcdi.datasets.synthetic(n_spots=300, n_genes=48, seed=2)
    held = stmcdi.benchmark.hold_out(adata, "entries", 0.1, seed=0)
    model = trained(held.adata, epochs=40, n_channels=16)
    model.impute(n_samples=2)
    ours = stmcdi.benchmark.score(held, held.adata.layers["imputed"])
    gm = stmcdi.benchmark.score(held, stmcdi.benchmark.BASELINES["gene_mean"](held.adata))
    sm = stmcdi.benchmark.score(held, stmcdi.benchmark.BASELINES["spot_mean"](held.adata))
    assert ours["rmse"] < gm["rmse"] and ours["pcc"] > gm["pcc"] and ours["per_gene_pcc"] > sm["per_gene_pcc"]


def test_a_model_saved_by_the_former_read_out_is_refused_with_a_message():
    from pathlib import Path

    saved = Path(__file__).parent / "data" / "model_before_stacked_readout"  # trained and saved by commit a85d36a
    adata = stmcdi.datasets.synthetic(n_spots=60, n_genes=12, seed=0)
    a = stmcdi.benchmark.hold_out(adata, "entries", 0.1, seed=0).adata
    with pytest.raises(ValueError, match="earlier version of stmcdi.*Train it again"):
        STMCDI.load(str(saved), adata=a)


def test_default_impute_writes_the_estimate_alone_and_samples_only_when_asked():
    _, held = held_out()
    a = held.adata
    model = trained(a)
    model.impute()
    assert "imputed" in a.layers and "imputed_std" not in a.layers
    assert a.uns["stmcdi"]["impute"]["n_samples"] == 0
    point = a.layers["imputed"].copy()
    model.impute(n_samples=2)
    np.testing.assert_allclose(a.layers["imputed"], point, atol=1e-5)  # samples move the spread, not the estimate
    assert "imputed_std" in a.layers
    with pytest.raises(ValueError, match="n_samples"):
        model.impute(return_samples=True, inplace=False)
