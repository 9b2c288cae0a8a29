"""The read-out, chosen on observed entries held back from training.

:meth:`STMCDI.train <stmcdi.STMCDI.train>` hides a few observed entries from the network
(:func:`~stmcdi._estimators.held_back_entries`). They serve three purposes, all on the user's own data:

1. early stopping: the network's squared error there is the validation metric (:class:`BestWeights` keeps the
   weights of the best check);
2. the stack: the network's estimate and the classical estimates of :mod:`stmcdi._estimators`, each made without
   those entries, are weighted by non-negative least squares to predict them (:func:`calibrate`);
3. the spread: the scale of the samples' deviations is chosen so that their central 90% interval covers 90% of
   those entries.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import scipy.sparse as sp
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, WeightAveraging

from ._constants import BATCH_KEYS, KEYS
from ._data import neighborhood_loader, registered_counts
from ._stack import Stack, fit_stack, fit_zero_dispersion
from ._validation import missing_mask
from .pp._graph import spatial_graph
from .pp._normalize import library_size

logger = logging.getLogger(__name__)

#: candidate spread scales, smallest first (5% apart)
SPREAD_GRID = np.round(np.geomspace(0.5, 500.0, 142), 3)
#: most held-back entries the spread is calibrated on (sampling them is the costly part)
SPREAD_ENTRIES = 2000
#: neighbours of the spatial estimates of the stack
SPATIAL_NEIGHBOURS = 18


class BestWeights(Callback):
    """Keep a copy of the weights (the averaged ones under EMA) of the best validation check.

    Parameters
    ----------
    monitor
        Logged metric to minimise.

    Examples
    --------
    >>> cb = BestWeights()
    >>> cb.best_score is None, cb.state is None
    (True, True)
    """

    def __init__(self, monitor: str = "validation_mse"):
        self.monitor = monitor
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.state: dict | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        """Record the weights when the monitored metric improves."""
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or trainer.sanity_checking:
            return
        value = float(value)
        if self.best_score is None or value < self.best_score:
            self.best_score, self.best_step = value, int(trainer.global_step)
            ema = next((c for c in trainer.callbacks if isinstance(c, WeightAveraging)), None)
            module = pl_module.module
            if ema is not None and getattr(ema, "_average_model", None) is not None:
                module = ema._average_model.module.module  # the averaged copy of the training plan's module
            self.state = {k: v.detach().clone().cpu() for k, v in module.state_dict().items()}

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the callback: the best score, its step and its weights."""
        return {"best_score": self.best_score, "best_step": self.best_step, "state": self.state}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the record of :meth:`state_dict` (a run resumed from a checkpoint)."""
        self.best_score, self.best_step = state_dict["best_score"], state_dict["best_step"]
        self.state = state_dict["state"]


class RelativeEarlyStopping(EarlyStopping):
    """Lightning's :class:`~lightning.pytorch.callbacks.EarlyStopping` whose least improvement is relative.

    A check improves on the best when it lowers the monitored error by more than ``rel`` times the best value,
    so that the rule does not depend on the scale of the error (which differs between sections).

    Parameters
    ----------
    rel
        Least relative improvement.
    min_steps
        No stop before this many optimizer steps.
    **kwargs
        Passed to :class:`~lightning.pytorch.callbacks.EarlyStopping` (``monitor``, ``patience``, ...).

    Examples
    --------
    >>> RelativeEarlyStopping(0.01, monitor="validation_mse", patience=3).rel
    0.01
    """

    def __init__(self, rel: float, min_steps: int = 0, **kwargs):
        super().__init__(mode="min", **kwargs)
        self.rel = float(rel)
        self.min_steps = int(min_steps)

    def _run_early_stopping_check(self, trainer) -> None:
        if trainer.global_step < self.min_steps:  # the averaged weights still remember their start
            return
        super()._run_early_stopping_check(trainer)

    def _evaluate_stopping_criteria(self, current: torch.Tensor):
        if torch.isfinite(self.best_score):
            self.min_delta = -self.rel * abs(float(self.best_score))
        return super()._evaluate_stopping_criteria(current)


def resume_checkpoint(dirpath, every_n_epochs: int):
    """A Lightning checkpoint of the last check of the held-back entries (``dirpath/last.ckpt``), to resume from.

    scvi-tools' :class:`~scvi.train.SaveCheckpoint` saves whole models at the best check and cannot save the last
    state; this is Lightning's own :class:`~lightning.pytorch.callbacks.ModelCheckpoint` behaviour under its type,
    so that scvi-tools' trainer does not add one of its own.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint
    from scvi.train import SaveCheckpoint

    class ResumeCheckpoint(SaveCheckpoint):
        def __init__(self):
            ModelCheckpoint.__init__(self, dirpath=str(dirpath), filename="last", save_top_k=1,
                                     every_n_epochs=every_n_epochs, save_on_train_epoch_end=False,
                                     enable_version_counter=False)
            self.load_best_on_end = self.loss_is_nan = self.check_nan_gradients = False

        on_save_checkpoint = ModelCheckpoint.on_save_checkpoint
        _remove_checkpoint = ModelCheckpoint._remove_checkpoint
        _update_best_and_save = ModelCheckpoint._update_best_and_save
        on_train_end = ModelCheckpoint.on_train_end
        on_train_batch_end = ModelCheckpoint.on_train_batch_end
        on_exception = ModelCheckpoint.on_exception

    return ResumeCheckpoint()


