import math

import pytest

import stmcdi
from stmcdi import DiffusionTrainingPlan


@pytest.fixture
def module():
    adata = stmcdi.datasets.synthetic(n_spots=40, n_genes=12)
    stmcdi.STMCDI.setup_anndata(adata)
    return stmcdi.STMCDI(adata, n_channels=8, genes_per_token=4).module


def test_warmup_then_cosine(module):
    plan = DiffusionTrainingPlan(module, lr=1.0, n_warmup_steps=10, lr_min_ratio=0.1)

    class T:
        estimated_stepping_batches = 110

    plan._trainer = T()
    assert plan._lr_factor(0) == pytest.approx(0.1)
    assert plan._lr_factor(9) == pytest.approx(1.0)
    assert plan._lr_factor(10) == pytest.approx(1.0)
    assert plan._lr_factor(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert plan._lr_factor(110) == pytest.approx(0.1)
    const = DiffusionTrainingPlan(module, lr_schedule="constant", n_warmup_steps=2)
    assert const._lr_factor(1000) == 1.0


def test_adamw_defaults_and_bad_schedule(module):
    plan = DiffusionTrainingPlan(module)
    assert plan.optimizer_name == "AdamW" and plan.eps == 1e-8
    with pytest.raises(ValueError, match="lr_schedule"):
        DiffusionTrainingPlan(module, lr_schedule="step")


def test_plateau_schedule_monitors_the_logged_held_back_error(module):
    # scvi-tools' default monitor "elbo_validation" is never logged by this plan: training would fail
    config = DiffusionTrainingPlan(module, reduce_lr_on_plateau=True).configure_optimizers()
    assert config["lr_scheduler"]["monitor"] == "validation_mse"
