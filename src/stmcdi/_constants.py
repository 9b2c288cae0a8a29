"""Registry keys and default AnnData slot names, in one place."""

from __future__ import annotations

from typing import NamedTuple


class _REGISTRY_KEYS_NT(NamedTuple):
    X_KEY: str = "X"
    MISSING_KEY: str = "missing"
    NEIGHBORS_KEY: str = "spatial_nn"


REGISTRY_KEYS = _REGISTRY_KEYS_NT()


class _KEYS_NT(NamedTuple):
    """Default AnnData slot names written or read by stmcdi."""

    SPATIAL: str = "spatial"  # obsm: coordinates (n_obs, 2 | 3)
    GRAPH: str = "spatial"  # prefix for obsp[f"{GRAPH}_connectivities"] / uns[f"{GRAPH}_neighbors"]
    NEIGHBOR_TABLE: str = "spatial_nn"  # obsm: int64 (n_obs, 1 + k) = [row id, nb_1 .. nb_k]
    IMPUTED: str = "imputed"  # layers: log-normalised, observed as given, missing filled
    IMPUTED_STD: str = "imputed_std"  # layers: spread of the samples at the filled entries
    LOGNORM: str = "lognorm"  # layers: written by stmcdi.pp.normalize
    UNS: str = "stmcdi"  # uns: configuration of stmcdi.pp functions


KEYS = _KEYS_NT()

#: reverse-diffusion samples per spot where a spread is wanted: ``train`` fits the spread scale with them, and the
#: demo and the benchmark's sampled runs draw them (``impute(n_samples=...)`` converts the scale to any number)
SPREAD_SAMPLES = 5


class _BATCH_KEYS_NT(NamedTuple):
    """Keys of the tensors a neighbourhood batch carries (see ``stmcdi._data``)."""

    COUNTS: str = "counts"  # (U, G) float32 counts of the U subgraph nodes, NaN where missing
    LIBRARY: str = "library"  # (U,) library size from observed entries
    EDGE_INDEX: str = "edge_index"  # (2, E) int64 local edges, source -> target (target aggregates)
    ROW: str = "row"  # (B,) int64: absolute row of each of the batch's spots, which are nodes 0 .. B-1
    EXPRESSION_COUNTS: str = "expression_counts"  # (B * m, G) counts of each spot's m expression neighbours
    EXPRESSION_LIBRARY: str = "expression_library"  # (B * m,) their library sizes
    TARGET: str = "target"  # (B, G) bool entries of the batch's spots to fill (only with `fill`/zeros)


BATCH_KEYS = _BATCH_KEYS_NT()
