"""Where the squared error of a ``thin`` validation fill comes from: gene level, spot level, or within-gene scatter.

On one validation split of :mod:`tune` (the test split hidden first and never read), fit STMCDI (defaults) and
the baselines named, and split each method's mean squared error on the validation entries into

* ``level``: the squared error of each gene's mean filled value against the gene's mean truth (entries of the
  gene pooled), weighted by the gene's entries;
* ``scatter``: the rest, what the within-gene variation of the estimate adds or removes
  (``var(p) - 2 cov(p, t) + var(t)`` in each gene).

It also scores each estimate after two transformations that no per-gene correlation can see: the gene's filled
values shrunk towards their own mean by a factor ``a`` (``p_g + a (p - p_g)``), and the gene's level replaced
by another method's (``p - p_g + q_g``). STMCDI's estimate is also scored conditioned on the zero count of each
filled entry (:func:`stmcdi.zero_conditioned`, ``impute(zero_dispersion=...)``) at ``ZERO_DISPERSIONS``, and shrunk by the within-gene slope measured on the entries held back from its
training (``stmcdi:shrink_calibrated``, ``impute(shrink="calibrated")``; the slope on the validation entries is
printed beside it). Those say which part of a method's RMSE is the level of its zero fills and which part its
within-gene scatter. A diagnosis only: nothing here is a default.

    OMP_NUM_THREADS=1 python benchmarks/thin_rmse_terms.py --data ../shared/data/stahl2016_mob_rep11.h5ad \
        --panel cv --seeds 0 --baselines magic gene_mean --csv benchmarks/results/thin_rmse_terms_mob_cv_s0.csv
"""

from __future__ import annotations

import argparse
import logging
import warnings

import anndata as ad
import numpy as np
import pandas as pd
from tune import validation_split

import stmcdi

#: shrinkage factors of the within-gene deviations scored
SHRINK = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25)
#: ``impute(zero_dispersion=...)`` values scored on STMCDI's fill (the same fit, its estimate moved)
ZERO_DISPERSIONS = (0.125, 0.25, 0.5, 1.0)


def terms(truth: np.ndarray, pred: np.ndarray, genes: np.ndarray) -> dict[str, float]:
    """``mse``, ``level`` and ``scatter`` (``mse = level + scatter``) of ``pred`` against ``truth``, genes pooled.

    Examples
    --------
    >>> t, p, g = np.array([0.0, 2.0, 1.0, 1.0]), np.array([1.0, 1.0, 1.0, 1.0]), np.array([0, 0, 1, 1])
    >>> {k: round(v, 3) for k, v in terms(t, p, g).items()}
    {'mse': 0.5, 'level': 0.0, 'scatter': 0.5, 'bias': 0.0}
    """
    n = np.bincount(genes).astype(np.float64)
    keep = n > 0
    tg = np.bincount(genes, truth)[keep] / n[keep]
    pg = np.bincount(genes, pred)[keep] / n[keep]
    mse = float(np.mean((pred - truth) ** 2))
    level = float(np.sum(n[keep] * (pg - tg) ** 2) / truth.size)
    return {"mse": mse, "level": level, "scatter": mse - level, "bias": float(np.mean(pred - truth))}


def gene_means(values: np.ndarray, genes: np.ndarray, n_genes: int) -> np.ndarray:
    """Mean of ``values`` in each gene, broadcast back to the entries."""
    n = np.bincount(genes, minlength=n_genes).astype(np.float64)
    return (np.bincount(genes, values, minlength=n_genes) / np.maximum(n, 1))[genes]


