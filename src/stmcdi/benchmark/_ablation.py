"""The paper's ablations and the masked-autoencoder control, each one call (and one CLI command)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pandas as pd
from anndata import AnnData

from ._evaluate import evaluate
from ._stmcdi import stmcdi_method

#: Study name -> variant name -> :class:`~stmcdi.STMCDI` arguments. The first variant of each study is
#: the model's default, the reference of the paired comparison.
#:
#: - ``mask-strategy``: which observed entries become training targets: random entries of each spot (default),
#:   all entries of random spots, or random genes in every spot of the batch.
#: - ``mask-phase``: the paper's two masks. The input mask hides the targets from the encoder (default on);
#:   the representation re-mask zeroes part (here 30%) of the read-out the denoiser sees (default off).
#:   ``"no mask"`` turns both off: the encoder sees the targets in training.
#: - ``encoder``: GCN (default) / GAT / GIN / MLP (no messages between spots) / none (no spatial input).
#: - ``mask-ratio``: fraction of each spot's observed entries hidden as targets in training (the paper's
#:   Fig. 3; default a ratio drawn uniformly from 0.1-0.9 per spot).
#: - ``objective``: the default hybrid (one-pass estimate and diffusion spread from one network) against
#:   diffusion alone (the paper) and the masked-autoencoder control (same network, one pass, no noise).
#: - ``conditions``: what conditions a spot besides its own observed entries and its spatial neighbourhood:
#:   the expression profile of its 20 nearest spots in expression space and the three summaries of its
#:   visible entries (both by default), each alone, or neither (the paper's conditions).
ABLATIONS: dict[str, dict[str, dict]] = {
    "mask-strategy": {
        "entries": {"mask_strategy": "entries"},
        "spots": {"mask_strategy": "spots"},
        "genes": {"mask_strategy": "genes"},
    },
    "mask-phase": {
        "input mask only": {"input_mask": True, "representation_mask_ratio": 0.0},
        "both masks": {"input_mask": True, "representation_mask_ratio": 0.3},
        "re-mask only": {"input_mask": False, "representation_mask_ratio": 0.3},
        "no mask": {"input_mask": False, "representation_mask_ratio": 0.0},
    },
    "encoder": {name: {"encoder": name} for name in ("gcn", "gat", "gin", "mlp", "none")},
    "mask-ratio": {
        "0.1-0.9": {"mask_ratio": (0.1, 0.9)},
        **{f"{r:.1f}": {"mask_ratio": r} for r in (0.1, 0.2, 0.4, 0.6, 0.8)},
    },
    "objective": {
        "hybrid": {"objective": "hybrid"},
        "diffusion": {"objective": "diffusion"},
        "mae": {"objective": "mae"},
    },
    "conditions": {
        "expression + spot summaries": {"n_expression_neighbors": 20, "spot_features": True},
        "expression neighbours only": {"n_expression_neighbors": 20, "spot_features": False},
        "spot summaries only": {"n_expression_neighbors": 0, "spot_features": True},
        "spatial only (paper)": {"n_expression_neighbors": 0, "spot_features": False},
    },
}


def ablation(
    adata: AnnData,
    study: str,
    *,
    variants: Sequence[str] | None = None,
    protocols: str | Sequence[str | tuple[str, float]] = ("entries",),
    ratio: float | Mapping[str, float] = 0.1,
    seeds: Sequence[int] = (0,),
    layer: str | None = None,
    model_kwargs: dict | None = None,
    train_kwargs: dict | None = None,
    impute_kwargs: dict | None = None,
    min_entries: int = 10,
    on_result: Callable[[dict], None] | None = None,
    panel: dict | None = None,
) -> pd.DataFrame:
    """Run one ablation study of :data:`~stmcdi.benchmark.ABLATIONS`: STMCDI once per variant on the same hold-out splits.

    Parameters
    ----------
    adata
        Annotated data with raw counts and ``obsm["spatial"]``. Not modified.
    study
        A key of :data:`~stmcdi.benchmark.ABLATIONS`: ``"mask-strategy"``, ``"mask-phase"``, ``"encoder"``, ``"mask-ratio"``, ``"conditions"`` or
        ``"objective"``.
    variants
        Subset of the study's variants (default: all).
    protocols, ratio, seeds, layer, min_entries, on_result, panel
        As in :func:`~stmcdi.benchmark.evaluate`.
    model_kwargs
        :class:`~stmcdi.STMCDI` arguments shared by every variant (a variant's own arguments win).
    train_kwargs, impute_kwargs
        As in :func:`~stmcdi.benchmark.stmcdi_method`.

    Returns
    -------
    The :func:`~stmcdi.benchmark.evaluate` table with methods named ``f"{study}={variant}"``, and CRPS and
    interval coverage from the samples.

    Examples
    --------
    >>> import stmcdi
    >>> adata = stmcdi.datasets.synthetic(n_spots=80, n_genes=16)
    >>> df = ablation(adata, "objective", model_kwargs={"n_channels": 8},  # doctest: +SKIP
    ...               train_kwargs={"max_epochs": 2}, impute_kwargs={"n_samples": 4}, min_entries=3)
    >>> sorted(ABLATIONS)
    ['conditions', 'encoder', 'mask-phase', 'mask-ratio', 'mask-strategy', 'objective']
    """
    if study not in ABLATIONS:
        raise ValueError(f"Unknown ablation study {study!r}; choose from {sorted(ABLATIONS)}.")
    table = ABLATIONS[study]
    names = list(table) if variants is None else list(variants)
    unknown = [v for v in names if v not in table]
    if unknown:
        raise ValueError(f"Unknown variant(s) {unknown} of study {study!r}; choose from {list(table)}.")
    methods = {
        f"{study}={v}": stmcdi_method({**(model_kwargs or {}), **table[v]}, train_kwargs, impute_kwargs, samples=True)
        for v in names
    }
    return evaluate(adata, methods, protocols=protocols, ratio=ratio, seeds=seeds, layer=layer,
                    min_entries=min_entries, on_result=on_result, panel=panel)
