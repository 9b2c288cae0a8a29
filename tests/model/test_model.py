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
    adata, held = held_out()
    a = held.adata
    STMCDI.setup_anndata(a)  # builds the graph when absent
    table = a.obsm["spatial_nn"].copy()
    STMCDI.setup_anndata(a)
    np.testing.assert_array_equal(a.obsm["spatial_nn"], table)
    model = STMCDI(a, **SMALL)
    assert model.summary_stats.n_vars == 40
    assert "STMCDI model: 40 genes, 5 spatial neighbours" in model._model_summary_string


def test_latent_readout_default_follows_the_section_size(monkeypatch, tmp_path):
    from stmcdi import _model

    adata = stmcdi.datasets.synthetic(n_spots=60, n_genes=12, seed=0)
    STMCDI.setup_anndata(adata)
    assert STMCDI(adata, **SMALL).module.readout is None  # small section, random targets
    assert STMCDI(adata, mask_strategy="nonzero", **SMALL).module.readout is not None
    monkeypatch.setattr(_model, "_LATENT_READOUT_MIN_SPOTS", 60)  # the section now counts as large
    assert STMCDI(adata, **SMALL).module.readout is not None
    assert STMCDI(adata, latent_readout=False, **SMALL).module.readout is None  # the user's choice stands
    # the derived choice is saved: a model loaded onto a smaller AnnData rebuilds the same read-out
    model = STMCDI(adata, **SMALL)
    assert model.init_params_["kwargs"]["module_kwargs"]["latent_readout"] is True
    model.train(max_epochs=1, batch_size=32, calibration_entries=0, **QUIET)
    model.save(tmp_path / "m")
    small = adata[:40].copy()
    stmcdi.pp.spatial_graph(small)
    STMCDI.setup_anndata(small)
    assert STMCDI.load(tmp_path / "m", adata=small).module.readout is not None


def test_spot_feature_statistics_come_from_the_observed_entries():
    _, held = held_out()
    a = held.adata
    STMCDI.setup_anndata(a)
    model = STMCDI(a, **SMALL)
    lognorm = stmcdi.pp.normalize(a, copy=True)
    counts = a.X.toarray()
    obs = ~np.isnan(lognorm)
    n = obs.sum(1)
    summaries = np.column_stack([np.nansum(lognorm, 1) / n, ((counts > 0) & obs).sum(1) / n,
                                 np.log1p(np.nansum(np.where(obs, counts, np.nan), 1) / n)])
    np.testing.assert_allclose(model.module.spot_feature_mean.numpy(), summaries.mean(0), rtol=1e-5)
    np.testing.assert_allclose(model.module.spot_feature_std.numpy(), summaries.std(0), rtol=1e-5)
    # the module's summaries of a fully visible batch are these, standardised: mean 0, sd 1 over the spots
    c = torch.as_tensor(np.where(obs, counts, np.nan), dtype=torch.float32)
    lib = torch.nan_to_num(c).sum(1)
    x = torch.nan_to_num(model.module.scale(c, lib))
    f = model.module.spot_summary(c, x, torch.as_tensor(obs)).numpy()
    np.testing.assert_allclose(f.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(f.std(0), 1.0, atol=1e-3)
    assert "spot_feature_stats" not in model.init_params_["kwargs"]["module_kwargs"]  # recomputed, not saved
    assert STMCDI(a, spot_features=False, **SMALL).module.spot_offset is None


def test_expression_neighbours_option():
    _, held = held_out()
    a = held.adata
    STMCDI.setup_anndata(a)
    model = STMCDI(a, **SMALL)
    assert model.n_expression_neighbors == 20 and model.module.expression_profile
    assert "expression neighbours=20" in model._model_summary_string
    batch = next(iter(model._neighborhood_loader(a, 16)))
    assert batch["expression_counts"].shape == (16 * 20, 40)
    off = STMCDI(a, n_expression_neighbors=0, **SMALL)
    assert not off.module.expression_profile and off.module.denoiser.n_token_features == 4
    assert "expression_counts" not in next(iter(off._neighborhood_loader(a, 16)))
    assert STMCDI(a, n_expression_neighbors=500, **SMALL).n_expression_neighbors == a.n_obs - 1
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="n_expression_neighbors"):
            STMCDI(a, n_expression_neighbors=bad, **SMALL)




def test_training_chooses_expression_neighbours_and_library_without_the_targets(monkeypatch, tmp_path):
    _, held = held_out()
    a = held.adata
    seen = {}
    for blind, library in ((True, False), (False, False), (False, True)):
        scvi.settings.seed = 0
        STMCDI.setup_anndata(a)
        model = STMCDI(a, blind_expression_neighbors=blind, blind_library=library, **SMALL)
        assert model.blind_expression_neighbors is blind and model.blind_library is library
        inference = model.module.inference

        def spy(*args, _key=(blind, library), _inference=inference, _module=model.module, **kw):
            if _module.training:  # not the calibration pass after training, which passes its entries
                seen.setdefault(_key, set()).add(kw.get("target") is not None)
            return _inference(*args, **kw)

        monkeypatch.setattr(model.module, "inference", spy)
        model.train(max_epochs=1, batch_size=32, **QUIET)
        monkeypatch.undo()
    # either option: every training batch brings the targets the collate drew (and left out of what it made)
    assert seen == {(True, False): {True}, (False, False): {False}, (False, True): {True}}
    model.save(tmp_path / "m")
    loaded = STMCDI.load(tmp_path / "m", adata=a)
    assert loaded.blind_expression_neighbors is False and loaded.blind_library is True


