"""Benchmark figures: grouped bars of a result table and held-out heatmaps (matplotlib only)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.sparse as sp
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from scipy.cluster.hierarchy import leaves_list, linkage

from stmcdi._validation import check_number

from ._spatial import _EXPRESSION_LABEL, _MISSING_FACE, _as_list, _doc, _finish

logger = logging.getLogger(__name__)

#: Axis labels of the columns of :func:`stmcdi.benchmark.evaluate`; other columns are labelled by their name.
_METRIC_LABELS: dict[str, str] = {
    "per_gene_pcc": "per-gene PCC (median over genes)",
    "per_spot_pcc": "per-spot PCC (median over spots)",
    "pcc": "PCC (pooled held-out entries)",
    "cosine": "cosine similarity (pooled held-out entries)",
    "rmse": "RMSE (log-normalised)",
    "mae": "MAE (log-normalised)",
    "pcc_z": "PCC (per-gene z-scores)",
    "rmse_z": "RMSE (per-gene z-scores)",
    "mae_z": "MAE (per-gene z-scores)",
    "n_scored": "held-out entries scored",
    "seconds": "wall time (s)",
}
_LOWER_IS_BETTER = ("rmse", "mae", "crps")
_HIGHLIGHT_COLOR = "tab:red"
_OTHER_COLORS = [c for c in colormaps["tab10"].colors if not np.allclose(c, colormaps["tab10"].colors[3])]
_CEILING_LABEL = "split-half ceiling"


def _lower_is_better(metric: str) -> bool:
    low = metric.lower()
    return any(k in low for k in _LOWER_IS_BETTER) or low == "seconds"


def _fmt_ratio(r) -> str:
    return f"{r:g}" if isinstance(r, int | float | np.integer | np.floating) else str(r)


def _select(values: Sequence[str] | str | None, available: list[str], what: str) -> list[str]:
    if values is None:
        return available
    chosen = _as_list(values, what)
    absent = [v for v in chosen if v not in available]
    if absent:
        raise KeyError(f"{what} {absent} not in `results` (has {available}); pass names from its {what[:-1]!r} column.")
    return list(dict.fromkeys(chosen))


@_doc.dedent
def benchmark(
    results: pd.DataFrame,
    *,
    metric: str = "per_gene_pcc",
    ceiling: float | None = None,
    methods: Sequence[str] | None = None,
    protocols: Sequence[str] | None = None,
    highlight: str | None = "stmcdi",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
) -> Figure | None:
    """Grouped bar plot of a benchmark table: one group per protocol, one bar per method.

    Bars are the mean of ``metric`` over seeds per (protocol, ratio, method) and error bars the sample sd over
    seeds (none where a method has a single seed). A protocol run at several ratios gets one group per ratio,
    labelled ``"protocol (ratio)"``. Missing values (e.g. the per-gene PCC of ``gene_mean``, which is constant
    per gene) are left out of the mean; a (protocol, method) with no value is drawn as no bar, marked "n/a".

    Parameters
    ----------
    results
        The output of :func:`stmcdi.benchmark.evaluate`: one row per protocol, ratio, seed and method, with
        the columns ``protocol`` and ``method`` (``ratio`` and ``seed`` optional) and the metric columns.
    metric
        The column to plot, e.g. ``"per_gene_pcc"``, ``"rmse"`` or ``"seconds"``. Names containing ``"rmse"``,
        ``"mae"`` or ``"crps"`` (and ``"seconds"``) are lower-is-better, the others higher-is-better.
    ceiling
        A value drawn as a dashed horizontal line labelled "split-half ceiling", e.g. from
        :func:`stmcdi.benchmark.split_half_ceiling`.
    methods
        Methods to show, in this order. Default: all, best first by their mean ``metric`` over the shown
        protocols (methods without a value last).
    protocols
        Protocols to show, in this order. Default: all, in their order in ``results``.
    highlight
        Method drawn in a distinct colour (red; the others take the remaining ``tab10`` colours). Ignored when
        ``None`` or not in ``results``.
    ax
        Axes to draw into. Default: a new figure.
    %(figure_output)s

    Examples
    --------
    >>> import stmcdi
    >>> from stmcdi.benchmark import BASELINES, evaluate
    >>> adata = stmcdi.datasets.synthetic(n_spots=80, n_genes=20)
    >>> methods = {name: BASELINES[name] for name in ("gene_mean", "spot_mean", "spatial_knn")}
    >>> df = evaluate(adata, methods, protocols=("entries", "spots"), seeds=(0, 1), min_entries=3)
    >>> fig = stmcdi.pl.benchmark(df, metric="rmse", highlight="spatial_knn", show=False, return_fig=True)
    >>> ax = fig.axes[0]
    >>> len(ax.patches)  # 2 protocols x 3 methods
    6
    >>> print(ax.get_ylabel())
    RMSE (log-normalised)
    mean ± sd over 2 seeds
    """
    if not isinstance(results, pd.DataFrame):
        raise TypeError(
            f"`results` must be a pandas DataFrame, got {type(results).__name__}; pass the output of "
            "`stmcdi.benchmark.evaluate`."
        )
    if not isinstance(metric, str):
        raise TypeError(f"`metric` must be a column name (str), got {type(metric).__name__}.")
    missing = [c for c in ("protocol", "method") if c not in results.columns]
    if missing:
        raise KeyError(
            f"`results` lacks the column(s) {missing} (has {list(results.columns)}); pass the output of "
            "`stmcdi.benchmark.evaluate`, one row per protocol, ratio, seed and method."
        )
    id_columns = ("protocol", "ratio", "seed", "method")
    metric_columns = [c for c in results.columns if c not in id_columns]
    if metric not in results.columns or metric in id_columns:
        raise KeyError(f"`metric` {metric!r} is not a metric column of `results`; choose one of {metric_columns}.")
    try:
        values = pd.to_numeric(results[metric], errors="raise").astype(np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"Column {metric!r} of `results` is not numeric; choose one of {metric_columns}.") from err
    if ceiling is not None:
        if isinstance(ceiling, bool) or not isinstance(ceiling, int | float | np.integer | np.floating):
            raise TypeError(f"`ceiling` must be a number, got {type(ceiling).__name__}.")
        if not np.isfinite(ceiling):
            raise ValueError(f"`ceiling` must be finite, got {ceiling}.")
    if results.empty:
        raise ValueError("`results` has no rows; run `stmcdi.benchmark.evaluate` first.")

    data = results.assign(_value=values)
    data["protocol"] = data["protocol"].astype(str)
    data["method"] = data["method"].astype(str)
    protocols = _select(protocols, list(pd.unique(data["protocol"])), "protocols")
    data = data[data["protocol"].isin(protocols)]
    methods_given = methods is not None
    methods = _select(methods, list(pd.unique(data["method"])), "methods")
    data = data[data["method"].isin(methods)]
    # colours follow the given (or first-seen) order, so a method keeps its colour whatever the metric
    if highlight is not None and highlight in methods:
        others = iter(_OTHER_COLORS * (len(methods) // len(_OTHER_COLORS) + 1))
        color_of = {m: _HIGHLIGHT_COLOR if m == highlight else next(others) for m in methods}
    else:
        tab10 = list(colormaps["tab10"].colors)
        color_of = {m: tab10[i % len(tab10)] for i, m in enumerate(methods)}

    has_ratio = "ratio" in data.columns
    groups: list[tuple[str, object]] = []
    for p in protocols:
        sub = data[data["protocol"] == p]
        ratios = list(pd.unique(sub["ratio"])) if has_ratio else [None]
        groups.extend((p, r) for r in ratios)
    multi = {p for p in protocols if sum(g[0] == p for g in groups) > 1}
    labels = [f"{p} ({_fmt_ratio(r)})" if p in multi else p for p, r in groups]

    n_groups, n_methods = len(groups), len(methods)
    mean = np.full((n_groups, n_methods), np.nan)
    sd = np.full((n_groups, n_methods), np.nan)
    count = np.zeros((n_groups, n_methods), dtype=int)
    for gi, (p, r) in enumerate(groups):
        sel = data["protocol"] == p
        if has_ratio:
            sel &= data["ratio"].isna() if pd.isna(r) else data["ratio"] == r
        for mi, m in enumerate(methods):
            v = data.loc[sel & (data["method"] == m), "_value"].to_numpy()
            v = v[np.isfinite(v)]
            count[gi, mi] = v.size
            if v.size:
                mean[gi, mi] = v.mean()
            if v.size > 1:
                sd[gi, mi] = v.std(ddof=1)

    lower = _lower_is_better(metric)
    if not methods_given:
        with np.errstate(invalid="ignore"):
            overall = np.array([np.nanmean(col) if np.isfinite(col).any() else np.nan for col in mean.T])
        key = np.where(np.isfinite(overall), overall if lower else -overall, np.inf)
        order = np.argsort(key, kind="stable")
        methods = [methods[i] for i in order]
        mean, sd, count = mean[:, order], sd[:, order], count[:, order]

    if ax is None:
        width_in = min(14.0, 2.6 + n_groups * (0.28 * n_methods + 0.5))
        fig, ax = plt.subplots(figsize=(width_in, 3.8), layout="constrained")
    else:
        fig = ax.figure
    width = 0.8 / max(n_methods, 1)
    centers = np.arange(n_groups, dtype=float)
    handles = []
    for mi, m in enumerate(methods):
        x = centers - 0.4 + width * (mi + 0.5)
        ok = np.isfinite(mean[:, mi])
        style = {
            "facecolor": color_of[m],
            "edgecolor": "black" if m == highlight else "none",
            "linewidth": 0.8 if m == highlight else 0.0,
        }
        if ok.any():
            ax.bar(x[ok], mean[ok, mi], width=width * 0.92, label=m, **style)
        handles.append(Patch(label=m if ok.any() else f"{m} (n/a)", **style))
        err = ok & np.isfinite(sd[:, mi])
        if err.any():
            ax.errorbar(
                x[err], mean[err, mi], yerr=sd[err, mi], fmt="none", ecolor="black", elinewidth=0.9, capsize=2.5,
                label="_nolegend_",
            )  # fmt: skip
        for xi in x[~ok]:
            ax.text(xi, 0.0, "n/a", rotation=90, ha="center", va="bottom", fontsize="x-small", color="0.4")
    if np.isnan(mean).any():
        logger.info("No %s value for %d (protocol, method) pair(s): drawn as 'n/a'", metric, int(np.isnan(mean).sum()))
    if ceiling is not None:
        handles.append(ax.axhline(float(ceiling), ls="--", color="0.3", lw=1.2, label=_CEILING_LABEL))
    ax.axhline(0.0, color="black", lw=0.6)

    n_seeds = sorted({int(n) for n in count[count > 0].ravel()})
    if not n_seeds or n_seeds == [1]:
        seeds_text = "single seed, no error bars"
    elif len(n_seeds) == 1:
        seeds_text = f"mean ± sd over {n_seeds[0]} seeds"
    else:
        seeds_text = f"mean ± sd over {n_seeds[0]}-{n_seeds[-1]} seeds"
    ax.set_ylabel(f"{_METRIC_LABELS.get(metric, metric)}\n{seeds_text}")
    ax.set_xticks(centers, labels)
    ax.set_xlim(-0.6, n_groups - 0.4)
    ax.set_xlabel("hold-out protocol")
    ax.set_title(f"{'lower' if lower else 'higher'} is better", fontsize="small", loc="left", color="0.3")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(
        handles=handles, title="method", fontsize="small", frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0)
    )
    return _finish(fig, show=show, save=save, return_fig=return_fig, what="benchmark plot")


def _dense(x, name: str) -> np.ndarray:
    arr = x.toarray() if sp.issparse(x) else np.asarray(x)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"predictions[{name!r}] is not a numeric array (dtype {arr.dtype}).")
    return arr.astype(np.float64, copy=False)


def _cluster_order(filled: np.ndarray) -> np.ndarray:
    """Leaf order of an average-linkage clustering of the rows of ``filled`` (identity for < 3 rows)."""
    if filled.shape[0] < 3:
        return np.arange(filled.shape[0])
    return leaves_list(linkage(filled, method="average", metric="euclidean"))


@_doc.dedent
def heatmap(
    held_out,
    predictions: Mapping[str, np.ndarray],
    *,
    n_genes: int = 30,
    n_spots: int | None = None,
    cluster: bool = True,
    cmap: str = "viridis",
    figsize: tuple[float, float] | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
    return_fig: bool = False,
) -> Figure | None:
    """Heatmaps (genes x spots) of the held-out truth and of each method's imputation at the held-out entries.

    The style of Fig. 2 of the stMCDI paper. The ``n_genes`` genes with the most held-out entries are shown (ties
    by gene index), and the spots with at least one held-out entry among them (or the ``n_spots`` spots with the
    most). Cells that were not held out are NaN, drawn light grey. All panels share one colour scale (the range
    of the shown truth and predictions) and one row and column order: average-linkage clustering of the truth
    (NaN filled with the gene's mean held-out truth) when ``cluster``, else genes by number of held-out entries
    and spots by index.

    Parameters
    ----------
    held_out
        The split from :func:`stmcdi.benchmark.hold_out` (a :class:`~stmcdi.benchmark.HeldOut`).
    predictions
        Mapping method name -> dense ``(n_obs, n_vars)`` imputation on the log-normalised scale of the masked
        data (as scored by :func:`stmcdi.benchmark.score`); one panel each, in this order.
    n_genes
        Number of genes (rows).
    n_spots
        Number of spots (columns). Default: every spot with a held-out entry among the shown genes.
    cluster
        Whether to order genes and spots by hierarchical clustering of the truth.
    cmap
        Matplotlib colormap name.
    figsize
        Figure size in inches. Default: from the numbers of genes, spots and panels.
    %(figure_output)s

    Examples
    --------
    >>> import stmcdi
    >>> from stmcdi.benchmark import BASELINES, hold_out
    >>> held = hold_out(stmcdi.datasets.synthetic(n_spots=80, n_genes=20), "entries", 0.2, seed=0)
    >>> predictions = {name: BASELINES[name](held.adata, seed=0) for name in ("gene_mean", "spatial_knn")}
    >>> fig = stmcdi.pl.heatmap(held, predictions, n_genes=10, show=False, return_fig=True)
    >>> [ax.get_title() for ax in fig.axes if ax.get_label() != "<colorbar>"]
    ['held-out truth', 'gene_mean', 'spatial_knn']
    """
    for attr in ("mask", "truth", "adata"):
        if not hasattr(held_out, attr):
            raise TypeError(
                f"`held_out` has no attribute {attr!r} ({type(held_out).__name__}); pass the split returned by "
                "`stmcdi.benchmark.hold_out`."
            )
    if not isinstance(predictions, Mapping) or not predictions:
        raise ValueError(
            "`predictions` must be a non-empty dict name -> dense (n_obs, n_vars) imputation, e.g. "
            "{'gene_mean': BASELINES['gene_mean'](held.adata)}."
        )
    check_number(n_genes, "n_genes", integer=True, low=1)
    if n_spots is not None:
        check_number(n_spots, "n_spots", integer=True, low=1)

    mask = sp.csr_matrix(held_out.mask)
    shape = mask.shape
    preds = {}
    for name, pred in predictions.items():
        arr = _dense(pred, str(name))
        if arr.shape != shape:
            raise ValueError(
                f"predictions[{name!r}] has shape {arr.shape}, the held-out mask {shape}; pass the dense "
                "(n_obs, n_vars) imputation of `held_out.adata` (`.toarray()` if sparse)."
            )
        preds[str(name)] = arr
    rows, cols = mask.nonzero()
    truth = np.asarray(held_out.truth, dtype=np.float64).ravel()
    if truth.size != rows.size:
        raise ValueError(f"`held_out.truth` has {truth.size} values but the mask {rows.size} entries.")
    if rows.size == 0:
        raise ValueError("`held_out.mask` has no held-out entries; nothing to draw.")

    per_gene = np.bincount(cols, minlength=shape[1])
    genes = np.argsort(-per_gene, kind="stable")[: int(n_genes)]
    genes = genes[per_gene[genes] > 0]
    in_genes = np.isin(cols, genes)
    per_spot = np.bincount(rows[in_genes], minlength=shape[0])
    spots = np.flatnonzero(per_spot > 0)
    if n_spots is not None and spots.size > n_spots:
        spots = np.sort(np.argsort(-per_spot, kind="stable")[: int(n_spots)])
    keep = in_genes & np.isin(rows, spots)
    gene_pos = np.full(shape[1], -1)
    gene_pos[genes] = np.arange(genes.size)
    spot_pos = np.full(shape[0], -1)
    spot_pos[spots] = np.arange(spots.size)
    gpos, spos = gene_pos[cols[keep]], spot_pos[rows[keep]]

    def grid(values: np.ndarray) -> np.ndarray:
        out = np.full((genes.size, spots.size), np.nan)
        out[gpos, spos] = values
        return out

    truth_grid = grid(truth[keep])
    grids = {name: grid(arr[rows[keep], cols[keep]]) for name, arr in preds.items()}

    gene_order = np.arange(genes.size)
    spot_order = np.arange(spots.size)
    if cluster:
        held = np.isfinite(truth_grid)
        n_held = held.sum(axis=1, keepdims=True)
        sums = np.where(held, truth_grid, 0.0).sum(axis=1, keepdims=True)
        overall = float(sums.sum() / max(int(n_held.sum()), 1))
        fill = np.divide(sums, n_held, out=np.full_like(sums, overall), where=n_held > 0)
        filled = np.where(np.isnan(truth_grid), fill, truth_grid)
        gene_order = _cluster_order(filled)
        spot_order = _cluster_order(filled.T)
    genes = genes[gene_order]
    truth_grid = truth_grid[np.ix_(gene_order, spot_order)]
    grids = {name: g[np.ix_(gene_order, spot_order)] for name, g in grids.items()}

    finite = [g[np.isfinite(g)] for g in (truth_grid, *grids.values())]
    finite = np.concatenate(finite)
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    norm = Normalize(vmin=vmin, vmax=vmax)
    colormap = colormaps[cmap].with_extremes(bad=_MISSING_FACE)

    n_panels = 1 + len(grids)
    if figsize is None:
        panel_w = float(np.clip(1.2 + 0.02 * spots.size, 2.0, 4.5))
        panel_w = max(min(panel_w, 15.0 / n_panels), 1.5)  # keep the figure within ~18 inches
        height = float(np.clip(1.4 + 0.16 * genes.size, 2.6, 12.0))
        figsize = (1.2 + panel_w * n_panels + 1.0, height)
    fig, axes = plt.subplots(1, n_panels, figsize=figsize, sharey=True, squeeze=False, layout="constrained")
    axes = axes.ravel()
    var_names = [str(v) for v in held_out.adata.var_names]
    gene_labels = [var_names[g] for g in genes] if len(var_names) == shape[1] else [str(g) for g in genes]
    label_size = "x-small" if genes.size > 20 else "small"
    for ax, (title, g) in zip(axes, [("held-out truth", truth_grid), *grids.items()], strict=True):
        ax.imshow(g, cmap=colormap, norm=norm, aspect="auto", interpolation="nearest")
        ax.set_title(title, fontsize="medium")
        ax.set_xticks([])
        ax.set_xlabel("held-out spots")
    # the panels share the y axis: these gene labels (shown on the first panel) hold for every panel
    axes[0].set_yticks(np.arange(genes.size), gene_labels, fontsize=label_size)
    axes[0].set_ylabel("genes")
    fig.colorbar(ScalarMappable(norm=norm, cmap=colormap), ax=list(axes), label=_EXPRESSION_LABEL, shrink=0.8)
    fig.legend(
        handles=[Patch(facecolor=_MISSING_FACE, edgecolor="none", label="not held out")], loc="outside lower right",
        frameon=False, fontsize="small",
    )  # fmt: skip
    return _finish(fig, show=show, save=save, return_fig=return_fig, what="held-out heatmaps")
