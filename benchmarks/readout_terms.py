r"""Which terms of STMCDI's read-out help at entries it never saw: score a trained model with terms removed.

STMCDI's point estimate is the read-out :math:`\hat x` (per-gene read-out of the spatial code :math:`z`, the
spot offset of the spot summaries, the weighted expression profile) plus the denoiser's one-pass residual.
This script trains one configuration of ``benchmarks/tune.py`` on its validation split (the test split hidden
first and never read, 10% of the observed entries hidden again, seed ``1000 + seed``) and scores, on the
validation entries:

- ``one_pass``: the model's point estimate (what ``impute`` writes);
- ``readout``: the read-out alone (the residual set to 0);
- ``readout_no_z``, ``readout_no_offset``, ``readout_no_profile``: the read-out with one term removed
  (only the terms the configuration has).

Terms are removed after training, so a row says what the trained term adds, not what the model would learn
without it (train ``--config no_latent_readout`` for that):

    python benchmarks/readout_terms.py --data ../shared/data/stahl2016_breast_cancer_layer2.h5ad --seeds 0
"""

from __future__ import annotations

import argparse
import logging
import warnings
from contextlib import contextmanager

import anndata as ad
import numpy as np
import pandas as pd
import torch
from tune import CONFIGS, _train_kwargs, format_row, validation_split

import stmcdi


@contextmanager
def _patched(obj, name: str, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def readout(model, seed: int, drop: str | None = None, **impute) -> np.ndarray:
    """``model``'s imputation with the one-pass residual set to 0 and the read-out term ``drop`` removed."""
    mod = model.module
    zero = lambda x, *a, **k: torch.zeros_like(x)
    with _patched(mod, "_one_pass", zero):
        if drop == "z":
            with _patched(mod.readout, "forward", lambda z: torch.zeros(z.shape[0], mod.n_genes)):
                return model.impute(inplace=False, seed=seed, **impute)["mean"]
        if drop == "offset":
            with _patched(mod.spot_offset, "forward", lambda f: torch.zeros(f.shape[0], 1)):
                return model.impute(inplace=False, seed=seed, **impute)["mean"]
        if drop == "profile":
            w = mod.expression_weight.data.clone()
            mod.expression_weight.data.zero_()
            try:
                return model.impute(inplace=False, seed=seed, **impute)["mean"]
            finally:
                mod.expression_weight.data.copy_(w)
        return model.impute(inplace=False, seed=seed, **impute)["mean"]


def main() -> None:
    """Train, remove read-out terms one at a time, print and save the scores."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--protocol", default="entries")
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--config", default="default", choices=list(CONFIGS))
    p.add_argument("--csv", default=None)
    p.add_argument("--max-epochs", type=int, default=None, help="override the training length (smoke runs)")
    p.add_argument("--n-samples", type=int, default=None, help="samples per imputation (default: impute's)")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    adata = ad.read_h5ad(args.data)
    rows = []
    for seed in args.seeds:
        _, val = validation_split(adata, seed, args.protocol, args.ratio, {"n_top_genes": 1000, "flavor": "seurat_v3"})
        model_kw, train_kw = CONFIGS[args.config]
        if args.max_epochs is not None:
            train_kw = {"max_epochs": args.max_epochs}
        impute = {} if args.n_samples is None else {"n_samples": args.n_samples}
        method = stmcdi.benchmark.stmcdi_method(model_kw, _train_kwargs(train_kw), impute)
        results = {"one_pass": method(val.adata, seed=seed)}
        model = method.last_model
        mod = model.module
        results["readout"] = readout(model, seed, **impute)
        for term, present in (("z", mod.readout is not None), ("offset", mod.spot_offset is not None),
                              ("profile", mod.expression_weight is not None)):
            if present:
                results[f"readout_no_{term}"] = readout(model, seed, drop=term, **impute)
        for label, value in results.items():
            s = stmcdi.benchmark.score(val, value)
            row = {"seed": seed, "config": args.config, "estimate": label,
                   **{k: s[k] for k in ("per_gene_pcc", "pcc", "rmse", "mae")}}
            rows.append(row)
            print(format_row(row), flush=True)
        if args.csv:
            pd.DataFrame(rows).to_csv(args.csv, index=False)
    df = pd.DataFrame(rows)
    print(df.groupby("estimate", sort=False)[["per_gene_pcc", "pcc", "rmse"]].mean().round(4).to_string())


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