def test_gene_groups_by_detected_fraction():
    from stmcdi._model import detection_groups

    _, held = held_out()
    a = held.adata
    STMCDI.setup_anndata(a)
    model = STMCDI(a, n_gene_groups=4, **SMALL)
    groups = model.module.gene_group.numpy()
    assert np.bincount(groups).tolist() == [10, 10, 10, 10]
    counts = a.X.toarray()
    detected = np.nansum(counts > 0, axis=0) / (~np.isnan(counts)).sum(axis=0)
    assert detected[groups == 0].max() <= detected[groups == 3].min()  # sparse genes first
    assert model.module.expression_weight.shape == (4,)
    with pytest.raises(ValueError, match="n_gene_groups"):
        detection_groups(np.zeros((3, 2)), 3)


def test_train_impute_writes_layers_and_keeps_observed():
    _, held = held_out()
    a = held.adata
    x_before = a.X.copy()
    model = trained(a)
    assert model.is_trained_ and "train_loss" in model.history
    model.impute(n_samples=3, n_steps=5)
    imp, std = a.layers["imputed"], a.layers["imputed_std"]
    lognorm = stmcdi.pp.normalize(a, copy=True)
    observed = ~np.isnan(lognorm)
    np.testing.assert_array_equal(imp[observed], lognorm[observed])  # exactly, not up to round-off
    assert np.isfinite(imp).all() and (imp >= 0).all()
    assert (std[observed] == 0).all() and (std[~observed] > 0).mean() > 0.9
    # the user's counts are untouched (NaN kept)
    np.testing.assert_array_equal(a.X.toarray(), x_before.toarray())  # NaN compare equal here
    assert set(a.layers) == {"imputed", "imputed_std"}


def test_same_seed_same_values_and_seed_matters():
    _, held = held_out()
    model = trained(held.adata)
    r1 = model.impute(n_samples=2, n_steps=4, seed=3, inplace=False)
    r2 = model.impute(n_samples=2, n_steps=4, seed=3, inplace=False)
    r3 = model.impute(n_samples=2, n_steps=4, seed=4, inplace=False)
    np.testing.assert_array_equal(r1["mean"], r2["mean"])
    np.testing.assert_array_equal(r1["std"], r2["std"])
    assert not np.array_equal(r1["std"], r3["std"])  # the seed drives the samples
    np.testing.assert_array_equal(r1["mean"], r3["mean"])  # the default (hybrid) mean is one deterministic pass
    assert set(r1) == {"mean", "std"}
    assert model.impute(n_samples=2, n_steps=4, return_samples=True, inplace=False)["samples"].shape == (2, 120, 40)


def test_imputation_does_not_depend_on_held_out_truth():
    adata, held = held_out()
    changed = adata.copy()
    dense = changed.X.toarray()
    r, c = held.mask.nonzero()
    dense[r, c] += 50.0  # different true values at exactly the held-out entries
    changed.X = sp.csr_matrix(dense)
    held2 = stmcdi.benchmark.hold_out(changed, "entries", 0.1, seed=0)
    assert (held2.mask != held.mask).nnz == 0
    outs = []
    for h in (held, held2):
        model = trained(h.adata)
        outs.append(model.impute(n_samples=2, n_steps=4, seed=0, inplace=False)["mean"])
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.allclose(held.truth, held2.truth)


def test_target_zeros_and_target_mask():
    _, held = held_out()
    a = held.adata
    model = trained(a)
    res = model.impute(n_samples=2, n_steps=4, target="zeros", inplace=False)
    counts = a.X.toarray()
    lognorm = stmcdi.pp.normalize(a, copy=True)
    nonzero = counts > 0
    np.testing.assert_allclose(res["mean"][nonzero], lognorm[nonzero], rtol=1e-5, atol=1e-5)
    # zeros are filled: most get a positive value (samples are clipped at 0, so some stay at 0)
    assert (res["mean"][counts == 0] > 0).mean() > 0.5
    mask = np.zeros(a.shape, dtype=bool)
    mask[:, 0] = True
    res = model.impute(n_samples=4, n_steps=4, target=mask, inplace=False)
    assert (res["std"][:, 0] > 0).mean() > 0.8
    # masked entries count as missing, so the library size (observed entries only) excludes them too
    expected, _, _ = stmcdi.pp.log_normalize(a.X, sp.csr_matrix(mask), target_sum=float(model.module.target_sum))
    observed_rest = ~np.isnan(expected[:, 1:])
    np.testing.assert_array_equal(res["mean"][:, 1:][observed_rest], expected[:, 1:][observed_rest])
    with pytest.raises(ValueError, match="target"):
        model.impute(target="everything")
    with pytest.raises(ValueError, match="shape"):
        model.impute(target=mask[:5])