def main() -> None:
    """Fit, score and print the terms of every method on the validation entries."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--panel", default="seurat_v3", choices=("seurat_v3", "cv"))
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--baselines", nargs="*", default=["magic", "gene_mean"])
    p.add_argument("--max-epochs", type=int, default=None, help="override the training length (smoke runs)")
    p.add_argument("--csv", default=None)
    p.add_argument("--save", default=None,
                   help="also save STMCDI's estimate, samples and the spots' libraries at the validation entries "
                        "to this .npz prefix (one file per seed) for other read-outs of the same fit")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    adata = ad.read_h5ad(args.data)
    panel = {"n_top_genes": 1000, "flavor": args.panel}
    methods = {**stmcdi.benchmark.BASELINES, **stmcdi.benchmark.available_extras()}
    rows = []
    for seed in args.seeds:
        _, val = validation_split(adata, seed, "thin", args.ratio, panel, "thin", args.ratio)
        r, c = val.mask.nonzero()
        truth = np.asarray(val.truth, dtype=np.float64)
        train = {"enable_progress_bar": False}
        if args.max_epochs is not None:
            train["max_epochs"] = args.max_epochs
        raw = {"shrink": 1.0, "smooth": 0.0, "zero_dispersion": 0.0}  # the read-outs are scored below
        method = stmcdi.benchmark.stmcdi_method({}, train, raw, samples=True)
        out = method(val.adata, seed=seed, target="zeros")
        est = {"stmcdi": out["mean"]}
        library = np.asarray(val.adata.X.sum(1)).ravel()  # the visible counts: thin leaves no entry missing
        target_sum = float(method.last_model.module.target_sum)
        if args.save:
            np.savez_compressed(f"{args.save}_s{seed}.npz", rows=r, cols=c, truth=truth, mean=out["mean"][r, c],
                                samples=out["samples"][:, r, c],
                                library=library, target_sum=target_sum)
        for name in args.baselines:
            est[name] = methods[name](val.adata, seed=seed, target="zeros")
        preds = {k: np.asarray(v, dtype=np.float64)[r, c] for k, v in est.items()}
        zero_fills = {f"stmcdi:zero_dispersion{d:g}": stmcdi.zero_conditioned(preds["stmcdi"][:, None], library[r],
                                                                               target_sum, d)[:, 0]
                      for d in ZERO_DISPERSIONS}
        n_genes = val.adata.n_vars
        levels = {k: gene_means(v, c, n_genes) for k, v in preds.items()}
        cal = method.last_model.spread_calibration_ or {}
        calibrated = float(cal.get("shrink", 1.0))
        print(f"seed {seed}: within-gene slope on the calibration entries {cal.get('within_gene_slope', float('nan')):.4f}"
              f", on these validation entries {stmcdi.within_gene_slope(truth, preds['stmcdi'], c):.4f}", flush=True)
        for name, pred in preds.items():
            variants = {f"{name}": pred}
            for a in SHRINK:
                if a != 1.0:
                    variants[f"{name}:shrink{a:g}"] = levels[name] + a * (pred - levels[name])
            for other in preds:
                if other != name:
                    variants[f"{name}:level_of_{other}"] = pred - levels[name] + levels[other]
            variants[f"{name}:true_level"] = pred - levels[name] + gene_means(truth, c, n_genes)
            if name == "stmcdi":
                variants.update(zero_fills)
                shrunk = levels[name] + calibrated * (pred - levels[name])
                variants["stmcdi:shrink_calibrated"] = shrunk
                for d in ZERO_DISPERSIONS:  # impute's order: shrink, then condition the zeros
                    variants[f"stmcdi:shrink_calibrated:zero_dispersion{d:g}"] = stmcdi.zero_conditioned(
                        shrunk[:, None], library[r], target_sum, d)[:, 0]
            for label, v in variants.items():
                s = stmcdi.benchmark.score(val, _full(v, r, c, val.adata.shape))
                row = {"seed": seed, "method": label, "per_gene_pcc": s["per_gene_pcc"], "rmse": s["rmse"],
                       **terms(truth, v, c)}
                rows.append(row)
                print(" ".join(f"{k}={x:.5f}" if isinstance(x, float) else f"{k}={x}" for k, x in row.items()),
                      flush=True)
    df = pd.DataFrame(rows)
    if args.csv:
        df.to_csv(args.csv, index=False)
    print(df.groupby("method", sort=False)[["per_gene_pcc", "rmse", "mse", "level", "scatter", "bias"]]
          .mean().round(5).to_string())


def _full(values: np.ndarray, r: np.ndarray, c: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A dense estimate holding ``values`` at the scored entries (``score`` reads only those)."""
    out = np.zeros(shape, dtype=np.float64)
    out[r, c] = values
    return out


if __name__ == "__main__":
    main()
