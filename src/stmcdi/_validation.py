"""Input checks shared by ``pp``, the model and the benchmark. Each error names the problem and the fix."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData


def check_not_view(adata: AnnData, what: str) -> None:
    """Refuse AnnData views: writing to them silently copies (and detaches) the data."""
    if adata.is_view:
        raise ValueError(
            f"{what} got an AnnData view. Views cannot be written to without copying; "
            "call `adata = adata.copy()` on the subset first."
        )


def get_coordinates(adata: AnnData, spatial_key: str) -> np.ndarray:
    """Return ``adata.obsm[spatial_key]`` as a float64 (n_obs, 2 | 3) array after checking it."""
    if spatial_key not in adata.obsm:
        raise KeyError(
            f"adata.obsm[{spatial_key!r}] not found: spot coordinates are required. Put an (n_obs, 2) array "
            f"of x, y positions there, or pass `spatial_key=` naming the obsm key that holds them "
            f"(available: {list(adata.obsm.keys())})."
        )
    coords = np.asarray(adata.obsm[spatial_key])
    if coords.ndim != 2 or coords.shape[1] not in (2, 3):
        raise ValueError(
            f"adata.obsm[{spatial_key!r}] has shape {coords.shape}; expected (n_obs, 2) or (n_obs, 3) coordinates."
        )
    if not np.issubdtype(coords.dtype, np.number):
        raise TypeError(f"adata.obsm[{spatial_key!r}] has dtype {coords.dtype}; coordinates must be numeric.")
    coords = coords.astype(np.float64, copy=False)
    bad = ~np.isfinite(coords).all(axis=1)
    if bad.any():
        raise ValueError(
            f"adata.obsm[{spatial_key!r}] has {int(bad.sum())} spots with NaN or infinite coordinates "
            f"(first: {adata.obs_names[np.flatnonzero(bad)[0]]!r}). Remove those spots or fix their positions."
        )
    return coords


def get_layer(adata: AnnData, layer: str | None):
    """Return ``adata.layers[layer]`` (or ``adata.X``), with a helpful error when the layer is absent."""
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty; pass `layer=` naming the layer that holds the counts.")
        return adata.X
    if layer not in adata.layers:
        raise KeyError(
            f"adata.layers[{layer!r}] not found (available: {list(adata.layers.keys())}). "
            "Pass `layer=None` to use adata.X."
        )
    return adata.layers[layer]


def missing_mask(X, mask=None) -> sp.csr_matrix:
    """Boolean CSR matrix of missing entries: NaN in ``X``, or nonzero in the optional ``mask``."""
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        miss = X.copy()
        miss.data = np.isnan(miss.data)
        miss.eliminate_zeros()
        miss = miss.astype(bool)
    else:
        miss = sp.csr_matrix(np.isnan(np.asarray(X, dtype=np.float64)))
    if mask is not None:
        m = sp.csr_matrix(mask).astype(bool) if sp.issparse(mask) else sp.csr_matrix(np.asarray(mask, dtype=bool))
        if m.shape != miss.shape:
            raise ValueError(f"The missing-entry mask has shape {m.shape}, the data {miss.shape}.")
        miss = (miss + m).astype(bool)
    return sp.csr_matrix(miss)


def check_counts(X, missing: sp.csr_matrix, what: str) -> None:
    """Check that observed entries are finite, non-negative counts (NaN marks missing entries)."""
    data = X.data if sp.issparse(X) else np.asarray(X).ravel()
    finite = data[~np.isnan(data)] if np.issubdtype(data.dtype, np.floating) else data
    if np.isinf(finite).any():
        raise ValueError(f"{what} contains infinite values. Use NaN for missing entries and finite counts elsewhere.")
    if (finite < 0).any():
        raise ValueError(
            f"{what} contains negative values (min {finite.min():.3g}); raw counts are expected. "
            "Register the raw count layer (e.g. `layer='counts'`), not scaled or centred data."
        )
    sample = finite[: 100_000]
    if sample.size and not np.allclose(sample, np.round(sample)):
        raise ValueError(
            f"{what} contains non-integer values (e.g. {sample[~np.isclose(sample, np.round(sample))][0]:.4g}); "
            "stMCDI normalises raw counts itself. Register the raw count layer, not log-normalised data "
            "(keep a copy with `adata.layers['counts'] = adata.X.copy()` before normalising)."
        )


def check_number(value, name: str, *, integer: bool = False, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, hint: str = "") -> float | int:
    """Check a numeric argument and return it as ``int`` or ``float``; the error names the bounds and a hint.

    Parameters
    ----------
    value
        The argument.
    name
        Its name, for the message.
    integer
        Require an integer (``bool`` is refused).
    low, high
        Optional bounds, inclusive unless ``low_open`` / ``high_open``.
    low_open, high_open
        Exclude the bound.
    hint
        Appended to the message (e.g. what ``0`` means).

    Returns
    -------
    The value as ``int`` (``integer=True``) or ``float``.

    Examples
    --------
    >>> check_number(3, "n_samples", integer=True, low=0)
    3
    >>> check_number(1.5, "ratio", low=0, high=1, low_open=True)
    Traceback (most recent call last):
    ...
    ValueError: ratio must be a number in (0, 1], got 1.5.
    """
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and np.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        if high is None and low is not None:
            what = f"{'an integer' if integer else 'a number'} {'>' if low_open else '>='} {lo}"
        else:
            what = (f"{'an integer' if integer else 'a number'} in "
                    f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}")
        raise ValueError(f"{name} must be {what}, got {value!r}." + (f" {hint}" if hint else ""))
    return int(value) if integer else float(value)
