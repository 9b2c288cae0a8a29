"""Preprocessing: the spatial graph, normalisation and gene panels (squidpy-style functions)."""

from ._genes import select_genes
from ._graph import spatial_graph
from ._normalize import log_normalize, normalize

__all__ = ["log_normalize", "normalize", "select_genes", "spatial_graph"]
