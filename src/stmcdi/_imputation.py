"""The imputation pass of :meth:`STMCDI.impute <stmcdi.STMCDI.impute>`: one encoding per batch, stacked read-out."""

from __future__ import annotations

import logging
import time

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData
from scvi import settings

from ._calibration import scale_for, spatial_neighbours, spread_sd, stack_of
from ._constants import BATCH_KEYS, KEYS
from ._data import neighborhood_loader, registered_counts
from ._stack import classical_estimates, combine, condition_on_zero
from ._validation import check_number, missing_mask
from .pp._normalize import log_normalize

logger = logging.getLogger(__name__)

#: seconds between two progress lines of a long imputation
_LOG_EVERY = 30.0


def entries_to_fill(counts, mask, target) -> tuple[sp.csr_matrix, sp.csr_matrix | None, bool]:
    """``(missing, extra, zeros)``: the missing entries, the further entries of a boolean ``target``, zero mode."""
    missing = missing_mask(counts, mask)
    if isinstance(target, str):
        if target not in ("missing", "zeros"):
            raise ValueError(f"target must be 'missing', 'zeros' or a boolean array, got {target!r}.")
        return missing, None, target == "zeros"
    extra = sp.csr_matrix(target).astype(bool)
    if extra.shape != counts.shape:
        raise ValueError(f"`target` has shape {extra.shape}; expected {counts.shape}.")
    return missing, extra, False


def nothing_to_fill_message(n_obs: int, n_vars: int) -> str:
    """The error for data with no missing entry and ``target="missing"``."""
    return (f"Nothing to fill: the {n_obs} x {n_vars} counts have no missing (NaN) entry and target='missing'. "
            "To fill the zero counts (dropouts), use target='zeros' (CLI: --target zeros); to fill chosen entries, "
            "mark them with NaN, a mask layer (setup_anndata(mask_layer=...)) or a boolean `target`.")