def test_latent_representation_and_new_adata():
    adata, held = held_out()
    model = trained(held.adata)
    z = model.get_latent_representation()
    assert z.shape == (120, 8) and np.isfinite(z).all()
    new = adata[:60].copy()  # a new AnnData with the same genes; its graph is built on the fly
    out = model.impute(new, n_samples=1, n_steps=3, inplace=False)
    assert out["mean"].shape == (60, 40) and "spatial_nn" in new.obsm
    with pytest.raises(ValueError, match="differ from the 40"):
        model.impute(adata[:, :30].copy())


def test_save_load_roundtrip(tmp_path):
    _, held = held_out()
    a = held.adata
    model = trained(a)
    before = model.impute(n_samples=2, n_steps=4, seed=0, inplace=False)
    model.save(tmp_path / "m", overwrite=True)
    loaded = STMCDI.load(tmp_path / "m", adata=a)
    after = loaded.impute(n_samples=2, n_steps=4, seed=0, inplace=False)
    np.testing.assert_array_equal(before["mean"], after["mean"])
    assert loaded.spread_scale_ == model.spread_scale_  # the calibrated spread travels with the model
    assert (loaded.calibration_entries_ != model.calibration_entries_).nnz == 0
    for name, p in model.module.state_dict().items():
        torch.testing.assert_close(loaded.module.state_dict()[name], p)
    other = a.copy()
    other.var_names = [f"other{i}" for i in range(other.n_vars)]
    with pytest.raises(ValueError, match="genes differ"):
        STMCDI.load(tmp_path / "m", adata=other)


def test_ema_weights_are_what_training_leaves():
    _, held = held_out()
    a = held.adata
    STMCDI.setup_anndata(a)
    scvi.settings.seed = 0
    m1 = STMCDI(a, **SMALL)
    m1.train(max_epochs=3, batch_size=32, ema_decay=None, **QUIET)
    scvi.settings.seed = 0
    m2 = STMCDI(a, **SMALL)
    m2.train(max_epochs=3, batch_size=32, ema_decay=0.9, **QUIET)
    w1 = m1.module.denoiser.token_in.weight
    w2 = m2.module.denoiser.token_in.weight
    assert not torch.allclose(w1, w2)  # the averaged weights replaced the raw ones
    torch.testing.assert_close(m1.module.gene_mean, m2.module.gene_mean)  # buffers untouched


def test_early_stopping_uses_a_validation_split():
    _, held = held_out()
    a = held.adata
    STMCDI.setup_anndata(a)
    model = STMCDI(a, **SMALL)
    model.train(max_epochs=3, batch_size=32, early_stopping=True, **QUIET)
    assert len(model.validation_indices) > 0
    assert "validation_loss" in model.history


def test_end_to_end_beats_gene_mean_on_synthetic():
    adata = stmcdi.datasets.synthetic(n_spots=400, n_genes=64, seed=2)
    held = stmcdi.benchmark.hold_out(adata, "entries", 0.1, seed=0)
    model = trained(held.adata, epochs=60, n_channels=16)
    model.impute(n_samples=4, n_steps=10)
    ours = stmcdi.benchmark.score(held, held.adata.layers["imputed"])
    gm = stmcdi.benchmark.score(held, stmcdi.benchmark.BASELINES["gene_mean"](held.adata))
    sm = stmcdi.benchmark.score(held, stmcdi.benchmark.BASELINES["spot_mean"](held.adata))
    assert ours["rmse"] < gm["rmse"]
    assert ours["pcc"] > gm["pcc"]
    assert ours["per_gene_pcc"] > sm["per_gene_pcc"]


def test_spread_scale_widens_the_samples_not_the_mean():
    _, held = held_out()
    model = trained(held.adata)
    a = model.impute(n_samples=4, n_steps=3, seed=1, spread_scale=1.0, inplace=False, return_samples=True)
    b = model.impute(n_samples=4, n_steps=3, seed=1, spread_scale=2.0, inplace=False, return_samples=True)
    np.testing.assert_array_equal(a["mean"], b["mean"])
    miss = a["std"] > 0
    centre = a["samples"].mean(0)
    expected = np.clip(centre + 2.0 * (a["samples"] - centre), 0, None)
    np.testing.assert_allclose(b["samples"][:, miss], expected[:, miss], rtol=1e-4, atol=1e-5)
    assert (b["std"][miss] >= a["std"][miss] - 1e-6).all() and b["std"][miss].mean() > 1.3 * a["std"][miss].mean()
    with pytest.raises(ValueError, match="spread_scale"):
        model.impute(spread_scale=0.0)


