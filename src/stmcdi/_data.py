"""Minibatches that carry each spot's L-hop spatial neighbourhood.

scvi-tools' :class:`~scvi.dataloaders.AnnDataLoader` yields the neighbour-table rows of a batch of spots;
:class:`NeighborhoodCollate` turns them into the subgraph the encoder needs: the batch's spots (first),
the spots within ``n_hops`` of them, their counts, library sizes and the local edges. The cost of a step
depends on the batch size and ``k``, never on the number of spots in the section, and the module holds no
data (safe for EMA copies and DDP).
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
        Treat zero counts as missing too (``impute(target="zeros")``). Library sizes are unaffected.

    Returns
    -------
    Called on ``{"spatial_nn": (B, 1 + k)}`` it returns a dict of tensors: ``counts`` ``(U, G)`` float32
    with NaN at missing entries, ``library`` ``(U,)``, ``edge_index`` ``(2, E)`` (source -> target, the
    target aggregates) and ``row`` ``(B,)``; nodes ``0 .. B-1`` are the batch's spots.

    Examples
    --------
    >>> import numpy as np
    >>> table = np.array([[0, 1], [1, 2], [2, 0]])
    >>> collate = NeighborhoodCollate(np.eye(3), table, n_hops=1)
    >>> out = collate({"spatial_nn": table[[0]]})
    >>> out["edge_index"].tolist(), out["row"].tolist()
    ([[1], [0]], [0])
    """

    def __init__(self, counts, table: np.ndarray, n_hops: int, missing=None, zeros_missing: bool = False):
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

    @classmethod
    def from_manager(
        cls, adata_manager: AnnDataManager, n_hops: int, zeros_missing: bool = False, extra_missing=None
    ):
        """Build the collate from a registered AnnData (counts, optional missing layer, neighbour table).

        ``extra_missing`` (boolean, the data's shape) marks further entries to treat as missing.
        """
        X, mask = registered_counts(adata_manager)
        if extra_missing is not None:
            extra = sp.csr_matrix(extra_missing).astype(bool)
            mask = extra if mask is None else (sp.csr_matrix(mask).astype(bool) + extra).astype(bool)
        table = np.asarray(adata_manager.get_from_registry(REGISTRY_KEYS.NEIGHBORS_KEY))
        return cls(X, table, n_hops, missing=mask, zeros_missing=zeros_missing)

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

    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        seeds = np.asarray(batch[REGISTRY_KEYS.NEIGHBORS_KEY])[:, 0].astype(np.int64)
        nodes, edges = self.neighborhood(seeds)
        counts = self.counts[nodes].toarray()
        if self.missing.nnz:
            counts[self.missing[nodes].toarray()] = np.nan
        if self.zeros_missing:
            counts[counts == 0] = np.nan
        return {
            BATCH_KEYS.COUNTS: torch.from_numpy(counts),
            BATCH_KEYS.LIBRARY: torch.from_numpy(self.library[nodes]),
            BATCH_KEYS.EDGE_INDEX: torch.from_numpy(edges),
            BATCH_KEYS.ROW: torch.from_numpy(seeds),
        }


def neighborhood_loader_kwargs(
    adata_manager: AnnDataManager, n_hops: int, zeros_missing: bool = False, extra_missing=None
) -> dict:
    """Keyword arguments that make an :class:`~scvi.dataloaders.AnnDataLoader` yield neighbourhood batches."""
    collate = NeighborhoodCollate.from_manager(adata_manager, n_hops, zeros_missing, extra_missing)
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
    **kwargs
        Passed to :class:`~scvi.dataloaders.DataSplitter`.
    """

    def __init__(self, adata_manager: AnnDataManager, *args, n_hops: int = 3, extra_missing=None, **kwargs):
        for key, value in neighborhood_loader_kwargs(adata_manager, n_hops, extra_missing=extra_missing).items():
            kwargs.setdefault(key, value)
        super().__init__(adata_manager, *args, **kwargs)
