"""Exploratory runs that set STMCDI's CPU defaults (docs/benchmarks.md, "How the defaults were chosen").

Trains on the mouse olfactory bulb (1000 seurat_v3 HVG, ``entries`` 10%, seed 0) in rounds of
``--epochs-per-round`` epochs (each round restarts the learning-rate schedule), and after each round scores
the encoder's read-out alone and the mean of ``--n-samples`` diffusion samples on the held-out entries.

    python benchmarks/mob_defaults.py --rounds 1 --epochs-per-round 600 --dropout 0 --no-readout-loss \
        --n-samples 10 --n-steps 20
    python benchmarks/mob_defaults.py --rounds 1 --epochs-per-round 200 --dropout 0 --n-samples 4
    python benchmarks/mob_defaults.py --rounds 4 --epochs-per-round 60 --dropout 0 --n-samples 4
    python benchmarks/mob_defaults.py --rounds 4 --epochs-per-round 50 --dropout 0.1 --n-samples 20
    python benchmarks/mob_defaults.py --rounds 2 --epochs-per-round 200 --dropout 0.3 --n-samples 20
    python benchmarks/mob_defaults.py --rounds 2 --epochs-per-round 200 --dropout 0.3 --weight-decay 0.05 \
        --n-samples 20
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import anndata as ad
import numpy as np
import scvi
import torch

import stmcdi

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "stahl2016_mob_rep11.h5ad"


def readout_prediction(model: stmcdi.STMCDI, adata: ad.AnnData) -> np.ndarray:
    """Observed entries as given, missing ones from the encoder's read-out (the one-pass control)."""
    out = np.empty(adata.shape, np.float32)
    model.module.eval()
    with torch.inference_mode():
        for b in model._neighborhood_loader(adata, 128):
            n = len(b["row"])
            inf = model.module.inference(b["counts"], b["library"], b["edge_index"], n,
                                         target=torch.isnan(b["counts"][:n]))
            x = torch.where(inf["target"], inf["readout"], inf["x"])
            out[b["row"].numpy()] = model.module.unscale(x).clamp_min(0).numpy()
    return out


def main() -> None:
    """Run the rounds and print one line of scores per round."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--epochs-per-round", type=int, default=50)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--no-readout-loss", action="store_true", help="noise loss only, no residual diffusion")
    p.add_argument("--n-samples", type=int, default=20)
    p.add_argument("--n-steps", type=int, default=10)
    p.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default: the plan's)")
    args = p.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    scvi.settings.seed = 0
    adata = ad.read_h5ad(args.data)
    stmcdi.pp.select_genes(adata, 1000, subset=True)
    held = stmcdi.benchmark.hold_out(adata, "entries", 0.1, seed=0)
    a = held.adata
    stmcdi.pp.spatial_graph(a)
    stmcdi.STMCDI.setup_anndata(a)
    kw = {"dropout": args.dropout}
    if args.no_readout_loss:
        kw.update(readout_loss_weight=0.0, residual=False)
    model = stmcdi.STMCDI(a, **kw)
    t0 = time.time()
    for rnd in range(args.rounds):
        plan = {} if args.weight_decay is None else {"weight_decay": args.weight_decay}
        model.train(max_epochs=args.epochs_per_round, enable_progress_bar=False, plan_kwargs=plan)
        t_train = time.time() - t0
        r = stmcdi.benchmark.score(held, readout_prediction(model, a))
        ti = time.time()
        s = stmcdi.benchmark.score(held, model.impute(n_samples=args.n_samples, n_steps=args.n_steps,
                                                      inplace=False)["mean"])
        print(f"round {rnd}: {(rnd + 1) * args.epochs_per_round} epochs, train {t_train:.0f} s | read-out "
              f"per-gene PCC {r['per_gene_pcc']:.3f} RMSE {r['rmse']:.3f} | {args.n_samples} samples "
              f"({time.time() - ti:.0f} s) per-gene PCC {s['per_gene_pcc']:.3f} RMSE {s['rmse']:.3f}", flush=True)
        t0 = time.time() - t_train


if __name__ == "__main__":
    main()