def test_training_calibrates_the_spread_on_held_back_entries():
    _, held = held_out()
    a = held.adata
    model = trained(a)
    entries = model.calibration_entries_
    # 120 spots x 40 genes: a tenth of the observed entries (the 2000 default is more than that)
    assert entries is not None and entries.shape == a.shape and entries.nnz == int((~np.isnan(a.X.toarray())).sum()) // 10
    observed = ~np.isnan(a.X.toarray())
    r, c = entries.nonzero()
    assert observed[r, c].all()  # drawn among observed entries only, never the hold-out's NaN
    rec = model.spread_calibration_
    assert rec["n_entries"] == entries.nnz and rec["level"] == 0.9
    assert 0.5 <= model.spread_scale_ <= 5.0 and rec["spread_scale"] == model.spread_scale_
    assert rec["coverage"] >= 0.9 or model.spread_scale_ == 5.0
    # calibrated for impute's default settings; the same settings spelled out do not recalibrate
    from stmcdi._model import N_SAMPLES

    assert (rec["n_samples"], rec["sampler"], rec["n_steps"]) == (N_SAMPLES, "ddim", None) and N_SAMPLES == 10
    model.impute(n_samples=N_SAMPLES, n_steps=10, seed=1, inplace=False)
    assert model.spread_calibration_ is rec
    # other settings: impute recalibrates for them first, once, and uses that scale
    a1 = model.impute(n_samples=4, n_steps=3, seed=1, inplace=False, return_samples=True)
    rec4 = model.spread_calibration_
    assert rec4 is not rec and (rec4["n_samples"], rec4["n_steps"], rec4["level"]) == (4, 3, 0.9)
    a2 = model.impute(n_samples=4, n_steps=3, seed=1, spread_scale=model.spread_scale_, inplace=False,
                      return_samples=True)
    assert model.spread_calibration_ is rec4
    np.testing.assert_array_equal(a1["samples"], a2["samples"])
    # recalibrating for other sampler settings updates the scale used by impute
    rec2 = model.calibrate_spread(n_samples=3, n_steps=2, level=0.5)
    assert rec2["n_samples"] == 3 and rec2["level"] == 0.5 and model.spread_scale_ == rec2["spread_scale"]
    with pytest.raises(ValueError, match="level"):
        model.calibrate_spread(level=1.5)


def test_calibration_entries_follow_the_mask_strategy_and_can_be_off():
    _, held = held_out()
    a = held.adata
    model = trained(a, mask_strategy="nonzero")
    r, c = model.calibration_entries_.nonzero()
    assert (a.X.toarray()[r, c] > 0).all()  # nonzero targets: calibrated on nonzero entries

    off = STMCDI(a, **SMALL)
    off.train(max_epochs=1, batch_size=32, calibration_entries=0, **QUIET)
    assert off.calibration_entries_ is None and off.spread_scale_ is None
    d = off.impute(n_samples=3, n_steps=2, seed=0, inplace=False, return_samples=True)
    e = off.impute(n_samples=3, n_steps=2, seed=0, spread_scale=1.25, inplace=False, return_samples=True)
    np.testing.assert_array_equal(d["samples"], e["samples"])  # the fixed fallback scale
    with pytest.raises(ValueError, match="no calibration entries"):
        off.calibrate_spread()
    with pytest.raises(ValueError, match="calibration_entries"):
        off.train(max_epochs=1, calibration_entries=-1, **QUIET)


def test_choose_spread_scale_is_the_smallest_covering_scale():
    from stmcdi._model import _choose_spread_scale

    rng = np.random.default_rng(0)
    draws = 3.0 + rng.standard_normal((40, 3000))
    truth = 3.0 + 0.5 * rng.standard_normal(3000)  # narrower than the draws: shrink them
    scale, cov, unscaled = _choose_spread_scale(truth, draws, 0.9)
    assert unscaled > 0.99 and 0.5 <= scale < 0.75 and cov >= 0.9
    grid = np.array([0.5, 1.0])
    too_wide = 3.0 + 10.0 * rng.standard_normal(3000)
    scale, cov, _ = _choose_spread_scale(too_wide, draws, 0.9, grid=grid)
    assert scale == 1.0 and cov < 0.9  # none reaches the level: the largest scale


