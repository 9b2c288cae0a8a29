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
