"""Plotting: tissue maps of observed, imputed and uncertainty layers."""

from ._spatial import imputation

__all__ = ["imputation"]
