"""CSDI-style denoiser over the gene tokens of one spot, with cross-attention to a conditioner."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from ._attention import Attention

AttentionType = Literal["latent", "full"]


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of diffusion steps ``t`` (``(B,)``) into ``(B, dim)``.

    Parameters
    ----------
    t
        Integer or float steps, shape ``(B,)``.
    dim
        Even embedding width.

    Returns
    -------
    ``(B, dim)`` tensor ``[sin(t w_k), cos(t w_k)]`` with geometric frequencies ``w_k``.

    Examples
    --------
    >>> timestep_embedding(torch.tensor([0]), 4)
    tensor([[0., 0., 1., 1.]])
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class Conditioner(nn.Module):
    r"""The conditioner :math:`\tau_\theta` (stMCDI paper, Eq. 10): observed part -> context tokens.

    Maps the visible values and their indicator, ``[x \odot m, m]``, through an MLP to ``n_tokens`` context
    tokens that the denoiser's gene tokens attend to.

    Parameters
    ----------
    n_genes
        Number of genes ``G``.
    n_channels
        Token width ``C``.
    n_tokens
        Number of context tokens ``M``.
    n_hidden
        Hidden width of the MLP.

    Shapes
    ------
    - value, mask: ``(B, G)``; output: ``(B, M, C)``.

    Examples
    --------
    >>> Conditioner(10, 8, 4)(torch.zeros(2, 10), torch.ones(2, 10)).shape
    torch.Size([2, 4, 8])
    """

    def __init__(self, n_genes: int, n_channels: int, n_tokens: int = 16, n_hidden: int = 256):
        super().__init__()
        self.n_genes, self.n_channels, self.n_tokens = n_genes, n_channels, n_tokens
        self.net = nn.Sequential(
            nn.Linear(2 * n_genes, n_hidden), nn.GELU(), nn.Linear(n_hidden, n_tokens * n_channels)
        )
        self.norm = nn.LayerNorm(n_channels)

    def forward(self, value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Context tokens from the visible values and their mask."""
        h = self.net(torch.cat([value * mask, mask], dim=-1))
        return self.norm(h.view(-1, self.n_tokens, self.n_channels))


class DenoiserBlock(nn.Module):
    """One residual block: token mixing across genes, cross-attention to the context, gated feed-forward.

    ``attention="latent"`` mixes genes through ``n_latents`` learned latent tokens (latents read the genes,
    genes read the latents), costing ``O(G * n_latents)`` per spot; ``"full"`` is self-attention over all
    ``G`` gene tokens, ``O(G^2)``.

    Shapes
    ------
    - h: ``(B, G, C)``; step: ``(B, C_t)``; context: ``(B, M, C)``; output: ``(h_next, skip)``, both ``(B, G, C)``.
    """

    def __init__(self, n_channels: int, n_heads: int, attention: AttentionType, n_latents: int, step_dim: int):
        super().__init__()
        self.attention = attention
        self.step = nn.Linear(step_dim, n_channels)
        self.norm_mix = nn.LayerNorm(n_channels)
        self.mix = Attention(n_channels, n_heads)
        if attention == "latent":
            self.latents = nn.Parameter(torch.randn(n_latents, n_channels) / math.sqrt(n_channels))
            self.read = Attention(n_channels, n_heads)
        self.norm_cross = nn.LayerNorm(n_channels)
        self.cross = Attention(n_channels, n_heads)
        self.norm_ff = nn.LayerNorm(n_channels)
        self.gate = nn.Linear(n_channels, 2 * n_channels)
        self.out = nn.Linear(n_channels, 2 * n_channels)

    def forward(self, h: torch.Tensor, step: torch.Tensor, context: torch.Tensor):
        """Apply the block; returns the next tokens and this block's skip contribution."""
        x = h + self.step(step)[:, None, :]
        y = self.norm_mix(x)
        if self.attention == "latent":
            lat = self.latents.expand(x.shape[0], -1, -1)
            lat = lat + self.read(lat, y)
            x = x + self.mix(y, lat)
        else:
            x = x + self.mix(y, y)
        x = x + self.cross(self.norm_cross(x), context)
        a, b = self.gate(self.norm_ff(x)).chunk(2, dim=-1)
        res, skip = self.out(torch.tanh(a) * torch.sigmoid(b)).chunk(2, dim=-1)
        return (h + res) / math.sqrt(2.0), skip


