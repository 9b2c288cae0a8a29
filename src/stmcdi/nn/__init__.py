"""Neural-network building blocks of stMCDI (torch / torch-geometric layers)."""

from ._attention import Attention
from ._denoiser import Conditioner, DenoiserBlock, GeneDenoiser, timestep_embedding
from ._encoder import SpatialEncoder, mean_edge_weight
from ._schedule import ddim_timesteps, quadratic_beta_schedule

__all__ = [
    "Attention",
    "Conditioner",
    "DenoiserBlock",
    "GeneDenoiser",
    "SpatialEncoder",
    "ddim_timesteps",
    "mean_edge_weight",
    "quadratic_beta_schedule",
    "timestep_embedding",
]
