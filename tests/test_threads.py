import numpy as np
import scvi
import torch
from threadpoolctl import threadpool_info, threadpool_limits

import stmcdi
from stmcdi import STMCDI
from stmcdi._data import NeighborhoodCollate
from stmcdi._threads import one_blas_thread, with_one_blas_thread

SMALL = {"n_channels": 8, "n_latent": 8, "n_encoder_hidden": 16, "genes_per_token": 4, "n_diffusion_steps": 20}


def numpy_blas_threads() -> list[int]:
    """Thread counts of the BLAS libraries loaded outside torch (NumPy's and SciPy's)."""
    return [lib["num_threads"] for lib in threadpool_info()
            if lib["user_api"] == "blas" and "torch" not in lib["filepath"]]


def test_one_blas_thread_limits_numpy_blas_and_restores_it():
    np.ones((4, 4)) @ np.ones((4, 4))  # NumPy's BLAS is loaded
    with threadpool_limits(limits=2, user_api="blas"):  # two threads whatever OMP_NUM_THREADS says
        before, torch_threads = numpy_blas_threads(), torch.get_num_threads()
        assert before and set(before) == {2}, "NumPy's BLAS not found by threadpoolctl"
        with one_blas_thread():
            assert numpy_blas_threads() == [1] * len(before)
            assert torch.get_num_threads() == torch_threads  # torch's own threads are left alone
        assert numpy_blas_threads() == before


def test_decorator_keeps_name_doc_and_value():
    @with_one_blas_thread
    def f(x):
        """Doc."""
        return numpy_blas_threads(), x

    with threadpool_limits(limits=2, user_api="blas"):
        threads, x = f(3)
    assert x == 3 and set(threads) == {1}
    assert f.__name__ == "f" and f.__doc__ == "Doc."


def test_train_and_impute_batches_run_numpy_blas_on_one_thread(monkeypatch):
    seen = {"train": [], "impute": []}
    phase = ["train"]
    collate = NeighborhoodCollate.__call__

    def recording(self, batch):
        seen[phase[0]].append(max(numpy_blas_threads()))
        return collate(self, batch)

    monkeypatch.setattr(NeighborhoodCollate, "__call__", recording)
    adata = stmcdi.benchmark.hold_out(stmcdi.datasets.synthetic(n_spots=60, n_genes=20, seed=1), "entries", 0.1).adata
    scvi.settings.seed = 0
    STMCDI.setup_anndata(adata)
    model = STMCDI(adata, **SMALL)
    with threadpool_limits(limits=2, user_api="blas"):
        model.train(max_epochs=1, batch_size=32, enable_progress_bar=False)
        assert set(numpy_blas_threads()) == {2}  # restored after training
        phase[0] = "impute"
        model.impute()
        assert set(numpy_blas_threads()) == {2}
    assert seen["train"] and set(seen["train"]) == {1}
    assert seen["impute"] and set(seen["impute"]) == {1}