def test_zeros_are_filled_in_rounds_with_the_other_zeros_visible():
    _, held = held_out()
    a = held.adata
    # with the spatial read-out the point estimate reads the spot's visible entries through the encoder too
    # (without it, only the two-epoch denoiser does, and its residual is still ~1e-4)
    model = trained(a, latent_readout=True)
    counts = a.X.toarray()
    zeros = counts == 0
    kw = {"n_samples": 3, "n_steps": 3, "seed": 4, "inplace": False, "return_samples": True}
    once = model.impute(target="zeros", zero_rounds=1, **kw)
    # one round fills every zero at once; unlike a boolean target (hidden everywhere, as missing entries
    # are), a zero is hidden only from its own spot: its neighbours show their zeros
    as_mask = model.impute(target=zeros, **kw)
    np.testing.assert_array_equal(once["mean"][~zeros & ~np.isnan(counts)], as_mask["mean"][~zeros & ~np.isnan(counts)])
    assert np.abs(once["mean"][zeros] - as_mask["mean"][zeros]).mean() > 1e-3
    two = model.impute(target="zeros", **kw)  # the default: two rounds
    missing = np.isnan(counts)
    filled = zeros | missing
    assert np.isfinite(two["mean"]).all() and (two["std"][filled] > 0).mean() > 0.8  # some samples clip at 0
    np.testing.assert_array_equal(two["mean"][~filled], once["mean"][~filled])  # observed counts kept
    # with the other half of the zeros visible as zeros, the filled values change (and are not just resampled)
    assert np.abs(two["mean"][zeros] - once["mean"][zeros]).mean() > 1e-3
    assert two["samples"].shape == (3, *a.shape)
    np.testing.assert_allclose(two["samples"][:, filled].std(0), two["std"][filled], rtol=1e-4, atol=1e-5)
    again = model.impute(target="zeros", **kw)
    np.testing.assert_array_equal(again["mean"], two["mean"])  # seeded
    with pytest.raises(ValueError, match="zero_rounds"):
        model.impute(target="zeros", zero_rounds=0)


def test_zero_dispersion_conditions_filled_zeros_on_their_zero_count_only():
    from stmcdi import zero_conditioned

    _, held = held_out()
    a = held.adata
    model = trained(a)
    counts = a.X.toarray()
    zeros = counts == 0
    kw = {"n_samples": 3, "n_steps": 3, "seed": 4, "inplace": False}
    kw["smooth"] = 0.0  # the zero conditioning alone
    plain = model.impute(target="zeros", zero_dispersion=0.0, **kw)
    moved = model.impute(target="zeros", zero_dispersion=0.5, **kw)
    missing = np.isnan(counts)
    # NaN entries and observed nonzero counts are not moved; the samples' spread is not moved either
    np.testing.assert_array_equal(moved["mean"][~zeros], plain["mean"][~zeros])
    np.testing.assert_array_equal(moved["std"], plain["std"])
    library = np.nansum(counts, axis=1)
    expect = zero_conditioned(plain["mean"], library, float(model.module.target_sum), 0.5)
    np.testing.assert_allclose(moved["mean"][zeros], expect[zeros], rtol=1e-6)
    assert (moved["mean"][zeros] <= plain["mean"][zeros]).all()
    assert (moved["mean"][zeros] < plain["mean"][zeros] - 1e-4).mean() > 0.5
    assert missing.any()
    for bad in (-1.0, float("nan"), True, "0.25"):
        with pytest.raises(ValueError, match="zero_dispersion"):
            model.impute(target="zeros", zero_dispersion=bad)



def test_shrink_keeps_per_gene_correlations_and_moves_only_filled_entries():
    _, held = held_out()
    a = held.adata
    model = trained(a)
    rec = model.spread_calibration_
    assert np.isfinite(rec["within_gene_slope"]) and 0.1 <= rec["shrink"] <= 1.0
    assert rec["shrink"] == pytest.approx(np.clip(rec["within_gene_slope"], 0.1, 1.0))
    kw = {"n_samples": 3, "n_steps": 3, "seed": 4, "inplace": False}
    plain = model.impute(**kw)
    half = model.impute(shrink=0.5, **kw)
    fill = np.isnan(a.X.toarray())
    np.testing.assert_array_equal(half["mean"][~fill], plain["mean"][~fill])
    np.testing.assert_array_equal(half["std"], plain["std"])
    genes = [g for g in range(a.n_vars) if fill[:, g].sum() >= 3 and plain["mean"][fill[:, g], g].std() > 0]
    assert len(genes) > 10
    for g in genes:  # an affine map within each gene: the correlation is exact, the spread halves
        p, h = plain["mean"][fill[:, g], g], half["mean"][fill[:, g], g]
        assert np.corrcoef(p, h)[0, 1] == pytest.approx(1.0, abs=1e-5)
        assert h.std() == pytest.approx(0.5 * p.std(), rel=1e-4)
        assert h.mean() == pytest.approx(p.mean(), rel=1e-5, abs=1e-6)
    cal = model.impute(shrink="calibrated", **kw)
    expect = stmcdi.shrink_within_genes(plain["mean"], fill, rec["shrink"])
    np.testing.assert_allclose(cal["mean"], expect, rtol=1e-5, atol=1e-6)
    for bad in (1.5, -0.1, float("nan"), "auto", True):
        with pytest.raises(ValueError, match="shrink"):
            model.impute(shrink=bad, **kw)
    model.spread_calibration_ = None
    with pytest.raises(ValueError, match="calibrat"):
        model.impute(shrink="calibrated", **kw)