class GeneDenoiser(nn.Module):
    r"""Predicts the noise :math:`\epsilon` at the target entries of each spot (stMCDI paper, Eq. 12).

    Every gene of a spot is a token whose input features are the noisy target value :math:`x_t` (zero
    outside the targets), the visible value and its indicator, and the spatial representation's read-out
    :math:`\hat x` for that gene; a learned gene embedding, the spot's spatial code and the diffusion-step
    embedding are added. Residual blocks (:class:`DenoiserBlock`) mix the genes and cross-attend to the
    conditioner's context tokens, as in CSDI (Tashiro et al. 2021).

    Parameters
    ----------
    n_genes
        Number of genes ``G``.
    n_spatial
        Width of the spot's spatial code (0 for none).
    n_channels
        Token width ``C``.
    n_layers
        Number of residual blocks.
    n_heads
        Attention heads.
    attention
        ``"latent"`` (default, linear in ``G``) or ``"full"`` (quadratic in ``G``).
    n_latents
        Latent tokens for ``attention="latent"``.
    n_context
        Context tokens of the conditioner.
    genes_per_token
        Genes per token (1: one token per gene).
    n_token_features
        Input features per gene: 4 (noisy target, visible value, indicator, read-out) or 5 with the
        expression profile.

    Shapes
    ------
    - x_t, value, mask, x_hat, profile: ``(B, G)``; z: ``(B, n_spatial)``; t: ``(B,)``; context: ``(B, M, C)``;
      output: ``(B, G)``.

    Examples
    --------
    >>> net = GeneDenoiser(10, n_spatial=4, n_channels=8, n_layers=1, n_heads=2)
    >>> B = 3
    >>> out = net(torch.zeros(B, 10), torch.zeros(B, 10), torch.ones(B, 10), torch.zeros(B, 10),
    ...           torch.zeros(B, 4), torch.zeros(B, dtype=torch.long), net.context(torch.zeros(B, 10), torch.ones(B, 10)))
    >>> out.shape
    torch.Size([3, 10])
    """

    def __init__(
        self,
        n_genes: int,
        n_spatial: int = 0,
        n_channels: int = 32,
        n_layers: int = 2,
        n_heads: int = 4,
        attention: AttentionType = "latent",
        n_latents: int = 16,
        n_context: int = 16,
        genes_per_token: int = 1,
        n_token_features: int = 4,
    ):
        super().__init__()
        if n_token_features not in (4, 5):
            raise ValueError(f"n_token_features must be 4 or 5, got {n_token_features}.")
        if attention not in ("latent", "full"):
            raise ValueError(f"attention must be 'latent' or 'full', got {attention!r}.")
        if genes_per_token < 1:
            raise ValueError(f"genes_per_token must be >= 1, got {genes_per_token}.")
        self.n_genes, self.n_spatial, self.n_channels = n_genes, n_spatial, n_channels
        self.n_layers, self.attention = n_layers, attention
        self.genes_per_token = p = int(genes_per_token)
        self.n_tokens = -(-n_genes // p)
        step_dim = 4 * n_channels
        self.step_mlp = nn.Sequential(
            nn.Linear(n_channels, step_dim), nn.GELU(), nn.Linear(step_dim, step_dim), nn.GELU()
        )
        self.n_token_features = int(n_token_features)
        self.token_in = nn.Linear(self.n_token_features * p, n_channels)
        self.gene_embedding = nn.Parameter(torch.randn(self.n_tokens, n_channels) * 0.02)
        self.spatial_in = nn.Linear(n_spatial, n_channels) if n_spatial > 0 else None
        self.context = Conditioner(n_genes, n_channels, n_context)
        self.blocks = nn.ModuleList(
            DenoiserBlock(n_channels, n_heads, attention, n_latents, step_dim) for _ in range(n_layers)
        )
        self.head = nn.Sequential(nn.LayerNorm(n_channels), nn.Linear(n_channels, n_channels), nn.GELU())
        self.head_out = nn.Linear(n_channels, p)
        nn.init.zeros_(self.head_out.weight)
        nn.init.zeros_(self.head_out.bias)

    def forward(
        self,
        x_t: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor,
        x_hat: torch.Tensor,
        z: torch.Tensor | None,
        t: torch.Tensor,
        context: torch.Tensor,
        profile: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise at every gene (only target entries are used by the loss and the sampler)."""
        b, p = x_t.shape[0], self.genes_per_token
        feats = [x_t, value * mask, mask, x_hat]
        if self.n_token_features == 5:
            if profile is None:
                raise ValueError("This denoiser reads an expression profile (n_token_features=5): pass `profile`.")
            feats.append(profile)
        tokens = torch.stack(feats, dim=-1)  # (B, G, n_token_features)
        pad = self.n_tokens * p - self.n_genes
        if pad:
            tokens = torch.nn.functional.pad(tokens, (0, 0, 0, pad))
        h = self.token_in(tokens.reshape(b, self.n_tokens, self.n_token_features * p)) + self.gene_embedding[None]
        if self.spatial_in is not None and z is not None:
            h = h + self.spatial_in(z)[:, None, :]
        step = self.step_mlp(timestep_embedding(t, self.n_channels))
        skip = torch.zeros_like(h)
        for block in self.blocks:
            h, s = block(h, step, context)
            skip = skip + s
        out = self.head(skip / math.sqrt(len(self.blocks)))
        return self.head_out(out).reshape(b, self.n_tokens * p)[:, : self.n_genes]

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(genes={self.n_genes}, channels={self.n_channels}, "
            f"layers={self.n_layers}, attention={self.attention})"
        )
