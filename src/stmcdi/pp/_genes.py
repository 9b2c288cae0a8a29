"""Gene panels: scanpy's seurat_v3 HVG (default) or the paper's coefficient of variation."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._validation import check_counts, check_not_view, get_layer, missing_mask
from ._normalize import default_target_sum, library_size


def select_genes(
    adata: AnnData,
    n_top_genes: int = 1000,
    *,
    flavor: Literal["seurat_v3", "cv"] = "seurat_v3",
    layer: str | None = None,
    min_detection: float = 0.1,
    key_added: str = "highly_variable",
    subset: bool = False,
) -> None:
    """Choose the gene panel to impute.

    ``flavor="seurat_v3"`` (default) calls :func:`scanpy.pp.highly_variable_genes` with
    ``flavor="seurat_v3"`` on counts (missing entries counted as 0 for the ranking).
    ``flavor="cv"`` is the stMCDI paper's panel: the ``n_top_genes`` genes with the largest coefficient of
    variation (sd / mean of the library-size-normalised observed counts) among genes detected in at least
    ``min_detection`` of spots. On shallow data the CV panel is dominated by sparse genes whose held-out
    entries are mostly sampling noise, which is why HVG is the default.

    Parameters
    ----------
    adata
        Annotated data with raw counts; NaN marks missing entries.
    n_top_genes
        Number of genes to keep (all genes if the data have fewer).
    flavor
        ``"seurat_v3"`` or ``"cv"``.
    layer
        Layer with raw counts; ``None`` uses ``adata.X``.
    min_detection
        For ``"cv"``: minimum fraction of spots with a nonzero observed count.
    key_added
        Boolean column written to ``adata.var``.
    subset
        Subset ``adata`` to the selected genes in place.

    Returns
    -------
    ``None``. Writes ``adata.var[key_added]`` (bool) and ``adata.var[f"{key_added}_rank"]`` (0 is best,
    NaN for unselected genes); with ``subset=True`` keeps only the selected genes.

    Examples
    --------
    >>> import stmcdi
    >>> adata = stmcdi.datasets.synthetic(n_spots=100, n_genes=50)
    >>> stmcdi.pp.select_genes(adata, n_top_genes=20, flavor="cv", min_detection=0.0)
    >>> int(adata.var["highly_variable"].sum())
    20
    """
    X = get_layer(adata, layer)
    miss = missing_mask(X)
    check_counts(X, miss, f"adata.layers[{layer!r}]" if layer else "adata.X")
    check_not_view(adata, "stmcdi.pp.select_genes")
    n_top = min(int(n_top_genes), adata.n_vars)
    if flavor == "seurat_v3":
        score = _seurat_v3_rank(adata, X, n_top)
    elif flavor == "cv":
        score = _cv_score(X, miss, min_detection)
    else:
        raise ValueError(f"flavor must be 'seurat_v3' or 'cv', got {flavor!r}.")
    order = np.argsort(-score, kind="stable")[:n_top]
    order = order[np.isfinite(score[order])]
    if order.size < n_top:
        raise ValueError(
            f"Only {order.size} genes qualify for flavor={flavor!r} (detected in >= {min_detection:.0%} of spots); "
            f"ask for fewer genes or lower `min_detection`."
        )
    rank = np.full(adata.n_vars, np.nan)
    rank[order] = np.arange(order.size)
    adata.var[key_added] = ~np.isnan(rank)
    adata.var[f"{key_added}_rank"] = rank
    if subset:
        adata._inplace_subset_var(adata.var[key_added].to_numpy())


def _seurat_v3_rank(adata: AnnData, X, n_top: int) -> np.ndarray:
    import scanpy as sc

    counts = sp.csr_matrix(X, dtype=np.float32, copy=True)
    counts.data = np.nan_to_num(counts.data, nan=0.0)
    tmp = AnnData(counts, var=pd.DataFrame(index=adata.var_names))
    res = sc.pp.highly_variable_genes(tmp, flavor="seurat_v3", n_top_genes=n_top, inplace=False)
    # seurat_v3 ranks genes by normalised variance, highest first; keep that order as the score
    score = np.full(adata.n_vars, -np.inf)
    ranks = res["highly_variable_rank"].to_numpy()
    sel = np.isfinite(ranks)
    score[sel] = -ranks[sel]
    return score


def _cv_score(X, miss: sp.csr_matrix, min_detection: float) -> np.ndarray:
    lib = library_size(X, miss)
    target = default_target_sum(lib)
    dense = X.toarray() if sp.issparse(X) else np.array(X, dtype=np.float64)
    dense = dense.astype(np.float64)
    scale = np.divide(target, lib, out=np.ones_like(lib), where=lib > 0)
    norm = dense * scale[:, None]
    if miss.nnz:
        r, c = miss.nonzero()
        norm[r, c] = np.nan
    detected = np.nanmean(norm > 0, axis=0)
    mean = np.nanmean(norm, axis=0)
    sd = np.nanstd(norm, axis=0, ddof=1)
    cv = np.divide(sd, mean, out=np.full_like(mean, -np.inf), where=mean > 0)
    cv[detected < min_detection] = -np.inf
    return cv
