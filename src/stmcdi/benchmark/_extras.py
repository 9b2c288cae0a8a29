"""Wrappers of other imputation tools (MAGIC, scVI, STAGATE), used by the benchmark when they are installed.

Each wrapper has the benchmark method signature ``method(adata_masked, *, layer=None, seed=0, target="missing",
nonzero=False) -> np.ndarray`` and returns the dense imputation on the log-normalised scale of the masked data
(:func:`stmcdi.pp.log_normalize`, the scale the benchmark scores on). None of these tools accepts missing
entries, so each starts from a complete matrix: a missing entry starts at its gene's observed mean (on the log
scale for MAGIC and STAGATE, as an expected count ``mean fraction x library`` for scVI). With ``target="zeros"``
(the ``thin`` protocol) the zeros stay zeros in the input, as in ordinary use, and the tool's output is read at
every zero. With ``nonzero=True`` the tool is told that the entries to fill are nonzero: its zeros are treated as
missing too.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import numpy as np
from anndata import AnnData
from docrep import DocstringProcessor

from stmcdi import _estimators as est
from stmcdi._constants import KEYS
from stmcdi._validation import get_coordinates, get_layer
from stmcdi.pp._normalize import log_normalize

from ._baselines import _finish, lognormal_input

#: candidate diffusion times of :func:`magic`
MAGIC_TS = (1, 2, 3, 4, 6, 8)

#: Parameter text of the benchmark method signature shared by the wrappers.
_doc = DocstringProcessor(
    adata_layer="""adata
    Masked data with raw counts (NaN at missing entries).
layer
    Layer with the counts; ``None`` uses ``adata.X``.""",
    target_nonzero="""target
    ``"missing"`` fills the NaN entries; ``"zeros"`` also returns the tool's value at the zeros.
nonzero
    The entries to fill are nonzero: zeros are treated as missing.""",
    held_out_example=""">>> import stmcdi
>>> held = stmcdi.benchmark.hold_out(stmcdi.datasets.synthetic(n_spots=80, n_genes=16), seed=0)""",
)


def _require(module: str, package: str):
    """Import ``module``, or raise an ImportError that says how to install ``package``."""
    if importlib.util.find_spec(module) is None:
        raise ImportError(
            f"This method needs the {module!r} module; install it with `pip install {package}` "
            "(or `pip install 'stmcdi[benchmark]'` for MAGIC), or leave the method out."
        )
    return importlib.import_module(module)


def _start(x: np.ndarray) -> np.ndarray:
    """``x`` with its NaN entries at the gene's observed mean."""
    return np.where(np.isnan(x), est.column_means(x)[None, :], x)


@_doc.dedent
def magic(adata: AnnData, *, layer: str | None = None, seed: int = 0, target: str = "missing", nonzero: bool = False,
          t: int | None = None, **kwargs) -> np.ndarray:
    """MAGIC (van Dijk et al. 2018) on the log-normalised masked data, via the ``magic-impute`` package.

    The diffusion time ``t`` is chosen among ``MAGIC_TS`` on an inner hold-out of observed entries (held back at
    their gene mean, as missing entries are), unless given.

    Parameters
    ----------
    %(adata_layer)s
    seed
        ``random_state`` of MAGIC and seed of the inner hold-out.
    %(target_nonzero)s
    t
        Diffusion time; default: chosen on the inner hold-out.
    **kwargs
        Passed to ``magic.MAGIC`` (e.g. ``knn``).

    Returns
    -------
    Dense ``(n_obs, n_vars)`` float64 imputation: observed entries unchanged, the entries to fill from MAGIC.

    Examples
    --------
    %(held_out_example)s
    >>> magic(held.adata, seed=0, t=3).shape  # a fixed diffusion time  # doctest: +SKIP
    (80, 16)
    """
    magic_pkg = _require("magic", "magic-impute")
    x_full, _, _ = log_normalize(get_layer(adata, layer))
    x = lognormal_input(adata, layer, nonzero)

    def run(values: np.ndarray, time: int) -> np.ndarray:
        op = magic_pkg.MAGIC(t=time, random_state=seed, verbose=0, **kwargs)
        return np.clip(np.asarray(op.fit_transform(_start(values)), dtype=np.float64), 0.0, None)

    if t is None:
        held = est.held_back_entries(~np.isnan(x), seed)
        r, c = held.nonzero()
        xin = est.hide(x, held)
        errs = {time: float(np.mean((run(xin, time)[r, c] - x[r, c]) ** 2)) for time in MAGIC_TS}
        t = min(errs, key=errs.get)
    return _finish(x_full, x, run(x, int(t)), target, nonzero)


