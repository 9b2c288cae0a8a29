"""Calibration of STMCDI's samples: coverage of central intervals and CRPS under several samplers.

Trains STMCDI once (defaults) on a section (``entries`` 10%, seed 0, 1000 seurat_v3 HVG chosen on the split's
observed counts), then imputes the held-out entries with each sampler setting and prints, per setting, the CRPS
and the coverage of the 50%, 80% and 90% central intervals computed two ways: with linear-interpolated sample quantiles (numpy's
default) and with Weibull plotting positions ``p (n + 1)``, which are unbiased for exchangeable draws.

    python benchmarks/calibration.py ../shared/data/stahl2016_breast_cancer_layer2.h5ad
"""

from __future__ import annotations

import argparse
import logging
import time

import anndata as ad
import numpy as np
import scvi

import stmcdi


def coverage(truth: np.ndarray, samples: np.ndarray, level: float, method: str) -> float:
    """Fraction of ``truth`` inside the central ``level`` interval of ``samples`` (quantile ``method``)."""
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], axis=0, method=method)
    return float(np.mean((truth >= lo) & (truth <= hi)))


def main() -> None:
    """Train once, impute with each sampler setting, print one line per setting."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("--protocol", default="entries")
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--panel-before-hold-out", action="store_true",
                   help="choose the panel once on all counts (the runs before 2026-11-25)")
    args = p.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    scvi.settings.seed = args.seed
    adata = ad.read_h5ad(args.data)
    panel = {"n_top_genes": 1000, "flavor": "seurat_v3"}
    if args.panel_before_hold_out:
        stmcdi.pp.select_genes(adata, subset=True, **panel)
        panel = None
    held = stmcdi.benchmark.hold_out(adata, args.protocol, args.ratio, seed=args.seed, panel=panel)
    a = held.adata
    stmcdi.pp.spatial_graph(a)
    stmcdi.STMCDI.setup_anndata(a)
    model = stmcdi.STMCDI(a)
    t0 = time.time()
    model.train(enable_progress_bar=False)
    print(f"trained in {time.time() - t0:.0f} s", flush=True)
    r, c = held.mask.nonzero()
    truth = held.truth.astype(np.float64)
    settings = [("ddim", 10, 20), ("ddim", 10, 50), ("ddim", 25, 20), ("ddpm", None, 20)]
    for sampler, n_steps, n_samples in settings:
        t0 = time.time()
        out = model.impute(n_samples=n_samples, sampler=sampler, n_steps=n_steps, inplace=False,
                           return_samples=True, seed=args.seed)
        s = out["samples"][:, r, c].astype(np.float64)
        sc = stmcdi.benchmark.score(held, out["mean"])
        cov = {f"{m[:3]}{int(lv * 100)}": coverage(truth, s, lv, m) for m in ("linear", "weibull")
               for lv in (0.5, 0.8, 0.9)}
        print(f"{sampler} steps={n_steps} samples={n_samples}: per-gene PCC {sc['per_gene_pcc']:.3f} "
              f"RMSE {sc['rmse']:.3f} CRPS {stmcdi.benchmark.crps_ensemble(truth, s):.4f} "
              + " ".join(f"{k} {v:.3f}" for k, v in cov.items()) + f" ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
