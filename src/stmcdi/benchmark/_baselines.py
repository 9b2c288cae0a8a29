"""Baseline imputers on the log-normalised scale, and the method registry used by :func:`evaluate`.

Every baseline takes the dense log-normalised ``(n_obs, n_vars)`` matrix with NaN at missing entries and
returns a full matrix: observed entries unchanged, NaN entries filled (the gene mean where a method cannot
fill). To treat zeros as missing, set them to NaN before calling.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from stmcdi._constants import KEYS
from stmcdi._validation import get_coordinates, get_layer
from stmcdi.pp._normalize import log_normalize


def _as_matrix(x) -> np.ndarray:
    x = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"Expected a 2-d (n_obs, n_vars) matrix, got shape {x.shape}.")
    if np.isinf(x).any():
        raise ValueError("The matrix contains infinite values; use NaN for missing entries only.")
    return x


def _column_means(x: np.ndarray) -> np.ndarray:
    """Column nanmean; all-missing columns get the global mean (0 when nothing is observed)."""
    obs = ~np.isnan(x)
    n = obs.sum(axis=0)
    s = np.where(obs, x, 0.0).sum(axis=0)
    glob = float(s.sum() / n.sum()) if n.sum() else 0.0
    return np.divide(s, n, out=np.full(x.shape[1], glob), where=n > 0)


def _fill(x: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Copy of ``x`` with NaN entries taken from ``values`` (same shape)."""
    miss = np.isnan(x)
    out = x.copy()
    out[miss] = values[miss]
    return out


def gene_mean(x) -> np.ndarray:
    """Fill each missing entry with its gene's mean over observed spots.

    Parameters
    ----------
    x
        ``(n_obs, n_vars)`` log-normalised values, NaN at missing entries.

    Returns
    -------
    float64 ``(n_obs, n_vars)``: observed entries unchanged, missing ones the column mean (genes with no
    observed entry get the global mean).

    Examples
    --------
    >>> import numpy as np
    >>> gene_mean(np.array([[1.0, np.nan], [3.0, 4.0]]))
    array([[1., 4.],
           [3., 4.]])
    """
    x = _as_matrix(x)
    return _fill(x, np.broadcast_to(_column_means(x), x.shape))


def spot_mean(x) -> np.ndarray:
    """Fill each missing entry with its spot's mean over observed genes (the paper's "Mean" baseline).

    Parameters
    ----------
    x
        ``(n_obs, n_vars)`` log-normalised values, NaN at missing entries.

    Returns
    -------
    float64 ``(n_obs, n_vars)``: observed entries unchanged, missing ones the row mean (spots with no observed
    entry get the gene means).

    Examples
    --------
    >>> import numpy as np
    >>> spot_mean(np.array([[1.0, np.nan], [3.0, 4.0]]))
    array([[1., 1.],
           [3., 4.]])
    """
    x = _as_matrix(x)
    obs = ~np.isnan(x)
    n = obs.sum(axis=1)
    s = np.where(obs, x, 0.0).sum(axis=1)
    row = np.divide(s, n, out=np.zeros(x.shape[0]), where=n > 0)
    values = np.where((n > 0)[:, None], row[:, None], _column_means(x)[None, :])
    return _fill(x, values)


