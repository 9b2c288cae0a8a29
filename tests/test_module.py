import numpy as np
import pytest
import torch

from stmcdi import STMCDIModule


def make_module(g=12, **kw):
    torch.manual_seed(0)
    kw.setdefault("n_channels", 8)
    kw.setdefault("n_encoder_hidden", 8)
    kw.setdefault("n_latent", 4)
    kw.setdefault("genes_per_token", 3)
    kw.setdefault("dropout", 0.0)
    return STMCDIModule(g, np.zeros(g), np.ones(g), 100.0, **kw)


def batch(g=12, n_nodes=6, n_seed=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    counts = torch.poisson(torch.full((n_nodes, g), 3.0), generator=gen)
    counts[0, 0] = float("nan")
    edges = torch.tensor([[2, 3, 4, 5, 0], [0, 0, 1, 1, 1]])
    return {"counts": counts, "library": torch.nan_to_num(counts).sum(1), "edge_index": edges,
            "row": torch.arange(n_seed)}


def test_mask_fraction_and_only_observed_entries():
    mod = make_module(g=400, mask_ratio=0.5)
    observed = torch.rand(300, 400, generator=torch.Generator().manual_seed(1)) > 0.2
    target = mod.sample_targets(observed, torch.Generator().manual_seed(0))
    assert not (target & ~observed).any()
    frac = target.sum() / observed.sum()
    assert abs(frac.item() - 0.5) < 0.01


def test_mask_seeding_and_strategies():
    observed = torch.ones(50, 30, dtype=torch.bool)
    mod = make_module(g=30, mask_ratio=0.3)
    a = mod.sample_targets(observed, torch.Generator().manual_seed(3))
    b = mod.sample_targets(observed, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    spots = make_module(g=30, mask_ratio=0.3, mask_strategy="spots").sample_targets(observed)
    assert ((spots.sum(1) == 0) | (spots.sum(1) == 30)).all()
    genes = make_module(g=30, mask_ratio=0.3, mask_strategy="genes").sample_targets(observed)
    assert ((genes.sum(0) == 0) | (genes.sum(0) == 50)).all()


def test_nonzero_strategy_draws_targets_among_observed_nonzero_entries():
    gen = torch.Generator().manual_seed(2)
    observed = torch.rand(200, 40, generator=gen) > 0.1
    nonzero = torch.rand(200, 40, generator=gen) > 0.6
    mod = make_module(g=40, mask_ratio=0.5, mask_strategy="nonzero")
    target = mod.sample_targets(observed, torch.Generator().manual_seed(0), nonzero=nonzero)
    assert target.any()
    assert not (target & ~(observed & nonzero)).any()  # never a zero, never a missing entry
    assert abs((target.sum() / (observed & nonzero).sum()).item() - 0.5) < 0.03
    with pytest.raises(ValueError, match="nonzero"):
        mod.sample_targets(observed)
    # in training, inference draws them from the counts: no zero count becomes a target
    b = batch(g=12)
    b["counts"][:2, :6] = 0.0
    out = make_module(mask_ratio=0.5, mask_strategy="nonzero").inference(
        b["counts"], b["library"], b["edge_index"], n_seed=2, generator=torch.Generator().manual_seed(0))
    assert out["target"].any() and not out["target"][:, :6].any()


def test_every_spot_with_observed_entries_gets_a_target():
    mod = make_module(g=4, mask_ratio=0.01)
    target = mod.sample_targets(torch.ones(200, 4, dtype=torch.bool), torch.Generator().manual_seed(0))
    assert (target.sum(1) >= 1).all()


def test_encoder_and_conditioner_never_see_target_values():
    mod = make_module().train()
    b = batch()
    target = torch.zeros(2, 12, dtype=torch.bool)
    target[0, 3:7] = True
    target[1, :2] = True
    ref = mod.inference(b["counts"], b["library"], b["edge_index"], 2, target=target)
    changed = b["counts"].clone()
    changed[:2][target] = 999.0
    out = mod.inference(changed, b["library"], b["edge_index"], 2, target=target)
    for key in ("z", "x_hat", "context", "cond"):
        torch.testing.assert_close(out[key], ref[key])
    # without the input mask the encoder does see them (the ablation leaks, as it should)
    leaky = make_module(input_mask=False).train()
    r = leaky.inference(b["counts"], b["library"], b["edge_index"], 2, target=target)
    o = leaky.inference(changed, b["library"], b["edge_index"], 2, target=target)
    assert not torch.allclose(o["z"], r["z"])


def test_loss_counts_target_entries_only():
    mod = make_module().train()
    b = batch()
    gen = torch.Generator().manual_seed(0)
    inf, gen_out, loss = mod(b, inference_kwargs={"generator": gen}, generative_kwargs={"generator": gen})
    t = inf["target"].float()
    diffusion = (((gen_out["eps"] - gen_out["noise"]) ** 2) * t).sum() / t.sum()
    readout = (((inf["readout"] - inf["x"]) ** 2) * t).sum() / t.sum()
    torch.testing.assert_close(loss.loss, diffusion + readout)
    torch.testing.assert_close(loss.extra_metrics["diffusion_loss"], diffusion.detach())
    assert not (inf["target"] & torch.isnan(b["counts"][:2])).any()
    # the residual base is the detached read-out; without residual diffusion it is zero
    torch.testing.assert_close(inf["base"], inf["readout"].detach())
    flat = make_module(residual=False, readout_loss_weight=0.0).train()
    inf2, _, loss2 = flat(b, inference_kwargs={"generator": torch.Generator().manual_seed(0)})
    assert torch.count_nonzero(inf2["base"]) == 0
    torch.testing.assert_close(loss2.loss, loss2.extra_metrics["diffusion_loss"])


def test_sampling_keeps_observed_and_is_seeded():
    mod = make_module().eval()
    b = batch()
    args = (b["counts"], b["library"], b["edge_index"], 2)
    s1 = mod.sample(*args, n_samples=3, generator=torch.Generator().manual_seed(5))
    s2 = mod.sample(*args, n_samples=3, generator=torch.Generator().manual_seed(5))
    s3 = mod.sample(*args, n_samples=3, sampler="ddpm", n_steps=None, generator=torch.Generator().manual_seed(5))
    assert s1.shape == (3, 2, 12)
    torch.testing.assert_close(s1, s2)
    observed = ~torch.isnan(b["counts"][:2])
    lognorm = mod.unscale(mod.scale(b["counts"][:2], b["library"][:2]))
    for s in (s1, s3):
        torch.testing.assert_close(s[:, observed], lognorm[observed].expand(3, -1))
        assert torch.isfinite(s).all() and (s >= 0).all()
    with pytest.raises(ValueError, match="sampler"):
        mod.sample(*args, sampler="euler")


def test_without_latent_readout_the_readout_is_offset_plus_profile_and_z_still_conditions():
    assert make_module(mask_strategy="nonzero").readout is not None  # the default: only with nonzero targets
    assert make_module(latent_readout=True).readout is not None
    mod = make_module(expression_profile=True).eval()
    assert mod.readout is None and mod.encoder is not None
    b = batch()
    profile = {"expression_counts": b["counts"][2:6], "expression_library": b["library"][2:6],
               "target": torch.isnan(b["counts"][:2])}
    inf = mod.inference(b["counts"], b["library"], b["edge_index"], 2, **profile)
    feats = mod.spot_summary(b["counts"][:2], inf["x"], inf["cond"])
    expected = mod.spot_offset(feats) + mod.expression_weight * inf["profile"]
    torch.testing.assert_close(inf["readout"], expected)
    assert inf["z"] is not None and inf["z_in"].shape[1] == 4 + 3  # the spatial code and the summaries
    # other graph neighbours change the spatial code the denoiser reads, not the read-out
    nbr = b["counts"].clone()
    nbr[2:] = nbr[2:] * 3
    other = mod.inference(nbr, b["library"], b["edge_index"], 2, **profile)
    assert not torch.allclose(other["z_in"], inf["z_in"])
    torch.testing.assert_close(other["readout"], inf["readout"])


def test_encoder_none_has_no_spatial_path():
    mod = make_module(encoder="none")
    assert mod.encoder is None and mod.n_hops == 0
    b = batch()
    inf = mod.inference(b["counts"], b["library"], b["edge_index"], 2)
    assert inf["z"] is None and torch.count_nonzero(inf["x_hat"]) == 0


@pytest.mark.parametrize(("kw", "match"), [({"mask_ratio": 1.0}, "mask_ratio"), ({"mask_strategy": "x"}, "mask_strategy"),
                                           ({"representation_mask_ratio": 1.0}, "representation")])
def test_module_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        make_module(**kw)


def test_spot_summary_is_a_mean_over_visible_entries():
    mod = make_module(g=8)
    counts = torch.tensor([[2.0, 0.0, 5.0, 1.0] * 2, [9.0, 9.0, 0.0, 0.0] * 2])
    library = counts.sum(1)
    x = mod.scale(counts, library)
    every = torch.ones_like(counts, dtype=torch.bool)
    half = every.clone()
    half[:, 4:] = False  # the hidden half repeats the visible half: the summaries must not move
    torch.testing.assert_close(mod.spot_summary(counts, x, every), mod.spot_summary(counts, x, half))
    f = mod.spot_summary(counts, x, every)
    lognorm = torch.log1p(counts * 100.0 / library[:, None])
    torch.testing.assert_close(f[:, 0], lognorm.mean(1))
    torch.testing.assert_close(f[:, 1], torch.tensor([0.75, 0.5]))
    torch.testing.assert_close(f[:, 2], torch.log1p(counts.mean(1)))
    # missing entries (NaN counts) and hidden entries are never read
    nan = counts.clone()
    nan[:, 4:] = float("nan")
    torch.testing.assert_close(mod.spot_summary(nan, torch.nan_to_num(mod.scale(nan, library)), half), f)
    # standardised with the module's statistics
    std = make_module(g=8, spot_feature_stats=(np.array([1.0, 0.5, 1.0]), np.array([2.0, 0.25, 1.0])))
    torch.testing.assert_close(std.spot_summary(counts, x, every),
                               (f - torch.tensor([1.0, 0.5, 1.0])) / torch.tensor([2.0, 0.25, 1.0]))


def test_spot_offset_is_shared_by_the_genes_of_a_spot():
    mod = make_module(g=12).eval()
    assert mod.readout is None  # the default with random targets: only the spot offset is in the read-out
    b = batch(g=12)
    b["counts"][1] = b["counts"][1] * 0  # a spot with nothing detected has other summaries than spot 0
    b["counts"][1, :6] = 1.0
    inf = mod.inference(b["counts"], torch.nan_to_num(b["counts"]).sum(1), b["edge_index"], 2)
    r = inf["readout"]
    torch.testing.assert_close(r, r[:, :1].expand_as(r))  # one value per spot
    assert not torch.isclose(r[0, 0], r[1, 0])
    assert inf["z_in"].shape == (2, 4 + 3)  # spatial code and the 3 summaries
    torch.testing.assert_close(inf["z_in"][:, :4], inf["z"])


def test_observed_entries_to_fill_are_hidden_from_their_spot_but_summarised():
    b = batch()
    b["counts"][0, 3] = b["counts"][1, 5] = 0.0  # zeros to fill
    target = torch.isnan(b["counts"][:2])
    target[0, 3] = target[1, 5] = True
    hidden = b["counts"].clone()
    hidden[0, 3] = hidden[1, 5] = float("nan")
    lib = b["library"]
    plain = make_module(spot_features=False).eval()
    gen = lambda: torch.Generator().manual_seed(2)
    # the condition and the encoder never read the value of an entry to fill: as if it were missing
    a = plain.sample(b["counts"], lib, b["edge_index"], 2, n_samples=3, n_steps=3, generator=gen(), target=target)
    h = plain.sample(hidden, lib, b["edge_index"], 2, n_samples=3, n_steps=3, generator=gen())
    torch.testing.assert_close(a, h)
    # the spot summaries read every observed entry of the spot, the zeros to fill included
    mod = make_module().eval()
    every = ~torch.isnan(b["counts"][:2])
    inf = mod.inference(b["counts"], lib, b["edge_index"], 2, target=target, summarise=every)
    x = mod.scale(b["counts"][:2], lib[:2])
    torch.testing.assert_close(inf["z_in"][:, 4:], mod.spot_summary(b["counts"][:2], torch.nan_to_num(x), every))
    assert inf["cond"][0, 3] == 0 and inf["cond"][1, 5] == 0 and inf["target"][0, 3]
    # sample() passes them so: the zeros count as detected-nothing in the summaries
    with_zeros = mod.sample(b["counts"], lib, b["edge_index"], 2, n_samples=2, n_steps=2, generator=gen(),
                            target=target)
    as_missing = mod.sample(hidden, lib, b["edge_index"], 2, n_samples=2, n_steps=2, generator=gen())
    assert not torch.allclose(with_zeros, as_missing)
    # by default the summaries read the condition only, as in training
    drawn = mod.inference(b["counts"], lib, b["edge_index"], 2, generator=gen())
    torch.testing.assert_close(drawn["z_in"][:, 4:],
                               mod.spot_summary(b["counts"][:2], torch.nan_to_num(x), drawn["cond"]))


def test_spot_features_off_is_the_network_without_them():
    mod = make_module(spot_features=False)
    assert mod.spot_offset is None and mod.denoiser.spatial_in.in_features == 4
    b = batch()
    inf = mod.inference(b["counts"], b["library"], b["edge_index"], 2)
    assert inf["z_in"] is inf["z"]
    none = make_module(encoder="none")  # no spatial input: the denoiser still reads the spot's own summaries
    assert none.spot_offset is None and none.denoiser.spatial_in.in_features == 3
    inf = none.inference(b["counts"], b["library"], b["edge_index"], 2)
    assert inf["z"] is None and inf["z_in"].shape == (2, 3)
    assert make_module(encoder="none", spot_features=False).denoiser.spatial_in is None


def test_expression_profile_is_the_neighbours_mean_and_is_required():
    mod = make_module(expression_profile=True)
    assert mod.denoiser.n_token_features == 5 and mod.expression_weight.shape == (12,)
    b = batch()
    gen = torch.Generator().manual_seed(5)
    expr = torch.poisson(torch.full((2 * 3, 12), 2.0), generator=gen)  # 3 neighbours for each of 2 spots
    expr[0, :6] = float("nan")  # the first neighbour of spot 0 does not observe genes 0-5
    lib = torch.nan_to_num(expr).sum(1)
    inf = mod.inference(b["counts"], b["library"], b["edge_index"], 2, expression_counts=expr, expression_library=lib)
    x = torch.nan_to_num(mod.scale(expr, lib))
    torch.testing.assert_close(inf["profile"][0, :6], x[1:3, :6].mean(0))
    torch.testing.assert_close(inf["profile"][0, 6:], x[0:3, 6:].mean(0))
    torch.testing.assert_close(inf["profile"][1], x[3:6].mean(0))
    # the profile enters the read-out with its per-gene weight
    with torch.no_grad():
        mod.expression_weight.zero_()
    fixed = torch.isnan(b["counts"][:2])
    r0 = mod.eval().inference(b["counts"], b["library"], b["edge_index"], 2, target=fixed, expression_counts=expr,
                              expression_library=lib)["readout"]
    with torch.no_grad():
        mod.expression_weight.fill_(2.0)
    r2 = mod.inference(b["counts"], b["library"], b["edge_index"], 2, target=fixed, expression_counts=expr,
                       expression_library=lib)["readout"]
    torch.testing.assert_close(r2 - r0, 2.0 * inf["profile"])
    # and the denoiser reads it: the one-pass estimate moves with it
    module_batch = {"expression_counts": expr, "expression_library": lib}
    p1 = mod.predict(b["counts"], b["library"], b["edge_index"], 2, **module_batch)
    p2 = mod.predict(b["counts"], b["library"], b["edge_index"], 2, expression_counts=expr * 3, expression_library=lib)
    assert not torch.allclose(p1, p2)
    with pytest.raises(ValueError, match="expression_counts"):
        mod.inference(b["counts"], b["library"], b["edge_index"], 2)
    assert make_module().denoiser.n_token_features == 4 and make_module().expression_weight is None


def test_fill_encodes_once_and_gives_the_estimate_and_the_samples():
    mod = make_module(objective="hybrid").eval()
    b = batch()
    args = (b["counts"], b["library"], b["edge_index"], 2)
    est, draws = mod.fill(*args, n_samples=4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(est, mod.predict(*args))
    torch.testing.assert_close(draws, mod.sample(*args, n_samples=4, generator=torch.Generator().manual_seed(1)))
    assert mod.fill(*args, n_samples=0)[1] is None
    diffusion = make_module(objective="diffusion").eval()
    est, draws = diffusion.fill(*args, n_samples=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(est, draws.mean(0))
    with pytest.raises(ValueError, match="n_samples"):
        diffusion.fill(*args, n_samples=0)
    with pytest.raises(ValueError, match="one-pass"):
        diffusion.predict(*args)


def test_held_back_targets_stay_out_of_the_spot_summaries():
    torch.manual_seed(0)
    mod = STMCDIModule(12, np.full(12, 5.0), np.ones(12), 100.0, n_channels=8, n_encoder_hidden=8, n_latent=4,
                       genes_per_token=3, dropout=0.0).eval()  # gene means of 5: estimates are not clamped at 0
    b = batch()
    target = torch.zeros(2, 12, dtype=torch.bool)
    target[0, 4:8] = True
    args = (b["counts"], b["library"], b["edge_index"], 2)
    changed = b["counts"].clone()
    changed[0, 4:8] = 50.0  # other values at the held-back entries
    blind = [mod.fill(c, *args[1:], target=target, summarise_targets=False)[0] for c in (b["counts"], changed)]
    torch.testing.assert_close(blind[0][target], blind[1][target])  # their values reach nothing
    seen = [mod.fill(c, *args[1:], target=target)[0] for c in (b["counts"], changed)]
    assert not torch.allclose(seen[0][target], seen[1][target])  # observed zeros to fill are summarised