@_doc.dedent
def scvi_impute(
    adata: AnnData, *, layer: str | None = None, seed: int = 0, target: str = "missing", nonzero: bool = False,
    max_epochs: int | None = None,
) -> np.ndarray:
    """Impute with scVI (Lopez et al. 2018) trained on the masked counts: its normalised expression fills in.

    Missing counts (with ``nonzero=True`` also the zeros) start at their expectation under the gene-mean
    baseline (the gene's observed share of counts times the spot's library), rounded; scVI's
    ``get_normalized_expression`` scaled to the data's target sum and ``log1p``-transformed fills the entries.

    Parameters
    ----------
    %(adata_layer)s
    seed
        ``scvi.settings.seed`` for training.
    %(target_nonzero)s
    max_epochs
        Training epochs (default: scvi-tools' own, ``min(400, 20000 / n_obs)``-ish).

    Returns
    -------
    Dense ``(n_obs, n_vars)`` float64 imputation on the log-normalised scale: scVI's expression, ``log1p``-ed.

    Examples
    --------
    %(held_out_example)s
    >>> scvi_impute(held.adata, max_epochs=2).shape  # doctest: +SKIP
    (80, 16)
    """
    import scipy.sparse as sp
    import scvi

    counts = get_layer(adata, layer)
    counts = np.asarray(counts.toarray() if sp.issparse(counts) else counts, dtype=np.float64)
    x, library, target_sum = log_normalize(counts)
    if nonzero:
        counts = np.where(counts == 0, np.nan, counts)
    miss = np.isnan(counts)
    share = np.nansum(counts, axis=0) / max(np.nansum(counts), 1.0)
    full = np.where(miss, np.rint(share[None, :] * library[:, None]), counts)
    work = AnnData(full.astype(np.float32))
    scvi.settings.seed = int(seed)
    scvi.model.SCVI.setup_anndata(work)
    model = scvi.model.SCVI(work)
    model.train(max_epochs=max_epochs, enable_progress_bar=False)
    rate = model.get_normalized_expression(work, library_size=float(target_sum), return_numpy=True)
    return _finish(x, x, np.log1p(np.asarray(rate, dtype=np.float64)), target, nonzero)


@_doc.dedent
def stagate(
    adata: AnnData,
    *,
    layer: str | None = None,
    seed: int = 0,
    target: str = "missing",
    nonzero: bool = False,
    n_neighbors: int = 6,
    n_epochs: int = 1000,
) -> np.ndarray:
    """STAGATE (Dong & Zhang 2022) graph-attention autoencoder; its reconstruction fills the entries.

    Uses the ``STAGATE_pyG`` package (installed from its GitHub repository; it is not on PyPI): a spatial
    kNN net on ``adata.obsm["spatial"]`` (``Cal_Spatial_Net(model="KNN")``) and
    ``train_STAGATE(save_reconstrction=True)`` on the log-normalised masked data with missing entries at their
    gene mean.

    Parameters
    ----------
    %(adata_layer)s
    seed
        ``random_seed`` of STAGATE.
    %(target_nonzero)s
    n_neighbors
        Spatial neighbours of the net (STAGATE's ``k_cutoff``).
    n_epochs
        Training epochs (STAGATE's default 1000).

    Returns
    -------
    Dense ``(n_obs, n_vars)`` float64 imputation on the log-normalised scale.

    Examples
    --------
    %(held_out_example)s
    >>> stagate(held.adata, n_epochs=10).shape  # doctest: +SKIP
    (80, 16)
    """
    stagate_pkg = _require("STAGATE_pyG", "git+https://github.com/QIFEIDKN/STAGATE_pyG")
    x_full, _, _ = log_normalize(get_layer(adata, layer))
    start = _start(lognormal_input(adata, layer, nonzero))
    work = AnnData(start.astype(np.float32), obs=adata.obs[[]].copy())
    work.obsm["spatial"] = np.asarray(get_coordinates(adata, KEYS.SPATIAL), dtype=np.float64)
    stagate_pkg.Cal_Spatial_Net(work, k_cutoff=n_neighbors, model="KNN", verbose=False)
    stagate_pkg.train_STAGATE(work, n_epochs=n_epochs, random_seed=int(seed), save_reconstrction=True,
                              verbose=False)
    rex = np.clip(np.asarray(work.layers["STAGATE_ReX"], dtype=np.float64), 0.0, None)
    return _finish(x_full, x_full, rex, target, nonzero)


#: Other tools wrapped with the benchmark method signature, as ``name -> (method, importable module)``.
EXTRAS: dict[str, tuple[Callable[..., np.ndarray], str]] = {
    "magic": (magic, "magic"),
    "scvi": (scvi_impute, "scvi"),
    "stagate": (stagate, "STAGATE_pyG"),
}


def available_extras() -> dict[str, Callable[..., np.ndarray]]:
    """The wrapped tools whose packages are installed.

    Returns
    -------
    Dict name -> method (see :data:`~stmcdi.benchmark.EXTRAS`), in the order magic, scvi, stagate, for those importable here.

    Examples
    --------
    >>> "scvi" in available_extras()  # scvi-tools is a dependency of stmcdi
    True
    """
    return {name: fn for name, (fn, module) in EXTRAS.items() if importlib.util.find_spec(module) is not None}
