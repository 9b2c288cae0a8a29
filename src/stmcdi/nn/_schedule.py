"""Noise schedule of the diffusion (stMCDI paper, Eq. 36)."""

from __future__ import annotations

import torch


def quadratic_beta_schedule(n_steps: int, beta_start: float = 1e-4, beta_end: float = 0.5) -> torch.Tensor:
    r"""Quadratic variance schedule :math:`\beta_t = \big(\sqrt{\beta_1} + \tfrac{t-1}{T-1}(\sqrt{\beta_T}-\sqrt{\beta_1})\big)^2`.

    Parameters
    ----------
    n_steps
        Number of diffusion steps :math:`T` (at least 2).
    beta_start, beta_end
        :math:`\beta_1` and :math:`\beta_T`, with ``0 < beta_start < beta_end < 1``.

    Returns
    -------
    float64 tensor of shape ``(n_steps,)``.

    Examples
    --------
    >>> quadratic_beta_schedule(3, 0.01, 0.25)
    tensor([0.0100, 0.0900, 0.2500], dtype=torch.float64)
    """
    if n_steps < 2:
        raise ValueError(f"n_steps must be at least 2, got {n_steps}.")
    if not 0.0 < beta_start < beta_end < 1.0:
        raise ValueError(f"Need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}.")
    return torch.linspace(beta_start**0.5, beta_end**0.5, n_steps, dtype=torch.float64) ** 2


def ddim_timesteps(n_train_steps: int, n_steps: int) -> list[int]:
    """Evenly spaced, decreasing subset of the training steps for DDIM sampling.

    Parameters
    ----------
    n_train_steps
        Number of training diffusion steps :math:`T`.
    n_steps
        Number of sampling steps (``1 <= n_steps <= n_train_steps``).

    Returns
    -------
    Step indices from ``T - 1`` down to ``0``.

    Examples
    --------
    >>> ddim_timesteps(50, 5)
    [49, 37, 24, 12, 0]
    """
    if not 1 <= n_steps <= n_train_steps:
        raise ValueError(f"n_steps must be in [1, {n_train_steps}], got {n_steps}.")
    if n_steps == 1:
        return [n_train_steps - 1]
    steps = torch.linspace(n_train_steps - 1, 0, n_steps).round().long().tolist()
    return list(dict.fromkeys(steps))