def spatial_neighbours(adata, spatial_key: str, n_neighs: int = SPATIAL_NEIGHBOURS) -> np.ndarray:
    """``(n_obs, k)`` tissue neighbours of each spot, nearest first, within its section; writes nothing."""
    params = adata.uns.get(KEYS.UNS, {}).get("spatial_graph", {})
    library_key = params.get("library_key")
    if library_key is not None and library_key in adata.obs:
        sizes = adata.obs[library_key].astype(str).value_counts()  # the sections present (not unused categories)
        n_neighs = min(n_neighs, int(sizes.min()) - 1)
    else:
        library_key = None
        n_neighs = min(n_neighs, adata.n_obs - 1)
    table = spatial_graph(adata, n_neighs=max(1, n_neighs), spatial_key=spatial_key, library_key=library_key,
                          allow_duplicates=True, copy=True)
    return table[:, 1:]


def lognormal_at(counts, hidden: sp.spmatrix, target_sum: float) -> np.ndarray:
    """Dense log-normalised values of every non-missing entry, libraries without ``hidden`` (NaN where missing).

    The scale on which the held-back entries are scored: the library of a spot is the sum of its counts that
    the network saw.
    """
    c = counts.toarray() if sp.issparse(counts) else np.array(counts)
    c = c.astype(np.float32, copy=False)
    lib = library_size(counts, hidden)
    scale = np.divide(target_sum, lib, out=np.ones_like(lib), where=lib > 0).astype(np.float32)
    c *= scale[:, None]
    return np.log1p(c, out=c)  # NaN stays NaN


def spread_sd(samples: np.ndarray) -> np.ndarray:
    """Standard deviation (``ddof=1``) over the first axis of the scaled samples: ``imputed_std``; one draw gives 0."""
    return samples.std(axis=0, ddof=1 if samples.shape[0] > 1 else 0)