def run_imputation(model, adata: AnnData, *, target, readout, n_samples, sampler, genes, seed, layer_added, inplace,
                   return_samples):
    """Run :meth:`STMCDI.impute`; see there for the arguments."""
    check_number(n_samples, "n_samples", integer=True, low=0, hint="0 draws no samples (no spread).")
    if readout not in ("ensemble", "network"):
        raise ValueError(f"readout must be 'ensemble' or 'network', got {readout!r}.")
    if sampler not in ("ddim", "ddpm"):
        raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}.")
    if model.module.objective == "diffusion" and n_samples == 0:
        raise ValueError("A model trained with objective='diffusion' estimates by sampling: pass n_samples >= 1.")
    if return_samples and n_samples < 1:
        raise ValueError("return_samples=True needs samples: pass n_samples >= 1 (e.g. n_samples=20).")
    if (genes is not None or return_samples) and inplace:
        raise ValueError("`genes` and `return_samples` return arrays: pass inplace=False.")
    cols = np.arange(adata.n_vars)
    if genes is not None:
        idx = adata.var_names.get_indexer(list(genes))
        if (idx < 0).any():
            raise ValueError(f"Genes not in the data: {list(np.asarray(genes)[idx < 0][:5])}.")
        cols = idx
    stack = stack_of(model) if readout == "ensemble" else None
    if readout == "ensemble" and stack is None:
        raise ValueError("This model has no fitted read-out (it was not trained with stmcdi's train()); "
                         "pass readout='network' or train it.")
    seed = settings.seed if seed is None else seed
    seed = int(seed) if seed is not None else 0
    manager = model.get_anndata_manager(adata, required=True)
    counts, mask = registered_counts(manager)
    missing, extra, zeros = entries_to_fill(counts, mask, target)
    hidden = missing if extra is None else (missing + extra).astype(bool)
    x, library, _ = log_normalize(counts, hidden, target_sum=float(model.module.target_sum))
    fill = np.isnan(x)
    if zeros:
        fill |= x == 0
    if not fill.any():
        raise ValueError(nothing_to_fill_message(*adata.shape))
    _check_memory(adata.n_obs, cols.size, 2 + (n_samples if return_samples else 0))

    t_start = time.perf_counter()
    estimates = None
    # the classical estimates are needed where they carry weight, and for the gene mean when nothing does
    if stack is not None and (any(w > 0 and n != "network" for n, w in zip(stack.names, stack.weights))
                              or not np.any(stack.weights > 0)):
        spatial = spatial_neighbours(adata, model.registry_["setup_args"]["spatial_key"])
        # the classical estimates are seeded as when the read-out was fitted: the sampling seed moves only samples
        estimates = classical_estimates(x, spatial, stack.params, int(model.readout_.get("seed", 0)))
    t_classical = time.perf_counter() - t_start
    scale = scale_for(model.readout_, n_samples)
    phi = float(model.readout_.get("zero_dispersion", 0.0)) if stack is not None else 0.0
    target_sum = float(model.module.target_sum)
    mean = np.where(fill, np.float32(0), np.nan_to_num(x))[:, cols].astype(np.float32)
    std = np.zeros_like(mean) if n_samples > 0 else None
    samples = np.repeat(mean[None], n_samples, axis=0) if return_samples and n_samples > 0 else None
    gen = torch.Generator().manual_seed(seed)
    batch_size = model._batch_size_impute(n_samples)
    model.module.eval()
    t0 = last = time.perf_counter()
    done = 0
    for fill_round, write in _rounds(x, zeros, seed):
        loader = neighborhood_loader(manager, model.module.n_hops, batch_size=batch_size, missing=extra,
                                     fill=fill_round, n_expression_neighbors=model.n_expression_neighbors)
        for batch in loader:
            rows = batch[BATCH_KEYS.ROW].numpy()
            est, draws = model.module.fill(
                batch[BATCH_KEYS.COUNTS], batch[BATCH_KEYS.LIBRARY], batch[BATCH_KEYS.EDGE_INDEX], len(rows),
                n_samples=n_samples, sampler=sampler, generator=gen, target=batch.get(BATCH_KEYS.TARGET),
                expression_counts=batch.get(BATCH_KEYS.EXPRESSION_COUNTS),
                expression_library=batch.get(BATCH_KEYS.EXPRESSION_LIBRARY))
            est = est.float().cpu().numpy()
            if stack is not None:
                est = combine(stack, estimates or {}, rows, extra={"network": est})
                if zeros and phi > 0:  # a zero count lowers the estimate of its own entry
                    zero = x[rows] == 0
                    est[zero] = condition_on_zero(est, library[rows, None], target_sum, phi)[zero]
            here = write[rows][:, cols]
            block = mean[rows]
            block[here] = est[:, cols][here]
            mean[rows] = block
            if draws is not None:
                d = draws.float().cpu().numpy()[:, :, cols]
                d = np.maximum(est[None][:, :, cols] + scale * (d - d.mean(axis=0, keepdims=True)), 0.0)
                sd = std[rows]
                sd[here] = spread_sd(d)[here]
                std[rows] = sd
                if samples is not None:
                    s = samples[:, rows]
                    s[:, here] = d[:, here]
                    samples[:, rows] = s
            done += len(rows)
            if time.perf_counter() - last > _LOG_EVERY:
                last = time.perf_counter()
                logger.info("Imputed %d of %d spot passes (%.0f s).", done, adata.n_obs * (1 + zeros), last - t0)
    logger.info("Imputed %d entries of %d spots in %.0f s (classical estimates %.0f s).", int(fill.sum()), adata.n_obs,
                time.perf_counter() - t_start, t_classical)
    record = {"layer": layer_added, "target": target if isinstance(target, str) else "array", "readout": readout,
              "n_samples": int(n_samples), "sampler": sampler, "seed": seed, "spread_scale": scale,
              "n_filled": int(fill.sum()), "stack": model.readout_["stack"] if stack is not None else None,
              "zero_dispersion": phi if zeros else None,
              "version": _version()}
    if inplace:
        adata.layers[layer_added] = mean
        if std is not None:
            adata.layers[f"{layer_added}_std"] = std
        adata.uns.setdefault(KEYS.UNS, {})["impute"] = record
        return None
    out = {"mean": mean, "genes": np.asarray(adata.var_names[cols])}
    if std is not None:
        out["std"] = std
    if samples is not None:
        out["samples"] = samples
    return out


def _rounds(x: np.ndarray, zeros: bool, seed: int):
    """``(fill, write)`` of each pass: the observed entries the batches must predict and the entries written.

    Missing entries are filled in the first pass. With ``zeros``, the zero counts are split at random into
    ``ZERO_ROUNDS`` groups; each pass predicts one group with every other entry, zeros included, visible.
    """
    from ._model import _ZERO_ROUNDS_STREAM, ZERO_ROUNDS

    missing = np.isnan(x)
    if not zeros:
        yield None, missing
        return
    zero = x == 0
    group = np.random.default_rng([seed, _ZERO_ROUNDS_STREAM]).integers(0, ZERO_ROUNDS, size=x.shape, dtype=np.int8)
    for g in range(ZERO_ROUNDS):
        this = zero & (group == g)
        yield sp.csr_matrix(this), (this | missing) if g == 0 else this


def _check_memory(n_obs: int, n_vars: int, n_arrays: int) -> None:
    """Refuse outputs that would not fit in the available memory, before allocating them."""
    need = 4.0 * n_obs * n_vars * n_arrays
    try:
        import psutil

        avail = float(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with scvi-tools' dependencies
        return
    if need > 0.8 * avail:
        raise MemoryError(
            f"The imputed layers need about {need / 2**30:.1f} GiB ({n_obs} spots x {n_vars} genes x {n_arrays} "
            f"float32 arrays), more than the {avail / 2**30:.1f} GiB available. Impute a gene subset "
            "(`impute(genes=..., inplace=False)` or select genes first with stmcdi.pp.select_genes), or draw no "
            "samples (n_samples=0)."
        )


def _version() -> str:
    from . import __version__

    return __version__