def test_shrink_default_is_calibrated_for_filled_zeros_and_off_for_missing_entries():
    _, held = held_out()
    a = held.adata
    model = trained(a)
    model.spread_calibration_ = {**model.spread_calibration_, "shrink": 0.5}  # a slope below 1: the shrink acts
    kw = {"n_samples": 3, "n_steps": 3, "seed": 4, "inplace": False, "spread_scale": 1.0}  # no recalibration
    np.testing.assert_array_equal(model.impute(**kw)["mean"], model.impute(shrink=1.0, **kw)["mean"])
    zeros = model.impute(target="zeros", **kw)["mean"]
    np.testing.assert_array_equal(zeros, model.impute(target="zeros", shrink="calibrated", **kw)["mean"])
    np.testing.assert_array_equal(zeros, model.impute(target="zeros", shrink=0.5, **kw)["mean"])
    off = model.impute(target="zeros", shrink=1.0, **kw)["mean"]
    assert not np.allclose(zeros, off)
    model.spread_calibration_ = None  # no calibration: the default keeps the estimate, and does not fail
    np.testing.assert_array_equal(model.impute(target="zeros", **kw)["mean"], off)


def test_filled_zeros_of_large_sections_default_to_expression_smoothing_then_shrink_then_zero_conditioning(
        monkeypatch):
    import stmcdi._model as m

    _, held = held_out()
    a = held.adata
    model = trained(a)
    model.spread_calibration_ = {**model.spread_calibration_, "shrink": 0.5}  # a slope below 1: the shrink acts
    kw = {"n_samples": 3, "n_steps": 3, "seed": 4, "inplace": False, "spread_scale": 1.0}  # no recalibration
    assert (m.ZERO_SMOOTH, m.ZERO_DISPERSION, m.ZERO_READOUT_MIN_SPOTS) == (0.5, 0.25, 1000)
    assert a.n_obs < m.ZERO_READOUT_MIN_SPOTS  # a small section: the network's estimate and the shrink only
    np.testing.assert_array_equal(model.impute(target="zeros", **kw)["mean"],
                                  model.impute(target="zeros", smooth=0.0, zero_dispersion=0.0, **kw)["mean"])
    monkeypatch.setattr(m, "ZERO_READOUT_MIN_SPOTS", a.n_obs)  # the toy counts as a large section
    default = model.impute(target="zeros", **kw)
    chain = model.impute(target="zeros", smooth=0.5, smooth_graph="expression", smooth_neighbors=40, shrink=0.5,
                         zero_dispersion=0.25, **kw)
    np.testing.assert_array_equal(default["mean"], chain["mean"])
    raw = model.impute(target="zeros", smooth=0.0, shrink=1.0, zero_dispersion=0.0, **kw)
    counts = a.X.toarray()
    zeros = counts == 0
    library = np.nansum(counts, axis=1)
    fill = zeros | np.isnan(counts)
    target_sum = float(model.module.target_sum)
    table = stmcdi.expression_neighbors(raw["mean"], min(40, a.n_obs - 1), seed=4)
    expect = stmcdi.shrink_within_genes(stmcdi.smooth_fills(raw["mean"], fill, table, 0.5), fill, 0.5)
    expect = np.where(zeros, stmcdi.zero_conditioned(expect, library, target_sum, 0.25), expect)
    np.testing.assert_allclose(default["mean"], expect, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(default["mean"][~fill], raw["mean"][~fill])  # nonzero counts keep their value
    np.testing.assert_array_equal(default["std"], raw["std"])  # the samples' spread is not moved
    assert np.abs(default["mean"][fill] - raw["mean"][fill]).max() > 1e-3
    # missing entries keep the network estimate: no smoothing, shrink or zero conditioning by default
    missing = model.impute(**kw)["mean"]
    np.testing.assert_array_equal(missing, model.impute(smooth=0.0, shrink=1.0, zero_dispersion=0.0, **kw)["mean"])


def test_smooth_moves_only_filled_entries_towards_their_tissue_neighbours():
    _, held = held_out()
    a = held.adata
    model = trained(a)
    kw = {"n_samples": 3, "n_steps": 3, "seed": 4, "inplace": False}
    before = {k: a.obsm[k].copy() for k in a.obsm} | {k: a.obsp[k].copy() for k in a.obsp}
    plain = model.impute(**kw)
    kw["smooth_graph"] = "spatial"
    sm = model.impute(smooth=0.5, smooth_neighbors=10, **kw)
    fill = np.isnan(a.X.toarray())
    np.testing.assert_array_equal(sm["mean"][~fill], plain["mean"][~fill])
    np.testing.assert_array_equal(sm["std"], plain["std"])
    assert sm["mean"].dtype == plain["mean"].dtype == np.float32
    assert np.abs(sm["mean"][fill] - plain["mean"][fill]).max() > 1e-3
    table = stmcdi.pp.spatial_graph(a, n_neighs=10, copy=True)
    np.testing.assert_allclose(sm["mean"], stmcdi.smooth_fills(plain["mean"], fill, table, 0.5), rtol=1e-5, atol=1e-6)
    assert set(before) == set(a.obsm) | set(a.obsp)  # the wider graph is not written to the user's object
    np.testing.assert_array_equal(model.impute(smooth=0.0, **kw)["mean"], plain["mean"])
    # a graph wider than the section is capped at every other spot
    capped = model.impute(smooth=1.0, smooth_neighbors=10 * a.n_obs, **kw)["mean"]
    np.testing.assert_allclose(capped, stmcdi.smooth_fills(plain["mean"], fill, np.tile(np.arange(a.n_obs), (a.n_obs, 1)),
                                                           1.0), rtol=1e-4, atol=1e-5)
    for bad in (1.5, -0.1, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="smooth must"):
            model.impute(smooth=bad, **kw)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="smooth_neighbors"):
            model.impute(smooth=0.5, smooth_neighbors=bad, **kw)


