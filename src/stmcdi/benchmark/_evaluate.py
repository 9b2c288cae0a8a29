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
from ._metrics import crps_ensemble, interval_coverage, score

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


def parse_protocols(
    protocols: str | Sequence[str | tuple[str, float]], ratio: float | Mapping[str, float] = 0.1
) -> list[tuple[str, float]]:
    """Resolve protocol specifications to ``(protocol, ratio)`` pairs.

    Parameters
    ----------
    protocols
        Names (``"entries"``), ``"name:ratio"`` strings (``"entries:0.6"``) or ``(name, ratio)`` pairs; a single
        string is one protocol.
    ratio
        Ratio of the protocols given by name alone: a float, or a dict protocol -> ratio.

    Returns
    -------
    The ``(protocol, ratio)`` pairs in the order given.

    Examples
    --------
    >>> parse_protocols(["entries", "entries:0.6", ("thin", 0.5)], ratio=0.1)
    [('entries', 0.1), ('entries', 0.6), ('thin', 0.5)]
    """
    if isinstance(protocols, str):
        protocols = (protocols,)
    out = []
    for spec in protocols:
        if isinstance(spec, tuple):
            name, r = spec
        elif ":" in spec:
            name, _, value = spec.partition(":")
            try:
                r = float(value)
            except ValueError:
                raise ValueError(f"Protocol {spec!r}: the part after ':' must be a ratio such as 'entries:0.6'.") from None
        else:
            name, r = spec, None
        if name not in PROTOCOLS:
            raise ValueError(f"Unknown hold-out protocol(s) {[name]}; choose from {list(PROTOCOLS)}.")
        out.append((name, _ratio_for(ratio, name) if r is None else float(r)))
    if not out:
        raise ValueError("`protocols` is empty; give at least one hold-out protocol.")
    return out


def _unpack(pred) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """A method's output: an array, or a mapping with ``"mean"`` and optionally ``"samples"`` and ``"variants"``."""
    if isinstance(pred, Mapping):
        if "mean" not in pred:
            raise KeyError(f"A method returned a dict without 'mean' (keys {list(pred)}).")
        samples = pred.get("samples")
        return (np.asarray(pred["mean"]), None if samples is None else np.asarray(samples),
                dict(pred.get("variants") or {}))
    return np.asarray(pred), None, {}


