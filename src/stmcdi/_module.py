"""STMCDIModule: spatial GCN encoder + masked conditional diffusion over gene tokens (pure torch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data

from ._constants import BATCH_KEYS
from ._sampler import ReverseDiffusion
from ._targets import draw_targets
from .nn import GeneDenoiser, SpatialEncoder, quadratic_beta_schedule

MaskStrategy = Literal["entries", "nonzero", "spots", "genes"]
EncoderChoice = Literal["gcn", "gat", "gin", "mlp", "none"]
Objective = Literal["diffusion", "mae", "hybrid"]

#: Number of per-spot summaries of :meth:`STMCDIModule.spot_summary`.
N_SPOT_FEATURES = 3


class STMCDIModule(ReverseDiffusion, BaseModuleClass):
    r"""Masked conditional diffusion with a spatial graph encoder (stMCDI).

    Data flow of a training step (see the docs page "Method"):

    1. counts -> :math:`x = (\log(1 + c\,s/\ell) - \mu_g)/\sigma_g`, with library :math:`\ell` from observed
       entries, target sum :math:`s` and per-gene :math:`\mu_g, \sigma_g` from observed training entries;
    2. a random part (``mask_ratio``) of each batch spot's observed entries becomes the **target**; the rest
       is the **condition**; missing entries are neither;
    3. the encoder reads the neighbourhood with the targets hidden (values zeroed, indicator 0) and gives a
       spatial code :math:`z`; the read-out :math:`\hat x` is a spot offset from the spot's summaries, the
       expression-profile term and, with ``latent_readout``, a per-gene read-out of :math:`z`;
    4. the targets are noised, :math:`x_t = \sqrt{\bar\alpha_t} (x - \hat x) + \sqrt{1-\bar\alpha_t}\,\epsilon`,
       and the denoiser predicts :math:`\epsilon` from :math:`x_t`, the condition, :math:`\hat x`, :math:`z`,
       the conditioner's context and :math:`t`; with ``objective="hybrid"`` a part of the spots instead gets
       the one-pass task (no noise in, predict the targets);
    5. loss: mean squared error over the target entries only, plus the read-out's own squared error.

    Parameters
    ----------
    n_genes
        Number of genes.
    gene_mean, gene_std
        Per-gene mean and sd of the observed log-normalised values (the scaling).
    target_sum
        Library size every spot is scaled to before ``log1p``.
    gene_max
        Per-gene largest observed log-normalised value; estimates are clipped to ``[0, 1.5 * gene_max]``.
    encoder
        ``"gcn"`` (paper), ``"gat"``, ``"gin"``, ``"mlp"`` (no messages between spots) or ``"none"`` (no
        spatial input at all).
    n_encoder_layers, n_encoder_hidden, n_latent
        Graph layers (the paper uses 3), hidden width of the encoder and width of the spatial code :math:`z`.
    n_channels, n_layers, n_heads, attention, n_latents, n_context, genes_per_token
        Denoiser size (see :class:`~stmcdi.nn.GeneDenoiser`).
    n_diffusion_steps, beta_start, beta_end
        Quadratic noise schedule (paper Eq. 36).
    mask_ratio
        Fraction of a spot's observed entries that become targets in training: a float, or a ``(low, high)``
        range drawn per spot.
    mask_strategy
        ``"entries"``, ``"nonzero"`` (the dropout question: what a zero would read had it been detected),
        ``"spots"`` or ``"genes"`` (see ``stmcdi._targets.draw_targets``).
    input_mask, representation_mask_ratio
        Hide targets from the encoder (the paper's first mask; ``False`` is an ablation that leaks targets), and
        the fraction of :math:`\hat x` entries zeroed in training (the paper's second mask).
    readout_loss_weight
        Weight of the read-out's squared error at the targets (a direct signal for the encoder).
    residual, dropout
        Diffuse the residual :math:`x - \hat x` (read-out detached) instead of :math:`x`; dropout in the encoder.
    objective, point_fraction
        ``"diffusion"`` (stMCDI), ``"mae"`` (the masked-autoencoder control: one pass, no noise) or ``"hybrid"``
        (both tasks in one network, ``point_fraction`` of a batch's spots on the one-pass task: ``predict``
        gives the one-pass estimate and ``sample`` the diffusion samples).
    spot_features, spot_feature_stats
        Give the network three summaries of each spot's visible entries (:meth:`spot_summary`), standardised with
        ``(mean, sd)`` over the spots; a small MLP turns them into an offset shared by the spot's genes.
    expression_profile
        Condition on each spot's expression profile: the mean scaled value of its nearest spots in expression
        space (:meth:`expression_summary`), a fifth token feature and, weighted per gene, part of the read-out.
    latent_readout
        Add a per-gene linear read-out of :math:`z` to :math:`\hat x`. Default (``None``): only with
        ``mask_strategy="nonzero"``.

    Examples
    --------
    A tiny module on a 3-spot neighbourhood: spot 0 is the batch's only spot (``n_seed=1``) and spots 1
    and 2 are its neighbours. :class:`~stmcdi.STMCDI` builds the module and the batches for you.

    >>> import numpy as np, torch
    >>> module = STMCDIModule(n_genes=6, gene_mean=np.zeros(6), gene_std=np.ones(6), target_sum=100.0,
    ...                       n_encoder_hidden=8, n_latent=4, n_channels=8)
    >>> nan = float("nan")
    >>> counts = torch.tensor([[3.0, nan, 0.0, 5.0, 1.0, 2.0],
    ...                        [0.0, 4.0, 2.0, 1.0, 3.0, 0.0],
    ...                        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    >>> library = torch.nan_to_num(counts).sum(1)
    >>> edge_index = torch.tensor([[1, 2], [0, 0]])  # source -> target: spots 1 and 2 send to spot 0
    >>> batch = {"counts": counts, "library": library, "edge_index": edge_index, "row": torch.tensor([0])}
    >>> inference_outputs, generative_outputs, loss_output = module(batch)  # one training forward pass
    >>> loss_output.loss.shape
    torch.Size([])
    >>> samples = module.eval().sample(counts, library, edge_index, n_seed=1, n_samples=3)
    >>> samples.shape  # (n_samples, n_seed, n_genes), log-normalised
    torch.Size([3, 1, 6])
    """

    def __init__(
        self,
        n_genes: int,
        gene_mean: np.ndarray,
        gene_std: np.ndarray,
        target_sum: float,
        *,
        gene_max: np.ndarray | None = None,
        encoder: EncoderChoice = "gcn",
        n_encoder_layers: int = 3,
        n_encoder_hidden: int = 128,
        n_latent: int = 32,
        n_channels: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        attention: Literal["latent", "full"] = "latent",
        n_latents: int = 16,
        n_context: int = 16,
        genes_per_token: int = 8,
        n_diffusion_steps: int = 50,
        beta_start: float = 1e-4,
        beta_end: float = 0.5,
        mask_ratio: float | Sequence[float] = (0.1, 0.9),
        mask_strategy: MaskStrategy = "entries",
        input_mask: bool = True,
        representation_mask_ratio: float = 0.0,
        readout_loss_weight: float = 1.0,
        residual: bool = True,
        objective: Objective = "hybrid",
        point_fraction: float = 0.25,
        dropout: float = 0.3,
        spot_features: bool = True,
        spot_feature_stats: tuple[np.ndarray, np.ndarray] | None = None,
        expression_profile: bool = False,
        latent_readout: bool | None = None,
    ):
        super().__init__()
        if objective not in ("diffusion", "mae", "hybrid"):
            raise ValueError(
                "objective must be 'diffusion', 'mae' (the masked-autoencoder control) or 'hybrid' (both), "
                f"got {objective!r}."
            )
        if not 0.0 < point_fraction < 1.0:
            raise ValueError(f"point_fraction must be in (0, 1), got {point_fraction!r}.")
        if mask_strategy not in ("entries", "nonzero", "spots", "genes"):
            raise ValueError(f"mask_strategy must be 'entries', 'nonzero', 'spots' or 'genes', got {mask_strategy!r}.")
        lo, hi = (mask_ratio, mask_ratio) if np.isscalar(mask_ratio) else tuple(mask_ratio)
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(f"mask_ratio must lie in (0, 1) (a float or a (low, high) pair), got {mask_ratio!r}.")
        if not 0.0 <= representation_mask_ratio < 1.0:
            raise ValueError(f"representation_mask_ratio must be in [0, 1), got {representation_mask_ratio}.")
        self.n_genes = n_genes
        self.encoder_type = encoder
        self.n_hops = 0 if encoder == "none" else n_encoder_layers
        self.mask_ratio = (float(lo), float(hi))
        self.mask_strategy = mask_strategy
        self.latent_readout = bool(mask_strategy == "nonzero" if latent_readout is None else latent_readout)
        self.input_mask = input_mask
        self.representation_mask_ratio = representation_mask_ratio
        self.readout_loss_weight = float(readout_loss_weight)
        self.residual = bool(residual) and encoder != "none"
        self.n_diffusion_steps = n_diffusion_steps
        self.objective = objective
        self.point_fraction = float(point_fraction)
        self.spot_features = bool(spot_features)
        self.expression_profile = bool(expression_profile)
        # step index of the one-pass task: 0 for the control, its own index for "hybrid"
        self.point_step = n_diffusion_steps if objective == "hybrid" else 0

        # Float buffers only: EMA with integer buffers corrupts them; these never change in training.
        self.register_buffer("gene_mean", torch.as_tensor(np.asarray(gene_mean), dtype=torch.float32))
        self.register_buffer("gene_std", torch.as_tensor(np.asarray(gene_std), dtype=torch.float32))
        self.register_buffer("target_sum", torch.tensor(float(target_sum), dtype=torch.float32))
        upper = np.full(n_genes, np.inf) if gene_max is None else 1.5 * np.asarray(gene_max, dtype=np.float64)
        self.register_buffer("x0_low", -self.gene_mean / self.gene_std)  # log-normalised value 0
        self.register_buffer("x0_high", (torch.as_tensor(upper, dtype=torch.float32) - self.gene_mean) / self.gene_std)
        f_mean, f_std = (np.zeros(N_SPOT_FEATURES), np.ones(N_SPOT_FEATURES)) if spot_feature_stats is None \
            else spot_feature_stats
        self.register_buffer("spot_feature_mean", torch.as_tensor(np.asarray(f_mean), dtype=torch.float32))
        self.register_buffer("spot_feature_std", torch.as_tensor(np.maximum(np.asarray(f_std, dtype=np.float64), 1e-6),
                                                                 dtype=torch.float32))
        betas = quadratic_beta_schedule(n_diffusion_steps, beta_start, beta_end)
        self.register_buffer("betas", betas.float())
        self.register_buffer("alpha_bar", torch.cumprod(1.0 - betas, dim=0).float())

        if encoder == "none":
            self.encoder = None
            self.readout = None
        else:
            self.encoder = SpatialEncoder(n_genes, n_encoder_hidden, n_latent, n_encoder_layers, encoder, dropout)
            self.readout = torch.nn.Linear(n_latent, n_genes) if self.latent_readout else None
        n_feat = N_SPOT_FEATURES if self.spot_features else 0
        # spot summaries -> one offset shared by the spot's genes (added to the read-out)
        self.spot_offset = (
            torch.nn.Sequential(torch.nn.Linear(n_feat, 32), torch.nn.GELU(), torch.nn.Linear(32, 1))
            if self.spot_features and encoder != "none" else None
        )
        # weight of the expression profile in the read-out, per gene
        self.expression_weight = (
            torch.nn.Parameter(torch.full((n_genes,), 0.5)) if self.expression_profile and encoder != "none" else None
        )
        self.denoiser = GeneDenoiser(
            n_genes,
            n_spatial=(0 if encoder == "none" else n_latent) + n_feat,
            n_channels=n_channels,
            n_layers=n_layers,
            n_heads=n_heads,
            attention=attention,
            n_latents=n_latents,
            n_context=n_context,
            genes_per_token=genes_per_token,
            n_token_features=5 if self.expression_profile else 4,
        )

    # ----------------------------------------------------------------------------- scaling
    def scale(self, counts: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
        r"""Counts (NaN = missing) -> scaled log-normalised values (NaN kept).

        Computes :math:`(\log(1 + c\,s/\ell) - \mu_g)/\sigma_g`; spots with library 0 are not rescaled.

        Parameters
        ----------
        counts
            ``(n, G)`` float counts; NaN marks missing entries.
        library
            ``(n,)`` library sizes :math:`\ell`.

        Returns
        -------
        ``(n, G)`` tensor of scaled values; NaN where ``counts`` is NaN.

        Examples
        --------
        >>> import numpy as np, torch
        >>> module = STMCDIModule(2, gene_mean=np.zeros(2), gene_std=np.ones(2), target_sum=4.0)
        >>> counts = torch.tensor([[1.0, float("nan")], [3.0, 1.0]])
        >>> module.scale(counts, library=torch.tensor([1.0, 4.0]))  # log1p(4), log1p(3), log1p(1)
        tensor([[1.6094,    nan],
                [1.3863, 0.6931]])
        """
        factor = torch.where(library > 0, self.target_sum / library.clamp_min(1e-12), torch.ones_like(library))
        return (torch.log1p(counts * factor[:, None]) - self.gene_mean) / self.gene_std

    def unscale(self, x: torch.Tensor) -> torch.Tensor:
        r"""Scaled values -> log-normalised values :math:`v = x\,\sigma_g + \mu_g`.

        Parameters
        ----------
        x
            ``(..., G)`` values on the model's scale.

        Returns
        -------
        Tensor of ``x``'s shape.

        Examples
        --------
        >>> import numpy as np, torch
        >>> module = STMCDIModule(2, gene_mean=np.array([1.0, 2.0]), gene_std=np.array([2.0, 0.5]), target_sum=1.0)
        >>> module.unscale(torch.tensor([[0.0, 1.0], [-0.5, 2.0]]))
        tensor([[1.0000, 2.5000],
                [0.0000, 3.0000]])
        """
        return x * self.gene_std + self.gene_mean

    def sample_targets(self, observed: torch.Tensor, generator: torch.Generator | None = None,
                       nonzero: torch.Tensor | None = None) -> torch.Tensor:
        """Draw the training targets among the observed entries (``stmcdi._targets.draw_targets``).

        Parameters
        ----------
        observed
            Boolean ``(B, G)``: the observed entries of the batch's spots.
        generator
            Random generator on ``observed``'s device (``None``: torch's global one).
        nonzero
            Boolean ``(B, G)``: the nonzero entries, required by ``mask_strategy="nonzero"``.

        Returns
        -------
        Boolean ``(B, G)`` tensor of targets, a subset of ``observed``.

        Examples
        --------
        >>> import numpy as np, torch
        >>> module = STMCDIModule(6, np.zeros(6), np.ones(6), 100.0, mask_ratio=0.5)
        >>> target = module.sample_targets(torch.ones(4, 6, dtype=torch.bool), torch.Generator().manual_seed(0))
        >>> target.any(dim=1).tolist()
        [True, True, True, True]
        """
        return draw_targets(observed, nonzero, mask_strategy=self.mask_strategy, mask_ratio=self.mask_ratio,
                            generator=generator)

    def spot_summary(self, counts: torch.Tensor, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        r"""Standardised summaries of each spot's visible entries.

        The mean log-normalised value of the visible entries, the fraction of them that is nonzero and
        :math:`\log(1 + \bar c)` with :math:`\bar c` their mean count: means over the visible entries, so they
        do not depend on how many are hidden.

        Parameters
        ----------
        counts
            ``(B, G)`` counts; NaN at missing entries (only visible entries are read).
        x
            ``(B, G)`` scaled values (:meth:`scale`); only visible entries are read.
        visible
            ``(B, G)`` float or boolean indicator of the entries to summarise.

        Returns
        -------
        ``(B, 3)`` tensor in ``x``'s dtype.

        Examples
        --------
        >>> import numpy as np, torch
        >>> module = STMCDIModule(3, np.zeros(3), np.ones(3), 4.0)
        >>> counts = torch.tensor([[1.0, 0.0, float("nan")]])
        >>> x = module.scale(counts, torch.tensor([1.0]))
        >>> module.spot_summary(counts, torch.nan_to_num(x), ~torch.isnan(counts))  # log1p(4)/2, 1/2, log1p(1/2)
        tensor([[0.8047, 0.5000, 0.4055]])
        """
        vis = visible.to(x.dtype)
        n = vis.sum(dim=1).clamp_min(1.0)
        c = torch.nan_to_num(counts, nan=0.0).to(x.dtype) * vis
        feats = torch.stack([(self.unscale(x) * vis).sum(dim=1) / n, (c > 0).to(x.dtype).sum(dim=1) / n,
                             torch.log1p(c.sum(dim=1) / n)], dim=1)
        return (feats - self.spot_feature_mean) / self.spot_feature_std

    def expression_summary(self, expression_counts: torch.Tensor, expression_library: torch.Tensor, n_seed: int):
        r"""Expression profile of each spot: its expression neighbours' mean scaled value per gene.

        Parameters
        ----------
        expression_counts
            ``(B * m, G)`` counts of the ``m`` expression neighbours of each of the ``B`` spots (spot ``i``'s
            are rows ``i*m .. i*m + m - 1``); NaN at missing entries.
        expression_library
            ``(B * m,)`` their library sizes.
        n_seed
            ``B``.

        Returns
        -------
        ``(B, G)`` tensor: the mean over the neighbours that observe the gene, 0 (its mean) where none does.

        Examples
        --------
        >>> import numpy as np, torch
        >>> module = STMCDIModule(2, np.zeros(2), np.ones(2), 4.0, expression_profile=True)
        >>> counts = torch.tensor([[1.0, 0.0], [3.0, float("nan")]])  # one spot, two neighbours
        >>> module.expression_summary(counts, torch.tensor([1.0, 3.0]), n_seed=1)
        tensor([[1.6094, 0.0000]])
        """
        xe = self.scale(expression_counts, expression_library).view(n_seed, -1, self.n_genes)
        n = (~torch.isnan(xe)).sum(dim=1).clamp_min(1)
        return torch.nan_to_num(xe, nan=0.0).sum(dim=1) / n

    # ----------------------------------------------------------------------------- scvi contract
    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict:
        return {
            "counts": tensors[BATCH_KEYS.COUNTS],
            "library": tensors[BATCH_KEYS.LIBRARY],
            "edge_index": tensors[BATCH_KEYS.EDGE_INDEX],
            "n_seed": tensors[BATCH_KEYS.ROW].shape[0],
            "expression_counts": tensors.get(BATCH_KEYS.EXPRESSION_COUNTS),
            "expression_library": tensors.get(BATCH_KEYS.EXPRESSION_LIBRARY),
            "target": tensors.get(BATCH_KEYS.TARGET),
        }

    @auto_move_data
    def inference(
        self,
        counts: torch.Tensor,
        library: torch.Tensor,
        edge_index: torch.Tensor,
        n_seed: int,
        target: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        expression_counts: torch.Tensor | None = None,
        expression_library: torch.Tensor | None = None,
        summarise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        r"""Choose targets, hide them, encode the neighbourhood and the visible part.

        Parameters
        ----------
        counts
            ``(U, G)`` float32 counts of the neighbourhood's ``U`` nodes, the batch's spots first; NaN marks
            missing entries.
        library
            ``(U,)`` library sizes from the observed entries.
        edge_index
            int64 ``(2, E)`` local edges, source -> target (the target aggregates).
        n_seed
            Number of batch spots ``B``: nodes ``0 .. B-1``.
        target
            Boolean ``(B, G)`` entries to predict; ``None`` draws them with :meth:`sample_targets`.
        generator
            Random generator for the target draw and the representation mask.
        expression_counts, expression_library
            Counts and library sizes of the spots' expression neighbours (:meth:`expression_summary`).
        summarise
            Boolean ``(B, G)`` entries the spot summaries read; default the condition entries.

        Returns
        -------
        Dict of ``(B, ...)`` tensors: ``"x"`` (scaled values, 0 at missing entries), ``"target"`` (boolean),
        ``"cond"`` (float condition indicator), ``"z"`` (spatial code or ``None``), ``"z_in"`` (what the
        denoiser reads per spot: ``z`` and the spot summaries), ``"readout"`` (:math:`\hat x`), ``"x_hat"``
        (the read-out the denoiser sees, re-masked in training), ``"base"`` (what the diffusion is relative
        to), ``"context"`` (conditioner tokens) and ``"profile"`` (expression profile or ``None``).

        Examples
        --------
        >>> import numpy as np, torch
        >>> module = STMCDIModule(6, np.zeros(6), np.ones(6), 100.0, n_encoder_hidden=8, n_latent=4, n_channels=8)
        >>> counts = torch.tensor([[3.0, float("nan"), 0.0, 5.0, 1.0, 2.0], [0.0, 4.0, 2.0, 1.0, 3.0, 0.0]])
        >>> out = module.inference(counts, torch.nan_to_num(counts).sum(1), torch.tensor([[1], [0]]), n_seed=1)
        >>> out["x"].shape, out["z"].shape, out["context"].shape
        (torch.Size([1, 6]), torch.Size([1, 4]), torch.Size([1, 16, 8]))
        >>> bool(out["target"][0, 1]), out["cond"][0, 1].item()  # a missing entry: neither target nor condition
        (False, 0.0)
        """
        x = self.scale(counts, library)
        observed = ~torch.isnan(x)
        x = torch.nan_to_num(x, nan=0.0)
        obs_seed = observed[:n_seed]
        if target is None:
            nonzero = counts[:n_seed] > 0 if self.mask_strategy == "nonzero" else None
            target = self.sample_targets(obs_seed, generator, nonzero=nonzero)
        target = target.to(torch.bool)
        cond = obs_seed & ~target
        visible = observed.clone()
        if self.input_mask:
            visible[:n_seed] = cond
        visible_f = visible.to(x.dtype)
        x_seed = x[:n_seed]
        cond_f = cond.to(x.dtype)

        feats = None
        if self.spot_features:
            seen = cond_f if summarise is None else summarise.to(x.dtype)
            feats = self.spot_summary(counts[:n_seed], x_seed, seen)
        profile = None
        if self.expression_profile:
            if expression_counts is None or expression_library is None:
                raise ValueError(
                    "This module conditions on expression neighbours (expression_profile=True): pass "
                    "`expression_counts` and `expression_library` (batches built with n_expression_neighbors > 0)."
                )
            profile = self.expression_summary(expression_counts, expression_library, n_seed).to(x.dtype)
        if self.encoder is None:
            z = None
            readout = torch.zeros_like(x_seed)
        else:
            z = self.encoder(torch.cat([x * visible_f, visible_f], dim=-1), edge_index)[:n_seed]
            readout = self.readout(z) if self.readout is not None else torch.zeros_like(x_seed)
            if self.spot_offset is not None:
                readout = readout + self.spot_offset(feats)
            if self.expression_weight is not None:
                readout = readout + self.expression_weight * profile
        x_hat = readout
        if self.training and self.representation_mask_ratio > 0:
            keep = torch.rand(x_hat.shape, device=x_hat.device, generator=generator)
            x_hat = x_hat * (keep >= self.representation_mask_ratio).to(x_hat.dtype)
        base = readout.detach() if self.residual else torch.zeros_like(x_seed)
        context = self.denoiser.context(x_seed, cond_f)
        z_in = z if feats is None else (feats if z is None else torch.cat([z, feats], dim=1))
        return {
            "x": x_seed, "target": target, "cond": cond_f, "z": z, "z_in": z_in, "x_hat": x_hat,
            "readout": readout, "base": base, "context": context, "profile": profile,
        }

    def _get_generative_input(self, tensors, inference_outputs, **kwargs) -> dict:
        return dict(inference_outputs)

    def denoise(self, x_t, t, x, target, cond, z, x_hat, context, profile=None) -> torch.Tensor:
        """Predicted noise at every entry (:class:`~stmcdi.nn.GeneDenoiser` on the outputs of ``inference``).

        Parameters
        ----------
        x_t
            ``(B, G)`` noisy values; zeroed outside the targets.
        t
            int64 ``(B,)`` diffusion steps.
        x, target, cond, z, x_hat, context, profile
            Outputs of ``inference`` (``z`` is its ``"z_in"``; ``target`` as a float indicator).

        Returns
        -------
        ``(B, G)`` predicted noise; only the target entries are used.

        Examples
        --------
        >>> import numpy as np, torch
        >>> module = STMCDIModule(6, np.zeros(6), np.ones(6), 100.0, n_encoder_hidden=8, n_latent=4, n_channels=8)
        >>> counts = torch.tensor([[3.0, 1.0, 0.0, 5.0, 1.0, 2.0], [0.0, 4.0, 2.0, 1.0, 3.0, 0.0]])
        >>> inf = module.inference(counts, counts.sum(1), torch.tensor([[1], [0]]), n_seed=1)
        >>> module.denoise(torch.randn(1, 6), torch.tensor([10]), inf["x"], inf["target"].float(), inf["cond"],
        ...                inf["z_in"], inf["x_hat"], inf["context"]).shape
        torch.Size([1, 6])
        """
        return self.denoiser(x_t * target, x, cond, x_hat, z, t, context, profile)

    @auto_move_data
    def generative(self, x, target, cond, z_in, x_hat, base, context, generator=None, profile=None, **kwargs) -> dict:
        r"""Noise the targets (their residual from ``base``) at a random step and predict the noise.

        Parameters
        ----------
        x, target, cond, z_in, x_hat, base, context, profile
            Outputs of ``inference``.
        generator
            Random generator of the steps and the noise (``None``: torch's global one).
        **kwargs
            The other outputs of ``inference`` (ignored).

        Returns
        -------
        Dict with ``"eps"`` (the predicted noise), ``"noise"`` (the drawn noise; for spots on the one-pass
        task, the residual itself) and ``"t"`` (int64 steps).

        Examples
        --------
        >>> import numpy as np, torch
        >>> module = STMCDIModule(6, np.zeros(6), np.ones(6), 100.0, n_encoder_hidden=8, n_latent=4, n_channels=8)
        >>> counts = torch.tensor([[3.0, 1.0, 0.0, 5.0, 1.0, 2.0], [0.0, 4.0, 2.0, 1.0, 3.0, 0.0]])
        >>> out = module.generative(**module.inference(counts, counts.sum(1), torch.tensor([[1], [0]]), n_seed=1))
        >>> out["eps"].shape, out["t"].dtype
        (torch.Size([1, 6]), torch.int64)
        """
        b = x.shape[0]
        tf = target.to(x.dtype)
        if self.objective == "mae":
            t = torch.zeros(b, device=x.device, dtype=torch.long)
            pred = self.denoise(torch.zeros_like(x), t, x, tf, cond, z_in, x_hat, context, profile)
            return {"eps": pred, "noise": x - base, "t": t}
        t = torch.randint(0, self.n_diffusion_steps, (b,), device=x.device, generator=generator)
        noise = torch.randn(x.shape, device=x.device, generator=generator)
        ab = self.alpha_bar[t][:, None]
        x_t = ab.sqrt() * (x - base) + (1.0 - ab).sqrt() * noise
        if self.objective == "hybrid":
            point = torch.rand(b, device=x.device, generator=generator) < self.point_fraction
            t = torch.where(point, torch.full_like(t, self.point_step), t)
            x_t = torch.where(point[:, None], torch.zeros_like(x_t), x_t)
            noise = torch.where(point[:, None], x - base, noise)
        return {"eps": self.denoise(x_t, t, x, tf, cond, z_in, x_hat, context, profile), "noise": noise, "t": t}

    def loss(self, tensors, inference_outputs, generative_outputs) -> LossOutput:
        """Noise-prediction error over the target entries (paper Eq. 12) plus the weighted read-out error.

        Parameters
        ----------
        tensors
            The batch (unused).
        inference_outputs, generative_outputs
            Outputs of ``inference`` and ``generative``.

        Returns
        -------
        A :class:`~scvi.module.base.LossOutput` with the scalar ``loss``, the per-spot noise error as
        ``reconstruction_loss`` and the extra metrics ``"diffusion_loss"``, ``"readout_loss"`` and
        ``"target_fraction"``.

        Examples
        --------
        >>> import numpy as np, torch
        >>> module = STMCDIModule(6, np.zeros(6), np.ones(6), 100.0, n_encoder_hidden=8, n_latent=4, n_channels=8)
        >>> counts = torch.tensor([[3.0, 1.0, 0.0, 5.0, 1.0, 2.0], [0.0, 4.0, 2.0, 1.0, 3.0, 0.0]])
        >>> batch = {"counts": counts, "library": counts.sum(1), "edge_index": torch.tensor([[1], [0]]),
        ...          "row": torch.tensor([0])}
        >>> _, _, out = module(batch)  # inference, generative, then this loss
        >>> out.loss.shape, sorted(out.extra_metrics)
        (torch.Size([]), ['diffusion_loss', 'readout_loss', 'target_fraction'])
        """
        target = inference_outputs["target"].to(generative_outputs["eps"].dtype)
        n_target = target.sum().clamp_min(1.0)
        sq = (generative_outputs["eps"] - generative_outputs["noise"]) ** 2 * target
        diffusion = sq.sum() / n_target
        per_spot = sq.sum(dim=1) / target.sum(dim=1).clamp_min(1.0)
        readout_loss = ((inference_outputs["readout"] - inference_outputs["x"]) ** 2 * target).sum() / n_target
        loss = diffusion + self.readout_loss_weight * readout_loss if self.encoder is not None else diffusion
        return LossOutput(
            loss=loss, reconstruction_loss=per_spot, n_obs_minibatch=target.shape[0],
            extra_metrics={"diffusion_loss": diffusion.detach(), "readout_loss": readout_loss.detach(),
                           "target_fraction": target.mean().detach()},
        )
