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
    **kwargs
        Passed to :class:`~scvi.train.TrainingPlan` (e.g. ``reduce_lr_on_plateau``, ``compile``).

    Examples
    --------
    >>> import stmcdi
    >>> adata = stmcdi.datasets.synthetic(n_spots=60, n_genes=20)
    >>> stmcdi.STMCDI.setup_anndata(adata)
    >>> model = stmcdi.STMCDI(adata)
    >>> plan = DiffusionTrainingPlan(model.module, lr=1e-3)
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
        **kwargs,
    ):
        if lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}.")
        super().__init__(module, optimizer=optimizer, lr=lr, weight_decay=weight_decay, eps=eps, **kwargs)
        self.lr_schedule = lr_schedule
        self.n_warmup_steps = int(n_warmup_steps)
        self.lr_min_ratio = float(lr_min_ratio)

    @torch.inference_mode()
    def compute_and_log_metrics(self, loss_output: LossOutput, metrics, mode: str) -> None:
        """Log the module's extra metrics as ``<key>_<mode>`` (the loss is logged by the step)."""
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
        """Noise-prediction loss on a batch's targets (logged per epoch as ``train_loss``)."""
        _, _, loss = self.forward(batch, loss_kwargs=self.loss_kwargs)
        self.log(
            "train_loss", loss.loss, on_step=self.on_step, on_epoch=self.on_epoch, prog_bar=True,
            sync_dist=self.use_sync_dist, batch_size=loss.n_obs_minibatch,
        )
        self.compute_and_log_metrics(loss, self.train_metrics, "train")
        return loss.loss

    def validation_step(self, batch, batch_idx):
        """Validation loss with targets, steps and noise fixed per batch index."""
        device = batch[next(iter(batch))].device
        gen = torch.Generator(device=device).manual_seed(1_000_003 + int(batch_idx))
        _, _, loss = self.forward(
            batch,
            loss_kwargs=self.loss_kwargs,
            inference_kwargs={"generator": gen},
            generative_kwargs={"generator": gen},
        )
        self.log(
            "validation_loss", loss.loss, on_step=False, on_epoch=True, sync_dist=self.use_sync_dist,
            batch_size=loss.n_obs_minibatch,
        )
        self.compute_and_log_metrics(loss, self.val_metrics, "validation")

    def _lr_factor(self, step: int) -> float:
        if step < self.n_warmup_steps:
            return (step + 1) / self.n_warmup_steps
        if self.lr_schedule == "constant":
            return 1.0
        total = max(int(getattr(self.trainer, "estimated_stepping_batches", 0) or 0), self.n_warmup_steps + 1)
        progress = min(1.0, (step - self.n_warmup_steps) / max(1, total - self.n_warmup_steps))
        return self.lr_min_ratio + (1.0 - self.lr_min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def configure_optimizers(self):
        """AdamW plus the warm-up / cosine schedule (stepped every optimizer step)."""
        config = super().configure_optimizers()
        if self.reduce_lr_on_plateau:
            return config
        scheduler = torch.optim.lr_scheduler.LambdaLR(config["optimizer"], self._lr_factor)
        config["lr_scheduler"] = {"scheduler": scheduler, "interval": "step"}
        return config
