"""Training targets: which observed entries of a spot a training step hides and asks the network to predict."""

from __future__ import annotations

import torch


def draw_targets(
    observed: torch.Tensor,
    nonzero: torch.Tensor | None = None,
    *,
    mask_strategy: str = "entries",
    mask_ratio: tuple[float, float] = (0.1, 0.9),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw training targets among the observed entries.

    Every spot draws a ratio uniformly from ``mask_ratio``. ``"entries"`` makes each observed entry a target
    with that probability and keeps at least one target in every spot with an observed entry; ``"nonzero"``
    does the same among the observed nonzero entries; ``"spots"`` makes all observed entries of a spot
    targets with that probability; ``"genes"`` picks genes with the first spot's ratio, the same in every spot.

    Parameters
    ----------
    observed
        Boolean ``(B, G)``: the observed entries of the batch's spots.
    nonzero
        Boolean ``(B, G)``: the nonzero entries, required by ``mask_strategy="nonzero"``.
    mask_strategy
        ``"entries"``, ``"nonzero"``, ``"spots"`` or ``"genes"``.
    mask_ratio
        ``(low, high)`` range of the ratio each spot draws.
    generator
        Random generator on ``observed``'s device (``None``: torch's global one).

    Returns
    -------
    Boolean ``(B, G)`` tensor of targets, a subset of ``observed``.

    Examples
    --------
    >>> import torch
    >>> observed = torch.ones(3, 5, dtype=torch.bool)
    >>> target = draw_targets(observed, mask_ratio=(0.5, 0.5), generator=torch.Generator().manual_seed(0))
    >>> target.shape, bool(target.any(dim=1).all())
    (torch.Size([3, 5]), True)
    """
    if mask_strategy == "nonzero":
        if nonzero is None:
            raise ValueError("mask_strategy='nonzero' needs `nonzero`, the boolean nonzero entries.")
        observed = observed & nonzero.to(torch.bool)
    b, g = observed.shape
    dev = observed.device
    lo, hi = mask_ratio
    ratio = lo + (hi - lo) * torch.rand(b, 1, device=dev, generator=generator)
    if mask_strategy in ("entries", "nonzero"):
        target = torch.rand(b, g, device=dev, generator=generator) < ratio
    elif mask_strategy == "spots":
        target = (torch.rand(b, 1, device=dev, generator=generator) < ratio).expand(b, g)
    else:  # genes
        target = (torch.rand(1, g, device=dev, generator=generator) < ratio[:1]).expand(b, g)
    target = target & observed
    if mask_strategy in ("entries", "nonzero"):
        # keep at least one target per spot that has an observed entry
        empty = ~target.any(dim=1) & observed.any(dim=1)
        if empty.any():
            scores = torch.rand(b, g, device=dev, generator=generator).masked_fill(~observed, -1.0)
            first = torch.zeros_like(target).scatter_(1, scores.argmax(dim=1, keepdim=True), True)
            target = target | (first & empty[:, None])
    return target
