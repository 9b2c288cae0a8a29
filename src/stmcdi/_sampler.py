"""Reverse diffusion and the one-pass estimate of :class:`~stmcdi.STMCDIModule` (imputation-time methods)."""

from __future__ import annotations

from typing import Literal

import torch
from scvi.module.base import auto_move_data

from .nn import ddim_timesteps

#: Default number of DDIM steps (capped at ``n_diffusion_steps``).
DDIM_STEPS = 10


class ReverseDiffusion:
    """Imputation methods of :class:`~stmcdi.STMCDIModule`: one encoding, then a one-pass estimate and samples.

    The entries to fill are NaN in ``counts`` or given as ``target``; observed entries in ``target`` (the zeros
    of ``impute(target="zeros")``) are hidden from their own spot's condition and encoder input, and read only
    by the spot summaries. Call ``module.eval()`` first: in training mode the encoder applies dropout.
    """

    def _encode_to_fill(self, counts, library, edge_index, n_seed, target, expression_counts, expression_library,
                        summarise_targets=True):
        """``inference`` at imputation: the NaN entries are filled unless ``target`` is given."""
        summarise = None
        if target is None:
            target = torch.isnan(counts[:n_seed])
        elif summarise_targets:  # observed entries to fill (zeros): the summaries read every observed entry
            summarise = ~torch.isnan(counts[:n_seed])
        return self.inference(counts, library, edge_index, n_seed, target=target,
                              expression_counts=expression_counts, expression_library=expression_library,
                              summarise=summarise)

    def _one_pass(self, inf: dict) -> torch.Tensor:
        """The one-pass task's residual (no noise in, step ``point_step``), clipped to the data range."""
        x, base = inf["x"], inf["base"]
        tt = torch.full((x.shape[0],), self.point_step, device=x.device, dtype=torch.long)
        r = self.denoise(torch.zeros_like(x), tt, x, inf["target"].to(x.dtype), inf["cond"], inf["z_in"],
                         inf["x_hat"], inf["context"], inf["profile"])
        return torch.maximum(torch.minimum(base + r, self.x0_high), self.x0_low) - base

    def _reverse(self, inf: dict, n_samples: int, sampler: str, n_steps: int | None,
                 generator: torch.Generator | None) -> torch.Tensor:
        """``(n_samples, B, G)`` reverse-diffusion draws of the targets (scaled axis; observed entries as given)."""
        if sampler not in ("ddim", "ddpm"):
            raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}.")
        s = int(n_samples)
        rep = lambda v: None if v is None else v.repeat_interleave(s, dim=0)
        x, target, cond = rep(inf["x"]), rep(inf["target"]).to(inf["x"].dtype), rep(inf["cond"])
        z, x_hat, context, base, profile = (rep(inf[k]) for k in ("z_in", "x_hat", "context", "base", "profile"))
        # noise drawn on the generator's device (CPU by default) so results do not depend on the accelerator
        gen_device = generator.device if generator is not None else torch.device("cpu")
        randn = lambda: torch.randn(x.shape, generator=generator, device=gen_device).to(x.device)
        xt = randn()
        n = x.shape[0]
        clip = lambda r: torch.maximum(torch.minimum(base + r, self.x0_high), self.x0_low) - base
        if self.objective == "mae":  # one deterministic pass: every sample is the same
            xt = self._one_pass({**inf, "x": x, "target": target, "cond": cond, "z_in": z, "x_hat": x_hat,
                                 "context": context, "base": base, "profile": profile})
        elif sampler == "ddpm":
            for t in range(self.n_diffusion_steps - 1, -1, -1):
                tt = torch.full((n,), t, device=x.device, dtype=torch.long)
                eps = self.denoise(xt, tt, x, target, cond, z, x_hat, context, profile)
                beta, ab = self.betas[t], self.alpha_bar[t]
                x0 = clip((xt - (1.0 - ab).sqrt() * eps) / ab.sqrt())
                if t > 0:  # posterior q(x_{t-1} | x_t, x0) of Ho et al. (2020), Eq. 6-7
                    ab_prev = self.alpha_bar[t - 1]
                    mean = (ab_prev.sqrt() * beta * x0 + (1.0 - beta).sqrt() * (1.0 - ab_prev) * xt) / (1.0 - ab)
                    xt = mean + (beta * (1.0 - ab_prev) / (1.0 - ab)).sqrt() * randn()
                else:
                    xt = x0
        else:
            steps = ddim_timesteps(self.n_diffusion_steps, n_steps or min(DDIM_STEPS, self.n_diffusion_steps))
            for i, t in enumerate(steps):
                tt = torch.full((n,), t, device=x.device, dtype=torch.long)
                eps = self.denoise(xt, tt, x, target, cond, z, x_hat, context, profile)
                ab = self.alpha_bar[t]
                x0 = clip((xt - (1.0 - ab).sqrt() * eps) / ab.sqrt())
                if i + 1 < len(steps):
                    ab_prev = self.alpha_bar[steps[i + 1]]
                    eps = (xt - ab.sqrt() * x0) / (1.0 - ab).sqrt()  # noise consistent with the clipped x0
                    xt = ab_prev.sqrt() * x0 + (1.0 - ab_prev).sqrt() * eps
                else:
                    xt = x0
        filled = torch.where(target.bool(), base + xt, x)
        return filled.view(-1, s, self.n_genes).transpose(0, 1)

    @torch.inference_mode()
    @auto_move_data
    def fill(
        self,
        counts: torch.Tensor,
        library: torch.Tensor,
        edge_index: torch.Tensor,
        n_seed: int,
        n_samples: int = 0,
        sampler: Literal["ddim", "ddpm"] = "ddim",
        n_steps: int | None = None,
        generator: torch.Generator | None = None,
        expression_counts: torch.Tensor | None = None,
        expression_library: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        summarise_targets: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode a batch once; return its point estimate and, with ``n_samples > 0``, its samples.

        The point estimate is the one-pass estimate (``objective`` ``"hybrid"`` or ``"mae"``) or the mean of the
        samples (``"diffusion"``, which then needs ``n_samples > 0``).

        Parameters
        ----------
        counts
            ``(U, G)`` float32 counts of the neighbourhood's nodes, the spots to fill first; NaN marks entries to
            fill.
        library
            ``(U,)`` library sizes from the observed entries.
        edge_index
            int64 ``(2, E)`` local edges, source -> target.
        n_seed
            Number of spots to fill: nodes ``0 .. n_seed-1``.
        n_samples
            Reverse-diffusion samples per spot (0: none).
        sampler
            ``"ddim"`` (deterministic, ``n_steps`` steps, default 10) or ``"ddpm"`` (the paper's ancestral
            sampler over every step).
        n_steps
            DDIM steps.
        generator
            Random generator for the noise, drawn on its device (CPU by default) so that a seed gives the same
            samples on any accelerator.
        expression_counts, expression_library
            Counts and library sizes of the spots' expression neighbours (with ``expression_profile``).
        target
            Boolean ``(n_seed, G)`` entries to fill; default the NaN entries of the first ``n_seed`` spots.
        summarise_targets
            Whether the spot summaries read the observed entries in ``target`` (the zeros of
            ``impute(target="zeros")`` are observed data); ``False`` for held-back entries whose values must stay
            unseen.

        Returns
        -------
        ``(estimate, samples)``: ``(n_seed, G)`` and ``(n_samples, n_seed, G)`` (``None`` without samples) on the
        log-normalised scale, clamped at 0; observed entries hold their value.

        Examples
        --------
        >>> import numpy as np, torch
        >>> from stmcdi import STMCDIModule
        >>> module = STMCDIModule(6, np.zeros(6), np.ones(6), 100.0, n_encoder_hidden=8, n_latent=4, n_channels=8)
        >>> counts = torch.tensor([[3.0, float("nan"), 0.0, 5.0, 1.0, 2.0], [0.0, 4.0, 2.0, 1.0, 3.0, 0.0]])
        >>> est, draws = module.eval().fill(counts, torch.nan_to_num(counts).sum(1), torch.tensor([[1], [0]]),
        ...                                 n_seed=1, n_samples=4, generator=torch.Generator().manual_seed(0))
        >>> est.shape, draws.shape
        (torch.Size([1, 6]), torch.Size([4, 1, 6]))
        """
        inf = self._encode_to_fill(counts, library, edge_index, n_seed, target, expression_counts, expression_library,
                                   summarise_targets)
        draws = None
        if n_samples > 0:
            draws = self.unscale(self._reverse(inf, n_samples, sampler, n_steps, generator)).clamp_min(0.0)
        if self.objective == "diffusion":
            if draws is None:
                raise ValueError("A model trained with objective='diffusion' estimates by sampling: n_samples >= 1.")
            return draws.mean(0), draws
        filled = torch.where(inf["target"], inf["base"] + self._one_pass(inf), inf["x"])
        return self.unscale(filled).clamp_min(0.0), draws

    def sample(self, counts, library, edge_index, n_seed: int, n_samples: int = 10, sampler: str = "ddim",
               n_steps: int | None = None, generator: torch.Generator | None = None, expression_counts=None,
               expression_library=None, target=None) -> torch.Tensor:
        """Reverse-diffusion samples of the entries to fill: ``(n_samples, n_seed, G)``, log-normalised.

        The chain starts from Gaussian noise at the entries to fill.

        Parameters
        ----------
        counts, library, edge_index, n_seed, n_samples, sampler, n_steps, generator
            As in :meth:`fill` (``n_samples`` at least 1).
        expression_counts, expression_library, target
            As in :meth:`fill`.

        Returns
        -------
        ``(n_samples, n_seed, G)`` tensor clamped at 0; observed entries hold their value.

        Examples
        --------
        >>> import numpy as np, torch, stmcdi
        >>> module = stmcdi.STMCDIModule(6, np.zeros(6), np.ones(6), 100.0, n_channels=8)
        >>> counts = torch.tensor([[3.0, float("nan"), 0.0, 5.0, 1.0, 2.0], [0.0, 4.0, 2.0, 1.0, 3.0, 0.0]])
        >>> module.eval().sample(counts, torch.nan_to_num(counts).sum(1), torch.tensor([[1], [0]]), 1, n_samples=2).shape
        torch.Size([2, 1, 6])
        """
        if int(n_samples) < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
        return self.fill(counts, library, edge_index, n_seed, n_samples, sampler, n_steps, generator,
                         expression_counts, expression_library, target)[1]

    def predict(self, counts, library, edge_index, n_seed: int, expression_counts=None, expression_library=None,
                target=None) -> torch.Tensor:
        """One-pass point estimate of the entries to fill: ``(n_seed, G)``, log-normalised.

        A model trained with ``objective="diffusion"`` has no one-pass task and raises.

        Parameters
        ----------
        counts, library, edge_index, n_seed, expression_counts, expression_library, target
            As in :meth:`fill`.

        Returns
        -------
        ``(n_seed, G)`` tensor clamped at 0; observed entries hold their value.

        Examples
        --------
        >>> import numpy as np, torch, stmcdi
        >>> module = stmcdi.STMCDIModule(6, np.zeros(6), np.ones(6), 100.0, n_channels=8)
        >>> counts = torch.tensor([[3.0, float("nan"), 0.0, 5.0, 1.0, 2.0], [0.0, 4.0, 2.0, 1.0, 3.0, 0.0]])
        >>> module.eval().predict(counts, torch.nan_to_num(counts).sum(1), torch.tensor([[1], [0]]), n_seed=1).shape
        torch.Size([1, 6])
        """
        if self.objective == "diffusion":
            raise ValueError("This model was trained with objective='diffusion' only; it has no one-pass predictor. "
                             "Use sample() (or train with objective='hybrid').")
        return self.fill(counts, library, edge_index, n_seed, 0, expression_counts=expression_counts,
                         expression_library=expression_library, target=target)[0]

    @torch.inference_mode()
    @auto_move_data
    def encode(self, counts, library, edge_index, n_seed: int, expression_counts=None, expression_library=None):
        """Spatial code :math:`z` of the first ``n_seed`` spots, every observed entry visible.

        Parameters
        ----------
        counts, library, edge_index, n_seed, expression_counts, expression_library
            As in :meth:`fill`.

        Returns
        -------
        ``(n_seed, n_latent)`` tensor.

        Examples
        --------
        >>> import numpy as np, torch, stmcdi
        >>> module = stmcdi.STMCDIModule(6, np.zeros(6), np.ones(6), 100.0, n_latent=4)
        >>> counts = torch.tensor([[3.0, float("nan"), 0.0, 5.0, 1.0, 2.0], [0.0, 4.0, 2.0, 1.0, 3.0, 0.0]])
        >>> z = module.eval().encode(counts, torch.nan_to_num(counts).sum(1), torch.tensor([[1], [0]]), n_seed=2)
        >>> z.shape  # (n_seed, n_latent)
        torch.Size([2, 4])
        """
        if self.encoder is None:
            raise ValueError("This model has encoder='none': it has no spatial representation.")
        return self.inference(counts, library, edge_index, n_seed, target=torch.isnan(counts[:n_seed]),
                              expression_counts=expression_counts, expression_library=expression_library)["z"]
