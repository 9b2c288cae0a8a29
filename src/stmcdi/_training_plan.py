"""DiffusionTrainingPlan: AdamW, warm-up + cosine learning rate, diffusion-appropriate logging."""

from __future__ import annotations

import math
from typing import Literal

import torch
from scvi.module.base import LossOutput
from scvi.train import TrainingPlan


class DiffusionTrainingPlan(TrainingPlan):
    """Training plan for :class:`~stmcdi.STMCDIModule`.

    Differs from scvi-tools' :class:`~scvi.train.TrainingPlan` (a VAE plan) in three ways:

    - AdamW with ``eps=1e-8`` (scvi's ``eps=0.01`` is tuned for VAEs) and an optional linear warm-up
      followed by cosine decay to ``lr_min_ratio * lr``;
    - it logs the noise-prediction loss and the module's extra metrics, not ELBO terms;
    - validation draws targets, steps and noise from a generator seeded by the batch index, so the
      validation loss compares like with like across epochs (early stopping, checkpoints).

    Parameters
    ----------
    module
        The :class:`~stmcdi.STMCDIModule`.
    optimizer
        ``"AdamW"`` (default), ``"Adam"`` or ``"Custom"`` (scvi-tools' ``optimizer_creator``).
    lr
        Peak learning rate.
    weight_decay
        AdamW weight decay.
    eps
        AdamW epsilon.
    lr_schedule
        ``"cosine"`` (warm-up then cosine decay over the run) or ``"constant"`` (warm-up then flat).
    n_warmup_steps
        Linear warm-up steps.
    lr_min_ratio
        Final learning rate of the cosine schedule, as a fraction of ``lr``.
    seed
        With a seed, torch's random generator is reseeded from ``(seed, epoch)`` at the start of every epoch and
        from ``(seed, step)`` before every step, so that the draws of a step (shuffling, targets, diffusion steps,
        noise, dropout) depend on the seed and the step alone: a run resumed from a checkpoint continues exactly
        as an uninterrupted one. :meth:`~stmcdi.STMCDI.train` passes ``scvi.settings.seed``.
    **kwargs
        Passed to :class:`~scvi.train.TrainingPlan` (e.g. ``reduce_lr_on_plateau``, ``compile``). With
        ``reduce_lr_on_plateau=True`` the plateau scheduler replaces the warm-up / cosine schedule and
        monitors ``lr_scheduler_metric``, by default ``"validation_mse"``, the error at the held-back entries.

    Examples
    --------
    >>> import stmcdi
    >>> adata = stmcdi.datasets.synthetic(n_spots=60, n_genes=20)
    >>> stmcdi.STMCDI.setup_anndata(adata)
    >>> plan = DiffusionTrainingPlan(stmcdi.STMCDI(adata).module, lr=1e-3)  # as STMCDI.train does
    >>> plan.lr_schedule
    'cosine'
    """

    def __init__(
        self,
        module,
        *,
        optimizer: Literal["AdamW", "Adam", "Custom"] = "AdamW",
        lr: float = 2e-3,
        weight_decay: float = 1e-5,
        eps: float = 1e-8,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
        n_warmup_steps: int = 50,
        lr_min_ratio: float = 0.05,
        seed: int | None = None,
        **kwargs,
    ):
        if lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}.")
        # scvi's default monitor, "elbo_validation", is a VAE metric this plan never logs
        kwargs.setdefault("lr_scheduler_metric", "validation_mse")
        super().__init__(module, optimizer=optimizer, lr=lr, weight_decay=weight_decay, eps=eps, **kwargs)
        self.lr_schedule = lr_schedule
        self.n_warmup_steps = int(n_warmup_steps)
        self.lr_min_ratio = float(lr_min_ratio)
        self.seed = None if seed is None else int(seed)

    def _reseed(self, stream: int, index: int) -> None:
        if self.seed is not None:
            torch.manual_seed((self.seed * 1_000_003 + stream * 7_919 + int(index)) % (2**63 - 1))

    def on_train_epoch_start(self) -> None:
        """Reseed torch from ``(seed, epoch)`` before the epoch's data order is drawn (see ``seed``).

        Returns
        -------
        ``None``. Lightning calls it.

        Examples
        --------
        >>> plan.on_train_epoch_start()  # in a Trainer  # doctest: +SKIP
        """
        self._reseed(1, self.current_epoch)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        """Reseed torch from ``(seed, step)`` before the step's draws (see ``seed``).

        Parameters
        ----------
        batch, batch_idx
            The batch and its index (unused).

        Returns
        -------
        ``None``. Lightning calls it.

        Examples
        --------
        >>> plan.on_train_batch_start(batch, 0)  # in a Trainer  # doctest: +SKIP
        """
        self._reseed(2, self.global_step)

    @torch.no_grad()  # not inference mode: inference tensors cannot be reduced across processes (DDP)
    def compute_and_log_metrics(self, loss_output: LossOutput, metrics, mode: str) -> None:
        """Log the module's extra metrics as ``<key>_<mode>`` (the loss is logged by the step).

        Only scalar tensors are logged (``diffusion_loss``, ``readout_loss``, ``target_fraction`` of
        :meth:`stmcdi.STMCDIModule.loss`), per step and / or epoch as the plan is configured. Called by
        :meth:`training_step` and :meth:`validation_step`; it needs the plan to be attached to a Lightning
        trainer.

        Parameters
        ----------
        loss_output
            The module's :class:`~scvi.module.base.LossOutput` for the batch.
        metrics
            scvi-tools' metric collection for ``mode``; unused (kept for the signature of
            :class:`~scvi.train.TrainingPlan`).
        mode
            ``"train"`` or ``"validation"``: the suffix of the logged names.

        Returns
        -------
        ``None``.

        Examples
        --------
        >>> import numpy as np, torch
        >>> from stmcdi import STMCDIModule
        >>> module = STMCDIModule(6, np.zeros(6), np.ones(6), 100.0, n_encoder_hidden=8, n_latent=4, n_channels=8)
        >>> plan = DiffusionTrainingPlan(module)
        >>> counts = torch.tensor([[3.0, 1.0, 0.0, 5.0, 1.0, 2.0], [0.0, 4.0, 2.0, 1.0, 3.0, 0.0]])
        >>> batch = {"counts": counts, "library": counts.sum(1), "edge_index": torch.tensor([[1], [0]]),
        ...          "row": torch.tensor([0])}
        >>> _, _, loss_output = plan.forward(batch)
        >>> sorted(loss_output.extra_metrics)  # logged as diffusion_loss_train, ...
        ['diffusion_loss', 'readout_loss', 'target_fraction']
        >>> plan.compute_and_log_metrics(loss_output, plan.train_metrics, "train")  # in a Trainer  # doctest: +SKIP
        """
        for key, value in loss_output.extra_metrics.items():
            if isinstance(value, torch.Tensor) and value.dim() == 0:
                self.log(
                    f"{key}_{mode}",
                    value.detach(),
                    on_step=self.on_step,
                    on_epoch=self.on_epoch,
                    batch_size=loss_output.n_obs_minibatch,
                    sync_dist=self.use_sync_dist,
                )

    def training_step(self, batch, batch_idx):
        """Noise-prediction loss on a batch's targets (logged per epoch as ``train_loss``).

        Runs the module (:meth:`~stmcdi.STMCDIModule.inference`, :meth:`~stmcdi.STMCDIModule.generative`,
        :meth:`~stmcdi.STMCDIModule.loss`) on the batch with fresh random targets, steps and noise, and logs
        the loss and the module's extra metrics (:meth:`compute_and_log_metrics`). Lightning calls it.

        Parameters
        ----------
        batch
            A neighbourhood batch: dict of tensors ``"counts"`` ``(U, G)``, ``"library"`` ``(U,)``,
            ``"edge_index"`` ``(2, E)`` and ``"row"`` ``(B,)``.
        batch_idx
            Index of the batch in the epoch (unused).

        Returns
        -------
        The scalar training loss (a tensor attached to the graph), which Lightning back-propagates.

        Examples
        --------
        >>> import numpy as np, torch, stmcdi
        >>> plan = DiffusionTrainingPlan(stmcdi.STMCDIModule(6, np.zeros(6), np.ones(6), 100.0, n_channels=8))
        >>> counts = torch.tensor([[3.0, 1.0, 0.0, 5.0, 1.0, 2.0], [0.0, 4.0, 2.0, 1.0, 3.0, 0.0]])
        >>> batch = {"counts": counts, "library": counts.sum(1), "edge_index": torch.tensor([[1], [0]]),
        ...          "row": torch.tensor([0])}
        >>> plan.forward(batch)[2].loss.shape  # what the step computes, without logging
        torch.Size([])
        >>> loss = plan.training_step(batch, batch_idx=0)  # in a Trainer  # doctest: +SKIP
        """
        _, _, loss = self.forward(batch, loss_kwargs=self.loss_kwargs)
        self.log(
            "train_loss", loss.loss, on_step=self.on_step, on_epoch=self.on_epoch, prog_bar=True,
            sync_dist=self.use_sync_dist, batch_size=loss.n_obs_minibatch,
        )
        self.compute_and_log_metrics(loss, self.train_metrics, "train")
        return loss.loss

    def validation_step(self, batch, batch_idx):
        """Squared error of the one-pass estimate at the held-back entries (logged as ``validation_mse``).

        The batch's ``target`` entries are entries held back from training
        (``NeighborhoodDataSplitter``); the error is on the log-normalised scale, averaged
        over the epoch's entries. A module trained with ``objective="diffusion"`` has no one-pass estimate; it
        logs the noise-prediction loss with targets, steps and noise drawn from a generator seeded by the batch
        index instead (``validation_loss``). Lightning calls it.

        Parameters
        ----------
        batch
            A neighbourhood batch with the key ``"target"``.
        batch_idx
            Index of the batch in the validation epoch.

        Returns
        -------
        ``None``; the metric is logged.

        Examples
        --------
        >>> plan.validation_step(batch, batch_idx=0)  # in a Trainer  # doctest: +SKIP
        """
        module = self.module
        if module.objective == "diffusion" or "target" not in batch:
            device = batch[next(iter(batch))].device
            gen = torch.Generator(device=device).manual_seed(1_000_003 + int(batch_idx))
            _, _, loss = self.forward(batch, loss_kwargs=self.loss_kwargs, inference_kwargs={"generator": gen},
                                      generative_kwargs={"generator": gen})
            self.log("validation_loss", loss.loss, on_step=False, on_epoch=True, sync_dist=self.use_sync_dist,
                     batch_size=loss.n_obs_minibatch)
            return
        n = batch["row"].shape[0]
        counts, library, target = batch["counts"], batch["library"], batch["target"]
        est, _ = module.fill(counts, library, batch["edge_index"], n, target=target,
                             expression_counts=batch.get("expression_counts"),
                             expression_library=batch.get("expression_library"), summarise_targets=False)
        truth = module.unscale(torch.nan_to_num(module.scale(counts[:n], library[:n]), nan=0.0))
        n_target = int((target & ~torch.isnan(counts[:n])).sum())
        if n_target == 0:
            return
        sel = target & ~torch.isnan(counts[:n])
        # fill() runs in inference mode; a plain tensor can be reduced across processes (DDP)
        mse = torch.tensor(float(((est - truth) ** 2)[sel].mean()), device=counts.device)
        self.log("validation_mse", mse, on_step=False, on_epoch=True, sync_dist=self.use_sync_dist,
                 batch_size=n_target)

    def _lr_factor(self, step: int) -> float:
        if step < self.n_warmup_steps:
            return (step + 1) / self.n_warmup_steps
        if self.lr_schedule == "constant":
            return 1.0
        total = max(int(getattr(self.trainer, "estimated_stepping_batches", 0) or 0), self.n_warmup_steps + 1)
        progress = min(1.0, (step - self.n_warmup_steps) / max(1, total - self.n_warmup_steps))
        return self.lr_min_ratio + (1.0 - self.lr_min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def configure_optimizers(self):
        """AdamW plus the warm-up / cosine schedule (stepped every optimizer step).

        The learning rate rises linearly over ``n_warmup_steps`` and then, with ``lr_schedule="cosine"``,
        follows a cosine to ``lr_min_ratio * lr`` at the trainer's last step (``estimated_stepping_batches``).
        With ``reduce_lr_on_plateau=True`` scvi-tools' plateau schedule is used instead.

        Returns
        -------
        Lightning's optimizer configuration: a dict with ``"optimizer"`` (the optimizer over the module's
        trainable parameters) and ``"lr_scheduler"``, a dict with the ``"scheduler"``
        (:class:`~torch.optim.lr_scheduler.LambdaLR`) and ``"interval": "step"`` (with
        ``reduce_lr_on_plateau``: a :class:`~torch.optim.lr_scheduler.ReduceLROnPlateau` and its
        ``"monitor"``).

        Examples
        --------
        >>> import numpy as np
        >>> from stmcdi import STMCDIModule
        >>> module = STMCDIModule(6, np.zeros(6), np.ones(6), 100.0, n_encoder_hidden=8, n_latent=4, n_channels=8)
        >>> config = DiffusionTrainingPlan(module, lr=1e-3, n_warmup_steps=10).configure_optimizers()
        >>> type(config["optimizer"]).__name__, config["lr_scheduler"]["interval"]
        ('AdamW', 'step')
        >>> config["optimizer"].param_groups[0]["lr"]  # first warm-up step: lr / n_warmup_steps
        0.0001
        """
        config = super().configure_optimizers()
        if self.reduce_lr_on_plateau:
            return config
        scheduler = torch.optim.lr_scheduler.LambdaLR(config["optimizer"], self._lr_factor)
        config["lr_scheduler"] = {"scheduler": scheduler, "interval": "step"}
        return config
