"""Datasets: a small simulated section and loaders for public spatial transcriptomics data.

Every dataset comes in the package's common format: raw integer counts (CSR float32) in ``X``, (x, y)
coordinates in ``obsm["spatial"]`` (float64), ``obs["total_counts"]``, ``var["total_counts"]`` and a
``uns["provenance"]`` dict.
"""

from ._public import (
    DATA_DIR_ENV,
    breast_cancer_layer2,
    cache_dir,
    dlpfc_151673,
    mouse_olfactory_bulb,
    read_st_count_table,
)
from ._synthetic import synthetic

__all__ = [
    "DATA_DIR_ENV",
    "breast_cancer_layer2",
    "cache_dir",
    "dlpfc_151673",
    "mouse_olfactory_bulb",
    "read_st_count_table",
    "synthetic",
]