def scale_for(readout: dict | None, n_samples: int) -> float:
    """The spread scale of ``readout`` (chosen with ``readout["n_samples"]`` draws) for ``n_samples`` draws.

    A standard deviation from ``k`` draws is noisy: the interval ``estimate ± z sd`` that covered ``level`` with
    ``k`` draws is a Student-t interval with ``k - 1`` degrees of freedom. With ``n`` draws the same coverage
    needs the scale times ``t(n - 1) / t(k - 1)`` (the ratio of the t quantiles; exact for Gaussian deviations).
    """
    from scipy.stats import t

    if not readout:
        return 1.0
    scale, k = float(readout["spread_scale"]), int(readout.get("n_samples", n_samples))
    if k < 2 or n_samples < 2 or k == n_samples:
        return scale
    q = (1.0 + float(readout.get("level", 0.9))) / 2.0
    return scale * float(t.ppf(q, n_samples - 1) / t.ppf(q, k - 1))


def _choose_spread_scale(truth, centre, draws, level: float = 0.9, grid=SPREAD_GRID) -> tuple[float, float, float]:
    """Smallest scale ``s`` whose interval ``centre ± z sd`` covers ``level`` of ``truth``.

    ``sd`` is :func:`spread_sd` of the draws' deviations from their mean, scaled by ``s``, and ``z`` the normal
    quantile of ``level`` (1.645 at 90%). Returns ``(scale, coverage at that scale, coverage at scale 1)``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> truth = 5.0 + 2.0 * rng.standard_normal(4000)  # twice as wide as the draws below
    >>> draws = 5.0 + rng.standard_normal((50, 4000))
    >>> scale, coverage, unscaled = _choose_spread_scale(truth, np.full(4000, 5.0), draws)
    >>> 1.8 <= scale <= 2.3, coverage >= 0.9, unscaled < 0.7
    (True, True, True)
    """
    from scipy.stats import norm

    truth = np.asarray(truth, dtype=np.float64)
    dev = np.asarray(draws, dtype=np.float64)
    dev = dev - dev.mean(axis=0, keepdims=True)
    centre = np.asarray(centre, dtype=np.float64)
    z = float(norm.ppf((1.0 + level) / 2.0))

    def cover(s: float) -> float:
        return float(np.mean(np.abs(truth - centre) <= z * spread_sd(np.maximum(centre[None, :] + s * dev, 0.0))))

    unscaled = cover(1.0)
    c = unscaled
    for s in grid:
        c = cover(float(s))
        if c >= level:
            return float(s), c, unscaled
    return float(grid[-1]), c, unscaled


