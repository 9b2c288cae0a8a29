"""stMCDI: masked conditional diffusion with a spatial GCN for spatial transcriptomics imputation."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

# scvi-tools 1.4.2 uses ``rich.pretty`` in ``view_anndata_setup`` without importing it (fixed in 1.4.3).
import rich.pretty  # noqa: F401

from . import benchmark, datasets, pl, pp

try:
    __version__ = version("stmcdi")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

logger = logging.getLogger(__name__)

__all__ = ["STMCDI", "STMCDIModule", "DiffusionTrainingPlan", "zero_conditioned", "within_gene_slope",
           "shrink_within_genes", "smooth_fills", "expression_neighbors", "benchmark", "datasets", "pl", "pp"]


def __getattr__(name: str):
    # The model pulls in scvi-tools and Lightning; import it on first use so that
    # ``import stmcdi`` (pp, benchmark, datasets) stays light.
    if name == "STMCDI":
        from ._model import STMCDI

        return STMCDI
    if name == "STMCDIModule":
        from ._module import STMCDIModule

        return STMCDIModule
    if name == "DiffusionTrainingPlan":
        from ._training_plan import DiffusionTrainingPlan

        return DiffusionTrainingPlan
    if name in ("zero_conditioned", "within_gene_slope", "shrink_within_genes", "smooth_fills", "expression_neighbors"):
        from . import _model

        return getattr(_model, name)
    raise AttributeError(f"module 'stmcdi' has no attribute {name!r}")