def _neighbour_fill(x: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Fill NaN entries with the mean over neighbours where the gene is observed, else the gene mean."""
    n_obs, k = neighbours.shape
    adj = sp.csr_matrix(
        (np.ones(n_obs * k), (np.repeat(np.arange(n_obs), k), neighbours.ravel())), shape=(n_obs, n_obs)
    )
    obs = ~np.isnan(x)
    sums = adj @ np.where(obs, x, 0.0)
    counts = adj @ obs.astype(np.float64)
    values = np.divide(sums, counts, out=np.broadcast_to(_column_means(x), x.shape).copy(), where=counts > 0)
    return _fill(x, values)


def _knn(points: np.ndarray, n_neighbors: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    if int(n_neighbors) < 1:
        raise ValueError(f"`n_neighbors` must be at least 1, got {n_neighbors}.")
    k = min(int(n_neighbors), points.shape[0] - 1)
    if k < 1:
        raise ValueError("Neighbour-based imputation needs at least 2 spots.")
    # kneighbors() without a query excludes each point from its own neighbours
    return NearestNeighbors(n_neighbors=k).fit(points).kneighbors(return_distance=False)


def expression_knn(x, n_neighbors: int = 10, n_pcs: int = 30, seed: int = 0) -> np.ndarray:
    """Fill missing entries from the nearest spots in expression space (the paper's "KNN" baseline).

    Spots are embedded by PCA of the gene-mean-filled, per-gene standardised matrix; each missing entry
    becomes the mean of that gene over the spot's ``n_neighbors`` nearest spots where the gene is observed
    (the gene mean when it is observed in none of them).

    Parameters
    ----------
    x
        ``(n_obs, n_vars)`` log-normalised values, NaN at missing entries.
    n_neighbors
        Number of neighbours (self excluded).
    n_pcs
        Number of principal components (capped at ``min(n_obs, n_vars) - 1``).
    seed
        Seed of the (randomised) PCA.

    Returns
    -------
    float64 ``(n_obs, n_vars)``: observed entries unchanged, missing ones filled.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[0.0, 0.0, 0.0], [0.1, 0.0, np.nan], [5.0, 5.0, 5.0], [5.1, 5.0, np.nan]])
    >>> expression_knn(x, n_neighbors=1, n_pcs=2)[:, 2]
    array([0., 0., 5., 5.])
    """
    from sklearn.decomposition import PCA

    x = _as_matrix(x)
    filled = gene_mean(x)
    sd = filled.std(axis=0)
    z = (filled - filled.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    n_comp = min(int(n_pcs), min(z.shape) - 1)
    emb = PCA(n_components=n_comp, random_state=seed).fit_transform(z) if n_comp >= 1 else z
    return _neighbour_fill(x, _knn(emb, n_neighbors))


def spatial_knn(x, coords, n_neighbors: int = 5) -> np.ndarray:
    """Fill missing entries from the nearest spots in space.

    Each missing entry becomes the mean of that gene over the spot's ``n_neighbors`` nearest spots
    (Euclidean distance on ``coords``, self excluded) where the gene is observed, or the gene mean when it
    is observed in none of them.

    Parameters
    ----------
    x
        ``(n_obs, n_vars)`` log-normalised values, NaN at missing entries.
    coords
        ``(n_obs, 2 | 3)`` spot coordinates.
    n_neighbors
        Number of spatial neighbours (self excluded).

    Returns
    -------
    float64 ``(n_obs, n_vars)``: observed entries unchanged, missing ones filled.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[1.0], [np.nan], [3.0], [9.0]])
    >>> spatial_knn(x, np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [10.0, 0.0]]), n_neighbors=2)
    array([[1.],
           [2.],
           [3.],
           [9.]])
    """
    x = _as_matrix(x)
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[0] != x.shape[0]:
        raise ValueError(f"`coords` has shape {coords.shape}; expected ({x.shape[0]}, 2 | 3).")
    return _neighbour_fill(x, _knn(coords, n_neighbors))


#: Default SoftImpute shrinkage of :func:`low_rank`, as a fraction of the top singular value of the
#: gene-centred, mean-filled matrix.
LOW_RANK_SHRINKAGE_FRACTION = 0.1


def low_rank(
    x, rank: int | None = None, shrinkage: float | None = None, max_iter: int = 100, tol: float = 1e-4
) -> np.ndarray:
    """Fill missing entries with SoftImpute (Mazumder et al., 2010).

    The matrix is centred per gene (observed means); starting from the gene means, the missing entries are
    repeatedly replaced by a soft-thresholded SVD reconstruction ``U max(s - lambda, 0) V^T`` of the
    completed matrix until the relative change falls below ``tol``.

    Parameters
    ----------
    x
        ``(n_obs, n_vars)`` log-normalised values, NaN at missing entries.
    rank
        Keep at most this many singular values (``None``: no cap, the shrinkage alone sets the rank).
    shrinkage
        The threshold ``lambda``. Default: ``LOW_RANK_SHRINKAGE_FRACTION`` (0.1) times the top singular value
        of the gene-centred, mean-filled matrix; larger values give lower rank and smoother fills.
    max_iter
        Maximum number of iterations.
    tol
        Convergence threshold on ``|Z_new - Z|_F^2 / |Z|_F^2`` of the reconstruction.

    Returns
    -------
    float64 ``(n_obs, n_vars)``: observed entries unchanged, missing ones filled.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> full = rng.normal(size=(30, 1)) @ rng.normal(size=(1, 8))
    >>> x = full.copy()
    >>> x[0, 0] = np.nan
    >>> bool(abs(low_rank(x)[0, 0] - full[0, 0]) < 0.2)
    True
    """
    x = _as_matrix(x)
    miss = np.isnan(x)
    mu = _column_means(x)
    if not miss.any():
        return x.copy()
    xc = np.where(miss, 0.0, x - mu)
    if rank is not None and int(rank) < 1:
        raise ValueError(f"`rank` must be a positive integer or None, got {rank}.")
    if shrinkage is None:
        top = np.linalg.norm(xc, 2) if min(xc.shape) > 0 else 0.0
        shrinkage = LOW_RANK_SHRINKAGE_FRACTION * top
    if shrinkage < 0:
        raise ValueError(f"`shrinkage` must be non-negative, got {shrinkage}.")
    z = np.zeros_like(xc)
    for _ in range(int(max_iter)):
        u, s, vt = np.linalg.svd(np.where(miss, z, xc), full_matrices=False)
        s = np.maximum(s - shrinkage, 0.0)
        if rank is not None:
            s[int(rank) :] = 0.0
        keep = s > 0
        z_new = (u[:, keep] * s[keep]) @ vt[keep]
        denom = (z * z).sum()
        delta = ((z_new - z) ** 2).sum()
        z = z_new
        if denom > 0 and delta / denom < tol:
            break
    return _fill(x, z + mu)


def _lognorm(adata: AnnData, layer: str | None, target: str = "missing") -> np.ndarray:
    """Log-normalised masked data; with ``target="zeros"`` zero entries also become NaN (to be filled)."""
    x, _, _ = log_normalize(get_layer(adata, layer))
    x = x.astype(np.float64)
    if target == "zeros":
        x[x == 0] = np.nan
    elif target != "missing":
        raise ValueError(f"target must be 'missing' or 'zeros', got {target!r}.")
    return x


def _method_gene_mean(
    adata: AnnData, *, layer: str | None = None, seed: int = 0, target: str = "missing"
) -> np.ndarray:
    return gene_mean(_lognorm(adata, layer, target))


def _method_spot_mean(
    adata: AnnData, *, layer: str | None = None, seed: int = 0, target: str = "missing"
) -> np.ndarray:
    return spot_mean(_lognorm(adata, layer, target))


def _method_expression_knn(
    adata: AnnData, *, layer: str | None = None, seed: int = 0, target: str = "missing"
) -> np.ndarray:
    return expression_knn(_lognorm(adata, layer, target), seed=seed)


def _method_spatial_knn(
    adata: AnnData, *, layer: str | None = None, seed: int = 0, target: str = "missing"
) -> np.ndarray:
    return spatial_knn(_lognorm(adata, layer, target), get_coordinates(adata, KEYS.SPATIAL))


def _method_low_rank(
    adata: AnnData, *, layer: str | None = None, seed: int = 0, target: str = "missing"
) -> np.ndarray:
    return low_rank(_lognorm(adata, layer, target))


#: The baseline methods, each called as ``method(adata_masked, *, layer=None, seed=0, target="missing")``. Each
#: log-normalises the masked counts with :func:`stmcdi.pp.log_normalize` and returns the dense imputed matrix on
#: that scale. ``target="zeros"`` (the ``thin`` protocol) fills zero entries too, as ``STMCDI.impute`` does.
BASELINES: dict[str, Callable[..., np.ndarray]] = {
    "gene_mean": _method_gene_mean,
    "spot_mean": _method_spot_mean,
    "expression_knn": _method_expression_knn,
    "spatial_knn": _method_spatial_knn,
    "low_rank": _method_low_rank,
}
