"""Several processes through Lightning: DDP on two CPU processes (gloo) trains a model that imputes."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import scvi
    import torch.distributed as dist
    import stmcdi

    adata = stmcdi.datasets.synthetic(n_spots=160, n_genes=24, seed=0)
    held = stmcdi.benchmark.hold_out(adata, "entries", 0.1, seed=0)
    a = held.adata
    scvi.settings.seed = 0
    stmcdi.STMCDI.setup_anndata(a)
    model = stmcdi.STMCDI(a, n_channels=8, n_latent=8, n_encoder_hidden=16, n_diffusion_steps=10)
    model.train(max_epochs=4, batch_size=16, accelerator="cpu", devices=2, strategy="ddp",
                enable_progress_bar=False, enable_model_summary=False, check_val_every_n_epoch=1)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if rank == 0:
        model.impute(n_samples=2)
        score = stmcdi.benchmark.score(held, a.layers["imputed"])
        np.save(sys.argv[1], a.layers["imputed"])
        print("WORLD", world, "STEPS", model.history["train_loss"].index.max(), "RMSE", score["rmse"])
""")


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains_a_model_that_imputes(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "imputed.npy"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=900,
                         env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "WORLD 2" in run.stdout, run.stdout[-2000:]
    imputed = np.load(out)
    assert imputed.shape == (160, 24) and np.isfinite(imputed).all()
