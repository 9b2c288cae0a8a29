"""Multi-head attention on :func:`torch.nn.functional.scaled_dot_product_attention` (fused on GPU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention of queries ``q`` over keys/values ``kv``.

    Parameters
    ----------
    n_channels
        Width of queries, keys and values.
    n_heads
        Number of heads; must divide ``n_channels``.

    Shapes
    ------
    - q: ``(B, L, C)``; kv: ``(B, S, C)``; output: ``(B, L, C)``.

    Examples
    --------
    >>> Attention(8, 2)(torch.zeros(3, 5, 8), torch.zeros(3, 4, 8)).shape
    torch.Size([3, 5, 8])
    """

    def __init__(self, n_channels: int, n_heads: int = 4):
        super().__init__()
        if n_channels % n_heads:
            raise ValueError(f"n_heads={n_heads} must divide n_channels={n_channels}.")
        self.n_channels, self.n_heads = n_channels, n_heads
        self.q = nn.Linear(n_channels, n_channels)
        self.kv = nn.Linear(n_channels, 2 * n_channels)
        self.out = nn.Linear(n_channels, n_channels)

    def reset_parameters(self) -> None:
        """Re-initialise the projections."""
        for lin in (self.q, self.kv, self.out):
            lin.reset_parameters()

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """Attend from ``q`` to ``kv``."""
        b, lq, c = q.shape
        h = self.n_heads
        qh = self.q(q).view(b, lq, h, c // h).transpose(1, 2)
        k, v = self.kv(kv).view(b, kv.shape[1], 2, h, c // h).permute(2, 0, 3, 1, 4)
        if qh.device.type == "cpu":
            # On a CPU, for these short sequences and small heads, SDPA's math kernel spends about a third of its
            # time on masking checks and copies (torch profiler); plain matmul-softmax-matmul ran the whole
            # denoiser ~25% faster than it, forward and backward, and about as fast as the flash kernel
            # (benchmarks/attention_cost.py times single calls).
            scores = torch.matmul(qh, k.transpose(-1, -2)) * (qh.shape[-1] ** -0.5)
            o = torch.matmul(scores.softmax(dim=-1), v)
        else:
            o = F.scaled_dot_product_attention(qh, k, v)
        return self.out(o.transpose(1, 2).reshape(b, lq, c))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.n_channels}, heads={self.n_heads})"
