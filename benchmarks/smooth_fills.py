"""Does smoothing STMCDI's filled zeros over a spot graph raise their per-gene PCC on a ``thin`` validation split?

On one validation split of :mod:`tune` (the test split hidden first and never read), fit STMCDI (defaults,
``target="zeros"``) and MAGIC, then rescore STMCDI's estimate with each filled entry replaced by
``(1 - alpha) x + alpha (P^t x)``: ``P`` the row-normalised graph of each spot and its ``k`` nearest spots, in the
expression space of the imputed matrix (50 principal components of STMCDI's imputed, log-normalised values) or in
tissue space (``obsm["spatial"]``), ``t`` steps. Observed entries are inputs of the smoothing and are not moved.
No entry of the validation split is read before scoring. A diagnosis only: nothing here is a default.

    OMP_NUM_THREADS=2 python benchmarks/smooth_fills.py --data ../shared/data/maynard2021_dlpfc_151673_hvg5000.h5ad \
        --seeds 0 --csv benchmarks/results/smooth_fills_dlpfc_hvg_s0.csv
"""

from __future__ import annotations

import argparse
import itertools
import logging
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors
from tune import validation_split

import stmcdi

#: graph sizes, steps and mixing weights scored
KS = (5, 10, 20, 40)
STEPS = (1, 2, 3)
ALPHAS = (0.25, 0.5, 0.75, 1.0)


def knn_operator(points: np.ndarray, k: int) -> sp.csr_matrix:
    """Row-normalised adjacency of each point and its ``k`` nearest others (itself included, equal weights).

    Examples
    --------
    >>> P = knn_operator(np.array([[0.0], [1.0], [5.0]]), 1)
    >>> P.toarray().round(2).tolist()
    [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]
    """
    idx = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points, return_distance=False)
    n = points.shape[0]
    rows = np.repeat(np.arange(n), k + 1)
    return sp.csr_matrix((np.full(rows.size, 1.0 / (k + 1)), (rows, idx.ravel())), shape=(n, n))


def smoothed(x: np.ndarray, fill: np.ndarray, P: sp.csr_matrix, steps: int, alpha: float) -> np.ndarray:
    """``x`` with the ``fill`` entries moved to ``(1 - alpha) x + alpha P^steps x``; other entries unchanged.

    Examples
    --------
    >>> x = np.array([[0.0], [2.0]]); P = sp.csr_matrix(np.full((2, 2), 0.5))
    >>> smoothed(x, np.array([[True], [False]]), P, 1, 1.0).ravel().tolist()
    [1.0, 2.0]
    """
    y = x
    for _ in range(steps):
        y = P @ y
    return np.where(fill, (1.0 - alpha) * x + alpha * y, x)


def recentred(y: np.ndarray, x: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """``y`` with each gene's filled entries moved by a constant so that their mean is that of ``x``'s.

    A per-gene constant changes no per-gene correlation; it puts the smoothed fill back at the level of the
    fill it was made from (smoothing over observed neighbours raises the level of filled zeros).

    Examples
    --------
    >>> x = np.array([[0.0], [1.0], [5.0]]); y = np.array([[2.0], [4.0], [5.0]])
    >>> recentred(y, x, np.array([[True], [True], [False]])).ravel().tolist()
    [-0.5, 1.5, 5.0]
    """
    n = np.maximum(fill.sum(0), 1)
    shift = (np.where(fill, x, 0.0).sum(0) - np.where(fill, y, 0.0).sum(0)) / n
    return np.where(fill, y + shift, y)


def main() -> None:
    """Fit, smooth, score and print every variant on the validation entries."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--panel", default="seurat_v3", choices=("seurat_v3", "cv"))
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--max-epochs", type=int, default=None, help="override the training length (smoke runs)")
    p.add_argument("--no-magic", action="store_true", help="skip MAGIC (smoke runs)")
    p.add_argument("--csv", default=None)
    p.add_argument("--ks", type=int, nargs="+", default=list(KS), help="graph sizes scored")
    p.add_argument("--steps", type=int, nargs="+", default=list(STEPS), help="steps scored")
    p.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS), help="mixing weights scored")
    p.add_argument("--spaces", nargs="+", default=["expr", "space"], choices=("expr", "space"),
                   help="graphs scored: expression PCA and/or tissue coordinates")
    p.add_argument("--save", default=None, help="also save STMCDI's imputed matrix to this .npz prefix (one per seed)")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    adata = ad.read_h5ad(args.data)
    panel = {"n_top_genes": 1000, "flavor": args.panel}
    rows = []
    for seed in args.seeds:
        _, val = validation_split(adata, seed, "thin", args.ratio, panel, "thin", args.ratio)
        train = {"enable_progress_bar": False}
        if args.max_epochs is not None:
            train["max_epochs"] = args.max_epochs
        x = np.asarray(stmcdi.benchmark.stmcdi_method({}, train, {"shrink": 1.0, "smooth": 0.0, "zero_dispersion": 0.0})(val.adata, seed=seed,
                                                                                  target="zeros"),
                       dtype=np.float64)
        if args.save:
            np.savez_compressed(f"{args.save}_s{seed}.npz", x=x.astype(np.float32))
        counts = val.adata.X.toarray() if sp.issparse(val.adata.X) else np.asarray(val.adata.X)
        fill = counts == 0  # what impute(target="zeros") fills: thin leaves no entry missing
        variants = {"stmcdi": x}
        if not args.no_magic:
            variants["magic"] = np.asarray(stmcdi.benchmark.available_extras()["magic"](val.adata, seed=seed,
                                                                                         target="zeros"))
        pcs = None
        if "expr" in args.spaces:
            pcs = PCA(n_components=min(50, x.shape[1] - 1), random_state=seed).fit_transform(x)
        spaces = {"expr": pcs, "space": np.asarray(val.adata.obsm["spatial"], dtype=np.float64)}
        spaces = {name: spaces[name] for name in args.spaces}
        for (space, pts), k in itertools.product(spaces.items(), args.ks):
            P = knn_operator(pts, min(k, x.shape[0] - 1))
            for t, a in itertools.product(args.steps, args.alphas):
                y = smoothed(x, fill, P, t, a)
                variants[f"stmcdi:{space}_k{k}_t{t}_a{a:g}"] = y
                variants[f"stmcdi:{space}_k{k}_t{t}_a{a:g}_rc"] = recentred(y, x, fill)
        for label, v in variants.items():
            s = stmcdi.benchmark.score(val, v)
            row = {"seed": seed, "method": label, "per_gene_pcc": s["per_gene_pcc"], "pcc": s["pcc"], "rmse": s["rmse"]}
            rows.append(row)
            print(" ".join(f"{k}={x_:.5f}" if isinstance(x_, float) else f"{k}={x_}" for k, x_ in row.items()),
                  flush=True)
    df = pd.DataFrame(rows)
    if args.csv:
        df.to_csv(args.csv, index=False)
    print(df.groupby("method", sort=False)[["per_gene_pcc", "pcc", "rmse"]].mean().round(5)
          .sort_values("per_gene_pcc", ascending=False).head(25).to_string())


if __name__ == "__main__":
    main()
