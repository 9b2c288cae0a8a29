"""The benchmark harness: hold out, impute, score and tabulate."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from ._baselines import BASELINES
from ._masking import PROTOCOLS, hold_out
from ._metrics import score

logger = logging.getLogger(__name__)

_ID_COLUMNS = ["protocol", "ratio", "seed", "method"]


def _ratio_for(ratio: float | Mapping[str, float], protocol: str) -> float:
    if isinstance(ratio, Mapping):
        if protocol not in ratio:
            raise KeyError(
                f"`ratio` is a dict without an entry for protocol {protocol!r} (has {list(ratio)}); "
                "give a ratio for every protocol, or a single float."
            )
        return float(ratio[protocol])
    return float(ratio)


def evaluate(
    adata: AnnData,
    methods: Mapping[str, Callable[..., np.ndarray]] | None = None,
    *,
    protocols: Sequence[str] = ("entries",),
    ratio: float | Mapping[str, float] = 0.1,
    seeds: Sequence[int] = (0,),
    layer: str | None = None,
    min_entries: int = 10,
) -> pd.DataFrame:
    """Benchmark imputation methods on seeded hold-out splits.

    For each protocol and seed, :func:`~stmcdi.benchmark.hold_out` masks the counts, every method imputes the
    masked copy and :func:`~stmcdi.benchmark.score` scores it at the held-out entries; each call is timed.

    Parameters
    ----------
    adata
        Annotated data with raw counts (and ``obsm["spatial"]`` for spatial methods). Not modified.
    methods
        Mapping name -> ``method(adata_masked, *, layer, seed, target) -> np.ndarray`` returning the dense
        ``(n_obs, n_vars)`` imputation on the log-normalised scale of the masked data (see
        :data:`~stmcdi.benchmark.BASELINES`); ``target`` is ``"zeros"`` for the ``thin`` protocol (fill the
        visible zeros) and ``"missing"`` otherwise. Default: all baselines.
    protocols
        Hold-out protocols, see :func:`~stmcdi.benchmark.hold_out`.
    ratio
        Hold-out ratio, or a dict protocol -> ratio.
    seeds
        Seeds of the hold-out splits (also passed to the methods).
    layer
        Layer with the counts; ``None`` uses ``adata.X``.
    min_entries
        Minimum scored entries of a gene (spot) for the per-gene (per-spot) PCC.

    Returns
    -------
    One row per (protocol, ratio, seed, method) with columns ``protocol``, ``ratio``, ``seed``, ``method``,
    the keys of :func:`~stmcdi.benchmark.score` and ``seconds`` (wall time of the method call).

    Examples
    --------
    >>> import numpy as np
    >>> from anndata import AnnData
    >>> from stmcdi.benchmark import BASELINES
    >>> rng = np.random.default_rng(0)
    >>> adata = AnnData(rng.poisson(3.0, size=(60, 30)).astype(np.float32))
    >>> df = evaluate(adata, {"gene_mean": BASELINES["gene_mean"]}, seeds=(0, 1), min_entries=3)
    >>> df[["protocol", "seed", "method"]].values.tolist()
    [['entries', 0, 'gene_mean'], ['entries', 1, 'gene_mean']]
    """
    if methods is None:
        methods = BASELINES
    if not methods:
        raise ValueError("`methods` is empty; pass a dict name -> method, or None for all baselines.")
    for name, fn in methods.items():
        if not callable(fn):
            raise TypeError(f"methods[{name!r}] is not callable; expected method(adata_masked, *, layer, seed, target).")
    if isinstance(protocols, str):
        protocols = (protocols,)
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad:
        raise ValueError(f"Unknown hold-out protocol(s) {bad}; choose from {list(PROTOCOLS)}.")
    if isinstance(seeds, int | np.integer):
        seeds = (int(seeds),)

    rows = []
    for protocol in protocols:
        r = _ratio_for(ratio, protocol)
        for seed in seeds:
            held = hold_out(adata, protocol, r, seed=int(seed), layer=layer)
            logger.info("protocol=%s ratio=%g seed=%d: %d entries held out", protocol, r, seed, held.n_scored)
            for name, method in methods.items():
                t0 = time.perf_counter()
                # thin scores the visible zeros: every method is asked to fill zeros as well as NaN
                target = "zeros" if protocol == "thin" else "missing"
                pred = method(held.adata, layer=layer, seed=int(seed), target=target)
                seconds = time.perf_counter() - t0
                s = score(held, np.asarray(pred), min_entries=min_entries)
                logger.info("  %s: per-gene PCC %.4f, RMSE %.4f (%.2f s)", name, s["per_gene_pcc"], s["rmse"], seconds)
                rows.append(
                    {
                        "protocol": protocol,
                        "ratio": r,
                        "seed": int(seed),
                        "method": name,
                        **s,
                        "seconds": seconds,
                    }
                )
    return pd.DataFrame(rows)


def _fmt(mean: float, sd: float, n: int, digits: int) -> str:
    if not np.isfinite(mean):
        return "nan"
    if n < 2 or not np.isfinite(sd):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def summarize(
    df: pd.DataFrame,
    metrics: Sequence[str] = ("per_gene_pcc", "pcc", "rmse", "mae"),
    ceiling: float | None = None,
    *,
    digits: int = 3,
) -> pd.DataFrame:
    """Mean ± sd over seeds of each metric per protocol and method.

    Parameters
    ----------
    df
        The output of :func:`evaluate`.
    metrics
        Columns of ``df`` to summarise.
    ceiling
        Optional noise ceiling of the per-gene PCC (e.g. :func:`~stmcdi.benchmark.split_half_ceiling`); adds a
        column ``per_gene_pcc / ceiling``.
    digits
        Decimals shown.

    Returns
    -------
    One row per (protocol, ratio, method) with ``n_seeds`` and the formatted strings ``"0.512 ± 0.010"``
    (sample sd over seeds; the mean alone with a single seed). Rows keep the protocols' order and are sorted
    by mean per-gene PCC, descending, within a protocol.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"protocol": "entries", "ratio": 0.1, "seed": [0, 1, 0, 1],
    ...                    "method": ["a", "a", "b", "b"], "per_gene_pcc": [0.5, 0.52, 0.6, 0.6]})
    >>> summarize(df, metrics=("per_gene_pcc",))[["method", "per_gene_pcc"]].values.tolist()
    [['b', '0.600 ± 0.000'], ['a', '0.510 ± 0.014']]
    """
    missing = [c for c in ["protocol", "method", *metrics] if c not in df.columns]
    if missing:
        raise KeyError(f"Columns {missing} not in `df` (has {list(df.columns)}); pass the output of `evaluate`.")
    if ceiling is not None and "per_gene_pcc" not in df.columns:
        raise KeyError("`ceiling` needs a 'per_gene_pcc' column in `df`.")
    if ceiling is not None and not (np.isfinite(ceiling) and ceiling > 0):
        raise ValueError(f"`ceiling` must be a positive number, got {ceiling}.")
    keys = ["protocol", "ratio", "method"] if "ratio" in df.columns else ["protocol", "method"]
    data = df.copy()
    cols = list(metrics)
    if ceiling is not None:
        data["per_gene_pcc / ceiling"] = data["per_gene_pcc"] / ceiling
        cols.append("per_gene_pcc / ceiling")
    order = {p: i for i, p in enumerate(pd.unique(data["protocol"]))}
    out = []
    for key, grp in data.groupby(keys, sort=False):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        row["n_seeds"] = len(grp)
        for c in cols:
            v = grp[c].astype(float)
            row[c] = _fmt(v.mean(), v.std(ddof=1), len(v), digits)
        row["_order"] = order[row["protocol"]]
        row["_sort"] = grp["per_gene_pcc"].mean() if "per_gene_pcc" in grp else np.nan
        out.append(row)
    res = pd.DataFrame(out).sort_values(["_order", "_sort"], ascending=[True, False], na_position="last", kind="stable")
    return res.drop(columns=["_order", "_sort"]).reset_index(drop=True)


def to_markdown(summary: pd.DataFrame) -> str:
    """Render a table as a plain Markdown pipe table (no ``tabulate`` needed).

    Parameters
    ----------
    summary
        Any DataFrame, typically the output of :func:`summarize`; its index is not shown.

    Returns
    -------
    The Markdown table, one line per row, with a header and a ``---`` separator line.

    Examples
    --------
    >>> import pandas as pd
    >>> print(to_markdown(pd.DataFrame({"method": ["a"], "pcc": ["0.5"]})))
    | method | pcc |
    | --- | --- |
    | a | 0.5 |
    """

    def cell(v) -> str:
        if isinstance(v, float | np.floating):
            v = f"{v:.4g}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(c) for c in summary.columns) + " |",
        "| " + " | ".join("---" for _ in summary.columns) + " |",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in summary.itertuples(index=False, name=None)]
    return "\n".join(lines)
