"""Seeded hold-out protocols: hide observed entries, keep their log-normalised truth for scoring."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from stmcdi._validation import check_counts, get_layer, missing_mask
from stmcdi.pp._normalize import default_target_sum, library_size

PROTOCOLS: tuple[str, ...] = ("entries", "nonzero", "spots", "genes", "thin")


@dataclass(repr=False, eq=False)
class HeldOut:
    """One hold-out split: the masked data, the scored entries and their truth.

    Attributes
    ----------
    adata
        What every method sees: the masked counts (in the same layer, or ``X``; held-out entries are NaN, or for
        ``protocol="thin"`` the visible thinned counts, with no NaN), the coordinates (``obsm`` keys containing
        "spatial") and the non-numeric ``obs`` columns. Nothing computed from the full counts is kept.
    mask
        Boolean CSR ``(n_obs, n_vars)``: the entries to score.
    truth
        float32 ``(n_scored,)``: the log-normalised truth at the scored entries, in ``mask.nonzero()`` order
        (row-major).
    protocol
        The hold-out protocol (see :func:`hold_out`).
    ratio
        The hold-out ratio.
    seed
        The seed of the random generator.
    layer
        The layer holding the counts (``None``: ``X``).
    target_sum
        Target sum of the masked data (median observed library size): the scale predictions must be on,
        i.e. what :func:`stmcdi.pp.log_normalize` gives the masked data.

    Examples
    --------
    :func:`hold_out` makes the split:

    >>> import numpy as np
    >>> from anndata import AnnData
    >>> rng = np.random.default_rng(0)
    >>> adata = AnnData(rng.poisson(3.0, size=(50, 20)).astype(np.float32))
    >>> held = hold_out(adata, "entries", 0.1, seed=0)
    >>> held
    HeldOut(protocol='entries', ratio=0.1, seed=0, layer=None, shape=(50, 20), n_scored=100, target_sum=...)
    >>> held.mask.shape, held.truth.shape, held.truth.dtype
    ((50, 20), (100,), dtype('float32'))
    >>> rows, cols = held.mask.nonzero()  # the order of ``truth``
    >>> bool(np.isnan(held.adata.X[rows, cols]).all())
    True
    """

    adata: AnnData
    mask: sp.csr_matrix
    truth: np.ndarray
    protocol: str
    ratio: float
    seed: int
    layer: str | None
    target_sum: float
    _zstats: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False)

    @property
    def n_scored(self) -> int:
        """Number of scored entries.

        Returns
        -------
        ``int``: the number of nonzero entries of ``mask``, which is also the length of ``truth``.

        Examples
        --------
        >>> import numpy as np
        >>> from anndata import AnnData
        >>> adata = AnnData(np.random.default_rng(0).poisson(3.0, size=(50, 20)).astype(np.float32))
        >>> held = hold_out(adata, "spots", 0.2, seed=0)
        >>> held.n_scored  # 10 whole spots of 20 genes
        200
        >>> held.n_scored == len(held.truth)
        True
        """
        return int(self.mask.nnz)

    def __repr__(self) -> str:
        n_obs, n_vars = self.mask.shape
        return (
            f"HeldOut(protocol={self.protocol!r}, ratio={self.ratio}, seed={self.seed}, layer={self.layer!r}, "
            f"shape=({n_obs}, {n_vars}), n_scored={self.n_scored}, target_sum={self.target_sum:.4g})"
        )


def _check_args(protocol: str, ratio: float, seed: int) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown hold-out protocol {protocol!r}; choose one of {list(PROTOCOLS)}.")
    if isinstance(ratio, bool) or not isinstance(ratio, int | float | np.floating | np.integer):
        raise TypeError(f"`ratio` must be a number in (0, 1), got {type(ratio).__name__}.")
    if not 0.0 < float(ratio) < 1.0:
        raise ValueError(
            f"`ratio` must lie strictly between 0 and 1 (the fraction held out), got {ratio}. "
            "For example `ratio=0.1` holds out 10% (use 0.5 for protocol='thin')."
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"`seed` must be an integer, got {type(seed).__name__}.")


def _per_gene_pick(eligible: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """In each column pick ``round(ratio * n_eligible)`` eligible rows uniformly at random (vectorised)."""
    k = np.round(ratio * eligible.sum(axis=0)).astype(np.int64)
    keys = rng.random(eligible.shape)
    keys[~eligible] = np.inf
    picked = np.zeros(eligible.shape, dtype=bool)
    step = 1024  # columns at a time, to bound the memory of the argsort
    for start in range(0, eligible.shape[1], step):
        sl = slice(start, start + step)
        order = np.argsort(keys[:, sl], axis=0, kind="stable")
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(order.shape[0])[:, None], axis=0)
        picked[:, sl] = (ranks < k[None, sl]) & eligible[:, sl]
    return picked


def _panel_genes(adata: AnnData, masked: np.ndarray, panel: dict) -> np.ndarray:
    """Boolean mask of the genes :func:`stmcdi.pp.select_genes` picks on the masked counts."""
    from stmcdi.pp import select_genes

    tmp = AnnData(sp.csr_matrix(masked.astype(np.float32)), var=adata.var[[]].copy())
    kwargs = {k: v for k, v in panel.items() if k not in ("layer", "subset", "key_added")}
    select_genes(tmp, **kwargs)
    return tmp.var["highly_variable"].to_numpy()


def _take(keep: np.ndarray, adata: AnnData, *arrays: np.ndarray) -> tuple:
    """``adata`` (a view: :func:`hold_out` copies it once, at the end) and every array restricted to ``keep``."""
    return (adata[:, keep], *(a[:, keep] for a in arrays))


def _lognorm_truth(counts: np.ndarray, library: np.ndarray, target_sum: float) -> np.ndarray:
    scale = np.divide(target_sum, library, out=np.zeros_like(library), where=library > 0)
    return np.log1p(counts * scale[:, None])


def _store_like(original, dense: np.ndarray):
    """Return ``dense`` in the storage format of ``original`` (CSR/CSC sparse or dense), float dtype."""
    dtype = original.dtype if np.issubdtype(original.dtype, np.floating) else np.float32
    dense = dense.astype(dtype, copy=False)
    if sp.issparse(original):
        out = sp.csr_matrix(dense)  # NaN != 0, so held-out entries are stored explicitly
        return out.tocsc() if original.format == "csc" else out
    return dense


def _visible_copy(adata: AnnData, counts, layer: str | None) -> AnnData:
    """What the methods of a split see: the masked counts, the coordinates and the labels, nothing else.

    Everything that may have been computed from the full counts is left out: other layers, numeric ``obs`` and
    ``var`` columns (totals, QC metrics), ``obsm`` entries other than coordinates (embeddings), ``obsp`` and
    ``uns``. Categorical, string and boolean ``obs`` columns (sections, annotations) are kept.
    """
    import pandas as pd

    keep = [c for c in adata.obs.columns
            if not pd.api.types.is_numeric_dtype(adata.obs[c]) or pd.api.types.is_bool_dtype(adata.obs[c])]
    obsm = {k: np.array(v, copy=True) for k, v in adata.obsm.items() if "spatial" in k and np.ndim(v) == 2
            and np.shape(v)[1] in (2, 3)}
    out = AnnData(X=counts if layer is None else None, obs=adata.obs[keep].copy(), var=adata.var[[]].copy(),
                  obsm=obsm)
    if layer is not None:
        out.layers[layer] = counts
    return out


def hold_out(
    adata: AnnData,
    protocol: str = "entries",
    ratio: float = 0.1,
    *,
    seed: int = 0,
    layer: str | None = None,
    panel: dict | None = None,
) -> HeldOut:
    """Hold out observed entries of a count matrix with a seeded protocol.

    Entries that are already missing (NaN) are never held out and never scored. The input is not modified.
    With ``panel``, the gene panel is chosen after the hold-out, on the masked (visible) counts only, and the
    split is restricted to it: nothing about the held-out entries reaches the choice of genes.

    Protocols (a :class:`numpy.random.Generator` seeded with ``seed`` draws everything):

    ``"entries"``
        In each gene, ``round(ratio * n_observed)`` observed entries, zeros included (the stMCDI paper).
    ``"nonzero"``
        In each gene, ``round(ratio * n_nonzero)`` of its observed nonzero entries (simulated dropout).
    ``"spots"``
        ``round(ratio * n_obs)`` whole spots (at least 1, at most ``n_obs - 1``).
    ``"genes"``
        ``max(1, round(ratio * n_vars))`` genes, each hidden in one random half of the spots (the same half
        for every held-out gene).
    ``"thin"``
        Molecular cross-validation (Batson et al., 2019): every count ``c`` is split into visible
        ``Binomial(c, 1 - ratio)`` and held-out ``c - visible``. ``adata`` holds the visible counts; the scored
        entries are the visible zeros (what an imputer fills with ``target="zeros"``) and the truth is the
        held-out counts log-normalised with the held-out part's own library sizes to the visible data's
        target sum. ``ratio=0.5`` is the recommended value.

    For the other protocols the truth is ``log1p(count * target_sum / library)``, with ``library`` the spot's
    observed library in the masked data and ``target_sum`` the masked data's median library: exactly the scale
    :func:`stmcdi.pp.log_normalize` gives the masked data. Spots left with no observed count (``"spots"``) use
    their full library instead.

    Parameters
    ----------
    adata
        Annotated data with raw counts (NaN marks missing entries).
    protocol
        One of ``"entries"``, ``"nonzero"``, ``"spots"``, ``"genes"``, ``"thin"``.
    ratio
        Fraction held out, in ``(0, 1)``.
    seed
        Seed of the random generator.
    layer
        Layer with the counts; ``None`` uses ``adata.X``.
    panel
        Arguments of :func:`stmcdi.pp.select_genes` (e.g. ``{"n_top_genes": 1000, "flavor": "seurat_v3"}``),
        applied to the masked counts (held-out entries NaN; the visible counts for ``"thin"``); the returned
        split keeps the selected genes only, and library sizes, target sum and truth are those of the panel.
        ``None`` keeps every gene. Holding out per gene and then keeping a subset of genes is the same split
        on those genes.

    Returns
    -------
    The :class:`HeldOut` split: masked copy, scored-entry mask, truth and the target sum.

    Examples
    --------
    >>> import numpy as np
    >>> from anndata import AnnData
    >>> rng = np.random.default_rng(0)
    >>> adata = AnnData(rng.poisson(3.0, size=(50, 20)).astype(np.float32))
    >>> held = hold_out(adata, "entries", 0.1, seed=0)
    >>> held.n_scored, int(np.isnan(held.adata.X).sum())
    (100, 100)
    >>> held = hold_out(adata, "entries", 0.1, seed=0, panel={"n_top_genes": 5, "flavor": "cv", "min_detection": 0})
    >>> held.adata.n_vars, held.mask.shape
    (5, (50, 5))
    """
    _check_args(protocol, ratio, seed)
    ratio = float(ratio)
    seed = int(seed)
    what = f"adata.layers[{layer!r}]" if layer is not None else "adata.X"
    X = get_layer(adata, layer)
    miss = missing_mask(X)
    check_counts(X, miss, what)
    n_obs, n_vars = X.shape
    if n_obs < 2 or n_vars < 1:
        raise ValueError(f"{what} has shape {X.shape}; hold-out needs at least 2 spots and 1 gene.")

    counts = X.toarray() if sp.issparse(X) else np.array(X)
    counts = counts.astype(np.float64, copy=False)
    observed = ~np.isnan(counts)
    if not observed.any():
        raise ValueError(f"{what} has no observed (non-NaN) entry to hold out.")
    rng = np.random.default_rng(seed)

    if protocol == "thin":
        c = np.where(observed, counts, 0.0).astype(np.int64)
        visible = rng.binomial(c, 1.0 - ratio).astype(np.float64)
        held_counts = c - visible
        scored = observed & (visible == 0)
        masked = np.where(observed, visible, np.nan)
        if panel is not None:
            keep = _panel_genes(adata, masked, panel)
            adata, counts, observed, scored, masked = _take(keep, adata, counts, observed, scored, masked)
            held_counts = held_counts[:, keep]
        vis_lib = library_size(masked)
        target_sum = default_target_sum(vis_lib)
        truth_dense = _lognorm_truth(held_counts, held_counts.sum(axis=1), target_sum)
    else:
        if protocol == "entries":
            scored = _per_gene_pick(observed, ratio, rng)
        elif protocol == "nonzero":
            scored = _per_gene_pick(observed & (counts > 0), ratio, rng)
        elif protocol == "spots":
            k = int(min(max(round(ratio * n_obs), 1), n_obs - 1))
            rows = rng.choice(n_obs, size=k, replace=False)
            scored = np.zeros_like(observed)
            scored[rows] = observed[rows]
        else:  # genes
            k = int(max(1, round(ratio * n_vars)))
            genes = rng.choice(n_vars, size=k, replace=False)
            half = rng.choice(n_obs, size=n_obs // 2, replace=False)
            scored = np.zeros_like(observed)
            scored[np.ix_(half, genes)] = observed[np.ix_(half, genes)]
        masked = np.where(scored, np.nan, counts)
        if panel is not None:
            keep = _panel_genes(adata, masked, panel)
            adata, counts, observed, scored, masked = _take(keep, adata, counts, observed, scored, masked)
        lib = library_size(masked)
        target_sum = default_target_sum(lib)
        full_lib = library_size(counts)
        lib = np.where(lib > 0, lib, full_lib)
        truth_dense = _lognorm_truth(np.where(observed, counts, 0.0), lib, target_sum)

    if not scored.any():
        raise ValueError(
            f"protocol={protocol!r} with ratio={ratio} selects no entry to score on data of shape {X.shape} "
            "(too few observed entries, or all counts nonzero for 'thin'). Increase `ratio` or use more data."
        )
    mask = sp.csr_matrix(scored)
    mask.sort_indices()
    r, c_idx = mask.nonzero()
    truth = truth_dense[r, c_idx].astype(np.float32)

    out = _visible_copy(adata, _store_like(X, masked), layer)
    return HeldOut(adata=out, mask=mask, truth=truth, protocol=protocol, ratio=ratio, seed=seed, layer=layer,
                   target_sum=float(target_sum))
