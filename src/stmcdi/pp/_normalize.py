"""Library-size normalisation on observed entries (stMCDI paper, Eq. 41)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from .._constants import KEYS
from .._validation import check_counts, check_not_view, get_layer, missing_mask


def library_size(counts, missing: sp.csr_matrix | None = None) -> np.ndarray:
    """Per-spot library size: the sum of the *observed* counts.

    Parameters
    ----------
    counts
        ``(n_obs, n_vars)`` dense or sparse counts; NaN marks missing entries.
    missing
        Optional boolean ``(n_obs, n_vars)`` matrix of further missing entries.

    Returns
    -------
    ``(n_obs,)`` float64 library sizes. Missing entries do not count.

    Examples
    --------
    >>> import numpy as np
    >>> library_size(np.array([[1.0, np.nan], [2.0, 3.0]]))
    array([1., 5.])
    """
    if sp.issparse(counts):
        c = sp.csr_matrix(counts, dtype=np.float64, copy=True)
        c.data[np.isnan(c.data)] = 0.0
    else:
        c = np.nan_to_num(np.asarray(counts, dtype=np.float64), nan=0.0)
    if missing is not None and missing.nnz:
        c = sp.csr_matrix(c) if not sp.issparse(c) else c
        c = c - c.multiply(missing)
    return np.asarray(c.sum(axis=1)).ravel()


def default_target_sum(library: np.ndarray) -> float:
    """Median library size over spots with at least one count (1.0 when every spot is empty)."""
    pos = library[library > 0]
    return float(np.median(pos)) if pos.size else 1.0


def log_normalize(
    counts, missing: sp.csr_matrix | None = None, target_sum: float | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Dense log-normalised matrix, NaN at missing entries.

    ``x[i, g] = log1p(counts[i, g] / library[i] * target_sum)`` with ``library`` from observed entries only.
    Spots with no observed count keep ``x = 0`` at their observed (zero) entries.

    Parameters
    ----------
    counts
        ``(n_obs, n_vars)`` dense or sparse counts; NaN marks missing entries.
    missing
        Optional boolean matrix of further missing entries.
    target_sum
        Counts per spot after scaling. Default: the median library size.

    Returns
    -------
    ``(x, library, target_sum)``: float32 ``(n_obs, n_vars)`` values, float64 library sizes and the target.

    Examples
    --------
    >>> import numpy as np
    >>> x, lib, t = log_normalize(np.array([[1.0, 3.0], [2.0, np.nan]]))
    >>> lib, t
    (array([4., 2.]), 3.0)
    >>> np.round(x, 4)
    array([[0.5596, 1.1787],
           [1.3863,    nan]], dtype=float32)
    """
    miss = missing_mask(counts, missing)
    library = library_size(counts, miss)
    if target_sum is None:
        target_sum = default_target_sum(library)
    x = counts.toarray() if sp.issparse(counts) else np.array(counts)  # a copy: written in place below
    x = x.astype(np.float32, copy=False)
    scale = np.divide(target_sum, library, out=np.ones_like(library), where=library > 0).astype(np.float32)
    np.nan_to_num(x, copy=False, nan=0.0)
    x *= scale[:, None]
    np.log1p(x, out=x)
    if miss.nnz:
        r, c = miss.nonzero()
        x[r, c] = np.nan
    return x, library, float(target_sum)


def normalize(
    adata: AnnData,
    layer: str | None = None,
    *,
    mask_layer: str | None = None,
    target_sum: float | None = None,
    key_added: str = KEYS.LOGNORM,
    copy: bool = False,
) -> np.ndarray | None:
    """Normalise counts by library size from observed entries and log1p-transform them.

    The stMCDI paper's Eq. 41: each spot is scaled to ``target_sum`` counts (default: the median library
    size), where a spot's library size sums its *observed* entries only, then ``log1p`` is applied. Missing
    entries (NaN in the layer, or nonzero in ``mask_layer``) stay NaN. This is the scale on which
    :meth:`stmcdi.STMCDI.impute` writes ``layers["imputed"]`` and on which :mod:`stmcdi.benchmark` scores.

    Parameters
    ----------
    adata
        Annotated data with raw counts.
    layer
        Layer with raw counts; ``None`` uses ``adata.X``.
    mask_layer
        Optional layer whose nonzero entries mark missing entries (in addition to NaN).
    target_sum
        Counts per spot after scaling; default the median library size of spots with counts.
    key_added
        Name of the layer written.
    copy
        Return the array instead of writing it.

    Returns
    -------
    With ``copy=True``, the dense float32 ``(n_obs, n_vars)`` array. Otherwise ``None`` and writes

    - ``adata.layers[key_added]``: the log-normalised values, NaN at missing entries;
    - ``adata.uns["stmcdi"]["normalize"]``: ``{"layer", "target_sum"}``.

    Examples
    --------
    >>> import stmcdi
    >>> adata = stmcdi.datasets.synthetic(n_spots=100, n_genes=20)
    >>> stmcdi.pp.normalize(adata)
    >>> adata.layers["lognorm"].shape
    (100, 20)
    """
    X = get_layer(adata, layer)
    miss = missing_mask(X, adata.layers[mask_layer] if mask_layer is not None else None)
    check_counts(X, miss, f"adata.layers[{layer!r}]" if layer else "adata.X")
    x, _, target = log_normalize(X, miss, target_sum)
    if copy:
        return x
    check_not_view(adata, "stmcdi.pp.normalize")
    adata.layers[key_added] = x
    adata.uns.setdefault(KEYS.UNS, {})["normalize"] = {"layer": layer, "target_sum": target}
    return None
