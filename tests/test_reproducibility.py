"""Same seed, same result: across runs, after an interruption, and in a fresh process."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scvi
import torch
from lightning.pytorch.callbacks import Callback

import stmcdi
from stmcdi import STMCDI

SMALL = {"n_channels": 8, "n_latent": 8, "n_encoder_hidden": 16, "genes_per_token": 4, "n_diffusion_steps": 20}
QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


def data():
    adata = stmcdi.datasets.synthetic(n_spots=120, n_genes=30, seed=3)
    return stmcdi.benchmark.hold_out(adata, "entries", 0.1, seed=0).adata


def fit(adata, **train):
    scvi.settings.seed = 0
    STMCDI.setup_anndata(adata)
    model = STMCDI(adata, **SMALL)
    model.train(batch_size=32, **QUIET, **train)
    return model


def weights(model):
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def test_two_runs_with_the_same_seed_give_identical_layers():
    a, b = data(), data()
    ma, mb = fit(a, max_epochs=6), fit(b, max_epochs=6)
    for k, v in weights(ma).items():
        torch.testing.assert_close(v, weights(mb)[k], rtol=0, atol=0)
    ma.impute(n_samples=3, seed=1)
    mb.impute(n_samples=3, seed=1)
    np.testing.assert_array_equal(a.layers["imputed"], b.layers["imputed"])
    np.testing.assert_array_equal(a.layers["imputed_std"], b.layers["imputed_std"])


class Crash(Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 4:
            raise RuntimeError("simulated crash")


def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_same_weights(tmp_path):
    every = {"check_val_every_n_epoch": 1, "early_stopping": False, "max_epochs": 8}
    whole = fit(data(), **every)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(data(), checkpoint_dir=tmp_path / "ckpt", callbacks=[Crash()], **every)
    assert (tmp_path / "ckpt" / "last.ckpt").exists()
    resumed = fit(data(), checkpoint_dir=tmp_path / "ckpt", **every)
    for k, v in weights(whole).items():
        torch.testing.assert_close(v, weights(resumed)[k], rtol=0, atol=0)
    assert resumed.readout_ == whole.readout_


@pytest.mark.slow
def test_a_saved_model_imputes_identically_in_a_fresh_process(tmp_path):
    a = data()
    model = fit(a, max_epochs=3)
    model.impute(n_samples=2, seed=5)
    model.save(tmp_path / "model", save_anndata=True)
    np.save(tmp_path / "here.npy", a.layers["imputed_std"])
    script = textwrap.dedent(f"""
        import numpy as np, stmcdi
        model = stmcdi.STMCDI.load({str(tmp_path / "model")!r})
        model.impute(n_samples=2, seed=5)
        np.save({str(tmp_path / "there.npy")!r}, model.adata.layers["imputed_std"])
        np.save({str(tmp_path / "there_mean.npy")!r}, model.adata.layers["imputed"])
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=600, env={**__import__("os").environ,
                                                                                 "OMP_NUM_THREADS": "1"})
    np.testing.assert_array_equal(np.load(tmp_path / "here.npy"), np.load(tmp_path / "there.npy"))
    np.testing.assert_array_equal(a.layers["imputed"], np.load(tmp_path / "there_mean.npy"))
