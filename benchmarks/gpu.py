"""GPU timing: default train + impute on the DLPFC section and a 100k-spot synthetic section, fp32 and bf16-mixed.

Prints, per section and precision: training seconds, steps, seconds per step, imputation seconds, peak GPU memory
(``torch.cuda.max_memory_allocated``) and the held-out per-gene PCC / RMSE (``entries`` 10%, seed 0). Needs a CUDA
device; on a machine without the field's packages, install the wheelhouse of ``../shared/tools/gpu-wheels.sh`` first.

    python benchmarks/gpu.py --sections dlpfc 100k --precision 32 bf16-mixed --csv benchmarks/results/gpu.csv
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "maynard2021_dlpfc_151673_hvg5000.h5ad"


def one(section: str, precision: str, data_path: Path) -> dict:
    """Train and impute one section at one precision on the GPU."""
    import anndata as ad
    import scvi
    import torch

    import stmcdi

    if section == "dlpfc":
        adata = ad.read_h5ad(data_path)
        stmcdi.pp.select_genes(adata, 1000, subset=True)
    else:
        adata = stmcdi.datasets.synthetic(n_spots=int(section.rstrip("k")) * 1000, n_genes=1000, seed=0)
    held = stmcdi.benchmark.hold_out(adata, "entries", 0.1, seed=0)
    data = held.adata
    scvi.settings.seed = 0
    stmcdi.STMCDI.setup_anndata(data)
    model = stmcdi.STMCDI(data)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model.train(accelerator="gpu", devices=1, precision=precision, enable_progress_bar=False)
    t1 = time.perf_counter()
    model.impute()
    t2 = time.perf_counter()
    steps = int(model.history["train_loss"].index.max()) if "train_loss" in model.history else -1
    score = stmcdi.benchmark.score(held, data.layers["imputed"])
    return {"section": section, "precision": precision, "device": torch.cuda.get_device_name(0),
            "n_obs": data.n_obs, "train_seconds": t1 - t0, "epochs": steps, "impute_seconds": t2 - t1,
            "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30, "per_gene_pcc": score["per_gene_pcc"],
            "rmse": score["rmse"]}


def main() -> None:
    """Command line: every section at every precision, one JSON row each."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="*", default=["dlpfc", "100k"])
    p.add_argument("--precision", nargs="*", default=["32", "bf16-mixed"])
    p.add_argument("--data", type=Path, default=DATA, help="the DLPFC .h5ad")
    p.add_argument("--csv", type=Path, default=None)
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("No CUDA device: run this script on a GPU machine.")
    for section in args.sections:
        for precision in args.precision:
            row = one(section, precision, args.data)
            print(json.dumps(row), flush=True)
            if args.csv:
                import pandas as pd

                pd.DataFrame([row]).to_csv(args.csv, mode="a", header=not args.csv.exists(), index=False)


if __name__ == "__main__":
    main()