def test_smooth_graph_expression_averages_over_expression_neighbours_of_the_estimate():
    _, held = held_out()
    a = held.adata
    model = trained(a)
    kw = {"n_samples": 3, "n_steps": 3, "seed": 4, "inplace": False}
    plain = model.impute(**kw)
    ex = model.impute(smooth=0.5, smooth_neighbors=10, **kw)  # the default graph
    np.testing.assert_array_equal(ex["mean"], model.impute(smooth=0.5, smooth_neighbors=10, smooth_graph="expression",
                                                           **kw)["mean"])
    sp_ = model.impute(smooth=0.5, smooth_neighbors=10, smooth_graph="spatial", **kw)
    fill = np.isnan(a.X.toarray())
    np.testing.assert_array_equal(ex["mean"][~fill], plain["mean"][~fill])  # observed entries are inputs only
    np.testing.assert_array_equal(ex["std"], plain["std"])
    table = stmcdi.expression_neighbors(plain["mean"], 10, seed=4)  # the graph of the estimate before smoothing
    np.testing.assert_allclose(ex["mean"], stmcdi.smooth_fills(plain["mean"], fill, table, 0.5), rtol=1e-5, atol=1e-6)
    assert np.abs(ex["mean"][fill] - sp_["mean"][fill]).max() > 1e-3  # not the tissue graph
    with pytest.raises(ValueError, match="smooth_graph"):
        model.impute(smooth=0.5, smooth_graph="tissue", **kw)


def test_expression_neighbors_finds_the_nearest_profiles_and_never_the_spot_itself():
    rng = np.random.default_rng(0)
    centres = 5.0 * rng.standard_normal((3, 40))
    groups = np.repeat(np.arange(3), 20)
    v = centres[groups] + 0.1 * rng.standard_normal((60, 40))
    table = stmcdi.expression_neighbors(v, 5, n_pcs=10)
    assert table.shape == (60, 6) and table.dtype == np.int64
    np.testing.assert_array_equal(table[:, 0], np.arange(60))
    assert (table[:, 1:] != np.arange(60)[:, None]).all()
    assert (groups[table[:, 1:]] == groups[:, None]).all()  # neighbours share the spot's profile
    np.testing.assert_array_equal(table, stmcdi.expression_neighbors(v, 5, n_pcs=10))  # seeded
    for bad in (0, 60, 2.5, True):
        with pytest.raises(ValueError, match="n_neighbors"):
            stmcdi.expression_neighbors(v, bad)
    with pytest.raises(ValueError, match="finite"):
        stmcdi.expression_neighbors(np.where(v > 0, v, np.nan), 5)


def test_smooth_fills_recentres_each_gene_and_keeps_correlations_of_constant_shifts():
    rng = np.random.default_rng(0)
    n = 50
    coords = np.c_[np.arange(n), np.zeros(n)]
    nb = np.array([[i, max(i - 1, 0) if i else 1, min(i + 1, n - 1) if i < n - 1 else n - 2] for i in range(n)])
    v = (3.0 + np.sin(coords[:, :1] / 5.0) + 0.5 * rng.standard_normal((n, 2))).astype(np.float32)
    fill = rng.random((n, 2)) < 0.5
    out = stmcdi.smooth_fills(v, fill, nb, 1.0, steps=2)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[~fill], v[~fill])
    for g in range(2):  # each gene's fills keep their mean; the noise around the smooth trend shrinks
        f = fill[:, g]
        assert out[f, g].mean() == pytest.approx(v[f, g].mean(), abs=1e-5)
        trend = 3.0 + np.sin(coords[f, 0] / 5.0)
        assert np.abs(out[f, g] - trend).mean() < np.abs(v[f, g] - trend).mean()
    np.testing.assert_array_equal(stmcdi.smooth_fills(v, fill, nb, 0.0), v)
    low = stmcdi.smooth_fills(np.array([[0.0], [0.0], [9.0]]), np.array([[True], [True], [False]]),
                              np.array([[0, 1], [1, 2], [2, 1]]), 1.0, steps=1)
    assert (low >= 0).all()  # recentring never writes a negative log-normalised value
    with pytest.raises(ValueError, match="smooth"):
        stmcdi.smooth_fills(v, fill, nb, 1.5)
    with pytest.raises(ValueError, match="neighbors"):
        stmcdi.smooth_fills(v, fill, nb[:-1], 0.5)


