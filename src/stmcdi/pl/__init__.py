"""Plotting: tissue maps of observed, imputed and uncertainty layers, and benchmark figures."""

from ._benchmark import benchmark, heatmap
from ._spatial import imputation

__all__ = ["benchmark", "heatmap", "imputation"]
