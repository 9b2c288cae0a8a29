"""Classical estimates of every entry and their least-squares stack, chosen on held-back entries.

Every estimate here reads a log-normalised ``(n_obs, n_vars)`` matrix with NaN at the entries it must not see
and gives a value for **every** entry (an observed entry gets what the estimator would say from the other
entries: a neighbour average never includes the spot itself). The same code serves two purposes:

- the baselines of :mod:`stmcdi.benchmark` (each one tuned on an inner hold-out of observed entries);
- the read-out of :class:`~stmcdi.STMCDI`, which stacks the network's estimate with these estimates, the
  weights fitted on entries held back from training (a super learner).

Values are evaluated in blocks of spots (:meth:`Estimate.block`), so that no more than the data and one block of
each estimate are held at once.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

#: spots per block when estimates are evaluated block by block
BLOCK = 2048
#: held-back fraction of the observed entries of the held-back spots
HELD_BACK_FRACTION = 0.05
#: most spots the held-back entries are drawn from (bounds the cost of scoring them)
HELD_BACK_SPOTS = 1024
#: candidate numbers of expression neighbours
EXPRESSION_KS = (5, 10, 20, 40)
#: candidate rank caps of soft-impute, and thresholds (fractions of the top singular value), largest first
SOFT_IMPUTE_RANKS = (2, 5, 10, 20, 40)
SOFT_IMPUTE_FRACTIONS = (0.5, 0.35, 0.25, 0.18, 0.12, 0.08, 0.05, 0.03)
#: tissue neighbourhoods averaged by the spatial components: the nearest ring and about two rings of spots
SPATIAL_KS = (6, 18)
#: most spots soft-impute is tuned on (the held-back spots and others at random); the final fit uses every spot
TUNE_SPOTS = 2048
#: second word of the seed of the held-back draw, so that it does not share a stream with a hold-out split
_HELD_BACK_STREAM = 0x5CA1E


def column_means(x: np.ndarray) -> np.ndarray:
    """Mean of each column over its observed (non-NaN) entries; the overall mean for a column with none.

    Parameters
    ----------
    x
        ``(n_obs, n_vars)`` values, NaN at missing entries.

    Returns
    -------
    float64 ``(n_vars,)``.

    Examples
    --------
    >>> import numpy as np
    >>> column_means(np.array([[1.0, np.nan], [3.0, np.nan]])).tolist()
    [2.0, 2.0]
    """
    obs = ~np.isnan(x)
    n = obs.sum(axis=0)
    s = np.where(obs, x, 0.0).sum(axis=0, dtype=np.float64)
    overall = float(s.sum() / n.sum()) if n.sum() else 0.0
    return np.divide(s, n, out=np.full(x.shape[1], overall), where=n > 0)


def held_back_entries(observed, seed: int = 0, *, fraction: float = HELD_BACK_FRACTION,
                      max_spots: int = HELD_BACK_SPOTS, nonzero=None) -> sp.csr_matrix:
    """Draw observed entries to hold back from a fit, to choose and weigh estimates on them.

    ``fraction`` of the observed entries (of the observed nonzero entries with ``nonzero``) of at most
    ``max_spots`` random spots, at least one per gene where a gene has two or more candidates there.

    Parameters
    ----------
    observed
        Boolean ``(n_obs, n_vars)`` (dense or sparse): the entries that may be held back.
    seed
        Seed of the draw (with a stream word of its own).
    fraction
        Fraction of the candidates held back, in ``(0, 0.5]``.
    max_spots
        Most spots drawn from.
    nonzero
        Optional boolean ``(n_obs, n_vars)``: restrict the candidates to these entries.

    Returns
    -------
    Boolean CSR ``(n_obs, n_vars)``.

    Examples
    --------
    >>> import numpy as np
    >>> held = held_back_entries(np.ones((100, 10), dtype=bool), seed=0, fraction=0.1)
    >>> held.shape, 50 < held.nnz < 150
    ((100, 10), True)
    """
    obs = observed.toarray() if sp.issparse(observed) else np.asarray(observed, dtype=bool)
    if nonzero is not None:
        obs = obs & (nonzero.toarray() if sp.issparse(nonzero) else np.asarray(nonzero, dtype=bool))
    n_obs, n_vars = obs.shape
    rng = np.random.default_rng([int(seed), _HELD_BACK_STREAM])
    spots = np.sort(rng.choice(n_obs, size=min(n_obs, int(max_spots)), replace=False))
    cand = obs[spots]
    pick = (rng.random(cand.shape) < fraction) & cand
    # every gene with two candidates or more gets at least one held-back entry
    empty = ~pick.any(axis=0) & (cand.sum(axis=0) >= 2)
    for g in np.flatnonzero(empty):
        pick[rng.choice(np.flatnonzero(cand[:, g])), g] = True
    rows, cols = np.nonzero(pick)
    return sp.csr_matrix((np.ones(rows.size, dtype=bool), (spots[rows], cols)), shape=(n_obs, n_vars))


def hide(x: np.ndarray, entries: sp.spmatrix | None) -> np.ndarray:
    """Copy of ``x`` (float32) with ``entries`` set to NaN."""
    out = np.array(x, dtype=np.float32)
    if entries is not None and entries.nnz:
        r, c = entries.nonzero()
        out[r, c] = np.nan
    return out


# ----------------------------------------------------------------------------------------------- estimates
class Estimate:
    """An estimate of every entry of a ``(n_obs, n_vars)`` matrix, evaluated block by block."""

    name: str = "estimate"
    shape: tuple[int, int]

    def block(self, rows: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        """float32 ``(len(rows), n_vars)`` values of spots ``rows``."""
        raise NotImplementedError

    def at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """float64 values at the entries ``(rows, cols)``."""
        out = np.empty(rows.size, dtype=np.float64)
        for spots, where in _by_blocks(rows):
            out[where] = self.block(spots)[np.searchsorted(spots, rows[where]), cols[where]]
        return out

    def dense(self) -> np.ndarray:
        """float32 ``(n_obs, n_vars)`` array of every value."""
        out = np.empty(self.shape, dtype=np.float32)
        for start in range(0, self.shape[0], BLOCK):
            rows = np.arange(start, min(start + BLOCK, self.shape[0]))
            out[rows] = self.block(rows)
        return out


def _by_blocks(rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Group entry rows into blocks of at most ``BLOCK`` distinct spots: ``(spots, entry positions)``."""
    spots = np.unique(rows)
    for start in range(0, spots.size, BLOCK):
        chunk = spots[start:start + BLOCK]
        yield chunk, np.flatnonzero(np.isin(rows, chunk))