def test_within_gene_slope_ignores_gene_levels_and_noise_in_the_truth():
    rng = np.random.default_rng(1)
    genes = np.repeat(np.arange(200), 30)
    signal = rng.standard_normal(genes.size)
    level = 5.0 * rng.standard_normal(200)[genes]
    estimate = level + 0.5 * rng.standard_normal(genes.size) + 3.0 * signal  # wrong levels, three times too wide
    truth = signal + rng.standard_normal(genes.size)
    assert stmcdi.within_gene_slope(truth, estimate, genes) == pytest.approx(1 / 3, abs=0.02)
    assert stmcdi.within_gene_slope(estimate, estimate, genes) == pytest.approx(1.0)
    assert np.isnan(stmcdi.within_gene_slope(truth, level, genes))  # no within-gene variation
    with pytest.raises(ValueError, match="same length"):
        stmcdi.within_gene_slope(truth[:-1], estimate, genes)


def test_shrink_within_genes_uses_each_genes_filled_mean():
    v = np.array([[0.0, 4.0], [2.0, 8.0], [10.0, 0.0]], dtype=np.float32)
    fill = np.array([[True, True], [True, True], [False, True]])
    out = stmcdi.shrink_within_genes(v, fill, 0.25)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], [0.75, 1.25, 10.0])  # gene 0: mean 1 of the two filled entries
    np.testing.assert_allclose(out[:, 1], [4.0, 5.0, 3.0])  # gene 1: mean 4
    np.testing.assert_array_equal(stmcdi.shrink_within_genes(v, fill, 1.0), v)
    np.testing.assert_allclose(stmcdi.shrink_within_genes(v, fill, 0.0)[:2, 1], [4.0, 4.0])
    with pytest.raises(ValueError, match="shrink"):
        stmcdi.shrink_within_genes(v, fill, 2.0)


def test_zero_conditioned_moves_deeper_spots_more_and_keeps_empty_spots():
    from stmcdi import zero_conditioned

    v = np.full((3, 2), np.log1p(1.0), dtype=np.float32)
    out = zero_conditioned(v, np.array([50.0, 200.0, 0.0]), 100.0, 1.0)
    assert out.dtype == np.float32
    # expected counts 0.5 and 2: posterior means 0.5 / 1.5 and 2 / 3, back on the scale of the spot
    np.testing.assert_allclose(np.expm1(out[:2, 0]), [1 / 1.5, 1 / 3], rtol=1e-5)
    np.testing.assert_array_equal(out[2], v[2])
    np.testing.assert_array_equal(zero_conditioned(v, np.ones(3), 100.0, 0.0), v)
    with pytest.raises(ValueError, match="non-negative"):
        zero_conditioned(v, np.ones(3), 100.0, float("nan"))

def test_depth_weight_moves_the_point_estimate_not_the_samples_and_applies_to_every_objective():
    _, held = held_out()
    model = trained(held.adata, depth_weight=0.5)
    assert model.module.depth_weight == 0.5 and model.init_params_["non_kwargs"]["depth_weight"] == 0.5
    # the centre of the depth term is the training spots' mean observed log value, even without spot summaries
    assert float(trained(held.adata, epochs=1, depth_weight=0.5, spot_features=False).module.spot_feature_mean[0]) > 0
    a = model.impute(n_samples=4, n_steps=3, seed=1, inplace=False, return_samples=True)
    rec = model.spread_calibration_
    model.module.depth_weight = 0.0
    b = model.impute(n_samples=4, n_steps=3, seed=1, inplace=False, return_samples=True)
    assert model.spread_calibration_ is rec  # the spread does not depend on it
    np.testing.assert_array_equal(a["samples"], b["samples"])
    np.testing.assert_array_equal(a["std"], b["std"])
    miss = np.isnan(held.adata.X.toarray())
    assert not np.allclose(a["mean"][miss], b["mean"][miss])
    np.testing.assert_array_equal(a["mean"][~miss], b["mean"][~miss])
    # the samples' mean of the diffusion objective gets the same term
    diff = trained(held.adata, epochs=1, objective="diffusion", depth_weight=0.5)
    c = diff.impute(n_samples=2, n_steps=2, seed=1, inplace=False, return_samples=True)
    diff.module.depth_weight = 0.0
    c0 = diff.impute(n_samples=2, n_steps=2, seed=1, inplace=False, return_samples=True)
    np.testing.assert_array_equal(c["samples"], c0["samples"])
    assert not np.allclose(c["mean"][miss], c0["mean"][miss])
    with pytest.raises(ValueError, match="depth_weight"):
        trained(held.adata, epochs=1, depth_weight=-1.0)