def evaluate(
    adata: AnnData,
    methods: Mapping[str, Callable[..., np.ndarray]] | None = None,
    *,
    protocols: str | Sequence[str | tuple[str, float]] = ("entries",),
    ratio: float | Mapping[str, float] = 0.1,
    seeds: Sequence[int] = (0,),
    layer: str | None = None,
    min_entries: int = 10,
    levels: Sequence[float] = (0.5, 0.9),
    on_result: Callable[[dict], None] | None = None,
    panel: dict | None = None,
) -> pd.DataFrame:
    """Benchmark imputation methods on seeded hold-out splits.

    For each protocol and seed, :func:`~stmcdi.benchmark.hold_out` masks the counts, every method imputes the
    masked copy and :func:`~stmcdi.benchmark.score` scores it at the held-out entries; each call is timed. A
    method that returns samples is also scored as a distribution: CRPS and the coverage of central intervals.

    Parameters
    ----------
    adata
        Annotated data with raw counts (and ``obsm["spatial"]`` for spatial methods). Not modified.
    methods
        Mapping name -> ``method(adata_masked, *, layer, seed, target, nonzero)`` returning the dense
        ``(n_obs, n_vars)`` imputation on the log-normalised scale of the masked data (see
        :data:`~stmcdi.benchmark.BASELINES`), or a dict with that array under ``"mean"``, optionally
        ``(n_samples, n_obs, n_vars)`` draws under ``"samples"`` and further estimates of the same fit under
        ``"variants"`` (name -> array, scored as ``f"{method}:{name}"``). Every method is told the same things:
        ``target="zeros"`` for ``thin`` (the method sees the visible matrix, zeros included, and is scored by its
        value at the visible zeros), ``"missing"`` otherwise; ``nonzero=True`` for ``nonzero`` (the held-out
        entries are nonzero counts), ``False`` otherwise. Default: all baselines.
    protocols
        Hold-out protocols, see :func:`~stmcdi.benchmark.hold_out`: names, or ``"name:ratio"`` strings /
        ``(name, ratio)`` pairs to run one protocol at several ratios (:func:`parse_protocols`).
    ratio
        Hold-out ratio of the protocols given by name alone, or a dict protocol -> ratio.
    seeds
        Seeds of the hold-out splits (also passed to the methods).
    layer
        Layer with the counts; ``None`` uses ``adata.X``.
    min_entries
        Minimum scored entries of a gene (spot) for the per-gene (per-spot) PCC.
    levels
        Nominal levels of the central intervals whose coverage is reported for sampling methods.
    on_result
        Called with each result row (a dict) as soon as it is scored, e.g. to save partial results of a long
        run.
    panel
        Arguments of :func:`stmcdi.pp.select_genes` to choose the gene panel of each split on its masked
        counts, after the hold-out (``{"n_top_genes": 1000, "flavor": "seurat_v3"}``; see
        :func:`~stmcdi.benchmark.hold_out`): preprocessing fitted on observed entries only. ``None`` scores
        every gene of ``adata`` (choose the panel yourself first, knowing that a panel chosen on all counts
        has seen the held-out ones).

    Returns
    -------
    One row per (protocol, ratio, seed, method) with columns ``protocol``, ``ratio``, ``seed``, ``method``,
    the keys of :func:`~stmcdi.benchmark.score`, ``crps`` and ``coverage_50``, ``coverage_90``, ... (NaN for
    point predictions; see :func:`~stmcdi.benchmark.crps_ensemble` and
    :func:`~stmcdi.benchmark.interval_coverage`) and ``seconds`` (wall time of the method call).

    Examples
    --------
    >>> import numpy as np
    >>> from anndata import AnnData
    >>> from stmcdi.benchmark import BASELINES
    >>> rng = np.random.default_rng(0)
    >>> adata = AnnData(rng.poisson(3.0, size=(60, 30)).astype(np.float32))
    >>> df = evaluate(adata, {"gene_mean": BASELINES["gene_mean"]}, protocols=["entries", "entries:0.5"],
    ...               seeds=(0, 1), min_entries=3)
    >>> df[["protocol", "ratio", "seed"]].values.tolist()
    [['entries', 0.1, 0], ['entries', 0.1, 1], ['entries', 0.5, 0], ['entries', 0.5, 1]]
    """
    if methods is None:
        methods = BASELINES
    if not methods:
        raise ValueError("`methods` is empty; pass a dict name -> method, or None for all baselines.")
    for name, fn in methods.items():
        if not callable(fn):
            raise TypeError(f"methods[{name!r}] is not callable; expected method(adata_masked, *, layer, seed, target).")
    pairs = parse_protocols(protocols, ratio)
    if isinstance(seeds, int | np.integer):
        seeds = (int(seeds),)

    rows = []
    for protocol, r in pairs:
        for seed in seeds:
            held = hold_out(adata, protocol, r, seed=int(seed), layer=layer, panel=panel)
            logger.info("protocol=%s ratio=%g seed=%d: %d entries held out in %d genes", protocol, r, seed,
                        held.n_scored, held.adata.n_vars)
            rr, cc = held.mask.nonzero()
            told = {"target": "zeros" if protocol == "thin" else "missing", "nonzero": protocol == "nonzero"}
            for name, method in methods.items():
                t0 = time.perf_counter()
                pred, samples, variants = _unpack(method(held.adata, layer=layer, seed=int(seed), **told))
                seconds = time.perf_counter() - t0
                for label, values, draws_all in [(name, pred, samples),
                                                 *((f"{name}:{k}", np.asarray(v), None) for k, v in variants.items())]:
                    s = score(held, values, min_entries=min_entries)
                    prob = {"crps": np.nan, **{f"coverage_{round(lv * 100)}": np.nan for lv in levels}}
                    if draws_all is not None:
                        draws = draws_all[:, rr, cc]
                        prob["crps"] = crps_ensemble(held.truth, draws)
                        for lv in levels:
                            prob[f"coverage_{round(lv * 100)}"] = interval_coverage(held.truth, draws, level=lv)
                    logger.info("  %s: per-gene PCC %.4f, RMSE %.4f (%.2f s)", label, s["per_gene_pcc"], s["rmse"],
                                seconds)
                    row = {"protocol": protocol, "ratio": r, "seed": int(seed), "method": label, **s, **prob,
                           "seconds": seconds}
                    rows.append(row)
                    if on_result is not None:
                        on_result(row)
    return pd.DataFrame(rows)


