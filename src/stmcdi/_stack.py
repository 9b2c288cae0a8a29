"""The stack: non-negative least-squares weights of estimates, fitted on held-back entries (a super learner).

The classical estimates of :mod:`stmcdi._estimators` (gene mean, spot depth, tissue and expression neighbours,
soft-impute and its tissue average), tuned on held-back observed entries, and any further estimate made without
those entries (the network's), weighted to predict them. For entries whose count is zero (``target="zeros"``), a
gamma-Poisson dispersion fitted on the same entries says how much the zero itself lowers the estimate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ._estimators import (
    EXPRESSION_KS,
    SOFT_IMPUTE_FRACTIONS,
    SPATIAL_KS,
    Estimate,
    ExpressionNeighbours,
    GeneMean,
    LowRank,
    NeighbourMean,
    TwoWay,
    hide,
    tune_neighbours,
    tune_soft_impute,
)


@dataclass
class Stack:
    """Non-negative least-squares weights of estimates, fitted on held-back entries (a super learner).

    Each gene counts equally: the entries are divided by their gene's sd before the fit, so a handful of
    high-variance genes do not decide the weights (the headline metric is a median over genes).

    Attributes
    ----------
    names
        The estimates, in the order of ``weights``.
    weights
        Non-negative weight of each estimate.
    params
        Hyperparameters of the classical estimates: ``expression_k``, ``soft_impute_rank``,
        ``soft_impute_fraction``, ``spatial_ks``.
    n_entries
        Number of held-back entries the weights were fitted on.
    fitted
        The stacked estimate at those entries (``held.nonzero()`` order), after a fit; not saved.
    """

    names: list[str]
    weights: np.ndarray
    params: dict = field(default_factory=dict)
    n_entries: int = 0
    fitted: np.ndarray | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        """Plain-Python form (for saving and ``uns``)."""
        return {"names": list(self.names), "weights": [float(w) for w in self.weights],
                "params": dict(self.params), "n_entries": int(self.n_entries)}

    @classmethod
    def from_dict(cls, d: Mapping) -> Stack:
        """Inverse of :meth:`as_dict`."""
        return cls(list(d["names"]), np.asarray(d["weights"], dtype=np.float64), dict(d["params"]),
                   int(d.get("n_entries", 0)))


def fit_weights(columns: Mapping[str, np.ndarray], truth: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Non-negative least squares of ``truth / scale`` on each ``column / scale``.

    Parameters
    ----------
    columns
        name -> ``(n,)`` values of each estimate at the held-back entries.
    truth
        ``(n,)`` observed values there.
    scale
        ``(n,)`` positive divisor of each entry (its gene's sd).

    Returns
    -------
    float64 weights, in the order of ``columns``.

    Examples
    --------
    >>> import numpy as np
    >>> a, b = np.arange(10.0), np.ones(10)
    >>> fit_weights({"a": a, "b": b}, 2 * a + 3 * b, np.ones(10)).round(6).tolist()
    [2.0, 3.0]
    """
    from scipy.optimize import nnls

    A = np.column_stack([np.asarray(v, dtype=np.float64) / scale for v in columns.values()])
    w, _ = nnls(A, np.asarray(truth, dtype=np.float64) / scale)
    return w


def classical_estimates(x: np.ndarray, spatial: np.ndarray | None, params: Mapping, seed: int = 0) -> dict:
    """The classical estimates of the stack, computed from the observed entries of ``x``.

    Parameters
    ----------
    x
        ``(n_obs, n_vars)`` log-normalised values, NaN at unobserved entries.
    spatial
        int64 ``(n_obs, k)`` tissue neighbours of each spot, nearest first (at least ``max(SPATIAL_KS)``
        columns, fewer on small sections), or ``None`` for no spatial estimates.
    params
        ``expression_k``, ``soft_impute_rank``, ``soft_impute_fraction`` (see :func:`tune_classical`).
    seed
        Seed of the randomised PCA and SVD.

    Returns
    -------
    dict name -> :class:`Estimate`: ``gene_mean``, ``spot_depth``, ``spatial_6`` and ``spatial_18`` (the
    tissue neighbours' mean), ``expression_knn``, ``soft_impute`` and ``soft_impute_spatial`` (its average over
    the nearest tissue ring).
    """
    out: dict[str, Estimate] = {"gene_mean": GeneMean(x), "spot_depth": TwoWay(x)}
    if spatial is not None:
        for k in SPATIAL_KS:
            out[f"spatial_{k}"] = NeighbourMean(x, spatial[:, :k], f"spatial_{k}")
    k_expr = int(min(params["expression_k"], x.shape[0] - 1))
    out["expression_knn"] = NeighbourMean(x, ExpressionNeighbours(x, seed=seed).table(k_expr), "expression_knn")
    low = None
    for frac in SOFT_IMPUTE_FRACTIONS:  # the path down to the chosen threshold, warm-started
        if frac < params["soft_impute_fraction"]:
            break
        low = LowRank(x, params["soft_impute_rank"], frac, seed=seed, start=low)
    out["soft_impute"] = low
    if spatial is not None:
        out["soft_impute_spatial"] = NeighbourMean(low, spatial[:, :SPATIAL_KS[0]], "soft_impute_spatial")
    return out


