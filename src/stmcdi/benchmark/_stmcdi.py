"""STMCDI as a benchmark method (same signature as the baselines)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from anndata import AnnData

from .._constants import SPREAD_SAMPLES


def stmcdi_method(
    model_kwargs: dict | None = None,
    train_kwargs: dict | None = None,
    impute_kwargs: dict | None = None,
    *,
    samples: bool = False,
) -> Callable[..., np.ndarray]:
    """Wrap :class:`~stmcdi.STMCDI` as a benchmark method: build the graph, train, impute.

    Parameters
    ----------
    model_kwargs
        Arguments of :class:`~stmcdi.STMCDI`.
    train_kwargs
        Arguments of :meth:`~stmcdi.STMCDI.train` (default: the model's defaults, no progress bar).
    impute_kwargs
        Arguments of :meth:`~stmcdi.STMCDI.impute` (its ``seed`` defaults to the split's seed).
    samples
        Draw 5 samples per spot (unless ``impute_kwargs`` sets ``n_samples``) and return them too, so that
        :func:`~stmcdi.benchmark.evaluate` scores CRPS and interval coverage.

    Returns
    -------
    ``method(adata_masked, *, layer=None, seed=0, target="missing", nonzero=False)``: a dict with the default
    imputation (log-normalised) under ``"mean"``, the network's estimate alone under ``"variants"`` (scored as
    ``"stmcdi:network"``) and, with ``samples=True``, the ``(n_samples, n_obs, n_vars)`` draws under
    ``"samples"``. ``nonzero=True`` (the entries to fill are known to be nonzero) trains with
    ``mask_strategy="nonzero"``. ``scvi.settings.seed`` is set to ``seed`` before training, so a split and its
    model share a seed. The masked AnnData is copied; the caller's object is not modified.

    Examples
    --------
    >>> import stmcdi
    >>> adata = stmcdi.datasets.synthetic(n_spots=80, n_genes=16)
    >>> method = stmcdi_method({"n_channels": 8}, {"max_epochs": 2}, {"n_samples": 2})
    >>> df = stmcdi.benchmark.evaluate(adata, {"stmcdi": method}, min_entries=3)  # doctest: +SKIP
    """
    model_kwargs = dict(model_kwargs or {})
    train_kwargs = {"enable_progress_bar": False, **(train_kwargs or {})}
    impute_kwargs = dict(impute_kwargs or {})
    if samples:
        impute_kwargs.setdefault("n_samples", SPREAD_SAMPLES)

    def method(adata: AnnData, *, layer: str | None = None, seed: int = 0, target: str = "missing",
               nonzero: bool = False) -> dict:
        import scvi

        from .._model import STMCDI

        work = adata.copy()
        scvi.settings.seed = int(seed)
        STMCDI.setup_anndata(work, layer=layer)
        kwargs = dict(model_kwargs)
        if nonzero:
            kwargs.setdefault("mask_strategy", "nonzero")
        model = STMCDI(work, **kwargs)
        model.train(**train_kwargs)
        kwargs = {"seed": int(seed), **impute_kwargs}  # an explicit impute seed wins over the split's
        out = model.impute(target=target, inplace=False, return_samples=samples, **kwargs)
        n_net = 0 if model.module.objective != "diffusion" else kwargs.get("n_samples", 10)
        network = model.impute(target=target, inplace=False, readout="network", n_samples=n_net, seed=kwargs["seed"])
        method.last_model = model
        result = {"mean": out["mean"], "variants": {"network": network["mean"]}}
        if samples:
            result["samples"] = out["samples"]
        return result

    method.last_model = None
    return method