@torch.inference_mode()
def calibrate(model, *, n_samples: int = 10, sampler: str = "ddim", level: float = 0.9, seed: int = 0) -> dict:
    """Fit the read-out of a trained model on its held-back entries (``model.held_back_``).

    The network predicts every held-back entry from everything else the model saw; the classical estimates are
    tuned and computed without those entries; :func:`~stmcdi._stack.fit_stack` weighs them all. The spread
    scale is then chosen on up to ``SPREAD_ENTRIES`` of the entries, around the stacked estimate.

    Returns
    -------
    The record stored as ``model.readout_``: the stack (names, weights, hyperparameters), ``spread_scale``,
    ``coverage``, ``coverage_unscaled``, ``level``, ``n_samples``, ``sampler`` and the number of entries.
    """
    held = model.held_back_
    manager = model.get_anndata_manager(model.adata, required=True)
    counts, mask = registered_counts(manager)
    missing = missing_mask(counts, mask)
    target_sum = float(model.module.target_sum)
    x = lognormal_at(counts, held + missing if missing.nnz else held, target_sum)
    if missing.nnz:
        r, c = missing.nonzero()
        x[r, c] = np.nan
    rows, cols = held.nonzero()
    spots = np.unique(rows)
    rng = np.random.default_rng([int(seed), 0x5B8EAD])
    spread_spots = np.sort(rng.permutation(spots)[: max(1, SPREAD_ENTRIES * spots.size // max(rows.size, 1))])
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(int(seed))
    # the network's estimate at every held-back entry (one pass; samples only where they make the estimate)
    network = np.empty(rows.size, dtype=np.float64)
    n_est = n_samples if model.module.objective == "diffusion" else 0
    for sel, est, _ in _held_back_passes(model, manager, spots, rows, n_est, sampler, gen):
        network[sel] = est
    # the samples of the spread, on a few spots only (they are the costly part)
    draws, draw_pos = [], []
    if n_samples > 0:
        for sel, _, samples in _held_back_passes(model, manager, spread_spots, rows, n_samples, sampler, gen):
            draws.append(samples)
            draw_pos.append(sel)
    t1 = time.perf_counter()
    stack = fit_stack(x, held, spatial_neighbours(model.adata, model.registry_["setup_args"]["spatial_key"]),
                      {"network": network}, seed=int(seed))
    held_counts = np.asarray(sp.csr_matrix(counts)[rows, cols], dtype=np.float64).ravel()
    phi = fit_zero_dispersion(held_counts, stack.fitted, library_size(counts, held + missing)[rows], target_sum,
                              int(seed))
    record = {"stack": stack.as_dict(), "zero_dispersion": phi, "seed": int(seed), "level": float(level), "n_samples": int(n_samples), "sampler": sampler,
              "n_entries": int(rows.size), "spread_scale": 1.0, "coverage": float("nan"),
              "coverage_unscaled": float("nan")}
    if draws:
        pos = np.concatenate(draw_pos)
        s, cov, unscaled = _choose_spread_scale(x[rows[pos], cols[pos]], stack.fitted[pos],
                                                np.concatenate(draws, axis=1), level)
        record.update({"spread_scale": s, "coverage": cov, "coverage_unscaled": unscaled})
    logger.info("Read-out fitted on %d held-back entries (network pass %.0f s, classical estimates and stack %.0f s): "
                "weights %s; spread scale %.2f; zero dispersion %.3g.", rows.size, t1 - t0, time.perf_counter() - t1,
                {k: round(float(w), 3) for k, w in zip(stack.names, stack.weights)}, record["spread_scale"], phi)
    return record


def _held_back_passes(model, manager, spots, rows, n_samples, sampler, gen):
    """Predict the held-back entries of ``spots`` batch by batch.

    Yields ``(sel, est, samples)`` per batch: the positions ``sel`` of the batch's entries among the held-back
    entries ``rows`` (``model.held_back_.nonzero()``), the network's estimate there and its ``(n_samples,
    sel.size)`` samples (``None`` without samples).
    """
    held = model.held_back_
    cols = held.nonzero()[1]
    where = np.full(model.adata.n_obs, -1, dtype=np.int64)
    loader = neighborhood_loader(manager, model.module.n_hops, indices=spots,
                                 batch_size=model._batch_size_impute(n_samples), missing=held, fill=held,
                                 n_expression_neighbors=model.n_expression_neighbors)
    model.module.eval()
    for batch in loader:
        seeds = batch[BATCH_KEYS.ROW].numpy()
        est, samples = model.module.fill(
            batch[BATCH_KEYS.COUNTS], batch[BATCH_KEYS.LIBRARY], batch[BATCH_KEYS.EDGE_INDEX], len(seeds),
            n_samples=n_samples, sampler=sampler, generator=gen, target=batch[BATCH_KEYS.TARGET],
            expression_counts=batch.get(BATCH_KEYS.EXPRESSION_COUNTS),
            expression_library=batch.get(BATCH_KEYS.EXPRESSION_LIBRARY), summarise_targets=False)
        where[:] = -1
        where[seeds] = np.arange(seeds.size)
        sel = np.flatnonzero(where[rows] >= 0)
        local = where[rows[sel]]
        drawn = None if samples is None else samples.float().cpu().numpy()[:, local, cols[sel]]
        yield sel, est.float().cpu().numpy()[local, cols[sel]], drawn


def stack_of(model) -> Stack | None:
    """The model's fitted :class:`~stmcdi._stack.Stack`, or ``None`` before calibration."""
    record = getattr(model, "readout_", None)
    return None if record is None else Stack.from_dict(record["stack"])