class GeneMean(Estimate):
    """Each gene's mean over its observed entries."""

    name = "gene_mean"

    def __init__(self, x: np.ndarray):
        self.shape = x.shape
        self.mean = column_means(x).astype(np.float32)

    def block(self, rows):
        return np.broadcast_to(self.mean, (len(rows), self.shape[1])).copy()


class TwoWay(GeneMean):
    """Gene mean plus the spot's mean deviation from the gene means over its observed entries (its depth)."""

    name = "spot_depth"

    def __init__(self, x: np.ndarray):
        super().__init__(x)
        obs = ~np.isnan(x)
        n = obs.sum(axis=1)
        dev = np.where(obs, x - self.mean, 0.0).sum(axis=1, dtype=np.float64)
        self.offset = np.divide(dev, n, out=np.zeros(x.shape[0]), where=n > 0).astype(np.float32)

    def block(self, rows):
        return self.mean[None, :] + self.offset[rows, None]


class NeighbourMean(Estimate):
    """Mean of a gene over a spot's neighbours (the spot excluded) where it is observed; else the gene mean.

    Parameters
    ----------
    values
        ``(n_obs, n_vars)`` values to average, NaN where unobserved; or an :class:`Estimate` (averaged whole).
    table
        int64 ``(n_obs, k)`` neighbours of each spot (never the spot itself).
    name
        Name of the estimate.
    """

    def __init__(self, values, table: np.ndarray, name: str = "neighbour_mean"):
        self.source = values
        self.table = np.asarray(table, dtype=np.int64)
        self.name = name
        if isinstance(values, Estimate):
            self.shape = values.shape
            self.mean = None
        else:
            self.shape = values.shape
            self.mean = column_means(values).astype(np.float32)
        if self.table.ndim != 2 or self.table.shape[0] != self.shape[0]:
            raise ValueError(f"The neighbour table has shape {self.table.shape}; expected ({self.shape[0]}, k).")

    def block(self, rows):
        nb = self.table[rows]  # (b, k)
        if isinstance(self.source, Estimate):
            uniq, inv = np.unique(nb, return_inverse=True)
            vals = self.source.block(uniq)[inv.reshape(nb.shape)]  # (b, k, g)
            return vals.mean(axis=1).astype(np.float32)
        vals = self.source[nb]  # (b, k, g)
        obs = ~np.isnan(vals)
        n = obs.sum(axis=1)
        s = np.where(obs, vals, 0.0).sum(axis=1, dtype=np.float64)
        return np.where(n > 0, s / np.maximum(n, 1), self.mean[None, :]).astype(np.float32)