def tune_classical(x: np.ndarray, held: sp.spmatrix, seed: int = 0) -> dict:
    """Choose the hyperparameters of the classical estimates on the held-back entries of ``x``.

    ``x`` holds every observed value; the estimates are fitted with ``held`` hidden and scored there.

    Returns
    -------
    ``{"expression_k": ..., "soft_impute_rank": ..., "soft_impute_fraction": ...}``.
    """
    xin = hide(x, held)
    k_max = min(max(EXPRESSION_KS), x.shape[0] - 1)
    table = ExpressionNeighbours(xin, seed=seed).table(k_max)
    ks = [k for k in EXPRESSION_KS if k <= k_max] or [k_max]
    rank, frac = tune_soft_impute(xin, x, held, seed)
    return {"expression_k": int(tune_neighbours(xin, x, held, table, ks)), "soft_impute_rank": int(rank),
            "soft_impute_fraction": float(frac)}


def fit_stack(x: np.ndarray, held: sp.spmatrix, spatial: np.ndarray | None, extra: Mapping | None = None,
              seed: int = 0) -> Stack:
    """Tune the classical estimates and fit the stack's weights on the held-back entries.

    Parameters
    ----------
    x
        ``(n_obs, n_vars)`` log-normalised values, NaN at missing entries; ``held`` entries hold their value.
    held
        Boolean ``(n_obs, n_vars)`` held-back observed entries (:func:`held_back_entries`).
    spatial
        Tissue neighbour table (see :func:`classical_estimates`), or ``None``.
    extra
        Optional name -> ``(nnz,)`` values of further estimates at ``held`` (in ``held.nonzero()`` order) made
        without those entries, e.g. the network's.
    seed
        Seed of the randomised PCA and SVD.

    Returns
    -------
    The :class:`Stack`.

    Examples
    --------
    >>> import numpy as np
    >>> from stmcdi._estimators import held_back_entries
    >>> rng = np.random.default_rng(0)
    >>> x = np.log1p(rng.poisson(np.outer(rng.gamma(2, 1, 60), rng.gamma(2, 1, 30)))).astype(np.float32)
    >>> held = held_back_entries(np.ones(x.shape, bool), seed=0, fraction=0.2)
    >>> stack = fit_stack(x, held, None)
    >>> stack.names[:2], bool((stack.weights >= 0).all())
    (['gene_mean', 'spot_depth'], True)
    """
    params = tune_classical(x, held, seed)
    if spatial is not None:
        params["spatial_ks"] = [int(min(k, spatial.shape[1])) for k in SPATIAL_KS]
    xin = hide(x, held)
    est = classical_estimates(xin, spatial, params, seed)
    r, c = held.nonzero()
    columns = {name: e.at(r, c) for name, e in est.items()}
    for name, values in (extra or {}).items():
        columns[name] = np.asarray(values, dtype=np.float64)
    sd = np.nanstd(xin, axis=0).astype(np.float64)
    scale = np.where(sd > 1e-6, sd, 1.0)[c]
    w = fit_weights(columns, x[r, c], scale)
    fitted = np.maximum(sum(wi * v for wi, v in zip(w, columns.values())), 0.0)
    return Stack(list(columns), w, params, int(r.size), fitted)


