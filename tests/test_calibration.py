import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from stmcdi._calibration import (
    BestWeights,
    _choose_spread_scale,
    lognormal_at,
    scale_for,
    spatial_neighbours,
    spread_sd,
)


def test_choose_spread_scale_is_the_smallest_covering_scale_around_the_given_centre():
    rng = np.random.default_rng(0)
    truth = 5.0 + 2.0 * rng.standard_normal(4000)
    draws = 3.0 + rng.standard_normal((50, 4000))  # the draws' own mean is off; only their spread is used
    scale, coverage, unscaled = _choose_spread_scale(truth, np.full(4000, 5.0), draws)
    assert 1.8 <= scale <= 2.3 and coverage >= 0.9 and unscaled < 0.7
    smaller = _choose_spread_scale(truth, np.full(4000, 5.0), draws, grid=np.array([scale / 1.05]))
    assert smaller[1] < 0.9  # the next smaller scale does not cover


def test_lognormal_at_scales_by_the_library_the_network_saw():
    counts = np.array([[1.0, 3.0, np.nan], [2.0, 2.0, 4.0]])
    hidden = sp.csr_matrix(np.array([[False, True, False], [False, False, False]]))
    x = lognormal_at(counts, hidden, target_sum=2.0)
    np.testing.assert_allclose(x[0, :2], np.log1p(np.array([1.0, 3.0]) * 2.0 / 1.0), rtol=1e-6)  # library 1
    np.testing.assert_allclose(x[1], np.log1p(np.array([2.0, 2.0, 4.0]) * 2.0 / 8.0), rtol=1e-6)
    assert np.isnan(x[0, 2])


def test_best_weights_keep_the_best_check():
    import torch

    class Module(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))

    class Plan:
        module = Module()

    class Trainer:
        sanity_checking = False
        callbacks = []
        global_step = 0
        callback_metrics = {}

    cb, plan, trainer = BestWeights(), Plan(), Trainer()
    for step, (value, w) in enumerate([(1.0, 1.0), (0.5, 2.0), (0.7, 3.0)]):
        trainer.global_step, trainer.callback_metrics = step, {"validation_mse": torch.tensor(value)}
        with torch.no_grad():
            plan.module.w.fill_(w)
        cb.on_validation_end(trainer, plan)
    assert cb.best_score == pytest.approx(0.5) and cb.best_step == 1
    torch.testing.assert_close(cb.state["w"], torch.full((2,), 2.0))


def test_spatial_neighbours_keep_sections_apart():
    import anndata as ad

    import stmcdi

    adata = stmcdi.datasets.synthetic(n_spots=60, n_genes=5, seed=0)
    adata.obs["section"] = pd.Categorical(np.repeat(["a", "b"], 30))
    adata.obsm["spatial"][30:] = adata.obsm["spatial"][:30]  # two sections at the same place
    stmcdi.pp.spatial_graph(adata, library_key="section")
    table = spatial_neighbours(adata, "spatial", n_neighs=18)
    assert table.shape == (60, 18)
    assert (table[:30] < 30).all() and (table[30:] >= 30).all()
    assert isinstance(adata, ad.AnnData) and "spatial_nn" in adata.obsm


def test_a_scale_chosen_with_five_draws_holds_with_fifty():
    rng = np.random.default_rng(1)
    n = 6000
    truth = 5.0 + 2.0 * rng.standard_normal(n)
    centre = np.full(n, 5.0)
    scale, coverage, _ = _choose_spread_scale(truth, centre, rng.standard_normal((5, n)))
    assert coverage >= 0.9
    dev = rng.standard_normal((50, n))
    dev -= dev.mean(axis=0)
    readout = {"spread_scale": scale, "n_samples": 5, "level": 0.9}
    assert scale_for(readout, 5) == scale and scale_for(None, 50) == 1.0
    sd = spread_sd(np.maximum(centre + scale_for(readout, 50) * dev, 0.0))
    held = np.mean(np.abs(truth - centre) <= 1.645 * sd)
    assert 0.88 <= held <= 0.93  # 90% again, where the five-draw scale itself would cover about 96%
    assert np.mean(np.abs(truth - centre) <= 1.645 * spread_sd(np.maximum(centre + scale * dev, 0.0))) > 0.94


class _StopTrainer:
    """What :class:`RelativeEarlyStopping` reads of a Lightning trainer."""

    fast_dev_run, should_stop, current_epoch, global_step = False, False, 0, 0
    callback_metrics: dict = {}

    class strategy:
        @staticmethod
        def reduce_boolean_decision(decision, all=True):
            return decision


def _stop_step(errors, every, **kwargs):
    """Step at which the rule stops a run whose checks, every ``every`` steps, score ``errors``."""
    import torch

    from stmcdi._calibration import RelativeEarlyStopping

    cb, trainer = RelativeEarlyStopping(monitor="validation_mse", **kwargs), _StopTrainer()
    for i, err in enumerate(errors):
        trainer.global_step = every * (i + 1)
        trainer.callback_metrics = {"validation_mse": torch.tensor(err)}
        cb._run_early_stopping_check(trainer)
        if trainer.should_stop:
            return trainer.global_step
    return None


def test_early_stopping_waits_for_min_steps_and_counts_only_relative_improvements():
    from stmcdi._model import MIN_IMPROVEMENT, PATIENCE

    # held-back error of a DLPFC run (3,639 spots, a check every 57 steps)
    errors = [0.06153, 0.06164, 0.06167, 0.06143, 0.06108, 0.06067, 0.06032, 0.06004, 0.05981, 0.05963, 0.05953,
              0.0595, 0.05949, 0.0595, 0.05952, 0.05953]
    # from step 456 on: 0.05981 and 0.05963 improve by more than 0.25%; 0.05953 .. 0.05949 do not; stop 3 checks on
    assert _stop_step(errors, 57, rel=MIN_IMPROVEMENT, min_steps=400, patience=PATIENCE) == 57 * 13
    # without the wait, the three checks after the first (none 0.25% better) would stop the run at step 228
    assert _stop_step(errors, 57, rel=MIN_IMPROVEMENT, min_steps=0, patience=PATIENCE) == 57 * 4
    # counting every improvement, however small, runs three checks longer
    assert _stop_step(errors, 57, rel=0.0, min_steps=400, patience=PATIENCE) == 57 * 16


def test_train_waits_two_horizons_of_the_weight_average():
    import scvi

    import stmcdi
    from stmcdi._calibration import RelativeEarlyStopping
    from stmcdi._model import MIN_HORIZONS, PATIENCE

    adata = stmcdi.datasets.synthetic(n_spots=40, n_genes=12, seed=0)
    stmcdi.STMCDI.setup_anndata(adata)
    scvi.settings.seed = 0
    model = stmcdi.STMCDI(adata, n_encoder_hidden=8, n_latent=4, n_channels=8)
    model.train(max_epochs=30, enable_progress_bar=False)
    (stop,) = [cb for cb in model.trainer.callbacks if isinstance(cb, RelativeEarlyStopping)]
    decay = 1.0 - 10.0 / 30  # shortened to 1 - 10 / total_steps on a run of 30 steps
    assert stop.patience == PATIENCE and stop.min_steps == MIN_HORIZONS * round(1.0 / (1.0 - decay))
