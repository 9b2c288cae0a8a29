"""STMCDIModule: spatial GCN encoder + masked conditional diffusion over gene tokens (pure torch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data

from ._constants import BATCH_KEYS
from .nn import GeneDenoiser, SpatialEncoder, ddim_timesteps, quadratic_beta_schedule

MaskStrategy = Literal["entries", "nonzero", "spots", "genes"]
EncoderChoice = Literal["gcn", "gat", "gin", "mlp", "none"]
Objective = Literal["diffusion", "mae", "hybrid"]

#: Number of per-spot summaries of :meth:`STMCDIModule.spot_summary`.
N_SPOT_FEATURES = 3

#: Default number of DDIM steps of :meth:`STMCDIModule.sample` (capped at ``n_diffusion_steps``).
DDIM_STEPS = 10


def draw_targets(
    observed: torch.Tensor,
    nonzero: torch.Tensor | None = None,
    *,
    mask_strategy: str = "entries",
    mask_ratio: tuple[float, float] = (0.1, 0.9),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw training targets among the observed entries (the rule of :meth:`STMCDIModule.sample_targets`).

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


class STMCDIModule(BaseModuleClass):
    r"""Masked conditional diffusion with a spatial graph encoder (stMCDI).

    Data flow of a training step (see the docs page "Method"):

    1. counts -> :math:`x = (\log(1 + c\,s/\ell) - \mu_g)/\sigma_g`, with library :math:`\ell` from observed
       entries, target sum :math:`s` and per-gene :math:`\mu_g, \sigma_g` from observed training entries;
    2. a random part (``mask_ratio``) of each batch spot's observed entries becomes the **target**; the rest
       is the **condition**; missing entries are neither;
    3. the encoder reads the neighbourhood with the targets hidden (values zeroed, indicator 0) and gives a
       spatial code :math:`z`; the read-out :math:`\hat x` is the spot offset, the profile term and, with
       ``latent_readout``, a per-gene read-out of :math:`z`;
    4. the targets are noised, :math:`x_t = \sqrt{\bar\alpha_t} x + \sqrt{1-\bar\alpha_t}\,\epsilon`, and the
       denoiser predicts :math:`\epsilon` from :math:`x_t`, the condition, :math:`\hat x`, :math:`z`, the
       conditioner's context and :math:`t`;
    5. loss: mean squared error of :math:`\epsilon` over the target entries only.

    Parameters
    ----------
    n_genes
        Number of genes.
    gene_mean, gene_std
        Per-gene mean and sd of the observed log-normalised values (the scaling).
    target_sum
        Library size every spot is scaled to before ``log1p``.
    gene_max
        Per-gene largest observed log-normalised value. Samplers clip their estimate of the clean values to
        ``[0, 1.5 * gene_max]`` at every step (standard "clipped x0" sampling); default: no upper bound.
    encoder
        ``"gcn"`` (paper), ``"gat"``, ``"gin"``, ``"mlp"`` (no messages between spots) or ``"none"`` (no
        spatial input at all).
    n_encoder_layers
        Graph layers (the paper uses 3).
    n_encoder_hidden, n_latent
        Hidden width of the encoder and width of the spatial code :math:`z`.
    n_channels, n_layers, n_heads, attention, n_latents, n_context, genes_per_token
        Denoiser size (see :class:`~stmcdi.nn.GeneDenoiser`). ``genes_per_token=1`` gives one token per
        gene (CSDI's form); the default groups 8 genes per token, ~5x cheaper on CPU.
    n_diffusion_steps, beta_start, beta_end
        Quadratic noise schedule (paper Eq. 36).
    mask_ratio
        Fraction of a spot's observed entries that become targets in training: a float, or a
        ``(low, high)`` range drawn uniformly per spot.
    mask_strategy
        ``"entries"`` (random entries per spot), ``"nonzero"`` (random nonzero entries per spot: trains for
        the dropout question, what a zero would read had the molecule been detected), ``"spots"`` (all
        observed entries of a random part of the spots) or ``"genes"`` (a random part of the genes, in every
        spot of the batch).
    input_mask
        Hide targets from the encoder (the paper's first mask). ``False`` is an ablation that leaks targets
        into the spatial code during training.
    representation_mask_ratio
        Fraction of :math:`\hat x` entries zeroed in training (the paper's second mask).
    readout_loss_weight
        Weight of the masked read-out loss, the squared error of :math:`\hat x` at the target entries. It
        gives the spatial encoder a direct training signal (without it, :math:`\hat x` learns only through
        the noise loss and carries little per-gene information). ``0`` turns it off.
    residual
        Diffuse the residual :math:`x - \hat x` (with :math:`\hat x` detached) instead of :math:`x`:
        sampling starts from Gaussian noise around the read-out, so the sample mean starts from the
        read-out's accuracy and the diffusion models what is left and its spread.
    objective
        ``"diffusion"`` (stMCDI) or ``"mae"``, the masked-autoencoder control of DESIGN §5: the same encoder,
        read-out and denoiser trained to predict the targets in one pass. The denoiser gets no noise (its
        noisy input is 0, its step 0) and regresses the target values (their residual from the read-out when
        ``residual``) with the same masked squared error; sampling is one deterministic pass, so every sample
        is the same and the spread is 0. ``"hybrid"`` trains the one network for both: a ``point_fraction``
        of each batch's spots gets the one-pass task (input 0, its own step index ``n_diffusion_steps``), the
        rest the diffusion task. :meth:`predict` then gives the one-pass point estimate and :meth:`sample`
        the diffusion samples (their spread).
    point_fraction
        With ``objective="hybrid"``, the fraction of a batch's spots trained on the one-pass task.
    dropout
        Dropout between encoder layers. On the 262-spot mouse olfactory bulb the read-out over-fitted after
        ~300 steps without it; with 0.3 it held its accuracy over 2000 steps (docs/benchmarks.md).
    spot_features
        Give the network three summaries of each spot's visible entries (:meth:`spot_summary`: their mean
        log-normalised value, their detected fraction and the log of their mean count). A small MLP turns them
        into one offset shared by all genes of the spot (on the scaled axis, so it moves each gene by its own
        sd), added to the read-out :math:`\hat x`; the denoiser reads them beside the spatial code. On shallow
        sections the value a random hidden entry takes depends on the spot's capture depth, which is a ratio
        (a mean over the visible entries, whose number the training mask varies) that the linear first layers
        of the encoder cannot form; per-gene fits of it are noisy on a few hundred spots, the shared offset
        pools them (docs/benchmarks.md, "Spot summaries"). ``False`` is the ablation.
    spot_feature_stats
        ``(mean, sd)`` of the three summaries over the spots, used to standardise them (:class:`~stmcdi.STMCDI`
        computes them from the observed entries); default ``(0, 1)``.
    expression_profile
        Condition on each spot's **expression profile** :math:`s`: the mean scaled value, gene by gene, of the
        spot's nearest spots in expression space (their observed entries; the batches carry their counts, see
        :class:`~stmcdi.STMCDI`'s ``n_expression_neighbors``). It is a fifth feature of every gene token, and
        :math:`a_g s_g` (a learned weight per gene, starting at 0.5) joins the read-out. The spatial
        neighbours of a shallow section say little about a random hidden entry; spots alike in expression,
        wherever they lie, say more (MAGIC's and low-rank completion's signal; docs/benchmarks.md,
        "Expression neighbours").
    readout_init
        ``"zeros"`` starts the read-out's per-gene weights (of the spatial code and of the expression profile)
        at 0, so each gene's read-out starts at its mean and moves only as far as its own entries pull it;
        ``"default"`` keeps PyTorch's random initialisation of the spatial read-out and starts the profile
        weights at 0.5.
    latent_readout
        Read the spatial code :math:`z` out per gene (a linear layer) into the read-out :math:`\hat x`, beside
        the spot offset and the profile term; ``False`` keeps :math:`z` as a condition of the denoiser only.
        Default (``None``): only with ``mask_strategy="nonzero"``. With random targets on a shallow section
        most targets are zeros and the per-gene read-out of :math:`z` learns the training spots' own entries:
        on validation entries (``entries`` 10%, seed 0) it cost per-gene PCC 0.115 -> 0.047 (breast cancer)
        and 0.233 -> 0.210 (bulb), at a higher RMSE, and it did not help filling zeros (``thin``). Trained to
        recover detected counts it helps: without it the breast-cancer RMSE at hidden nonzero entries rose
        from 0.42 to 0.51 (docs/benchmarks.md, "The spatial read-out"). :class:`~stmcdi.STMCDI` passes
        ``True`` on sections of at least 1000 spots, where it carried signal (DLPFC validation: removing it
        cost per-gene PCC 0.094 -> 0.070).
    gene_groups
        Optional ``(n_genes,)`` integer group of each gene (``0 .. n_groups - 1``). With groups, the spot offset
        has one value per group and the profile weight is shared within a group, instead of one offset per spot
        and one weight per gene: the profile says much about a well-detected gene and little about a sparse one,
        and per-gene weights are noisy on a few hundred spots. :class:`~stmcdi.STMCDI`'s ``n_gene_groups``
        groups the genes by detected fraction.
    depth_weight
        Weight :math:`\beta` of a spot depth term added to every filled entry of the point estimate
        (:meth:`predict`; :class:`~stmcdi.STMCDI` adds it to the samples' mean of the other objectives), at
        imputation only: :math:`\beta (m_i - \bar m)` (:meth:`depth_shift`), with :math:`m_i` the mean
        log-normalised value of spot :math:`i`'s observed entries (the first spot summary, the "spot mean"
        baseline) and :math:`\bar m` its mean over the training spots (``spot_feature_stats``), the result
        kept at 0 or above. The samples of :meth:`sample` are not moved: shifting them raised the CRPS by 8-10%
        on validation entries. In training the spot summaries are means over 10-90% of a spot's entries,
        noisier than at imputation, and the network learns to lean on them less (regression dilution); on
        shallow sections the depth of a spot is most of what is known about a random missing entry. Can be
        changed after training (``module.depth_weight = ...``).

    Examples
    --------
    A tiny module on a 3-spot neighbourhood: spot 0 is the batch's only spot (``n_seed=1``) and spots 1
    and 2 are its neighbours. :class:`~stmcdi.STMCDI` builds the module and the batches for you.

    >>> import numpy as np, torch
    >>> module = STMCDIModule(
    ...     n_genes=6, gene_mean=np.zeros(6), gene_std=np.ones(6), target_sum=100.0,
    ...     n_encoder_hidden=8, n_latent=4, n_channels=8,
    ... )
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
        readout_init: Literal["default", "zeros"] = "default",
        latent_readout: bool | None = None,
        gene_groups: np.ndarray | None = None,
        depth_weight: float = 0.0,
    ):
        super().__init__()
        if not (np.isfinite(depth_weight) and depth_weight >= 0.0):
            raise ValueError(f"depth_weight must be a non-negative number, got {depth_weight!r}.")
        if objective not in ("diffusion", "mae", "hybrid"):
            raise ValueError(
                "objective must be 'diffusion', 'mae' (the masked-autoencoder control) or 'hybrid' (both), "
                f"got {objective!r}."
            )
        if not 0.0 < point_fraction < 1.0:
            raise ValueError(f"point_fraction must be in (0, 1), got {point_fraction!r}.")
        if readout_init not in ("default", "zeros"):
            raise ValueError(f"readout_init must be 'default' or 'zeros', got {readout_init!r}.")
        if mask_strategy not in ("entries", "nonzero", "spots", "genes"):
            raise ValueError(
                f"mask_strategy must be 'entries', 'nonzero', 'spots' or 'genes', got {mask_strategy!r}."
            )
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
        #: whether the read-out has a per-gene read-out of the spatial code (default: with nonzero targets only)
        self.latent_readout = bool(mask_strategy == "nonzero" if latent_readout is None else latent_readout)
        self.input_mask = input_mask
        self.representation_mask_ratio = representation_mask_ratio
        self.readout_loss_weight = float(readout_loss_weight)
        self.residual = bool(residual) and encoder != "none"
        self.n_diffusion_steps = n_diffusion_steps
        self.objective = objective
        self.point_fraction = float(point_fraction)
        self.spot_features = bool(spot_features)
        #: weight of the spot's depth term added to the filled entries at imputation (not in training)
        self.depth_weight = float(depth_weight)
        self.expression_profile = bool(expression_profile)
        # step index of the one-pass task: 0 for the control (kept for saved models), its own index for "hybrid"
        self.point_step = n_diffusion_steps if objective == "hybrid" else 0

        # Float buffers only: EMA with integer buffers corrupts them (notes §3); these never change in training.
        self.register_buffer("gene_mean", torch.as_tensor(np.asarray(gene_mean), dtype=torch.float32))
        self.register_buffer("gene_std", torch.as_tensor(np.asarray(gene_std), dtype=torch.float32))
        self.register_buffer("target_sum", torch.tensor(float(target_sum), dtype=torch.float32))
        upper = np.full(n_genes, np.inf) if gene_max is None else 1.5 * np.asarray(gene_max, dtype=np.float64)
        self.register_buffer("x0_low", -self.gene_mean / self.gene_std)  # log-normalised value 0
        self.register_buffer(
            "x0_high", (torch.as_tensor(upper, dtype=torch.float32) - self.gene_mean) / self.gene_std
        )
        f_mean, f_std = (np.zeros(N_SPOT_FEATURES), np.ones(N_SPOT_FEATURES)) if spot_feature_stats is None \
            else spot_feature_stats
        self.register_buffer("spot_feature_mean", torch.as_tensor(np.asarray(f_mean), dtype=torch.float32))
        self.register_buffer(
            "spot_feature_std", torch.as_tensor(np.maximum(np.asarray(f_std, dtype=np.float64), 1e-6),
                                                dtype=torch.float32)
        )
        betas = quadratic_beta_schedule(n_diffusion_steps, beta_start, beta_end)
        alpha_bar = torch.cumprod(1.0 - betas, dim=0)
        self.register_buffer("betas", betas.float())
        self.register_buffer("alpha_bar", alpha_bar.float())

        if encoder == "none":
            self.encoder = None
            self.readout = None
        else:
            self.encoder = SpatialEncoder(n_genes, n_encoder_hidden, n_latent, n_encoder_layers, encoder, dropout)
            self.readout = torch.nn.Linear(n_latent, n_genes) if self.latent_readout else None
            if readout_init == "zeros" and self.readout is not None:
                torch.nn.init.zeros_(self.readout.weight)
        n_feat = N_SPOT_FEATURES if self.spot_features else 0
        n_out = 1
        if gene_groups is None:
            self.gene_group = None
        else:
            groups = np.asarray(gene_groups)
            if groups.shape != (n_genes,) or not np.issubdtype(groups.dtype, np.integer) or groups.min() < 0:
                raise ValueError(f"gene_groups must be {n_genes} non-negative integers, one per gene.")
            self.register_buffer("gene_group", torch.as_tensor(groups, dtype=torch.long))
            n_out = int(groups.max()) + 1
        # spot summaries -> one offset shared by the spot's genes, or by each group of genes (added to the read-out)
        self.spot_offset = (
            torch.nn.Sequential(torch.nn.Linear(n_feat, 32), torch.nn.GELU(), torch.nn.Linear(32, n_out))
            if self.spot_features and encoder != "none" else None
        )
        # weight of the expression profile in the read-out: per gene, or per group of genes
        self.expression_weight = (
            torch.nn.Parameter(torch.full((n_genes if gene_groups is None else n_out,),
                                          0.0 if readout_init == "zeros" else 0.5))
            if self.expression_profile and encoder != "none" else None
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

        Computes :math:`(\log(1 + c\,s/\ell) - \mu_g)/\sigma_g` with the module's ``target_sum`` :math:`s`,
        ``gene_mean`` :math:`\mu_g` and ``gene_std`` :math:`\sigma_g`.

        Parameters
        ----------
        counts
            ``(n, G)`` float counts; NaN marks missing entries.
        library
            ``(n,)`` library sizes :math:`\ell` (the sum of each spot's observed counts). Spots with library 0
            are not rescaled (factor 1).

        Returns
        -------
        ``(n, G)`` tensor of scaled log-normalised values, the dtype of ``counts``; NaN where ``counts`` is NaN.

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
        r"""Scaled values -> log-normalised values (the inverse of :meth:`~stmcdi.STMCDIModule.scale` after its ``log1p``).

        Parameters
        ----------
        x
            ``(..., G)`` values on the model's scale, :math:`(v - \mu_g)/\sigma_g`.

        Returns
        -------
        Tensor of ``x``'s shape: the log-normalised values :math:`v = x\,\sigma_g + \mu_g`.

        Examples
        --------
        >>> import numpy as np, torch
        >>> module = STMCDIModule(2, gene_mean=np.array([1.0, 2.0]), gene_std=np.array([2.0, 0.5]), target_sum=1.0)
        >>> module.unscale(torch.tensor([[0.0, 1.0], [-0.5, 2.0]]))
        tensor([[1.0000, 2.5000],
                [0.0000, 3.0000]])
        """
        return x * self.gene_std + self.gene_mean

    # ----------------------------------------------------------------------------- masks
    def sample_targets(
        self,
        observed: torch.Tensor,
        generator: torch.Generator | None = None,
        nonzero: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draw the training targets among the observed entries (``mask_strategy``, ``mask_ratio``).

        Every spot draws a ratio uniformly from the ``mask_ratio`` range. ``"entries"`` makes each observed
        entry a target with that probability and keeps at least one target in every spot with an observed
        entry; ``"nonzero"`` does the same among the observed nonzero entries only (the dropout setting: the
        model learns what a count is when it is detected); ``"spots"`` makes all observed entries of a spot
        targets with that probability; ``"genes"`` picks genes with the first spot's ratio, the same genes in
        every spot.

        Parameters
        ----------
        observed
            Boolean ``(B, G)``: the observed entries of the batch's spots.
        generator
            Random generator on ``observed``'s device, for reproducible draws (``None``: torch's global one).
        nonzero
            Boolean ``(B, G)``: the nonzero entries, required by ``mask_strategy="nonzero"``.

        Returns
        -------
        Boolean ``(B, G)`` tensor of targets, a subset of ``observed`` (of ``observed & nonzero`` for
        ``"nonzero"``).

        Examples
        --------
        >>> import numpy as np, torch
        >>> module = STMCDIModule(6, np.zeros(6), np.ones(6), 100.0, mask_ratio=0.5)
        >>> observed = torch.ones(4, 6, dtype=torch.bool)
        >>> observed[0, :3] = False  # three missing entries in spot 0
        >>> target = module.sample_targets(observed, torch.Generator().manual_seed(0))
        >>> target.shape, target.dtype
        (torch.Size([4, 6]), torch.bool)
        >>> bool((target & ~observed).any()), target.any(dim=1).tolist()
        (False, [True, True, True, True])
        """
        return draw_targets(observed, nonzero, mask_strategy=self.mask_strategy, mask_ratio=self.mask_ratio,
                            generator=generator)

    def spot_summary(self, counts: torch.Tensor, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        r"""Standardised summaries of each spot's visible entries.

        The three summaries are the mean log-normalised value of the visible entries, the fraction of them
        that is nonzero, and :math:`\log(1 + \bar c)` with :math:`\bar c` their mean count. Each is a mean
        over the visible entries, so it does not depend on how many are hidden. They are standardised with
        ``spot_feature_mean`` and ``spot_feature_std``.

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
        ``(B, 3)`` tensor in ``x``'s dtype. A spot with no visible entry gets the summaries of zeros.

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
        mean_value = (self.unscale(x) * vis).sum(dim=1) / n
        detected = ((c > 0).to(x.dtype)).sum(dim=1) / n
        mean_count = torch.log1p(c.sum(dim=1) / n)
        feats = torch.stack([mean_value, detected, mean_count], dim=1)
        return (feats - self.spot_feature_mean) / self.spot_feature_std

    def expression_summary(self, expression_counts: torch.Tensor, expression_library: torch.Tensor, n_seed: int):
        r"""Expression profile :math:`s` of each spot: its expression neighbours' mean scaled value per gene.

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
        ``(B, G)`` tensor on the scaled axis of :meth:`scale`: the mean over the neighbours that observe the
        gene, 0 (the gene's mean) where none does.

        Examples
        --------
        >>> import numpy as np, torch
        >>> module = STMCDIModule(2, np.zeros(2), np.ones(2), 4.0, expression_profile=True)
        >>> counts = torch.tensor([[1.0, 0.0], [3.0, float("nan")]])  # one spot, two neighbours
        >>> module.expression_summary(counts, torch.tensor([1.0, 3.0]), n_seed=1)  # log1p(4), and log1p(0)
        tensor([[1.6094, 0.0000]])
        """
        xe = self.scale(expression_counts, expression_library).view(n_seed, -1, self.n_genes)
        obs = ~torch.isnan(xe)
        n = obs.sum(dim=1).clamp_min(1)
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
            # drawn by the collate when it chooses expression neighbours without them (training)
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

        With ``target=None`` the targets are drawn among observed entries (training); at imputation the
        caller passes the entries to fill. With ``input_mask=True`` the encoder sees the batch's spots without
        their targets; the neighbour nodes show all their observed entries.

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
            Random generator for the target draw and the representation mask (``None``: torch's global one).
        expression_counts, expression_library
            Counts and library sizes of the spots' expression neighbours (:meth:`expression_summary`);
            required with ``expression_profile``, ignored without.
        summarise
            Boolean ``(B, G)`` entries the spot summaries (:meth:`spot_summary`) read; default the condition
            entries. :meth:`sample` and :meth:`predict` pass every observed entry when they fill observed
            entries (the zeros of ``impute(target="zeros")``): the summaries describe the spot's observed
            data, which training estimates from a random part of it.

        Returns
        -------
        Dict of tensors for the ``B`` batch spots (floats in ``counts``' dtype):

        - ``"x"``: ``(B, G)`` scaled values (:meth:`scale`), 0 at missing entries;
        - ``"target"``: boolean ``(B, G)`` targets;
        - ``"cond"``: ``(B, G)`` condition indicator, 1.0 at observed entries that are not targets;
        - ``"z"``: ``(B, n_latent)`` spatial code (``None`` for ``encoder="none"``);
        - ``"z_in"``: ``(B, n_spatial)`` what the denoiser reads per spot: ``z`` and the spot summaries
          (:meth:`spot_summary`) side by side, either alone, or ``None`` without both;
        - ``"readout"``: ``(B, G)`` per-gene read-out :math:`\hat x` of ``z``, plus the spot offset with
          ``spot_features`` (zeros without an encoder);
        - ``"x_hat"``: the read-out the denoiser sees (``representation_mask_ratio`` of it zeroed in
          training);
        - ``"base"``: ``(B, G)`` what the diffusion is relative to: the detached read-out when ``residual``,
          else zeros;
        - ``"context"``: ``(B, n_context, n_channels)`` tokens of the conditioner;
        - ``"profile"``: ``(B, G)`` expression profile (:meth:`expression_summary`), or ``None`` without
          ``expression_profile``.

        Examples
        --------
        >>> import numpy as np, torch
        >>> module = STMCDIModule(6, np.zeros(6), np.ones(6), 100.0, n_encoder_hidden=8, n_latent=4, n_channels=8)
        >>> counts = torch.tensor([[3.0, float("nan"), 0.0, 5.0, 1.0, 2.0], [0.0, 4.0, 2.0, 1.0, 3.0, 0.0]])
        >>> library = torch.nan_to_num(counts).sum(1)
        >>> edge_index = torch.tensor([[1], [0]])  # node 1 is node 0's neighbour
        >>> out = module.inference(counts, library, edge_index, n_seed=1)
        >>> sorted(out)
        ['base', 'cond', 'context', 'profile', 'readout', 'target', 'x', 'x_hat', 'z', 'z_in']
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
                offset = self.spot_offset(feats)
                readout = readout + (offset if self.gene_group is None else offset[:, self.gene_group])
            if self.expression_weight is not None:
                w = self.expression_weight if self.gene_group is None else self.expression_weight[self.gene_group]
                readout = readout + w * profile
        x_hat = readout
        if self.training and self.representation_mask_ratio > 0:
            keep = torch.rand(x_hat.shape, device=x_hat.device, generator=generator)
            x_hat = x_hat * (keep >= self.representation_mask_ratio).to(x_hat.dtype)
        # the residual is taken from the un-remasked read-out, detached: the read-out learns from its own loss
        base = readout.detach() if self.residual else torch.zeros_like(x_seed)
        context = self.denoiser.context(x_seed, cond_f)
        # what the denoiser reads per spot: the spatial code and the spot summaries
        if feats is not None:
            z_in = feats if z is None else torch.cat([z, feats], dim=1)
        else:
            z_in = z
        return {
            "x": x_seed, "target": target, "cond": cond_f, "z": z, "z_in": z_in, "x_hat": x_hat,
            "readout": readout, "base": base, "context": context, "profile": profile,
        }

    def _get_generative_input(self, tensors, inference_outputs, **kwargs) -> dict:
        return dict(inference_outputs)

    def denoise(self, x_t, t, x, target, cond, z, x_hat, context, profile=None) -> torch.Tensor:
        r"""Predicted noise at every entry, from the noisy targets and the condition.

        Parameters
        ----------
        x_t
            ``(B, G)`` noisy values (the residual from ``base`` when ``residual``); zeroed outside the targets.
        t
            int64 ``(B,)`` diffusion steps in ``[0, n_diffusion_steps)``.
        x
            ``(B, G)`` scaled values; only the condition entries are read.
        target, cond
            ``(B, G)`` float indicators of the target and condition entries.
        z
            ``(B, n_spatial)`` what the denoiser reads per spot (``"z_in"`` of :meth:`inference`: the
            spatial code and the spot summaries), or ``None``.
        x_hat
            ``(B, G)`` read-out of the spatial code.
        context
            ``(B, n_context, n_channels)`` conditioner tokens.
        profile
            ``(B, G)`` expression profile (a fifth token feature), or ``None``.

        Returns
        -------
        ``(B, G)`` predicted noise :math:`\epsilon`; only the target entries are used.

        Examples
        --------
        >>> import numpy as np, torch
        >>> module = STMCDIModule(6, np.zeros(6), np.ones(6), 100.0, n_encoder_hidden=8, n_latent=4, n_channels=8)
        >>> counts = torch.tensor([[3.0, 1.0, 0.0, 5.0, 1.0, 2.0], [0.0, 4.0, 2.0, 1.0, 3.0, 0.0]])
        >>> inf = module.inference(counts, counts.sum(1), torch.tensor([[1], [0]]), n_seed=1)
        >>> x_t, t = torch.randn(1, 6), torch.tensor([10])
        >>> eps = module.denoise(
        ...     x_t, t, inf["x"], inf["target"].float(), inf["cond"], inf["z_in"], inf["x_hat"], inf["context"]
        ... )
        >>> eps.shape
        torch.Size([1, 6])
        """
        return self.denoiser(x_t * target, x, cond, x_hat, z, t, context, profile)

    @auto_move_data
    def generative(
        self,
        x: torch.Tensor,
        target: torch.Tensor,
        cond: torch.Tensor,
        z_in: torch.Tensor | None,
        x_hat: torch.Tensor,
        base: torch.Tensor,
        context: torch.Tensor,
        generator: torch.Generator | None = None,
        profile: torch.Tensor | None = None,
        **kwargs,
    ) -> dict[str, torch.Tensor]:
        r"""Noise the targets (their residual from ``base``) at a random step and predict the noise.

        Draws a step :math:`t` per spot and :math:`\epsilon \sim N(0, I)`, forms
        :math:`x_t = \sqrt{\bar\alpha_t}\,(x - \mathrm{base}) + \sqrt{1-\bar\alpha_t}\,\epsilon` and asks
        :meth:`denoise` for :math:`\epsilon`. The arguments are the outputs of :meth:`inference`.

        Parameters
        ----------
        x
            ``(B, G)`` scaled values.
        target
            ``(B, G)`` target indicator (boolean or float).
        cond
            ``(B, G)`` float condition indicator.
        z_in
            ``(B, n_spatial)`` what the denoiser reads per spot: the spatial code and the spot summaries
            (``"z_in"`` of :meth:`inference`), or ``None``.
        x_hat
            ``(B, G)`` read-out given to the denoiser.
        base
            ``(B, G)`` what the targets are noised relative to.
        context
            ``(B, n_context, n_channels)`` conditioner tokens.
        generator
            Random generator for the steps and the noise (``None``: torch's global one).
        profile
            ``(B, G)`` expression profile, or ``None`` (``"profile"`` of :meth:`inference`).
        **kwargs
            Ignored (the other outputs of :meth:`inference`, e.g. ``"readout"``, ``"z"``).

        Returns
        -------
        Dict with ``"eps"``, the ``(B, G)`` predicted noise, ``"noise"``, the ``(B, G)`` drawn noise, and
        ``"t"``, the int64 ``(B,)`` steps. With ``objective="mae"``, ``"eps"`` is the one-pass prediction of
        the targets (residual from ``base``), ``"noise"`` their true value and ``t`` is 0; with ``"hybrid"``
        that holds for the spots whose ``t`` is ``n_diffusion_steps``.

        Examples
        --------
        >>> import numpy as np, torch
        >>> module = STMCDIModule(6, np.zeros(6), np.ones(6), 100.0, n_encoder_hidden=8, n_latent=4, n_channels=8)
        >>> counts = torch.tensor([[3.0, 1.0, 0.0, 5.0, 1.0, 2.0], [0.0, 4.0, 2.0, 1.0, 3.0, 0.0]])
        >>> inf = module.inference(counts, counts.sum(1), torch.tensor([[1], [0]]), n_seed=1)
        >>> out = module.generative(**inf)
        >>> out["eps"].shape, out["noise"].shape, out["t"].dtype
        (torch.Size([1, 6]), torch.Size([1, 6]), torch.int64)
        """
        b = x.shape[0]
        tf = target.to(x.dtype)
        if self.objective == "mae":
            # one-pass control: no noise in, the "noise" to predict is the target value (residual) itself
            t = torch.zeros(b, device=x.device, dtype=torch.long)
            pred = self.denoise(torch.zeros_like(x), t, x, tf, cond, z_in, x_hat, context, profile)
            return {"eps": pred, "noise": x - base, "t": t}
        t = torch.randint(0, self.n_diffusion_steps, (b,), device=x.device, generator=generator)
        noise = torch.randn(x.shape, device=x.device, generator=generator)
        ab = self.alpha_bar[t][:, None]
        x_t = ab.sqrt() * (x - base) + (1.0 - ab).sqrt() * noise
        if self.objective == "hybrid":
            # a part of the spots gets the one-pass task: no noise in, its own step, the residual to predict
            point = torch.rand(b, device=x.device, generator=generator) < self.point_fraction
            t = torch.where(point, torch.full_like(t, self.point_step), t)
            x_t = torch.where(point[:, None], torch.zeros_like(x_t), x_t)
            noise = torch.where(point[:, None], x - base, noise)
        eps = self.denoise(x_t, t, x, tf, cond, z_in, x_hat, context, profile)
        return {"eps": eps, "noise": noise, "t": t}

    def loss(self, tensors, inference_outputs, generative_outputs) -> LossOutput:
        """Noise-prediction error over the target entries (paper Eq. 12) plus the weighted read-out error.

        Both errors are mean squared errors over the batch's target entries. Without an encoder
        (``encoder="none"``) the loss is the noise-prediction error alone.

        Parameters
        ----------
        tensors
            The batch (unused; part of the scvi-tools module contract).
        inference_outputs
            Output of :meth:`inference` (``"target"``, ``"readout"``, ``"x"`` are read).
        generative_outputs
            Output of :meth:`generative` (``"eps"``, ``"noise"``).

        Returns
        -------
        A :class:`~scvi.module.base.LossOutput`: ``loss`` is the scalar training loss,
        ``reconstruction_loss`` the ``(B,)`` per-spot noise error (under the key ``"reconstruction_loss"``),
        ``n_obs_minibatch`` is ``B`` and ``extra_metrics`` holds the detached scalars ``"diffusion_loss"``,
        ``"readout_loss"`` and ``"target_fraction"`` (fraction of the batch's entries that are targets).

        Examples
        --------
        >>> import numpy as np, torch
        >>> module = STMCDIModule(6, np.zeros(6), np.ones(6), 100.0, n_encoder_hidden=8, n_latent=4, n_channels=8)
        >>> counts = torch.tensor([[3.0, 1.0, 0.0, 5.0, 1.0, 2.0], [0.0, 4.0, 2.0, 1.0, 3.0, 0.0]])
        >>> batch = {"counts": counts, "library": counts.sum(1), "edge_index": torch.tensor([[1], [0]]),
        ...          "row": torch.tensor([0])}
        >>> inf = module.inference(batch["counts"], batch["library"], batch["edge_index"], n_seed=1)
        >>> out = module.loss(batch, inf, module.generative(**inf))
        >>> out.loss.shape, sorted(out.extra_metrics)
        (torch.Size([]), ['diffusion_loss', 'readout_loss', 'target_fraction'])
        >>> out.loss.backward()
        """
        target = inference_outputs["target"].to(generative_outputs["eps"].dtype)
        n_target = target.sum().clamp_min(1.0)
        sq = (generative_outputs["eps"] - generative_outputs["noise"]) ** 2 * target
        diffusion = sq.sum() / n_target
        per_spot = sq.sum(dim=1) / target.sum(dim=1).clamp_min(1.0)
        readout = (inference_outputs["readout"] - inference_outputs["x"]) ** 2 * target
        readout_loss = readout.sum() / n_target
        loss = diffusion + self.readout_loss_weight * readout_loss if self.encoder is not None else diffusion
        return LossOutput(
            loss=loss,
            reconstruction_loss=per_spot,
            n_obs_minibatch=target.shape[0],
            extra_metrics={
                "diffusion_loss": diffusion.detach(),
                "readout_loss": readout_loss.detach(),
                "target_fraction": target.mean().detach(),
            },
        )

    # ----------------------------------------------------------------------------- sampling
    @torch.inference_mode()
    @auto_move_data
    def sample(
        self,
        counts: torch.Tensor,
        library: torch.Tensor,
        edge_index: torch.Tensor,
        n_seed: int,
        n_samples: int = 10,
        sampler: Literal["ddim", "ddpm"] = "ddim",
        n_steps: int | None = None,
        generator: torch.Generator | None = None,
        expression_counts: torch.Tensor | None = None,
        expression_library: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fill the missing entries of the first ``n_seed`` spots by reverse diffusion.

        The reverse chain starts from Gaussian noise at the entries to fill (NaN in ``counts``); the
        condition is the observed entries and the spatial code. ``sampler="ddpm"`` runs the ancestral
        sampler of the paper over all steps; ``"ddim"`` the deterministic DDIM sampler (Song et al. 2021)
        over ``n_steps`` evenly spaced steps (default 10). At every step the estimate of the clean values is
        clipped to the data range (``gene_max``). Call ``module.eval()`` first: in training mode the encoder
        applies dropout.

        Parameters
        ----------
        counts
            ``(U, G)`` float32 counts of the neighbourhood's nodes, the spots to fill first; NaN marks the
            entries to fill.
        library
            ``(U,)`` library sizes from the observed entries.
        edge_index
            int64 ``(2, E)`` local edges, source -> target.
        n_seed
            Number of spots to fill: nodes ``0 .. n_seed-1``.
        n_samples
            Samples drawn per spot.
        sampler
            ``"ddim"`` or ``"ddpm"``.
        n_steps
            DDIM steps (default ``min(10, n_diffusion_steps)``); ignored by ``"ddpm"``.
        generator
            Random generator for the noise; the noise is drawn on its device (CPU when ``None``, with
            torch's global generator), so a seed gives the same samples on any accelerator.
        expression_counts, expression_library
            Counts and library sizes of the spots' expression neighbours; required with
            ``expression_profile`` (see :meth:`inference`).
        target
            Boolean ``(n_seed, G)`` entries to fill; default the NaN entries of the first ``n_seed`` spots.
            Observed entries in it (``impute(target="zeros")`` fills zero counts) are hidden from the spot's
            condition and encoder input, and read only by the spot summaries (``summarise`` of
            :meth:`inference`): pass only entries whose observed value may inform the estimate.

        Returns
        -------
        ``(n_samples, n_seed, G)`` float samples on the log-normalised scale (clamped at 0); observed
        entries hold their value.

        Examples
        --------
        >>> import numpy as np, torch
        >>> module = STMCDIModule(6, np.zeros(6), np.ones(6), 100.0, n_encoder_hidden=8, n_latent=4, n_channels=8)
        >>> counts = torch.tensor([[3.0, float("nan"), 0.0, 5.0, 1.0, 2.0], [0.0, 4.0, 2.0, 1.0, 3.0, 0.0]])
        >>> library = torch.nan_to_num(counts).sum(1)
        >>> samples = module.eval().sample(
        ...     counts, library, torch.tensor([[1], [0]]), n_seed=1, n_samples=4,
        ...     generator=torch.Generator().manual_seed(0),
        ... )
        >>> samples.shape
        torch.Size([4, 1, 6])
        >>> bool((samples[:, 0, 0] == samples[0, 0, 0]).all())  # an observed entry keeps its value
        True
        """
        inf = self._inference_to_fill(counts, library, edge_index, n_seed, target, expression_counts,
                                      expression_library)
        s = int(n_samples)
        rep = lambda v: None if v is None else v.repeat_interleave(s, dim=0)
        x, target, cond = rep(inf["x"]), rep(inf["target"]).to(inf["x"].dtype), rep(inf["cond"])
        z, x_hat, context, base = rep(inf["z_in"]), rep(inf["x_hat"]), rep(inf["context"]), rep(inf["base"])
        profile = rep(inf["profile"])
        # noise drawn on the generator's device (CPU by default) so results do not depend on the accelerator
        gen_device = generator.device if generator is not None else torch.device("cpu")
        randn = lambda: torch.randn(x.shape, generator=generator, device=gen_device).to(x.device)
        xt = randn()
        n = x.shape[0]
        # the chain runs on the residual r = x - base; clip the implied clean value base + r to the data range
        clip = lambda r: torch.maximum(torch.minimum(base + r, self.x0_high), self.x0_low) - base
        if sampler not in ("ddim", "ddpm"):
            raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}.")
        if self.objective == "mae":  # one deterministic pass: every sample is the same
            xt = self._one_pass(x, target, cond, z, x_hat, context, base, profile)
        elif sampler == "ddpm":
            for t in range(self.n_diffusion_steps - 1, -1, -1):
                tt = torch.full((n,), t, device=x.device, dtype=torch.long)
                eps = self.denoise(xt, tt, x, target, cond, z, x_hat, context, profile)
                beta, ab = self.betas[t], self.alpha_bar[t]
                x0 = clip((xt - (1.0 - ab).sqrt() * eps) / ab.sqrt())
                if t > 0:
                    ab_prev = self.alpha_bar[t - 1]
                    # posterior q(x_{t-1} | x_t, x0) of Ho et al. (2020), Eq. 6-7
                    mean = (ab_prev.sqrt() * beta * x0 + (1.0 - beta).sqrt() * (1.0 - ab_prev) * xt) / (1.0 - ab)
                    var = beta * (1.0 - ab_prev) / (1.0 - ab)
                    xt = mean + var.sqrt() * randn()
                else:
                    xt = x0
        elif sampler == "ddim":
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
        values = self.unscale(filled).clamp_min(0.0)  # log-normalised values are >= 0
        return values.view(-1, s, self.n_genes).transpose(0, 1)

    @torch.inference_mode()
    @auto_move_data
    def predict(
        self,
        counts: torch.Tensor,
        library: torch.Tensor,
        edge_index: torch.Tensor,
        n_seed: int,
        expression_counts: torch.Tensor | None = None,
        expression_library: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One-pass point estimate of the missing entries of the first ``n_seed`` spots.

        Runs the denoiser once on the one-pass task it learned with ``objective="hybrid"`` or ``"mae"``: no
        noise in, the condition and the spatial code, and the estimate clipped to the data range like a
        sampler's. Call ``module.eval()`` first.

        Parameters
        ----------
        counts
            ``(U, G)`` float32 counts of the neighbourhood's nodes, the spots to fill first; NaN marks the
            entries to fill.
        library
            ``(U,)`` library sizes from the observed entries.
        edge_index
            int64 ``(2, E)`` local edges, source -> target.
        n_seed
            Number of spots to fill: nodes ``0 .. n_seed-1``.
        expression_counts, expression_library
            Counts and library sizes of the spots' expression neighbours; required with
            ``expression_profile`` (see :meth:`inference`).
        target
            Boolean ``(n_seed, G)`` entries to fill; default the NaN entries of the first ``n_seed`` spots.
            Observed entries in it (``impute(target="zeros")`` fills zero counts) are hidden from the spot's
            condition and encoder input, and read only by the spot summaries (``summarise`` of
            :meth:`inference`): pass only entries whose observed value may inform the estimate.

        Returns
        -------
        ``(n_seed, G)`` tensor on the log-normalised scale (clamped at 0); observed entries hold their value.

        Raises
        ------
        ValueError
            With ``objective="diffusion"``: that model never learned the one-pass task.

        Examples
        --------
        >>> import numpy as np, torch
        >>> module = STMCDIModule(6, np.zeros(6), np.ones(6), 100.0, n_encoder_hidden=8, n_latent=4, n_channels=8,
        ...                       objective="hybrid")
        >>> counts = torch.tensor([[3.0, float("nan"), 0.0, 5.0, 1.0, 2.0], [0.0, 4.0, 2.0, 1.0, 3.0, 0.0]])
        >>> module.eval().predict(counts, torch.nan_to_num(counts).sum(1), torch.tensor([[1], [0]]), n_seed=1).shape
        torch.Size([1, 6])
        """
        if self.objective == "diffusion":
            raise ValueError(
                "This model was trained with objective='diffusion' only; it has no one-pass predictor. "
                "Use sample() (or train with objective='hybrid')."
            )
        inf = self._inference_to_fill(counts, library, edge_index, n_seed, target, expression_counts,
                                      expression_library)
        x, target, base = inf["x"], inf["target"], inf["base"]
        r = self._one_pass(x, target.to(x.dtype), inf["cond"], inf["z_in"], inf["x_hat"], inf["context"], base,
                           inf["profile"])
        filled = torch.where(target, base + r, x)
        values = self.unscale(filled).clamp_min(0.0)
        if self.depth_weight:
            values = (values + self.depth_shift(counts, library, n_seed) * target.to(values.dtype)).clamp_min(0.0)
        return values

    def _inference_to_fill(self, counts, library, edge_index, n_seed, target, expression_counts,
                           expression_library) -> dict[str, torch.Tensor]:
        """:meth:`inference` at imputation: the NaN entries are filled unless ``target`` is given."""
        summarise = None
        if target is None:
            target = torch.isnan(counts[:n_seed])
        else:  # observed entries to fill: the summaries read every observed entry, as at a missing entry
            summarise = ~torch.isnan(counts[:n_seed])
        return self.inference(counts, library, edge_index, n_seed, target=target,
                              expression_counts=expression_counts, expression_library=expression_library,
                              summarise=summarise)

    def depth_shift(self, counts: torch.Tensor, library: torch.Tensor, n_seed: int) -> torch.Tensor:
        r"""The depth term of the point estimate: ``depth_weight`` times the spot depth of each spot to fill.

        Parameters
        ----------
        counts
            ``(U, G)`` counts, NaN at the entries missing from the spot (the first ``n_seed`` rows are read);
            every non-NaN entry is averaged, the observed entries to fill of ``impute(target="zeros")``
            included, as the spot summaries read them.
        library
            ``(U,)`` library sizes from the observed entries.
        n_seed
            Number of spots to fill: rows ``0 .. n_seed-1``.

        Returns
        -------
        ``(n_seed, 1)`` tensor on the log-normalised scale, to add to the spots' filled entries.

        Examples
        --------
        >>> import numpy as np, torch
        >>> module = STMCDIModule(2, np.zeros(2), np.ones(2), 4.0, depth_weight=0.5)
        >>> module.depth_shift(torch.tensor([[1.0, float("nan")]]), torch.tensor([1.0]), n_seed=1)  # log1p(4) / 2
        tensor([[0.8047]])
        """
        c = counts[:n_seed]
        x = self.scale(c, library[:n_seed])
        return self.depth_weight * self.spot_depth(x, ~torch.isnan(c))[:, None]

    def spot_depth(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        r"""Depth term of each spot: mean log-normalised value of its visible entries, centred (``depth_weight``).

        Parameters
        ----------
        x
            ``(B, G)`` scaled values (:meth:`scale`); only visible entries are read.
        visible
            ``(B, G)`` float or boolean indicator of the entries to average.

        Returns
        -------
        ``(B,)`` tensor :math:`m_i - \bar m` in ``x``'s dtype, with :math:`\bar m` the first entry of
        ``spot_feature_mean`` (the training spots' mean; 0 without ``spot_feature_stats``). A spot with no
        visible entry gets :math:`-\bar m`.

        Examples
        --------
        >>> import numpy as np, torch
        >>> module = STMCDIModule(3, np.zeros(3), np.ones(3), 4.0, spot_feature_stats=(np.array([0.5, 0, 0]), np.ones(3)))
        >>> x = torch.tensor([[1.0, 2.0, 9.0]])  # the third entry is hidden
        >>> module.spot_depth(x, torch.tensor([[True, True, False]]))  # (1 + 2) / 2 - 0.5
        tensor([1.])
        """
        vis = visible.to(x.dtype)
        mean_value = (self.unscale(torch.nan_to_num(x)) * vis).sum(dim=1) / vis.sum(dim=1).clamp_min(1.0)
        return mean_value - self.spot_feature_mean[0]

    def _one_pass(self, x, target, cond, z, x_hat, context, base, profile=None) -> torch.Tensor:
        """The one-pass task's residual (no noise in, step ``point_step``), clipped to the data range."""
        tt = torch.full((x.shape[0],), self.point_step, device=x.device, dtype=torch.long)
        r = self.denoise(torch.zeros_like(x), tt, x, target, cond, z, x_hat, context, profile)
        return torch.maximum(torch.minimum(base + r, self.x0_high), self.x0_low) - base

    @torch.inference_mode()
    @auto_move_data
    def encode(self, counts, library, edge_index, n_seed: int, expression_counts=None, expression_library=None):
        """Spatial code :math:`z` of the first ``n_seed`` spots, every observed entry visible.

        Parameters
        ----------
        counts
            ``(U, G)`` float32 counts of the neighbourhood's nodes, the spots to encode first; NaN marks
            missing entries.
        library
            ``(U,)`` library sizes from the observed entries.
        edge_index
            int64 ``(2, E)`` local edges, source -> target.
        n_seed
            Number of spots to encode: nodes ``0 .. n_seed-1``.
        expression_counts, expression_library
            Counts and library sizes of the spots' expression neighbours; required with
            ``expression_profile`` (see :meth:`inference`).

        Returns
        -------
        ``(n_seed, n_latent)`` tensor: the spatial code of each spot.

        Raises
        ------
        ValueError
            With ``encoder="none"``.

        Examples
        --------
        >>> import numpy as np, torch
        >>> module = STMCDIModule(6, np.zeros(6), np.ones(6), 100.0, n_encoder_hidden=8, n_latent=4, n_channels=8)
        >>> counts = torch.tensor([[3.0, float("nan"), 0.0, 5.0, 1.0, 2.0], [0.0, 4.0, 2.0, 1.0, 3.0, 0.0]])
        >>> module.eval().encode(counts, torch.nan_to_num(counts).sum(1), torch.tensor([[1], [0]]), n_seed=1).shape
        torch.Size([1, 4])
        """
        if self.encoder is None:
            raise ValueError("This model has encoder='none': it has no spatial representation.")
        inf = self.inference(counts, library, edge_index, n_seed, target=torch.isnan(counts[:n_seed]),
                             expression_counts=expression_counts, expression_library=expression_library)
        return inf["z"]
