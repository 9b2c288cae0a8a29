"""Minibatches that carry each spot's L-hop spatial neighbourhood.

scvi-tools' :class:`~scvi.dataloaders.AnnDataLoader` yields the neighbour-table rows of a batch of spots;
:class:`NeighborhoodCollate` turns them into the subgraph the encoder needs: the batch's spots (first),
the spots within ``n_hops`` of them, their counts, library sizes and the local edges, and, with
``n_expression_neighbors``, the counts of each spot's nearest spots in expression space
(:func:`expression_neighbor_table`). The cost of a step depends on the batch size and ``k``, never on the
number of spots in the section, and the module holds no data (safe for EMA copies and DDP).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scvi.data import AnnDataManager
from scvi.dataloaders import DataSplitter

from ._constants import BATCH_KEYS, REGISTRY_KEYS
from ._validation import missing_mask
from .pp._normalize import library_size


class ExpressionSpace:
    """The principal-component space in which the expression neighbours are chosen.

    The counts are log-normalised with library sizes from the observed entries (median target sum), each
    gene is centred and scaled by its observed entries, missing entries are set to 0 (the gene's mean),
    and the spots are compared by Euclidean distance over the first ``n_pcs`` principal components, as
    MAGIC and scanpy's ``pp.neighbors`` do. Besides every spot's neighbours (:meth:`table`), the space
    places a spot with some of its entries hidden (:meth:`query`): training chooses a spot's neighbours
    without its training targets, as imputation chooses them without the entries it fills.

    Parameters
    ----------
    counts
        ``(n_obs, n_vars)`` dense or sparse counts; NaN marks missing entries.
    missing
        Optional boolean ``(n_obs, n_vars)`` matrix of further missing entries.
    n_pcs
        Principal components (at most ``min(n_obs, n_vars) - 1``).
    seed
        Seed of the randomised PCA solver on large sections.

    Examples
    --------
    >>> import numpy as np
    >>> counts = np.array([[9, 0, 1], [8, 0, 2], [0, 9, 1], [0, 8, 2]], dtype=float)
    >>> space = ExpressionSpace(counts, n_pcs=2)
    >>> space.table(1)[:, 0].tolist()
    [1, 0, 3, 2]
    >>> hide = np.array([[True, False, False]])  # spot 0 without its first gene
    >>> space.query(counts[[0]], np.array([0]), 1, hidden=hide).shape
    (1, 1)
    """

    def __init__(self, counts, missing: sp.csr_matrix | None = None, n_pcs: int = 10, seed: int = 0):
        from sklearn.decomposition import PCA

        from .pp._normalize import log_normalize

        n_obs, n_vars = counts.shape
        x, library, target_sum = log_normalize(counts, missing_mask(counts, missing))
        obs = ~np.isnan(x)
        n = np.maximum(obs.sum(axis=0), 1)
        mean = np.where(obs, x, 0.0).sum(axis=0) / n
        sd = np.sqrt(np.where(obs, (x - mean) ** 2, 0.0).sum(axis=0) / n)
        self.gene_mean = mean.astype(np.float32)
        self.gene_sd = np.where(sd > 1e-8, sd, 1.0).astype(np.float32)
        self.library = np.asarray(library, dtype=np.float64)
        self.target_sum = float(target_sum)
        z = np.where(obs, (x - self.gene_mean) / self.gene_sd, 0.0).astype(np.float32)
        n_pcs = int(max(1, min(n_pcs, min(n_obs, n_vars) - 1)))
        self.pca = PCA(n_components=n_pcs, random_state=seed).fit(z)
        #: ``(n_obs, n_pcs)`` coordinates of every spot, from all its observed entries
        self.coords = self.pca.transform(z).astype(np.float32)
        self._sq_norms = (self.coords * self.coords).sum(axis=1)  # for the distances of every query

    @property
    def n_obs(self) -> int:
        """Number of spots."""
        return self.coords.shape[0]

    def table(self, n_neighbors: int) -> np.ndarray:
        """Each spot's ``n_neighbors`` nearest other spots, nearest first: int64 ``(n_obs, n_neighbors)``."""
        from sklearn.neighbors import NearestNeighbors

        self._check(n_neighbors)
        idx = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(self.coords).kneighbors(
            self.coords, return_distance=False)
        return _drop_self(idx, np.arange(self.n_obs), n_neighbors)

    def query(
        self, counts: np.ndarray, rows: np.ndarray, n_neighbors: int, hidden: np.ndarray | None = None,
        library: np.ndarray | None = None,
    ) -> np.ndarray:
        """Nearest spots of spots ``rows`` placed from their visible entries only.

        Parameters
        ----------
        counts
            Dense ``(B, n_vars)`` counts of the spots ``rows``; NaN marks missing entries.
        rows
            ``(B,)`` their row indices (a spot is never its own neighbour).
        n_neighbors
            Neighbours per spot.
        hidden
            Optional boolean ``(B, n_vars)`` observed entries to hide as well.
        library
            Optional ``(B,)`` library sizes to log-normalise with; default those of the observed entries.

        Returns
        -------
        int64 ``(B, n_neighbors)`` row indices, nearest first.
        """
        self._check(n_neighbors)
        rows = np.asarray(rows, dtype=np.int64)
        counts = np.asarray(counts, dtype=np.float64)
        visible = ~np.isnan(counts)
        if hidden is not None:
            visible &= ~np.asarray(hidden, dtype=bool)
        lib = self.library[rows] if library is None else np.asarray(library, dtype=np.float64)
        scale = np.divide(self.target_sum, lib, out=np.ones_like(lib), where=lib > 0)
        x = np.log1p(np.nan_to_num(counts, nan=0.0) * scale[:, None])
        z = np.where(visible, (x - self.gene_mean) / self.gene_sd, 0.0).astype(np.float32)
        q = self.pca.transform(z).astype(np.float32)
        d = (q * q).sum(1)[:, None] - 2.0 * q @ self.coords.T + self._sq_norms[None, :]
        k = n_neighbors + 1
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(d, part, axis=1).argsort(axis=1, kind="stable")
        return _drop_self(np.take_along_axis(part, order, axis=1), rows, n_neighbors)

    def _check(self, n_neighbors: int) -> None:
        if not 1 <= n_neighbors < self.n_obs:
            raise ValueError(f"n_neighbors must be in [1, n_obs - 1] = [1, {self.n_obs - 1}], got {n_neighbors}.")


def _drop_self(idx: np.ndarray, rows: np.ndarray, n_neighbors: int) -> np.ndarray:
    """Drop each spot itself from its ``n_neighbors + 1`` nearest (normally, not always, the first column)."""
    keep = idx != rows[:, None]
    out = np.empty((idx.shape[0], n_neighbors), dtype=np.int64)
    for i in range(idx.shape[0]):
        out[i] = idx[i][keep[i]][:n_neighbors]
    return out


def expression_neighbor_table(
    counts, missing: sp.csr_matrix | None = None, n_neighbors: int = 20, n_pcs: int = 10, seed: int = 0
) -> np.ndarray:
    """Each spot's nearest spots in expression space, from its observed entries only.

    The space is :class:`ExpressionSpace` (log-normalised, standardised observed entries, ``n_pcs``
    principal components, Euclidean distance). A spot is never its own neighbour.

    Parameters
    ----------
    counts
        ``(n_obs, n_vars)`` dense or sparse counts; NaN marks missing entries.
    missing
        Optional boolean ``(n_obs, n_vars)`` matrix of further missing entries.
    n_neighbors
        Neighbours per spot (at most ``n_obs - 1``).
    n_pcs
        Principal components (at most ``min(n_obs, n_vars) - 1``).
    seed
        Seed of the randomised PCA solver on large sections.

    Returns
    -------
    int64 ``(n_obs, n_neighbors)`` table of row indices, nearest first.

    Examples
    --------
    >>> import numpy as np
    >>> counts = np.array([[9, 0, 1], [8, 0, 2], [0, 9, 1], [0, 8, 2]], dtype=float)
    >>> expression_neighbor_table(counts, n_neighbors=1, n_pcs=2)[:, 0].tolist()
    [1, 0, 3, 2]
    """
    n_obs = counts.shape[0]
    if not 1 <= n_neighbors < n_obs:
        raise ValueError(f"n_neighbors must be in [1, n_obs - 1] = [1, {n_obs - 1}], got {n_neighbors}.")
    return ExpressionSpace(counts, missing, n_pcs, seed).table(n_neighbors)


def registered_counts(adata_manager: AnnDataManager):
    """The registered counts and the registered missing-entry layer (``None`` when there is none)."""
    X = adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
    mask = None
    if REGISTRY_KEYS.MISSING_KEY in adata_manager.data_registry:
        mask = adata_manager.get_from_registry(REGISTRY_KEYS.MISSING_KEY)
    return X, mask


class NeighborhoodCollate:
    """Collate function that gathers the ``n_hops`` neighbourhood of a batch of spots.

    Parameters
    ----------
    counts
        ``(n_obs, n_vars)`` counts (dense or sparse); NaN marks missing entries.
    table
        int64 ``(n_obs, 1 + k)`` neighbour table ``[row, nb_1 .. nb_k]``
        (:func:`stmcdi.pp.spatial_graph`).
    n_hops
        Hops to gather (the number of graph layers of the encoder; 0 gathers the spots alone).
    missing
        Optional boolean matrix of further missing entries.
    zeros_missing
        Fill the zero counts too (``impute(target="zeros")``): the same as ``fill`` at every zero count.
    fill
        Optional boolean matrix of observed entries to fill (``impute(target="zeros")`` fills the zeros in
        rounds). A batch spot's are targets (batch key ``target``) and hidden from its own condition by the
        module; as a neighbour, in the graph or in expression space, a spot shows them as observed, as in
        training, where a spot's targets are hidden only from itself. They do not count as missing when
        the expression neighbours are chosen. Library sizes are unaffected.
    n_expression_neighbors
        With ``> 0``, every batch also carries the counts of each batch spot's nearest spots in expression
        space (:func:`expression_neighbor_table` on the observed entries, computed once here; at most
        ``n_obs - 1``).
    target_sampler
        Optional callable ``(observed, nonzero) -> target`` on boolean ``(B, G)`` tensors that draws the
        training targets of a batch's spots (the rule of :meth:`stmcdi.STMCDIModule.sample_targets`). With
        it the collate draws the targets (batch key ``target``), so that what it gathers can be made
        without them (``neighbors_without_targets``, ``library_without_targets``); it is ignored with
        ``fill`` or ``zeros_missing`` (imputation) and when neither option applies.
    neighbors_without_targets
        With ``target_sampler`` and expression neighbours: choose each batch spot's expression neighbours
        without its targets (:meth:`ExpressionSpace.query`). A target then has no say in which spots its
        profile is read from, as a held-out entry at imputation has none.
    library_without_targets
        With ``target_sampler``: a batch spot's library size (batch key ``library``) is the sum of its
        counts that are not targets. At imputation the library holds the observed counts only and the
        held-out truth is scaled by it (:func:`stmcdi.benchmark.hold_out`); with the full library a target
        would be scaled by a library that contains it, and the library would tell the network the sum of
        the targets. The neighbour nodes keep their full libraries.

    Returns
    -------
    Called on ``{"spatial_nn": (B, 1 + k)}`` it returns a dict of tensors: ``counts`` ``(U, G)`` float32
    with NaN at missing entries, ``library`` ``(U,)``, ``edge_index`` ``(2, E)`` (source -> target, the
    target aggregates) and ``row`` ``(B,)``; nodes ``0 .. B-1`` are the batch's spots. With
    ``n_expression_neighbors = m > 0`` also ``expression_counts`` ``(B * m, G)`` (spot ``i``'s neighbours
    are rows ``i*m .. i*m + m - 1``; NaN at missing entries) and ``expression_library`` ``(B * m,)``.
    With ``fill`` or ``zeros_missing`` also ``target``: boolean ``(B, G)``, the batch spots' missing
    entries and their entries to fill (which keep their counts in ``counts``); with ``target_sampler``,
    the drawn training targets.

    Examples
    --------
    >>> import numpy as np
    >>> table = np.array([[0, 1], [1, 2], [2, 0]])
    >>> collate = NeighborhoodCollate(np.eye(3), table, n_hops=1)
    >>> out = collate({"spatial_nn": table[[0]]})
    >>> out["edge_index"].tolist(), out["row"].tolist()
    ([[1], [0]], [0])
    """

    def __init__(
        self, counts, table: np.ndarray, n_hops: int, missing=None, zeros_missing: bool = False,
        n_expression_neighbors: int = 0, fill=None, target_sampler=None,
        neighbors_without_targets: bool = True, library_without_targets: bool = False,
    ):
        miss = missing_mask(counts, missing)
        csr = sp.csr_matrix(counts, dtype=np.float32, copy=True)
        csr.data[np.isnan(csr.data)] = 0.0
        if miss.nnz:
            csr = csr - csr.multiply(miss)
        csr.eliminate_zeros()
        self.counts = csr.astype(np.float32)
        self.missing = miss
        self.library = library_size(self.counts).astype(np.float32)
        self.table = np.ascontiguousarray(table, dtype=np.int64)
        self.n_hops = int(n_hops)
        self.zeros_missing = bool(zeros_missing)
        self.fill = None
        if fill is not None:
            self.fill = sp.csr_matrix(fill).astype(bool)
            if self.fill.shape != self.counts.shape:
                raise ValueError(f"`fill` has shape {self.fill.shape}; expected {self.counts.shape}.")
        self.n_expression_neighbors = int(min(n_expression_neighbors, counts.shape[0] - 1))
        self.expression_table = None
        self.expression_space = None
        if self.n_expression_neighbors > 0:  # chosen on what the batches show as observed
            self.expression_space = ExpressionSpace(counts, miss)
            self.expression_table = self.expression_space.table(self.n_expression_neighbors)
        self.neighbors_without_targets = bool(neighbors_without_targets and self.expression_space is not None)
        self.library_without_targets = bool(library_without_targets)
        self.target_sampler = None
        if target_sampler is not None and not self.zeros_missing and self.fill is None \
                and (self.neighbors_without_targets or self.library_without_targets):
            self.target_sampler = target_sampler

    @classmethod
    def from_manager(
        cls, adata_manager: AnnDataManager, n_hops: int, zeros_missing: bool = False, extra_missing=None,
        n_expression_neighbors: int = 0, fill=None, target_sampler=None, **kwargs,
    ):
        """Build the collate from a registered AnnData (counts, optional missing layer, neighbour table).

        ``extra_missing`` (boolean, the data's shape) marks further entries to treat as missing (also when
        the expression neighbours are chosen); ``fill`` marks observed entries to fill; ``target_sampler``
        and ``**kwargs`` (``neighbors_without_targets``, ``library_without_targets``): see the class.
        """
        X, mask = registered_counts(adata_manager)
        if extra_missing is not None:
            extra = sp.csr_matrix(extra_missing).astype(bool)
            mask = extra if mask is None else (sp.csr_matrix(mask).astype(bool) + extra).astype(bool)
        table = np.asarray(adata_manager.get_from_registry(REGISTRY_KEYS.NEIGHBORS_KEY))
        return cls(X, table, n_hops, missing=mask, zeros_missing=zeros_missing,
                   n_expression_neighbors=n_expression_neighbors, fill=fill, target_sampler=target_sampler,
                   **kwargs)

    def __deepcopy__(self, memo):
        # AnnDataLoader deep-copies its kwargs; the store is read-only, so share it instead of copying it.
        return self

    def neighborhood(self, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nodes (seeds first) and local ``(2, E)`` edges of the ``n_hops`` neighbourhood of ``seeds``."""
        nodes = [seeds]
        seen = set(seeds.tolist())
        src, dst = [], []
        frontier = seeds
        for _ in range(self.n_hops):
            nbrs = self.table[frontier, 1:]
            src.append(nbrs.ravel())
            dst.append(np.repeat(frontier, nbrs.shape[1]))
            new = [n for n in dict.fromkeys(nbrs.ravel().tolist()) if n not in seen]
            seen.update(new)
            frontier = np.asarray(new, dtype=np.int64)
            nodes.append(frontier)
            if frontier.size == 0:
                break
        nodes = np.concatenate(nodes)
        if not src:
            return nodes, np.zeros((2, 0), dtype=np.int64)
        order = np.argsort(nodes, kind="stable")
        local = lambda ids: order[np.searchsorted(nodes, ids, sorter=order)]
        edges = np.stack([local(np.concatenate(src)), local(np.concatenate(dst))])
        return nodes, edges

    def _counts(self, nodes: np.ndarray) -> np.ndarray:
        counts = self.counts[nodes].toarray()
        if self.missing.nnz:
            counts[self.missing[nodes].toarray()] = np.nan
        return counts

    def _target(self, seeds: np.ndarray, counts: np.ndarray) -> np.ndarray | None:
        """The batch spots' entries to fill: missing, zero (``zeros_missing``) or in ``fill``."""
        if not self.zeros_missing and self.fill is None:
            return None
        target = np.isnan(counts)
        if self.zeros_missing:
            target |= counts == 0
        if self.fill is not None:
            target |= self.fill[seeds].toarray()
        return target

    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        seeds = np.asarray(batch[REGISTRY_KEYS.NEIGHBORS_KEY])[:, 0].astype(np.int64)
        nodes, edges = self.neighborhood(seeds)
        counts = self._counts(nodes)
        out = {
            BATCH_KEYS.COUNTS: torch.from_numpy(counts),
            BATCH_KEYS.LIBRARY: torch.from_numpy(self.library[nodes]),
            BATCH_KEYS.EDGE_INDEX: torch.from_numpy(edges),
            BATCH_KEYS.ROW: torch.from_numpy(seeds),
        }
        target = self._target(seeds, counts[: len(seeds)])
        expr = None
        if self.target_sampler is not None:
            own = counts[: len(seeds)]
            target = self.target_sampler(torch.from_numpy(~np.isnan(own)), torch.from_numpy(own > 0))
            target = np.asarray(target, dtype=bool)
            library = self.library[seeds]
            if self.library_without_targets:
                library = library - np.where(target, np.nan_to_num(own, nan=0.0), 0.0).sum(axis=1)
                library = np.maximum(library, 0.0).astype(np.float32)
                out[BATCH_KEYS.LIBRARY][: len(seeds)] = torch.from_numpy(library)
            if self.neighbors_without_targets:
                expr = self.expression_space.query(own, seeds, self.n_expression_neighbors, hidden=target,
                                                   library=library).ravel()
        if target is not None:
            out[BATCH_KEYS.TARGET] = torch.from_numpy(target)
        if self.expression_table is not None:
            if expr is None:
                expr = self.expression_table[seeds].ravel()
            out[BATCH_KEYS.EXPRESSION_COUNTS] = torch.from_numpy(self._counts(expr))
            out[BATCH_KEYS.EXPRESSION_LIBRARY] = torch.from_numpy(self.library[expr])
        return out


def neighborhood_loader_kwargs(
    adata_manager: AnnDataManager, n_hops: int, zeros_missing: bool = False, extra_missing=None,
    n_expression_neighbors: int = 0, fill=None, target_sampler=None, **kwargs,
) -> dict:
    """Keyword arguments that make an :class:`~scvi.dataloaders.AnnDataLoader` yield neighbourhood batches."""
    collate = NeighborhoodCollate.from_manager(adata_manager, n_hops, zeros_missing, extra_missing,
                                               n_expression_neighbors, fill, target_sampler, **kwargs)
    return {"data_and_attributes": {REGISTRY_KEYS.NEIGHBORS_KEY: np.int64}, "collate_fn": collate}


class NeighborhoodDataSplitter(DataSplitter):
    """:class:`~scvi.dataloaders.DataSplitter` whose loaders yield neighbourhood batches.

    Splits spots into train / validation / test as scvi-tools does (``settings.seed``); every spot stays
    available as a neighbour, so validation spots are conditioned on the same graph.

    Parameters
    ----------
    adata_manager
        The model's :class:`~scvi.data.AnnDataManager`.
    n_hops
        Hops of neighbourhood to gather (the encoder's number of layers).
    extra_missing
        Optional boolean ``(n_obs, n_vars)`` matrix of observed entries to hide from training (treated as
        missing in every batch): :meth:`~stmcdi.STMCDI.train` holds back the entries it calibrates the
        spread on this way.
    n_expression_neighbors
        Expression-space neighbours each batch carries (see :class:`NeighborhoodCollate`); 0 for none.
    target_sampler, neighbors_without_targets, library_without_targets
        Optional training-target rule: the batches carry their targets, and their expression neighbours
        and library sizes can be made without them (see :class:`NeighborhoodCollate`).
    **kwargs
        Passed to :class:`~scvi.dataloaders.DataSplitter`.
    """

    def __init__(
        self, adata_manager: AnnDataManager, *args, n_hops: int = 3, extra_missing=None,
        n_expression_neighbors: int = 0, target_sampler=None, neighbors_without_targets: bool = True,
        library_without_targets: bool = False, **kwargs,
    ):
        loader_kwargs = neighborhood_loader_kwargs(
            adata_manager, n_hops, extra_missing=extra_missing, n_expression_neighbors=n_expression_neighbors,
            target_sampler=target_sampler, neighbors_without_targets=neighbors_without_targets,
            library_without_targets=library_without_targets,
        )
        for key, value in loader_kwargs.items():
            kwargs.setdefault(key, value)
        super().__init__(adata_manager, *args, **kwargs)
