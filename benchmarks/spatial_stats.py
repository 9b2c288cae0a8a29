"""Does an imputed layer make up spatial structure? Moran's I of genes with none, before and after filling zeros.

The caveat of ``impute(smooth=...)`` is that averaging fills over tissue neighbours adds spatial
autocorrelation by construction, so that :func:`squidpy.gr.spatial_autocorr` on ``layers["imputed"]`` partly
measures the read-out. This script measures how much, against a known answer. On the gene panel
(:func:`stmcdi.pp.select_genes`, ``--panel``, ``--n-genes``; chosen on all counts: no entry is scored for a
claim here), the counts of ``--n-null`` genes drawn at random are permuted across spots, each gene on its own:
they keep their expression distribution and lose every spatial pattern. The counts are then thinned (``thin``
protocol, :func:`stmcdi.benchmark.hold_out`), STMCDI (default fit) and MAGIC fill the visible zeros, and
Moran's I (squidpy, 6 nearest spots, analytic p-values, Benjamini-Hochberg over the genes with one) is
computed on

- ``full``: the counts before thinning, log-normalised (the reference for the real genes);
- ``visible``: the thinned counts, log-normalised, zeros left at 0;
- ``stmcdi``: ``impute(target="zeros", shrink=1)`` (the fill as the network gives it), the same with the
  calibrated shrink (the default since 2026-12-06)
  (:func:`stmcdi.shrink_within_genes` by ``model.spread_calibration_["shrink"]``), with ``smooth=a`` for each
  ``--smooth`` (:func:`stmcdi.smooth_fills` on the same estimate, with the table ``impute`` uses), and with
  ``shrink="calibrated"`` after the largest ``a``; with ``smooth=a, smooth_graph="expression"`` for each
  ``--expr-smooth`` (:func:`stmcdi.expression_neighbors` of the estimate, 40 neighbours), and with
  ``zero_dispersion=phi`` (:func:`stmcdi.zero_conditioned`) for each ``--zero-dispersion``, alone, after
  each expression smoothing, and after each expression smoothing and the calibrated shrink (the layer
  ``impute(target="zeros")`` writes by default since 2026-12-07 for ``--expr-smooth 0.5 --zero-dispersion 0.25``);
- ``magic``: MAGIC's imputation (when installed).

A permuted gene found spatially autocorrelated (FDR < 0.05) is a false discovery that the layer made. For the
real genes, the script prints how the layer's Moran's I ranks genes against the full-depth counts (Spearman) and
how many of the full-depth calls (FDR < 0.05) it keeps and adds. A diagnosis: no default is chosen here.

    OMP_NUM_THREADS=2 python benchmarks/spatial_stats.py --data ../shared/data/maynard2021_dlpfc_151673_hvg5000.h5ad \
        --seeds 0 --csv benchmarks/results/spatial_stats_dlpfc_hvg_s0.csv
"""

from __future__ import annotations

import argparse
import logging
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import squidpy as sq
from scipy.stats import spearmanr
from statsmodels.stats.multitest import multipletests

import stmcdi

#: FDR level of a spatial-autocorrelation call
FDR = 0.05


def permute_genes(adata: ad.AnnData, genes: np.ndarray, seed: int) -> ad.AnnData:
    """A copy of ``adata`` with the counts of each of ``genes`` (column indices) permuted across spots, independently.

    Examples
    --------
    >>> a = ad.AnnData(np.arange(12, dtype=np.float32).reshape(6, 2))
    >>> b = permute_genes(a, np.array([1]), seed=0)
    >>> bool((b.X[:, 0] == a.X[:, 0]).all()), sorted(b.X[:, 1].tolist()) == sorted(a.X[:, 1].tolist())
    (True, True)
    """
    out = adata.copy()
    x = out.X.toarray() if sp.issparse(out.X) else np.array(out.X)
    rng = np.random.default_rng([seed, 7])
    for g in genes:
        x[:, g] = x[rng.permutation(x.shape[0]), g]
    out.X = sp.csr_matrix(x) if sp.issparse(adata.X) else x
    return out


def morans_i(values: np.ndarray, template: ad.AnnData) -> pd.DataFrame:
    """Moran's I of every column of ``values`` on the 6-nearest-spot graph of ``template`` (analytic p, BH FDR).

    Returns a frame indexed by column position with ``I`` and ``fdr``.
    """
    a = ad.AnnData(np.asarray(values, dtype=np.float64), obsm={"spatial": np.asarray(template.obsm["spatial"])})
    a.var_names = [str(i) for i in range(a.n_vars)]
    sq.gr.spatial_neighbors(a, coord_type="generic", n_neighs=6)
    df = sq.gr.spatial_autocorr(a, mode="moran", copy=True, corr_method=None, show_progress_bar=False)
    df.index = df.index.astype(int)
    df = df.sort_index()
    pval = df["pval_norm"].to_numpy()
    fdr = np.ones_like(pval)
    ok = np.isfinite(pval)  # a constant gene has no Moran's I; squidpy's BH would turn every FDR into NaN
    fdr[ok] = multipletests(pval[ok], method="fdr_bh")[1]
    return pd.DataFrame({"I": df["I"].to_numpy(), "fdr": fdr})


def summarize_layer(stats: pd.DataFrame, ref: pd.DataFrame, null: np.ndarray) -> dict:
    """Moran's I summaries of one layer: permuted genes, and real genes against the reference layer ``ref``."""
    real = ~null
    called, ref_called = stats["fdr"].to_numpy() < FDR, ref["fdr"].to_numpy() < FDR
    rho = spearmanr(stats["I"].to_numpy()[real], ref["I"].to_numpy()[real], nan_policy="omit").statistic
    return {
        "null_I_mean": float(np.nanmean(stats["I"].to_numpy()[null])),
        "null_called": float(called[null].mean()),
        "real_I_mean": float(np.nanmean(stats["I"].to_numpy()[real])),
        "real_spearman_vs_full": float(rho),
        "real_called": float(called[real].mean()),
        "real_kept_of_full_calls": float(called[real & ref_called].sum() / max(1, (real & ref_called).sum())),
        "real_added_to_full_calls": int((called & real & ~ref_called).sum()),
    }


