"""Cost of STMCDI's defaults on the DLPFC section (3,639 spots, 1000 seurat_v3 genes) on this machine.

Times (1) one training step (encoder alone, and the whole loss, forward + backward) on neighbourhood batches of
64 random seed spots, and (2) imputation of the first 320 spots with ``target="zeros"`` for a few sampler settings;
multiply (2) by 3,639 / 320 for the whole section. Run on an otherwise idle machine:

    python benchmarks/dlpfc_cost.py [path/to/maynard2021_dlpfc_151673_hvg5000.h5ad]
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np
import scvi

import stmcdi
from stmcdi._data import NeighborhoodCollate

warnings.filterwarnings("ignore")


def main(path: str | None = None) -> None:
    """Print the per-step and imputation timings (``path``: the DLPFC file; default: the loader's search)."""
    scvi.settings.seed = 0
    adata = stmcdi.datasets.dlpfc_151673(path)
    stmcdi.pp.select_genes(adata, 1000, subset=True)
    stmcdi.pp.spatial_graph(adata)
    stmcdi.STMCDI.setup_anndata(adata)
    model = stmcdi.STMCDI(adata)
    module = model.module.train()
    collate = NeighborhoodCollate(adata.X, adata.obsm["spatial_nn"], n_hops=module.n_hops)
    rng = np.random.default_rng(0)

    def batch():
        seeds = rng.choice(adata.n_obs, 64, replace=False)
        return collate({"spatial_nn": adata.obsm["spatial_nn"][seeds]})

    b = batch()
    print(f"a batch of 64 seeds gathers {b['counts'].shape[0]} spots and {b['edge_index'].shape[1]} edges")

    def step(b, part):
        inf = module.inference(b["counts"], b["library"], b["edge_index"], b["row"].shape[0])
        if part == "encoder":
            loss = inf["readout"].pow(2).mean()
        else:
            loss = module.loss(b, inf, module.generative(**inf)).loss
        loss.backward()

    for part in ("encoder", "whole loss"):
        step(b, part)  # warm-up
        t0 = time.perf_counter()
        for _ in range(5):
            step(batch(), part)
        print(f"training step, {part}: {(time.perf_counter() - t0) / 5 * 1000:.0f} ms (forward + backward)")

    module.eval()
    sub = adata[:320].copy()
    stmcdi.pp.spatial_graph(sub)
    for n_samples, batch_size in ((20, None), (20, 8), (20, 128), (10, None)):
        t0 = time.perf_counter()
        model.impute(sub, n_samples=n_samples, batch_size=batch_size, target="zeros", inplace=False)
        dt = time.perf_counter() - t0
        print(f"impute 320 spots, n_samples={n_samples}, batch_size={batch_size}: {dt:.1f} s "
              f"(x {adata.n_obs / 320:.1f} for the section: {dt * adata.n_obs / 320 / 60:.1f} min)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
