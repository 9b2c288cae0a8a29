"""How many reverse-diffusion samples and DDIM steps the spread needs, chosen on validation entries.

With ``objective="hybrid"`` (the default) the imputed value is the one-pass estimate; the samples give only the
spread (``imputed_std``, CRPS, intervals), and they are most of the imputation's cost (``n_samples * n_steps``
denoiser passes per spot). For each seed the test split (``entries`` 10%, panel chosen on its observed counts) is
hidden first and never read; a validation split (10% of the still-observed entries, seed ``1000 + seed``) is
hidden too. One model trains with the defaults; then, for each ``(n_samples, n_steps)``, the spread is
recalibrated on the model's own held-back entries (:meth:`~stmcdi.STMCDI.calibrate_spread`, as ``train`` does)
and the validation entries are imputed: CRPS, 90% coverage and seconds per setting.

    python benchmarks/sample_budget.py --data ../shared/data/stahl2016_mob_rep11.h5ad --seeds 0
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scvi
from tune import format_row, validation_split

import stmcdi

SETTINGS = ((20, 10), (10, 10), (20, 5), (10, 5))


def main() -> None:
    """Train once per seed, score each sampler budget on the validation entries."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--panel", default="seurat_v3", choices=("seurat_v3", "cv"))
    p.add_argument("--csv", default=None)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    adata = ad.read_h5ad(args.data)
    rows = []
    for seed in args.seeds:
        _, val = validation_split(adata, seed, panel={"n_top_genes": 1000, "flavor": args.panel})
        a = val.adata.copy()
        stmcdi.pp.spatial_graph(a)
        stmcdi.STMCDI.setup_anndata(a)
        scvi.settings.seed = seed
        model = stmcdi.STMCDI(a)
        t0 = time.perf_counter()
        model.train(enable_progress_bar=False)
        print(f"seed {seed}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
        r, c = val.mask.nonzero()
        truth = val.truth.astype(np.float64)
        for n_samples, n_steps in SETTINGS:
            t0 = time.perf_counter()
            cal = model.calibrate_spread(n_samples=n_samples, n_steps=n_steps, seed=seed)
            t_cal = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = model.impute(n_samples=n_samples, n_steps=n_steps, inplace=False, return_samples=True, seed=seed)
            t_imp = time.perf_counter() - t0
            draws = out["samples"][:, r, c].astype(np.float64)
            s = stmcdi.benchmark.score(val, out["mean"])
            row = {"seed": seed, "n_samples": n_samples, "n_steps": n_steps, "spread_scale": model.spread_scale_,
                   "per_gene_pcc": s["per_gene_pcc"], "rmse": s["rmse"],
                   "crps": stmcdi.benchmark.crps_ensemble(truth, draws),
                   "coverage_90": stmcdi.benchmark.interval_coverage(truth, draws, 0.9),
                   "calibrate_s": t_cal, "impute_s": t_imp}
            rows.append(row)
            print(format_row(row), flush=True)
            del cal
    df = pd.DataFrame(rows)
    if args.csv:
        df.to_csv(args.csv, index=False)
    print(df.groupby(["n_samples", "n_steps"]).mean(numeric_only=True).drop(columns="seed").to_markdown(floatfmt=".4f"))


if __name__ == "__main__":
    main()
