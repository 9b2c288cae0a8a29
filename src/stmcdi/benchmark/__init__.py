"""Benchmarking imputation: seeded hold-out protocols, metrics on the log-normalised scale, baselines, harness."""

from ._ablation import ABLATIONS, ablation
from ._baselines import BASELINES, expression_knn, gene_mean, soft_impute, spatial_knn, spot_mean
from ._evaluate import compare, evaluate, parse_protocols, summarize, to_markdown
from ._extras import EXTRAS, available_extras, magic, scvi_impute, stagate
from ._masking import PROTOCOLS, HeldOut, hold_out
from ._metrics import (
    cosine,
    crps_ensemble,
    crps_gaussian,
    interval_coverage,
    mae,
    pcc,
    per_gene_pcc,
    per_spot_pcc,
    rmse,
    score,
    split_half_ceiling,
)
from ._stmcdi import stmcdi_method

__all__ = [
    "ABLATIONS",
    "BASELINES",
    "EXTRAS",
    "ablation",
    "available_extras",
    "compare",
    "PROTOCOLS",
    "HeldOut",
    "cosine",
    "crps_ensemble",
    "crps_gaussian",
    "evaluate",
    "expression_knn",
    "gene_mean",
    "hold_out",
    "interval_coverage",
    "magic",
    "mae",
    "parse_protocols",
    "pcc",
    "per_gene_pcc",
    "per_spot_pcc",
    "rmse",
    "score",
    "scvi_impute",
    "soft_impute",
    "spatial_knn",
    "spot_mean",
    "split_half_ceiling",
    "stagate",
    "stmcdi_method",
    "summarize",
    "to_markdown",
]