def main() -> None:
    """Permute, thin, impute, compute Moran's I per layer and print the summaries."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--panel", default="seurat_v3", choices=("seurat_v3", "cv"))
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--n-genes", type=int, default=1000, help="genes of the panel")
    p.add_argument("--n-null", type=int, default=100, help="genes of the panel whose counts are permuted")
    p.add_argument("--smooth", type=float, nargs="+", default=[0.25, 0.5], help="smooth weights scored")
    p.add_argument("--expr-smooth", type=float, nargs="*", default=[],
                   help="smooth weights scored over the expression graph (impute(smooth_graph='expression'))")
    p.add_argument("--zero-dispersion", type=float, nargs="*", default=[],
                   help="zero_dispersion values scored, alone and after each --expr-smooth")
    p.add_argument("--max-epochs", type=int, default=None, help="override the training length (smoke runs)")
    p.add_argument("--no-magic", action="store_true", help="skip MAGIC (smoke runs)")
    p.add_argument("--csv", default=None)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    adata = ad.read_h5ad(args.data)
    stmcdi.pp.select_genes(adata, args.n_genes, flavor=args.panel, subset=True)
    rows = []
    for seed in args.seeds:
        null_idx = np.sort(np.random.default_rng([seed, 11]).choice(adata.n_vars, size=args.n_null, replace=False))
        null = np.zeros(adata.n_vars, dtype=bool)
        null[null_idx] = True
        data = permute_genes(adata, null_idx, seed)
        held = stmcdi.benchmark.hold_out(data, "thin", args.ratio, seed=seed)
        full_counts = data.X.toarray() if sp.issparse(data.X) else np.asarray(data.X)
        vis_counts = held.adata.X.toarray() if sp.issparse(held.adata.X) else np.asarray(held.adata.X)
        full, _, _ = stmcdi.pp.log_normalize(full_counts)
        visible, _, _ = stmcdi.pp.log_normalize(vis_counts)
        train = {"enable_progress_bar": False}
        if args.max_epochs is not None:
            train["max_epochs"] = args.max_epochs
        method = stmcdi.benchmark.stmcdi_method({}, train, {"shrink": 1.0, "smooth": 0.0, "zero_dispersion": 0.0})  # the shrink is a layer of its own
        x = np.asarray(method(held.adata, seed=seed, target="zeros"), dtype=np.float32)
        model = method.last_model
        fill = vis_counts == 0
        table = model._smoothing_table(model.adata, 40)  # the table impute(smooth=...) uses
        cal = (model.spread_calibration_ or {}).get("shrink", 1.0)
        layers = {"full": full, "visible": visible, "stmcdi": x,
                  f"stmcdi+shrink{cal:.2f}": stmcdi.shrink_within_genes(x, fill, cal)}
        for a in args.smooth:
            layers[f"stmcdi:smooth{a:g}"] = stmcdi.smooth_fills(x, fill, table, a).astype(np.float32)
        top = f"stmcdi:smooth{max(args.smooth):g}"
        layers[f"{top}+shrink{cal:.2f}"] = stmcdi.shrink_within_genes(layers[top], fill, cal)
        library = vis_counts.sum(axis=1).astype(np.float64)
        target_sum = float(model.module.target_sum)

        def conditioned(v, phi, fill=fill, library=library, target_sum=target_sum):  # impute(zero_dispersion=phi)
            return np.where(fill, stmcdi.zero_conditioned(v, library, target_sum, phi), v).astype(np.float32)

        for phi in args.zero_dispersion:
            layers[f"stmcdi+phi{phi:g}"] = conditioned(x, phi)
        if args.expr_smooth:
            etable = stmcdi.expression_neighbors(x, min(40, x.shape[0] - 1), seed=seed)  # impute's graph
        for a in args.expr_smooth:
            layers[f"stmcdi:expr{a:g}"] = stmcdi.smooth_fills(x, fill, etable, a).astype(np.float32)
            for phi in args.zero_dispersion:
                layers[f"stmcdi:expr{a:g}+phi{phi:g}"] = conditioned(layers[f"stmcdi:expr{a:g}"], phi)
                # the order impute applies: smoothing, the calibrated shrink, then the zero conditioning
                layers[f"stmcdi:expr{a:g}+shrink{cal:.2f}+phi{phi:g}"] = conditioned(
                    stmcdi.shrink_within_genes(layers[f"stmcdi:expr{a:g}"], fill, cal), phi)
        if not args.no_magic and "magic" in stmcdi.benchmark.available_extras():
            layers["magic"] = np.asarray(stmcdi.benchmark.available_extras()["magic"](held.adata, seed=seed,
                                                                                      target="zeros"))
        ref = morans_i(full, data)
        for name, values in layers.items():
            stats = ref if name == "full" else morans_i(values, data)
            row = {"seed": seed, "layer": name, **summarize_layer(stats, ref, null)}
            if name.startswith(("stmcdi", "magic")):
                s = stmcdi.benchmark.score(held, values)
                row.update(per_gene_pcc=s["per_gene_pcc"], rmse=s["rmse"])
            rows.append(row)
            print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    df = pd.DataFrame(rows)
    if args.csv:
        df.to_csv(args.csv, index=False)
    print(df.groupby("layer", sort=False).mean(numeric_only=True).drop(columns="seed").round(4).to_string())


if __name__ == "__main__":
    main()