def compare(
    df: pd.DataFrame,
    reference: str = "stmcdi",
    metrics: Sequence[str] = ("per_gene_pcc", "rmse"),
) -> pd.DataFrame:
    """Paired comparison of one method against every other, across the seeds of each protocol.

    Each seed is one split shared by all methods, so the comparison is paired: for every protocol, ratio,
    other method and metric it gives the mean and sd over seeds of ``reference - other``, how many seeds the
    reference was better on, and the two-sided paired t-test p-value (``scipy.stats.ttest_rel``; NaN with
    fewer than 2 seeds or no variation).

    Parameters
    ----------
    df
        The output of :func:`evaluate`, with ``reference`` among its methods.
    reference
        The method compared against the others.
    metrics
        Columns to compare. For ``rmse``, ``mae``, ``crps`` and their ``_z`` forms lower is better; for the
        others higher is better.

    Returns
    -------
    One row per (protocol, ratio, method, metric) with ``n_seeds``, ``diff_mean``, ``diff_sd``, ``wins``
    (seeds where the reference is better), ``better`` (``"higher"`` or ``"lower"``) and ``p_value``.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"protocol": "entries", "ratio": 0.1, "seed": [0, 1, 2] * 2,
    ...                    "method": ["a"] * 3 + ["b"] * 3,
    ...                    "per_gene_pcc": [0.50, 0.52, 0.51, 0.40, 0.45, 0.41]})
    >>> out = compare(df, reference="a", metrics=("per_gene_pcc",))
    >>> out[["method", "n_seeds", "wins"]].values.tolist(), round(float(out["diff_mean"].iloc[0]), 3)
    ([['b', 3, 3]], 0.09)
    """
    from scipy.stats import ttest_rel

    missing = [c for c in ["protocol", "seed", "method", *metrics] if c not in df.columns]
    if missing:
        raise KeyError(f"Columns {missing} not in `df` (has {list(df.columns)}); pass the output of `evaluate`.")
    if reference not in set(df["method"]):
        raise ValueError(f"Reference method {reference!r} is not in `df` (methods {sorted(set(df['method']))}).")
    keys = ["protocol", "ratio"] if "ratio" in df.columns else ["protocol"]
    rows = []
    for key, grp in df.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        ref = grp[grp["method"] == reference].set_index("seed")
        for other in pd.unique(grp["method"]):
            if other == reference:
                continue
            oth = grp[grp["method"] == other].set_index("seed")
            seeds = ref.index.intersection(oth.index)
            for m in metrics:
                a, b = ref.loc[seeds, m].astype(float).to_numpy(), oth.loc[seeds, m].astype(float).to_numpy()
                ok = np.isfinite(a) & np.isfinite(b)
                a, b = a[ok], b[ok]
                d = a - b
                lower = m.split("_z")[0] in _LOWER_IS_BETTER
                wins = int(np.sum(d < 0)) if lower else int(np.sum(d > 0))
                p = np.nan
                if len(d) >= 2 and np.std(d) > 0:
                    p = float(ttest_rel(a, b).pvalue)
                rows.append({
                    **dict(zip(keys, key)), "method": other, "metric": m, "n_seeds": len(d),
                    "diff_mean": float(d.mean()) if len(d) else np.nan,
                    "diff_sd": float(d.std(ddof=1)) if len(d) >= 2 else np.nan,
                    "wins": wins, "better": "lower" if lower else "higher", "p_value": p,
                })
    return pd.DataFrame(rows)


_LOWER_IS_BETTER = ("rmse", "mae", "crps")


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