class LowRank(Estimate):
    """Soft-impute (Mazumder, Hastie & Tibshirani 2010): a soft-thresholded low-rank fit of the observed entries.

    The matrix is centred on the gene means; the unobserved entries start at 0 and are replaced by the
    reconstruction ``U max(S - lambda, 0) V^T`` of a rank-``rank`` randomised SVD until the reconstruction
    changes by less than ``tol`` (relative). Stored as factors: ``block`` evaluates the reconstruction.

    Parameters
    ----------
    x
        ``(n_obs, n_vars)`` values, NaN at unobserved entries.
    rank
        Most singular values kept.
    fraction
        The threshold ``lambda`` as a fraction of the top singular value of the centred, zero-filled matrix.
    seed
        Seed of the randomised SVD.
    start
        Optional :class:`LowRank` fitted on the same entries to start from (a warm start along a path of
        thresholds).
    """

    name = "soft_impute"

    def __init__(self, x: np.ndarray, rank: int, fraction: float, *, seed: int = 0, start: LowRank | None = None,
                 max_iter: int = 100, tol: float = 1e-4):
        from sklearn.utils.extmath import randomized_svd

        self.shape = x.shape
        self.rank, self.fraction = int(rank), float(fraction)
        miss = np.isnan(x)
        self.mu = column_means(x).astype(np.float32)
        xc = np.where(miss, np.float32(0.0), x - self.mu).astype(np.float32)
        k = int(max(1, min(self.rank, min(x.shape) - 1)))
        top = start.top if start is not None else float(randomized_svd(xc, 1, random_state=seed)[1][0])
        self.top = top
        lam = self.fraction * top
        z = None if start is None else start._centred()
        for _ in range(int(max_iter)):
            filled = xc if z is None else np.where(miss, z, xc)
            u, s, vt = randomized_svd(filled, k, n_iter=4, random_state=seed)
            s = np.maximum(s - lam, 0.0)
            new = (u * s) @ vt
            change = 1.0 if z is None else float(((new - z) ** 2).sum() / max((z * z).sum(), 1e-12))
            z = new.astype(np.float32)
            self.u, self.s, self.vt = u.astype(np.float32), s.astype(np.float32), vt.astype(np.float32)
            if not miss.any() or change < tol:
                break

    def _centred(self) -> np.ndarray:
        return (self.u * self.s) @ self.vt

    def block(self, rows):
        return ((self.u[rows] * self.s) @ self.vt + self.mu).astype(np.float32)