def combine(stack: Stack, estimates: Mapping[str, Estimate], rows: np.ndarray,
            extra: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """The stacked estimate of spots ``rows``: float32 ``(len(rows), n_vars)``, kept at 0 or above.

    ``estimates`` holds the classical estimates (:func:`classical_estimates`) and ``extra`` the blocks of the
    further estimates (e.g. the network's values for these spots); an estimate with weight 0 is not evaluated.
    """
    out = None
    for name, w in zip(stack.names, stack.weights):
        if w == 0:
            continue
        block = extra[name] if extra is not None and name in extra else estimates[name].block(rows)
        term = np.float32(w) * np.asarray(block, dtype=np.float32)
        out = term if out is None else out + term
    if out is None:  # no estimate predicted the held-back entries (e.g. all of them zero): the gene mean
        out = estimates["gene_mean"].block(rows)
    return np.maximum(out, 0.0)


#: candidate zero dispersions (squared coefficient of variation of the gamma prior of a rate)
DISPERSION_GRID = np.concatenate([[0.0], np.geomspace(0.01, 10.0, 31)])


def fit_zero_dispersion(counts: np.ndarray, estimate: np.ndarray, library: np.ndarray, target_sum: float,
                        seed: int = 0) -> float:
    r"""How much a zero count should lower an estimate: the gamma-Poisson dispersion, fitted by thinning.

    Each held-back count :math:`c` is split binomially into halves :math:`c' + c''`. Where :math:`c' = 0`, the
    estimate (made without the entry) is the prior mean :math:`\mu` of a gamma-distributed rate with squared
    coefficient of variation :math:`\phi`; after a zero in half the exposure, :math:`c''` is negative binomial with
    mean :math:`(\mu/2)/(1 + \phi\mu/2)`. :math:`\phi` maximises that likelihood over a grid. A zero observed at
    the full exposure then moves the estimate to :math:`\mu/(1 + \phi\mu)` (:func:`condition_on_zero`).

    Parameters
    ----------
    counts
        ``(n,)`` held-back counts.
    estimate
        ``(n,)`` their log-normalised estimates, made without them.
    library
        ``(n,)`` library of each entry's spot (the counts the estimate saw).
    target_sum
        Target sum of the log-normalisation.
    seed
        Seed of the binomial split.

    Returns
    -------
    :math:`\phi \ge 0` (0: a zero says nothing beyond the estimate).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> mu = rng.gamma(2.0, 1.0, 20000)  # the estimate: the prior mean of each rate
    >>> rate = mu * rng.gamma(1 / 0.5, 0.5, mu.size)  # true rates scatter around it, CV^2 = 0.5
    >>> counts = rng.poisson(rate)
    >>> est = np.log1p(mu)  # target sum = library = 1
    >>> 0.3 < fit_zero_dispersion(counts, est, np.ones(mu.size), 1.0) < 0.8
    True
    """
    from scipy.special import gammaln

    counts = np.asarray(counts, dtype=np.int64)
    lib = np.asarray(library, dtype=np.float64)
    mu = np.expm1(np.asarray(estimate, dtype=np.float64)) * lib / float(target_sum)
    first = np.random.default_rng([int(seed), 0x2E50]).binomial(counts, 0.5)
    keep = (first == 0) & (mu > 0) & (lib > 0)
    y, m = (counts - first)[keep].astype(np.float64), mu[keep]
    if y.size < 100:
        return 0.0

    def loglik(phi: float) -> float:
        mean = (m / 2.0) / (1.0 + phi * m / 2.0)
        if phi == 0.0:
            return float(np.sum(y * np.log(mean) - mean - gammaln(y + 1)))
        r = 1.0 / phi
        p = mean / (mean + r)  # negative binomial with mean `mean` and size r
        return float(np.sum(gammaln(y + r) - gammaln(r) - gammaln(y + 1) + r * np.log1p(-p) + y * np.log(p)))

    return float(max(DISPERSION_GRID, key=loglik))


def condition_on_zero(values: np.ndarray, library: np.ndarray, target_sum: float, dispersion: float) -> np.ndarray:
    r"""Move log-normalised estimates of entries whose count is 0 to the gamma-Poisson posterior mean.

    With :math:`m = \operatorname{expm1}(v)\,\ell/s` the expected count, the estimate becomes
    :math:`\log(1 + s\,m/((1 + \phi m)\,\ell))`. Spots with library 0 keep their values.

    Parameters
    ----------
    values
        Log-normalised estimates (any shape broadcasting with ``library``).
    library
        Libraries of the entries' spots, broadcastable to ``values``.
    target_sum
        Target sum of the log-normalisation.
    dispersion
        :math:`\phi` (:func:`fit_zero_dispersion`); 0 returns ``values``.

    Returns
    -------
    Array of the shape and dtype of ``values``.

    Examples
    --------
    >>> import numpy as np
    >>> v = np.log1p(np.array([[1.0, 4.0]]))  # expected counts 1 and 4 at library = target sum
    >>> np.expm1(condition_on_zero(v, np.array([[100.0]]), 100.0, 0.5)).round(4).tolist()  # 1/1.5, 4/3
    [[0.6667, 1.3333]]
    """
    values = np.asarray(values)
    if dispersion == 0.0:
        return values
    lib = np.asarray(library, dtype=np.float64)
    m = np.expm1(values.astype(np.float64)) * lib / float(target_sum)
    out = np.log1p(m / (1.0 + dispersion * m) * float(target_sum) / np.where(lib > 0, lib, 1.0))
    return np.where(lib > 0, out, values).astype(values.dtype, copy=False)
