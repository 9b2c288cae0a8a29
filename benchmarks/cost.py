"""The cost table of the Benchmarks page: what STMCDI's defaults cost on sections of 10k-100k spots and on DLPFC.

For each section, in a fresh process (so that the peak memory is the section's own), the defaults train and impute
(``target="missing"``, 10% of the entries held out) and the script prints: seconds per training step, the steps the
defaults took (early stopping on held-back entries), imputation seconds per 1000 spots, the peak resident memory, and
the achieved GFLOP/s of a training step (forward and backward, counted by :class:`torch.utils.flop_counter.
FlopCounterMode`) next to this machine's fp32 matrix-multiply GFLOP/s. With ``--scvi`` the DLPFC row also times
scVI's default train + ``get_normalized_expression`` on the same matrix.

    OMP_NUM_THREADS=2 python benchmarks/cost.py --sections dlpfc 10k 30k 100k --csv benchmarks/results/cost.csv
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "maynard2021_dlpfc_151673_hvg5000.h5ad"
SIZES = {"10k": 10_000, "30k": 30_000, "100k": 100_000}


def matmul_gflops(n: int = 2048, repeat: int = 5) -> float:
    """Measured fp32 matrix-multiply GFLOP/s of this machine (torch, its default threads)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2.0 * n**3 * repeat / (time.perf_counter() - t0) / 1e9


def one(section: str, with_scvi: bool) -> dict:
    """Run one section in this process and return its row."""
    import anndata as ad
    import numpy as np
    import scvi
    from lightning.pytorch.callbacks import Callback
    from torch.utils.flop_counter import FlopCounterMode

    import stmcdi

    if section == "dlpfc":
        adata = ad.read_h5ad(DATA)
        stmcdi.pp.select_genes(adata, 1000, subset=True)
    else:
        adata = stmcdi.datasets.synthetic(n_spots=SIZES[section], n_genes=1000, seed=0)
    held = stmcdi.benchmark.hold_out(adata, "entries", 0.1, seed=0)
    data = held.adata

    class Steps(Callback):
        """Times every training step; counts the floating-point operations of the 10th (forward, backward, update)."""

        def __init__(self):
            self.times, self.gflop, self.counter = [], float("nan"), None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 10:
                self.counter = FlopCounterMode(display=False)
                self.counter.__enter__()
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.times.append(time.perf_counter() - self.t0)
            if self.counter is not None:
                self.counter.__exit__(None, None, None)
                self.gflop, self.counter = self.counter.get_total_flops() / 1e9, None

    row = {"section": section, "n_obs": data.n_obs, "n_vars": data.n_vars}
    scvi.settings.seed = 0
    t0 = time.perf_counter()
    stmcdi.pp.spatial_graph(data)
    stmcdi.STMCDI.setup_anndata(data)
    model = stmcdi.STMCDI(data)
    steps = Steps()
    t1 = time.perf_counter()
    model.train(enable_progress_bar=False, callbacks=[steps])
    t2 = time.perf_counter()
    model.impute()
    t3 = time.perf_counter()
    score = stmcdi.benchmark.score(held, data.layers["imputed"])
    row.update({
        "steps": len(steps.times), "seconds_per_step": float(np.median(steps.times)),
        "train_seconds": t2 - t1, "impute_seconds": t3 - t2,
        "impute_seconds_per_1000_spots": 1000 * (t3 - t2) / data.n_obs, "total_seconds": t3 - t0,
        "per_gene_pcc": score["per_gene_pcc"], "rmse": score["rmse"],
    })
    row.update({"step_gflop": steps.gflop, "step_gflops_achieved": steps.gflop / row["seconds_per_step"],
                "matmul_gflops": matmul_gflops()})
    if with_scvi and section == "dlpfc":
        counts = held.adata.X
        work = ad.AnnData(counts.copy())
        work.X.data[np.isnan(work.X.data)] = 0.0  # scVI takes no NaN: held-out entries enter as zeros
        t4 = time.perf_counter()
        scvi.model.SCVI.setup_anndata(work)
        vae = scvi.model.SCVI(work)
        vae.train(enable_progress_bar=False)
        vae.get_normalized_expression()
        row["scvi_seconds"] = time.perf_counter() - t4
    row["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return row


def main() -> None:
    """Command line: each section in a fresh process, one JSON row each, then the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="*", default=["dlpfc", "10k", "30k", "100k"],
                   choices=["dlpfc", *SIZES])
    p.add_argument("--csv", type=Path, default=None, help="append the rows to this CSV")
    p.add_argument("--scvi", action="store_true", help="also time scVI on the DLPFC matrix")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.scvi)))
        return
    import pandas as pd

    rows = []
    for section in args.sections:  # a fresh process each: the peak memory is the section's own
        cmd = [sys.executable, __file__, "--one", section] + (["--scvi"] if args.scvi else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(json.dumps(rows[-1]), flush=True)
        if args.csv:
            row = pd.DataFrame([rows[-1]])
            if args.csv.exists():  # the file's columns, in its order (rows without scVI leave its column empty)
                row = row.reindex(columns=pd.read_csv(args.csv, nrows=0).columns)
            row.to_csv(args.csv, mode="a", header=not args.csv.exists(), index=False)
    df = pd.DataFrame(rows)
    cols = ["section", "n_obs", "steps", "seconds_per_step", "train_seconds", "impute_seconds_per_1000_spots",
            "total_seconds", "peak_rss_gb", "step_gflops_achieved", "matmul_gflops"]
    print(df[[c for c in cols if c in df]].to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