class ExpressionNeighbours:
    """Nearest spots in expression space: principal components of the standardised, mean-filled values.

    The one expression-space kNN of stmcdi: each gene is centred and scaled by its observed entries, missing
    entries are set to its mean (0), and spots are compared by Euclidean distance over the first ``n_pcs``
    principal components (as MAGIC and :func:`scanpy.pp.neighbors` compare them).

    Parameters
    ----------
    x
        ``(n_obs, n_vars)`` log-normalised values, NaN at missing entries.
    n_pcs
        Principal components (at most ``min(n_obs, n_vars) - 1``).
    seed
        Seed of the randomised PCA on large matrices.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[9, 0, 1], [8, 0, 2], [0, 9, 1], [0, 8, 2]], dtype=float)
    >>> ExpressionNeighbours(x, n_pcs=2).table(1)[:, 0].tolist()
    [1, 0, 3, 2]
    """

    def __init__(self, x: np.ndarray, n_pcs: int = 30, seed: int = 0):
        from sklearn.decomposition import PCA

        n_obs, n_vars = x.shape
        obs = ~np.isnan(x)
        self.gene_mean = column_means(x).astype(np.float32)
        n = np.maximum(obs.sum(axis=0), 1)
        sd = np.sqrt(np.where(obs, (x - self.gene_mean) ** 2, 0.0).sum(axis=0) / n)
        self.gene_sd = np.where(sd > 1e-8, sd, 1.0).astype(np.float32)
        z = self.standardise(x)
        n_pcs = int(max(1, min(n_pcs, min(n_obs, n_vars) - 1)))
        self.pca = PCA(n_components=n_pcs, random_state=seed).fit(z)
        #: ``(n_obs, n_pcs)`` coordinates of every spot
        self.coords = self.pca.transform(z).astype(np.float32)
        self._sq = (self.coords * self.coords).sum(axis=1)

    @property
    def n_obs(self) -> int:
        """Number of spots."""
        return self.coords.shape[0]

    def standardise(self, x: np.ndarray) -> np.ndarray:
        """Standardised values, 0 where ``x`` is NaN."""
        return np.where(np.isnan(x), 0.0, (x - self.gene_mean) / self.gene_sd).astype(np.float32)

    def table(self, n_neighbors: int) -> np.ndarray:
        """Each spot's ``n_neighbors`` nearest other spots, nearest first: int64 ``(n_obs, n_neighbors)``."""
        return self.query(self.coords, np.arange(self.n_obs), n_neighbors)

    def place(self, x: np.ndarray) -> np.ndarray:
        """Coordinates of spots given as ``(B, n_vars)`` values (NaN where hidden)."""
        return self.pca.transform(self.standardise(x)).astype(np.float32)

    def query(self, coords: np.ndarray, rows: np.ndarray, n_neighbors: int) -> np.ndarray:
        """The ``n_neighbors`` nearest spots of points ``coords`` (spots ``rows``, never their own neighbour)."""
        if not 1 <= n_neighbors < self.n_obs:
            raise ValueError(f"n_neighbors must be in [1, n_obs - 1] = [1, {self.n_obs - 1}], got {n_neighbors}.")
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.size, n_neighbors), dtype=np.int64)
        k = n_neighbors + 1
        step = int(max(1, min(BLOCK, 2**24 // self.n_obs)))  # at most 64 MB of distances at once
        for start in range(0, rows.size, step):
            q = coords[start:start + step]
            d = (q * q).sum(1)[:, None] - 2.0 * q @ self.coords.T + self._sq[None, :]
            d[np.arange(len(q)), rows[start:start + step]] = np.inf  # never its own neighbour
            part = np.argpartition(d, k - 1, axis=1)[:, :k]
            order = np.take_along_axis(d, part, axis=1).argsort(axis=1, kind="stable")
            out[start:start + len(q)] = np.take_along_axis(part, order, axis=1)[:, :n_neighbors]
        return out


def mse_at(estimate: Estimate, x: np.ndarray, entries: sp.spmatrix) -> float:
    """Mean squared error of an estimate at ``entries`` against the values of ``x`` there."""
    r, c = entries.nonzero()
    return float(np.mean((estimate.at(r, c) - x[r, c]) ** 2))


def tune_soft_impute(xin: np.ndarray, x: np.ndarray, held: sp.spmatrix, seed: int = 0) -> tuple[int, float]:
    """Rank cap and threshold of :class:`LowRank` with the least squared error at ``held``.

    For each rank cap, thresholds go from the largest to the smallest with warm starts (a regularisation path).
    ``xin`` is ``x`` with ``held`` hidden. On sections of more than ``TUNE_SPOTS`` spots the path is fitted on
    the spots holding held-back entries and others drawn at random, up to ``TUNE_SPOTS``.
    """
    if x.shape[0] > TUNE_SPOTS:
        held = sp.csr_matrix(held)
        have = np.unique(held.nonzero()[0])
        rest = np.setdiff1d(np.arange(x.shape[0]), have)
        extra = np.random.default_rng(seed).choice(rest, size=max(0, min(rest.size, TUNE_SPOTS - have.size)),
                                                    replace=False)
        spots = np.sort(np.concatenate([have, extra]))
        return tune_soft_impute(xin[spots], x[spots], held[spots], seed)
    best = (np.inf, SOFT_IMPUTE_RANKS[0], SOFT_IMPUTE_FRACTIONS[0])
    for rank in SOFT_IMPUTE_RANKS:
        if rank >= min(x.shape):
            break
        fit, path_best, worse = None, np.inf, 0
        for frac in SOFT_IMPUTE_FRACTIONS:
            fit = LowRank(xin, rank, frac, seed=seed, start=fit)
            err = mse_at(fit, x, held)
            if err < best[0]:
                best = (err, rank, frac)
            worse = worse + 1 if err >= path_best else 0
            path_best = min(path_best, err)
            if worse == 2:  # past the minimum of the path: smaller thresholds only fit noise
                break
        if best[1] != rank and rank > best[1]:  # a larger rank cap did not help: nor will larger ones
            break
    return best[1], best[2]


def tune_neighbours(xin: np.ndarray, x: np.ndarray, held: sp.spmatrix, table: np.ndarray,
                    candidates) -> int:
    """Number of neighbours (a prefix of ``table``'s columns) with the least squared error at ``held``."""
    errs = {k: mse_at(NeighbourMean(xin, table[:, :k]), x, held) for k in candidates if k <= table.shape[1]}
    return min(errs, key=errs.get)
