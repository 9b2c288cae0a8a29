"""Baseline imputers on the log-normalised scale, each choosing its own hyperparameters, and their registry.

Every baseline reads the dense log-normalised ``(n_obs, n_vars)`` matrix with NaN at missing entries. The
matrix functions (:func:`gene_mean`, :func:`spatial_knn`, ...) fill the NaN entries with fixed hyperparameters.
The benchmark methods of :data:`BASELINES` choose their hyperparameters on an inner hold-out of observed entries
of the data they are given (:func:`stmcdi._estimators.held_back_entries`; never the scored entries), then
estimate every entry from all observed ones:

- ``target="missing"``: the NaN entries get the estimate, observed entries keep their value;
- ``target="zeros"`` (the ``thin`` protocol): the method sees the visible matrix, zeros included, and returns
  its estimate at every entry (the scored entries are the visible zeros): it denoises, it is not told that the
  zeros are missing;
- ``nonzero=True`` (the ``nonzero`` protocol): the method is told that the entries to fill are nonzero counts,
  and fits on the observed nonzero entries only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from stmcdi import _estimators as est
from stmcdi import _stack as stk
from stmcdi._constants import KEYS
from stmcdi._validation import get_coordinates, get_layer
from stmcdi.pp._normalize import default_target_sum, log_normalize

#: candidate neighbour counts of the tuned kNN baselines
NEIGHBOUR_KS = (2, 4, 6, 8, 12, 18, 30, 45, 60)


def _as_matrix(x) -> np.ndarray:
    x = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"Expected a 2-d (n_obs, n_vars) matrix, got shape {x.shape}.")
    if np.isinf(x).any():
        raise ValueError("The matrix contains infinite values; use NaN for missing entries only.")
    return x


def _fill(x: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Copy of ``x`` with NaN entries taken from ``values`` (same shape)."""
    out = x.copy()
    miss = np.isnan(x)
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
    float64 ``(n_obs, n_vars)``: observed entries unchanged, missing ones the column mean.

    Examples
    --------
    >>> import numpy as np
    >>> gene_mean(np.array([[1.0, np.nan], [3.0, 4.0]]))
    array([[1., 4.],
           [3., 4.]])
    """
    x = _as_matrix(x)
    return _fill(x, est.GeneMean(x).dense().astype(np.float64))


def spot_mean(x) -> np.ndarray:
    """Fill each missing entry with its spot's mean over observed genes (the paper's "Mean" baseline).

    Parameters
    ----------
    x
        ``(n_obs, n_vars)`` log-normalised values, NaN at missing entries.

    Returns
    -------
    float64 ``(n_obs, n_vars)``: observed entries unchanged, missing ones the row mean (the gene mean for a spot
    with no observed entry).

    Examples
    --------
    >>> import numpy as np
    >>> spot_mean(np.array([[1.0, np.nan], [3.0, 4.0]]))
    array([[1., 1.],
           [3., 4.]])
    """
    x = _as_matrix(x)
    return _fill(x, _spot_means(x))


def _spot_means(x: np.ndarray) -> np.ndarray:
    """Each spot's mean over its observed entries, broadcast over genes (the gene mean for an empty spot)."""
    has = (~np.isnan(x)).any(axis=1)
    return np.where(has[:, None], est.column_means(x.T)[:, None], est.column_means(x)[None, :])


