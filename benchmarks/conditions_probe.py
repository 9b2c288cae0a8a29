"""What STMCDI's conditions can give linearly: least-squares read-outs of them, scored on validation entries.

STMCDI conditions every spot on its expression profile (the mean log-normalised value of its nearest spots in
expression space, ``n_expression_neighbors``) and three summaries of its visible entries (``spot_features``:
mean log-normalised value, detected fraction, log mean count). This script fits, on the observed entries only,
a few linear read-outs of those same conditions and scores them on validation entries, to show how much of
what the network could get from them it gets:

- ``gene_mean``: the gene's mean;
- ``pooled``: the gene's mean, one weight on the profile's deviation from it, one shared linear offset of the
  spot summaries (the form of STMCDI's read-out, with one weight for all genes);
- ``binned``: the ``pooled`` form fitted separately in each of 10 groups of genes of similar detected fraction
  (the profile says much about a well-detected gene and little about a sparse one);
- ``per_gene``: per gene, an intercept, a weight on the profile and a weight on each summary (ridge, ``--ridge``
  times the number of the gene's observed entries).

Fits on observed entries are slightly optimistic about the profile: a spot's own entries helped choose its
expression neighbours. The validation entries did not (they are hidden before the neighbours are chosen).

For each seed the test split (``--protocol`` ``--ratio``) is hidden first and never read; 10% of its observed
entries (seed ``1000 + seed``) are hidden again as validation entries, as in ``benchmarks/tune.py``:

    python benchmarks/conditions_probe.py --data ../shared/data/stahl2016_breast_cancer_layer2.h5ad --seeds 0 1 2
"""

from __future__ import annotations

import argparse

import anndata as ad
import numpy as np
import pandas as pd
from tune import format_row, validation_split

import stmcdi
from stmcdi._data import expression_neighbor_table
from stmcdi.pp import log_normalize

#: groups of genes of similar detected fraction for the ``binned`` read-out
N_GROUPS = 10


def conditions(counts: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log-normalised values (NaN where missing), expression profiles and standardised spot summaries."""
    x, _, _ = log_normalize(counts)
    x = np.asarray(x, dtype=np.float64)
    obs = ~np.isnan(x)
    table = expression_neighbor_table(counts, n_neighbors=n_neighbors)
    nb = x[table]  # (n, k, G)
    n_obs = (~np.isnan(nb)).sum(1)
    profile = np.where(n_obs > 0, np.nansum(nb, 1) / np.maximum(n_obs, 1), np.nan)
    c = np.where(obs, np.nan_to_num(counts, nan=0.0), 0.0)
    n = np.maximum(obs.sum(1), 1)
    feats = np.column_stack([np.nansum(x, 1) / n, (c > 0).sum(1) / n, np.log1p(c.sum(1) / n)])
    feats = (feats - feats.mean(0)) / np.where(feats.std(0) > 0, feats.std(0), 1.0)
    return x, profile, feats


def fit_readouts(x: np.ndarray, profile: np.ndarray, feats: np.ndarray, ridge: float) -> dict[str, np.ndarray]:
    """Dense estimates of every read-out, fitted on the observed entries of ``x``."""
    obs = ~np.isnan(x)
    mu = np.nanmean(x, 0)
    mu = np.where(np.isnan(mu), 0.0, mu)
    prof = np.where(np.isnan(profile), mu[None, :], profile) - mu[None, :]
    out = {"gene_mean": np.broadcast_to(mu, x.shape).copy()}
    # pooled: x - mu = w * prof + feats @ b + c
    r, g = np.nonzero(obs)
    design = np.column_stack([prof[r, g], feats[r], np.ones(r.size)])
    coef, *_ = np.linalg.lstsq(design, x[r, g] - mu[g], rcond=None)
    out["pooled"] = mu[None, :] + coef[0] * prof + (feats @ coef[1:4])[:, None] + coef[4]
    # binned: the pooled form per group of genes of similar detected fraction
    detected = (np.nan_to_num(x) > 0).sum(0) / np.maximum(obs.sum(0), 1)
    group = np.minimum((np.argsort(np.argsort(detected)) * N_GROUPS) // x.shape[1], N_GROUPS - 1)
    est = np.empty_like(x)
    for k in range(N_GROUPS):
        genes = np.nonzero(group == k)[0]
        rr, cc = np.nonzero(obs[:, genes])
        gg = genes[cc]
        design = np.column_stack([prof[rr, gg], feats[rr], np.ones(rr.size)])
        cf, *_ = np.linalg.lstsq(design, x[rr, gg] - mu[gg], rcond=None)
        est[:, genes] = mu[genes] + cf[0] * prof[:, genes] + (feats @ cf[1:4])[:, None] + cf[4]
    out["binned"] = est
    # per gene: ridge on [1, prof_g, feats]
    est = np.empty_like(x)
    for j in range(x.shape[1]):
        o = obs[:, j]
        a = np.column_stack([prof[:, j], feats])
        if o.sum() < 3:
            est[:, j] = mu[j]
            continue
        am, ys = a[o], x[o, j]
        centre = am.mean(0)
        ac = am - centre
        w = np.linalg.solve(ac.T @ ac + ridge * o.sum() * np.eye(a.shape[1]), ac.T @ (ys - ys.mean()))
        est[:, j] = ys.mean() + (a - centre) @ w
    out["per_gene"] = est
    return out


def main() -> None:
    """Print one line per seed and read-out (per-gene PCC, pooled PCC, RMSE on the validation entries)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--protocol", default="entries")
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--neighbors", type=int, nargs="+", default=[20])
    p.add_argument("--ridge", type=float, nargs="+", default=[0.01])
    p.add_argument("--csv", default=None)
    args = p.parse_args()
    adata = ad.read_h5ad(args.data)
    rows = []
    for seed in args.seeds:
        _, val = validation_split(adata, seed, args.protocol, args.ratio, {"n_top_genes": 1000, "flavor": "seurat_v3"})
        X = val.adata.X
        counts = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float64)
        for k in args.neighbors:
            x, profile, feats = conditions(counts, k)
            for ridge in args.ridge:
                for name, est in fit_readouts(x, profile, feats, ridge).items():
                    s = stmcdi.benchmark.score(val, est)
                    row = {"seed": seed, "neighbors": k, "ridge": ridge, "readout": name,
                           **{m: s[m] for m in ("per_gene_pcc", "pcc", "rmse")}}
                    rows.append(row)
                    print(format_row(row), flush=True)
    df = pd.DataFrame(rows)
    if args.csv:
        df.to_csv(args.csv, index=False)
    print(df.groupby(["neighbors", "ridge", "readout"])[["per_gene_pcc", "pcc", "rmse"]].mean().round(4).to_string())


if __name__ == "__main__":
    main()
