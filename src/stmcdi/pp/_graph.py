"""The spatial kNN graph and the fixed-width neighbour table used for minibatching."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._constants import KEYS
from .._validation import check_not_view, get_coordinates

logger = logging.getLogger(__name__)


def spatial_graph(
    adata: AnnData,
    n_neighs: int = 5,
    *,
    spatial_key: str = KEYS.SPATIAL,
    library_key: str | None = None,
    key_added: str = KEYS.GRAPH,
    table_key: str = KEYS.NEIGHBOR_TABLE,
    allow_duplicates: bool = False,
    copy: bool = False,
) -> np.ndarray | None:
    """Build the k-nearest-neighbour spatial graph (stMCDI paper, Eq. 1–2) and its neighbour table.

    Calls :func:`squidpy.gr.spatial_neighbors_knn` (Euclidean kNN, no self loops; sections kept apart by
    ``library_key``) and derives a fixed-width table ``[row, nb_1, …, nb_k]`` (neighbours ordered by
    distance) that the data loader uses to gather each batch's L-hop neighbourhood, so that a training
    step costs the same whatever the number of spots.

    The graph is **directed**: spot ``i`` aggregates messages from its own ``k`` nearest spots (row ``i``
    of ``obsp[f"{key_added}_connectivities"]``), so every spot has exactly ``k`` inputs. Symmetrising
    would give border and isolated spots variable degree and break the fixed-width table.

    Parameters
    ----------
    adata
        Annotated data with coordinates in ``adata.obsm[spatial_key]``.
    n_neighs
        Number of nearest neighbours ``k`` (the paper uses 5).
    spatial_key
        Key in ``adata.obsm`` with ``(n_obs, 2 | 3)`` coordinates.
    library_key
        Column of ``adata.obs`` naming the section of each spot. Required for multi-section data:
        neighbours are only searched within a section.
    key_added
        Prefix of the squidpy graph keys written to ``obsp`` and ``uns``.
    table_key
        Key of the neighbour table written to ``adata.obsm``.
    allow_duplicates
        Spots at identical coordinates make kNN ties that depend on row order; by default they raise.
        Set ``True`` to accept them (e.g. several cells per spot position).
    copy
        Return the neighbour table instead of writing anything.

    Returns
    -------
    With ``copy=True``, the int64 ``(n_obs, 1 + n_neighs)`` table. Otherwise ``None`` and writes

    - ``adata.obsp[f"{key_added}_connectivities"]`` and ``adata.obsp[f"{key_added}_distances"]``
      (squidpy);
    - ``adata.uns[f"{key_added}_neighbors"]`` (squidpy's parameters);
    - ``adata.obsm[table_key]``: int64 ``(n_obs, 1 + n_neighs)``, column 0 the row itself;
    - ``adata.uns["stmcdi"]["spatial_graph"]``: the parameters, for staleness checks.

    Examples
    --------
    >>> import stmcdi
    >>> adata = stmcdi.datasets.synthetic(n_spots=100, n_genes=20)
    >>> stmcdi.pp.spatial_graph(adata, n_neighs=5)
    >>> adata.obsm["spatial_nn"].shape
    (100, 6)
    """
    import squidpy as sq

    coords = get_coordinates(adata, spatial_key)
    if n_neighs < 1:
        raise ValueError(f"n_neighs must be >= 1, got {n_neighs}.")
    libraries = _check_sections(adata, library_key, n_neighs)
    if not allow_duplicates:
        _check_duplicates(adata, coords, libraries)
    if not copy:
        check_not_view(adata, "stmcdi.pp.spatial_graph")

    # The graph is built on a bare AnnData: the user's object gets only the documented keys, and sections are the
    # ones present (squidpy would search an unused category of library_key and fail on its empty section).
    obs = adata.obs[[]].copy()
    if library_key:
        obs[library_key] = pd.Categorical(adata.obs[library_key].astype(str))
    target = AnnData(obs=obs, obsm={spatial_key: coords})
    sq.gr.spatial_neighbors_knn(
        target, spatial_key=spatial_key, library_key=library_key, n_neighs=n_neighs, key_added=key_added
    )
    table = neighbor_table(target.obsp[f"{key_added}_connectivities"], coords, n_neighs)
    if copy:
        return table
    for key in (f"{key_added}_connectivities", f"{key_added}_distances"):
        adata.obsp[key] = target.obsp[key]
    adata.uns[f"{key_added}_neighbors"] = target.uns[f"{key_added}_neighbors"]
    adata.obsm[table_key] = table
    adata.uns.setdefault(KEYS.UNS, {})["spatial_graph"] = {
        "n_neighs": int(n_neighs),
        "spatial_key": spatial_key,
        "library_key": library_key,
        "key_added": key_added,
        "table_key": table_key,
        "n_obs": int(adata.n_obs),
    }
    logger.info("Built a %d-nearest-neighbour graph over %d spots -> obsm[%r]", n_neighs, adata.n_obs, table_key)
    return None


def neighbor_table(connectivities: sp.spmatrix, coords: np.ndarray, n_neighs: int) -> np.ndarray:
    """Fixed-width neighbour table from a kNN graph.

    Parameters
    ----------
    connectivities
        ``(n, n)`` sparse matrix whose row ``i`` marks the ``n_neighs`` neighbours of ``i`` (squidpy's
        ``obsp["spatial_connectivities"]``).
    coords
        ``(n, d)`` coordinates, used to order each row's neighbours by distance (ties by index).
    n_neighs
        Expected number of neighbours per row.

    Returns
    -------
    int64 ``(n, 1 + n_neighs)``: ``[i, nb_1, …, nb_k]``, nearest neighbour first.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> conn = sp.csr_matrix(np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]]))
    >>> neighbor_table(conn, np.array([[0.0, 0], [1, 0], [3, 0]]), 2)
    array([[0, 1, 2],
           [1, 0, 2],
           [2, 1, 0]])
    """
    c = sp.csr_matrix(connectivities)
    c.sort_indices()
    n = c.shape[0]
    counts = np.diff(c.indptr)
    if not (counts == n_neighs).all():
        bad = int(np.flatnonzero(counts != n_neighs)[0])
        raise ValueError(
            f"Spot {bad} has {counts[bad]} neighbours in the graph, expected {n_neighs}. "
            "Rebuild the graph with stmcdi.pp.spatial_graph."
        )
    cols = c.indices.reshape(n, n_neighs)
    dist = np.linalg.norm(coords[cols] - coords[:, None, :], axis=-1)
    order = np.lexsort((cols, dist), axis=1)
    cols = np.take_along_axis(cols, order, axis=1)
    return np.concatenate([np.arange(n)[:, None], cols], axis=1).astype(np.int64)


def check_neighbor_table(adata: AnnData, table_key: str, n_neighs: int | None = None) -> np.ndarray:
    """Validate ``adata.obsm[table_key]`` against the current AnnData and return it as int64.

    Parameters
    ----------
    adata
        Annotated data.
    table_key
        Key of the neighbour table in ``adata.obsm``.
    n_neighs
        Expected number of neighbours, if known.

    Returns
    -------
    The int64 table.

    Examples
    --------
    >>> import stmcdi
    >>> adata = stmcdi.datasets.synthetic(n_spots=50, n_genes=10)
    >>> stmcdi.pp.spatial_graph(adata)
    >>> check_neighbor_table(adata, "spatial_nn").shape
    (50, 6)
    """
    fix = "Run `stmcdi.pp.spatial_graph(adata)` (again) on this AnnData"
    if table_key not in adata.obsm:
        raise KeyError(f"adata.obsm[{table_key!r}] not found: the spatial neighbour table is missing. {fix}.")
    table = np.asarray(adata.obsm[table_key])
    if table.ndim != 2 or table.shape[1] < 2:
        raise ValueError(f"adata.obsm[{table_key!r}] has shape {table.shape}; expected (n_obs, 1 + k). {fix}.")
    if n_neighs is not None and table.shape[1] != n_neighs + 1:
        raise ValueError(
            f"adata.obsm[{table_key!r}] has {table.shape[1] - 1} neighbours per spot, the model expects {n_neighs}. {fix}."
        )
    if not np.array_equal(table[:, 0], np.arange(adata.n_obs)) or table.min() < 0 or table.max() >= adata.n_obs:
        raise ValueError(
            f"adata.obsm[{table_key!r}] is stale: it does not index this AnnData's rows (it was built before the "
            f"spots were subset or reordered; AnnData subsets obsm tables but not the row ids inside them). {fix} "
            "after subsetting."
        )
    return table.astype(np.int64, copy=False)


def _check_sections(adata: AnnData, library_key: str | None, n_neighs: int) -> np.ndarray:
    if library_key is None:
        if adata.n_obs <= n_neighs:
            raise ValueError(
                f"{adata.n_obs} spots cannot each have {n_neighs} neighbours; pass a smaller `n_neighs` "
                f"(at most {adata.n_obs - 1})."
            )
        return np.zeros(adata.n_obs, dtype=np.int64)
    if library_key not in adata.obs:
        raise KeyError(f"adata.obs[{library_key!r}] not found: `library_key` must name a column of adata.obs.")
    names, codes = np.unique(adata.obs[library_key].astype(str).to_numpy(), return_inverse=True)
    sizes = np.bincount(codes)
    if sizes.min() <= n_neighs:
        raise ValueError(
            f"Section {names[int(np.argmin(sizes))]!r} of obs[{library_key!r}] has {sizes.min()} spots, too few "
            f"for {n_neighs} neighbours within the section. Drop it or pass a smaller `n_neighs`."
        )
    return codes


def _check_duplicates(adata: AnnData, coords: np.ndarray, libraries: np.ndarray) -> None:
    key = np.concatenate([libraries[:, None].astype(np.float64), coords], axis=1)
    _, first, counts = np.unique(key, axis=0, return_index=True, return_counts=True)
    if (counts > 1).any():
        n_dup = int((counts[counts > 1]).sum())
        example = adata.obs_names[first[np.flatnonzero(counts > 1)[0]]]
        raise ValueError(
            f"{n_dup} spots share coordinates with another spot (e.g. {example!r}); nearest neighbours would be "
            "ties decided by row order. Remove or merge duplicated spots, jitter them, or pass "
            "`allow_duplicates=True` if this is intended."
        )