def expression_knn(x, n_neighbors: int = 10, n_pcs: int = 30, seed: int = 0) -> np.ndarray:
    """Fill missing entries from the nearest spots in expression space (the paper's "KNN" baseline).

    Spots are compared in the principal components of the standardised, mean-filled matrix
    (``stmcdi._estimators.ExpressionNeighbours``); a missing entry becomes the gene's mean over the
    spot's ``n_neighbors`` nearest spots where it is observed (the gene mean where it is observed in none).

    Parameters
    ----------
    x
        ``(n_obs, n_vars)`` log-normalised values, NaN at missing entries.
    n_neighbors
        Number of neighbours (self excluded; at most ``n_obs - 1``).
    n_pcs
        Number of principal components.
    seed
        Seed of the randomised PCA.

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
    x = _as_matrix(x)
    k = int(min(n_neighbors, x.shape[0] - 1))
    table = est.ExpressionNeighbours(x, n_pcs=n_pcs, seed=seed).table(k)
    return _fill(x, est.NeighbourMean(x, table).dense().astype(np.float64))


def spatial_knn(x, coords, n_neighbors: int = 6) -> np.ndarray:
    """Fill missing entries with the gene's mean over the spot's nearest spots in space where it is observed.

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
    >>> spatial_knn(x, np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [10.0, 0.0]]), n_neighbors=2).ravel()
    array([1., 2., 3., 9.])
    """
    x = _as_matrix(x)
    return _fill(x, est.NeighbourMean(x, _coords_table(coords, x.shape[0], n_neighbors)).dense().astype(np.float64))


def soft_impute(x, rank: int = 10, fraction: float = 0.1, seed: int = 0) -> np.ndarray:
    """Fill missing entries with soft-impute (Mazumder et al., 2010).

    Parameters
    ----------
    x
        ``(n_obs, n_vars)`` log-normalised values, NaN at missing entries.
    rank
        Most singular values kept.
    fraction
        Soft threshold as a fraction of the top singular value of the gene-centred, zero-filled matrix.
    seed
        Seed of the randomised SVD.

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
    >>> bool(abs(soft_impute(x, rank=1, fraction=0.0)[0, 0] - full[0, 0]) < 0.05)
    True
    """
    x = _as_matrix(x)
    return _fill(x, est.LowRank(x, rank, fraction, seed=seed).dense().astype(np.float64))


def _coords_table(coords, n_obs: int, n_neighbors: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[0] != n_obs:
        raise ValueError(f"`coords` has shape {coords.shape}; expected ({n_obs}, 2 | 3).")
    k = int(min(n_neighbors, n_obs - 1))
    if k < 1:
        raise ValueError("Neighbour-based imputation needs at least 2 spots.")
    return NearestNeighbors(n_neighbors=k).fit(coords).kneighbors(return_distance=False)


# ------------------------------------------------------------------------------------------ benchmark methods
def lognormal_input(adata: AnnData, layer: str | None, nonzero: bool = False) -> np.ndarray:
    """The log-normalised masked data a baseline reads; with ``nonzero`` its zero entries are NaN (not used)."""
    x, _, _ = log_normalize(get_layer(adata, layer))
    x = x.astype(np.float32)
    if nonzero:
        x[x == 0] = np.nan
    return x


def _finish(x_full: np.ndarray, x: np.ndarray, estimate: np.ndarray, target: str, nonzero: bool) -> np.ndarray:
    """What a baseline returns: its estimate at the entries to fill, the data elsewhere."""
    if target not in ("missing", "zeros"):
        raise ValueError(f"target must be 'missing' or 'zeros', got {target!r}.")
    fill = np.isnan(x_full)
    if target == "zeros":
        fill = fill | (x_full == 0)
    out = np.nan_to_num(x_full.astype(np.float64))
    out[fill] = np.asarray(estimate, dtype=np.float64)[fill]
    return out


def _tuned(adata, layer, seed, target, nonzero, estimate: Callable) -> np.ndarray:
    """Run ``estimate(x, held, seed) -> (n_obs, n_vars)`` on the data as the baseline sees it."""
    x_full, _, _ = log_normalize(get_layer(adata, layer))
    x = lognormal_input(adata, layer, nonzero)
    held = est.held_back_entries(~np.isnan(x), seed)
    return _finish(x_full, x, estimate(x, held, seed), target, nonzero)


def _method_gene_mean(adata, *, layer=None, seed=0, target="missing", nonzero=False):
    return _tuned(adata, layer, seed, target, nonzero, lambda x, h, s: est.GeneMean(x).dense())


def _method_spot_mean(adata, *, layer=None, seed=0, target="missing", nonzero=False):
    return _tuned(adata, layer, seed, target, nonzero, lambda x, h, s: _spot_means(x))


def _knn_method(table_of: Callable) -> Callable:
    def method(adata, *, layer=None, seed=0, target="missing", nonzero=False):
        def run(x, held, s):
            xin = est.hide(x, held)
            k_max = min(max(NEIGHBOUR_KS), x.shape[0] - 1)
            k = est.tune_neighbours(xin, x, held, table_of(adata, xin, k_max, s),
                                    [k for k in NEIGHBOUR_KS if k <= k_max] or [k_max])
            return est.NeighbourMean(x, table_of(adata, x, k, s)).dense()
        return _tuned(adata, layer, seed, target, nonzero, run)
    return method


def _spatial_table(adata, x, k, seed):
    return _coords_table(get_coordinates(adata, KEYS.SPATIAL), x.shape[0], k)


def _expression_table(adata, x, k, seed):
    return est.ExpressionNeighbours(x, seed=seed).table(int(min(k, x.shape[0] - 1)))


def _method_soft_impute(adata, *, layer=None, seed=0, target="missing", nonzero=False):
    def run(x, held, s):
        rank, frac = est.tune_soft_impute(est.hide(x, held), x, held, s)
        fit = None
        for f in est.SOFT_IMPUTE_FRACTIONS:
            if f < frac:
                break
            fit = est.LowRank(x, rank, f, seed=s, start=fit)
        return fit.dense()
    return _tuned(adata, layer, seed, target, nonzero, run)


def _method_stack(adata, *, layer=None, seed=0, target="missing", nonzero=False):
    def run(x, held, s):
        spatial = _coords_table(get_coordinates(adata, KEYS.SPATIAL), x.shape[0], max(est.SPATIAL_KS))
        stack = stk.fit_stack(x, held, spatial, seed=s)
        estimates = stk.classical_estimates(x, spatial, stack.params, s)
        out = np.vstack([stk.combine(stack, estimates, np.arange(i, min(i + est.BLOCK, x.shape[0])))
                         for i in range(0, x.shape[0], est.BLOCK)])
        if target == "zeros":  # a zero lowers the estimate of its own entry, as in STMCDI's read-out
            counts = get_layer(adata, layer)
            counts = np.asarray(counts.toarray() if sp.issparse(counts) else counts, dtype=np.float64)
            lib = np.nansum(counts, axis=1)
            r, c = held.nonzero()
            target_sum = default_target_sum(lib)
            phi = stk.fit_zero_dispersion(counts[r, c], stack.fitted, lib[r], target_sum, s)
            zero = x == 0
            out[zero] = stk.condition_on_zero(out, lib[:, None], target_sum, phi)[zero]
        return out
    return _tuned(adata, layer, seed, target, nonzero, run)


#: The baseline methods, each called as ``method(adata_masked, *, layer=None, seed=0, target="missing",
#: nonzero=False)`` and returning the dense imputed matrix on the log-normalised scale of the masked counts
#: (:func:`stmcdi.pp.log_normalize`). The kNN, soft-impute and stacked baselines choose their hyperparameters
#: (neighbours; rank and threshold; the stack's weights) on an inner hold-out of observed entries. ``stack`` is
#: the least-squares stack of gene mean, spot depth, spatial kNN at two widths, expression kNN, soft-impute and
#: its spatial average: the classical part of STMCDI's read-out.
BASELINES: dict[str, Callable[..., np.ndarray]] = {
    "gene_mean": _method_gene_mean,
    "spot_mean": _method_spot_mean,
    "spatial_knn": _knn_method(_spatial_table),
    "expression_knn": _knn_method(_expression_table),
    "soft_impute": _method_soft_impute,
    "stack": _method_stack,
}
