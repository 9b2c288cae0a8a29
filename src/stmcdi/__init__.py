"""stMCDI: masked conditional diffusion with a spatial GCN for spatial transcriptomics imputation."""

from __future__ import annotations

import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version


def _calm_numba_threads() -> None:
    # scanpy's seurat_v3 gene selection runs numba in parallel on its OpenMP layer; those threads keep spinning
    # beside torch's own OpenMP pool and slowed training 1.2x alone and 8x beside another job on a 2-core machine.
    # numba's own work queue does not spin. A choice the user made (NUMBA_THREADING_LAYER) is kept.
    if "NUMBA_THREADING_LAYER" in os.environ:
        return
    os.environ["NUMBA_THREADING_LAYER"] = "workqueue"
    numba = sys.modules.get("numba")
    if numba is not None:  # imported already (by scanpy): takes effect unless its threads were launched
        numba.config.THREADING_LAYER = "workqueue"


_calm_numba_threads()

# scvi-tools 1.4.2 uses ``rich.pretty`` in ``view_anndata_setup`` without importing it (fixed in 1.4.3).
import rich.pretty  # noqa: E402, F401

from . import benchmark, datasets, pl, pp  # noqa: E402

try:
    __version__ = version("stmcdi")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

logger = logging.getLogger(__name__)

__all__ = ["STMCDI", "STMCDIModule", "DiffusionTrainingPlan", "benchmark", "datasets", "pl", "pp"]


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
    raise AttributeError(f"module 'stmcdi' has no attribute {name!r}")
