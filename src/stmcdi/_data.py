"""Minibatches that carry each spot's L-hop spatial neighbourhood.

scvi-tools' :class:`~scvi.dataloaders.AnnDataLoader` yields the neighbour-table rows of a batch of spots;
:class:`NeighborhoodCollate` turns them into the subgraph the encoder needs: the batch's spots (first), the
spots within ``n_hops`` of them, their counts, library sizes and the local edges, and, with
``n_expression_neighbors``, the counts of each spot's nearest spots in expression space. The cost of a step
depends on the batch size and ``k``, never on the number of spots in the section, and the module holds no data
(safe for EMA copies and DDP).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scvi.data import AnnDataManager
from scvi.dataloaders import AnnDataLoader, DataSplitter

from ._constants import BATCH_KEYS, REGISTRY_KEYS
from ._estimators import ExpressionNeighbours
from ._validation import missing_mask
from .pp._normalize import library_size, log_normalize


def registered_counts(adata_manager: AnnDataManager):
    """The registered counts and the registered missing-entry layer (``None`` when there is none)."""
    X = adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
    mask = None
    if REGISTRY_KEYS.MISSING_KEY in adata_manager.data_registry:
        mask = adata_manager.get_from_registry(REGISTRY_KEYS.MISSING_KEY)
    return X, mask


def _union(a, b) -> sp.csr_matrix | None:
    if a is None:
        return None if b is None else sp.csr_matrix(b).astype(bool)
    if b is None:
        return sp.csr_matrix(a).astype(bool)
    return (sp.csr_matrix(a).astype(bool) + sp.csr_matrix(b).astype(bool)).astype(bool)


class NeighborhoodCollate:
    """Collate function that gathers the ``n_hops`` neighbourhood of a batch of spots.

    Parameters
    ----------
    counts
        ``(n_obs, n_vars)`` counts (dense or sparse); NaN marks missing entries.
    table
        int64 ``(n_obs, 1 + k)`` neighbour table ``[row, nb_1 .. nb_k]`` (:func:`stmcdi.pp.spatial_graph`).
    n_hops
        Hops to gather (the number of graph layers of the encoder; 0 gathers the spots alone).
    missing
        Optional boolean matrix of further entries to hide everywhere (held-back entries in training).
    fill
        Optional boolean matrix of entries the batch's spots must predict (batch key ``target``): their values
        stay in the spot's own row (the module hides them from its condition and encoder input) even where
        ``missing`` hides them from every other spot. Imputation passes the zeros to fill; validation passes the
        held-back entries.
    n_expression_neighbors
        With ``> 0``, every batch also carries the counts of each batch spot's nearest spots in expression space
        (:class:`~stmcdi._estimators.ExpressionNeighbours` over the visible entries; at most ``n_obs - 1``).
    target_sampler
        Optional callable ``(observed, nonzero) -> target`` on boolean ``(B, G)`` tensors that draws the training
        targets of a batch's spots. With it the collate draws the targets (batch key ``target``) and, with
        expression neighbours, chooses each spot's neighbours without its targets, as imputation chooses them
        without the entries it fills. Ignored with ``fill``.

    Returns
    -------
    Called on ``{"spatial_nn": (B, 1 + k)}`` it returns a dict of tensors: ``counts`` ``(U, G)`` float32 with NaN
    at missing entries, ``library`` ``(U,)``, ``edge_index`` ``(2, E)`` (source -> target) and ``row`` ``(B,)``;
    nodes ``0 .. B-1`` are the batch's spots; with expression neighbours ``expression_counts`` ``(B * m, G)`` and
    ``expression_library`` ``(B * m,)``; with ``fill`` or ``target_sampler`` also ``target`` ``(B, G)``.

    Examples
    --------
    >>> import numpy as np
    >>> table = np.array([[0, 1], [1, 2], [2, 0]])
    >>> collate = NeighborhoodCollate(np.eye(3), table, n_hops=1)
    >>> out = collate({"spatial_nn": table[[0]]})
    >>> out["edge_index"].tolist(), out["row"].tolist()
    ([[1], [0]], [0])
    """

    def __init__(self, counts, table: np.ndarray, n_hops: int, missing=None, fill=None,
                 n_expression_neighbors: int = 0, target_sampler=None):
        hidden = missing_mask(counts, missing)  # NaN entries and further hidden ones
        csr = sp.csr_matrix(counts, dtype=np.float32, copy=True)
        csr.data[np.isnan(csr.data)] = 0.0
        csr.eliminate_zeros()
        self.counts = csr
        self.hidden = hidden
        self.library = library_size(csr, hidden).astype(np.float32)
        self.table = np.ascontiguousarray(table, dtype=np.int64)
        self.n_hops = int(n_hops)
        self.fill = None
        if fill is not None:
            self.fill = sp.csr_matrix(fill).astype(bool)
            if self.fill.shape != csr.shape:
                raise ValueError(f"`fill` has shape {self.fill.shape}; expected {csr.shape}.")
        self.n_expression_neighbors = int(min(n_expression_neighbors, csr.shape[0] - 1))
        self.space = self.expression_table = None
        self._target_sum = 1.0
        if self.n_expression_neighbors > 0:  # chosen on what the batches show as observed
            x, _, self._target_sum = log_normalize(csr, hidden)
            self.space = ExpressionNeighbours(x)
            self.expression_table = self.space.table(self.n_expression_neighbors)
        self.target_sampler = target_sampler if self.fill is None else None

    @classmethod
    def from_manager(cls, adata_manager: AnnDataManager, n_hops: int, missing=None, fill=None,
                     n_expression_neighbors: int = 0, target_sampler=None):
        """Build the collate from a registered AnnData (counts, optional missing layer, neighbour table).

        ``missing`` (boolean, the data's shape) marks entries to hide in addition to the registered missing
        ones; ``fill`` and ``target_sampler``: see the class.
        """
        X, mask = registered_counts(adata_manager)
        table = np.asarray(adata_manager.get_from_registry(REGISTRY_KEYS.NEIGHBORS_KEY))
        return cls(X, table, n_hops, missing=_union(mask, missing), fill=fill,
                   n_expression_neighbors=n_expression_neighbors, target_sampler=target_sampler)

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
        return nodes, np.stack([local(np.concatenate(src)), local(np.concatenate(dst))])

    def _counts(self, nodes: np.ndarray) -> np.ndarray:
        counts = self.counts[nodes].toarray()
        if self.hidden.nnz:
            r, c = self.hidden[nodes].nonzero()  # sparse: far faster than a dense boolean mask
            counts[r, c] = np.nan
        return counts

    def _place(self, own: np.ndarray, rows: np.ndarray, hidden: np.ndarray) -> np.ndarray:
        """Expression neighbours of spots ``rows`` (counts ``own``) chosen without their ``hidden`` entries."""
        lib = self.library[rows].astype(np.float64)
        scale = np.divide(self._target_sum, lib, out=np.ones_like(lib), where=lib > 0)
        x = np.log1p(np.nan_to_num(own, nan=0.0) * scale[:, None])
        x[np.isnan(own) | hidden] = np.nan
        return self.space.query(self.space.place(x), rows, self.n_expression_neighbors)

    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        seeds = np.asarray(batch[REGISTRY_KEYS.NEIGHBORS_KEY])[:, 0].astype(np.int64)
        nodes, edges = self.neighborhood(seeds)
        counts = self._counts(nodes)
        n = len(seeds)
        target = None
        if self.fill is not None:  # the seeds' entries to predict keep their values in their own rows
            target = self.fill[seeds].toarray()
            counts[:n][target] = self.counts[seeds].toarray()[target]
            target |= np.isnan(counts[:n])
        out = {
            BATCH_KEYS.COUNTS: torch.from_numpy(counts),
            BATCH_KEYS.LIBRARY: torch.from_numpy(self.library[nodes]),
            BATCH_KEYS.EDGE_INDEX: torch.from_numpy(edges),
            BATCH_KEYS.ROW: torch.from_numpy(seeds),
        }
        expr = None
        if self.target_sampler is not None:
            own = counts[:n]
            target = np.asarray(self.target_sampler(torch.from_numpy(~np.isnan(own)), torch.from_numpy(own > 0)),
                                dtype=bool)
            if self.space is not None:
                expr = self._place(own, seeds, target).ravel()
        if target is not None:
            out[BATCH_KEYS.TARGET] = torch.from_numpy(target)
        if self.expression_table is not None:
            if expr is None:
                expr = self.expression_table[seeds].ravel()
            out[BATCH_KEYS.EXPRESSION_COUNTS] = torch.from_numpy(self._counts(expr))
            out[BATCH_KEYS.EXPRESSION_LIBRARY] = torch.from_numpy(self.library[expr])
        return out


def neighborhood_loader(adata_manager: AnnDataManager, n_hops: int, *, indices=None, batch_size: int = 64,
                        shuffle: bool = False, missing=None, fill=None, n_expression_neighbors: int = 0,
                        target_sampler=None, **kwargs) -> AnnDataLoader:
    """An :class:`~scvi.dataloaders.AnnDataLoader` over spots ``indices`` that yields neighbourhood batches."""
    collate = NeighborhoodCollate.from_manager(adata_manager, n_hops, missing, fill, n_expression_neighbors,
                                               target_sampler)
    return AnnDataLoader(adata_manager, indices=indices, batch_size=batch_size, shuffle=shuffle,
                         data_and_attributes={REGISTRY_KEYS.NEIGHBORS_KEY: np.int64}, collate_fn=collate, **kwargs)


class NeighborhoodDataSplitter(DataSplitter):
    """:class:`~scvi.dataloaders.DataSplitter` whose loaders yield neighbourhood batches.

    Every spot is a training spot and available as a neighbour; the ``held_back`` entries are hidden from
    training everywhere. The validation loader runs over the spots that hold held-back entries and asks the
    model to predict them (batch key ``target``): the validation metric is the error at entries the model has
    never seen, on the user's own data.

    Parameters
    ----------
    adata_manager
        The model's :class:`~scvi.data.AnnDataManager`.
    n_hops
        Hops of neighbourhood to gather (the encoder's number of layers).
    held_back
        Optional boolean ``(n_obs, n_vars)`` matrix of observed entries held back from training.
    n_expression_neighbors
        Expression-space neighbours each batch carries; 0 for none.
    target_sampler
        Draws the training targets in the collate (see :class:`NeighborhoodCollate`).
    **kwargs
        Passed to :class:`~scvi.dataloaders.DataSplitter` (``batch_size``, ``distributed_sampler``, ...).
    """

    def __init__(self, adata_manager: AnnDataManager, *args, n_hops: int = 3, held_back=None,
                 n_expression_neighbors: int = 0, target_sampler=None, **kwargs):
        self._neighborhood = {"n_hops": n_hops, "n_expression_neighbors": n_expression_neighbors}
        self.held_back = None if held_back is None else sp.csr_matrix(held_back).astype(bool)
        kwargs["train_size"], kwargs["validation_size"] = 1.0, None
        kwargs.setdefault("collate_fn", NeighborhoodCollate.from_manager(
            adata_manager, n_hops, self.held_back, None, n_expression_neighbors, target_sampler))
        kwargs.setdefault("data_and_attributes", {REGISTRY_KEYS.NEIGHBORS_KEY: np.int64})
        super().__init__(adata_manager, *args, **kwargs)

    def val_dataloader(self):
        """Loader over the spots holding held-back entries, which they must predict (``None`` without them)."""
        if self.held_back is None or self.held_back.nnz == 0:
            return None
        spots = np.unique(self.held_back.nonzero()[0])
        kwargs = {k: v for k, v in self.data_loader_kwargs.items() if k not in ("collate_fn", "data_and_attributes")}
        return neighborhood_loader(self.adata_manager, indices=spots, shuffle=False, missing=self.held_back,
                                   fill=self.held_back, drop_last=False, load_sparse_tensor=self.load_sparse_tensor,
                                   pin_memory=self.pin_memory, **self._neighborhood, **kwargs)
