import numpy as np
import scvi
import torch
from lightning.pytorch.callbacks import Callback
from threadpoolctl import threadpool_info

import stmcdi
from stmcdi import STMCDI
from stmcdi._threads import one_blas_thread, with_one_blas_thread

SMALL = {"n_channels": 8, "n_latent": 8, "n_encoder_hidden": 16, "genes_per_token": 4, "n_diffusion_steps": 20}


def numpy_blas_threads() -> list[int]:
    """Thread counts of the BLAS libraries loaded outside torch (NumPy's and SciPy's)."""
    return [lib["num_threads"] for lib in threadpool_info()
            if lib["user_api"] == "blas" and "torch" not in lib["filepath"]]


def test_one_blas_thread_limits_numpy_blas_and_restores_it():
    np.ones((4, 4)) @ np.ones((4, 4))  # NumPy's BLAS is loaded
    before, torch_threads = numpy_blas_threads(), torch.get_num_threads()
    assert before, "NumPy's BLAS not found by threadpoolctl"
    with one_blas_thread():
        assert numpy_blas_threads() == [1] * len(before)
        assert torch.get_num_threads() == torch_threads  # torch's own threads are left alone
    assert numpy_blas_threads() == before


def test_decorator_keeps_name_doc_and_value():
    @with_one_blas_thread
    def f(x):
        """Doc."""
        return numpy_blas_threads(), x

    threads, x = f(3)
    assert x == 3 and set(threads) == {1}
    assert f.__name__ == "f" and f.__doc__ == "Doc."


def test_train_and_impute_run_numpy_blas_on_one_thread():
    class Record(Callback):
        seen: list = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen.append(max(numpy_blas_threads()))

    adata = stmcdi.benchmark.hold_out(stmcdi.datasets.synthetic(n_spots=60, n_genes=20, seed=1), "entries", 0.1).adata
    scvi.settings.seed = 0
    STMCDI.setup_anndata(adata)
    model = STMCDI(adata, **SMALL)
    before = numpy_blas_threads()
    model.train(max_epochs=1, batch_size=32, enable_progress_bar=False, callbacks=[Record()])
    assert Record.seen and set(Record.seen) == {1}
    assert numpy_blas_threads() == before  # restored after training
    model.impute()
    assert numpy_blas_threads() == before
