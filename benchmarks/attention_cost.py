"""Time one attention call of the denoiser's shapes on this CPU: SDPA (math, flash) against matmul-softmax-matmul.

Shapes are those of imputation with the defaults: 640 spot-samples per batch, 4 heads of 16 channels, 125 gene
tokens (1000 genes, 8 per token) attending to 16 latent or context tokens, and 16 latents reading 125 tokens.

    python benchmarks/attention_cost.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def matmul_softmax(q, k, v):
    """Attention as two batched matmuls and a softmax."""
    return torch.matmul(torch.matmul(q, k.transpose(-1, -2)).mul(q.shape[-1] ** -0.5).softmax(-1), v)


def sdpa(backend):
    """SDPA restricted to one backend."""

    def run(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)

    return run


def main() -> None:
    """Print ms per call for each implementation and shape."""
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    b, h, d = 640, 4, 16
    impls = {"sdpa math": sdpa(SDPBackend.MATH), "sdpa flash": sdpa(SDPBackend.FLASH_ATTENTION),
             "matmul-softmax": matmul_softmax}
    for lq, lk in ((125, 16), (16, 125)):
        q, k, v = (torch.randn(b, n, h, d).transpose(1, 2) for n in (lq, lk, lk))
        ref = matmul_softmax(q, k, v)
        for name, fn in impls.items():
            torch.testing.assert_close(fn(q, k, v), ref, atol=1e-5, rtol=1e-4)
            fn(q, k, v)
            t0 = time.perf_counter()
            for _ in range(20):
                fn(q, k, v)
            print(f"{lq} queries x {lk} keys, {name}: {(time.perf_counter() - t0) / 20 * 1000:.1f} ms")


if __name__ == "__main__":
    main()
