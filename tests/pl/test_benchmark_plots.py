from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from matplotlib.container import ErrorbarContainer

import stmcdi
from stmcdi.benchmark import BASELINES, hold_out
from stmcdi.datasets import synthetic


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _table(seeds=(0, 1, 2)) -> pd.DataFrame:
    """A hand-made ``evaluate``-like table with known means (protocol offsets, method offsets, seed noise)."""
    rows = []
    offsets = {"a": 0.1, "b": 0.3, "stmcdi": 0.5, "c": 0.2}
    for protocol, base in (("entries", 0.0), ("spots", 0.05)):
        for seed in seeds:
            for method, off in offsets.items():
                value = base + off + 0.01 * seed
                rows.append(
                    {
                        "protocol": protocol,
                        "ratio": 0.1,
                        "seed": seed,
                        "method": method,
                        "per_gene_pcc": np.nan if method == "c" and protocol == "spots" else value,
                        "rmse": 1.0 - value,
                        "seconds": 0.1,
                    }
                )
    return pd.DataFrame(rows)


def _bar_colors(ax) -> dict[str, tuple]:
    """Face colour per method label of the bar containers."""
    return {c.get_label(): tuple(c.patches[0].get_facecolor()) for c in ax.containers if hasattr(c, "patches")}


def _method_order(ax) -> list[str]:
    return [c.get_label() for c in ax.containers if hasattr(c, "patches")]


# ---------------------------------------------------------------- benchmark


def test_bar_count_minus_nan():
    df = _table()
    fig = stmcdi.pl.benchmark(df, show=False, return_fig=True)
    ax = fig.axes[0]
    # 2 protocols x 4 methods, minus the NaN (spots, c)
    assert len(ax.patches) == 2 * 4 - 1
    assert [t.get_text() for t in ax.get_xticklabels()] == ["entries", "spots"]
    assert any(t.get_text() == "n/a" for t in ax.texts)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["stmcdi", "b", "c", "a"]  # c: 0.2 on entries only, above a


def test_bar_heights_are_means_over_seeds():
    df = _table()
    fig = stmcdi.pl.benchmark(df, methods=["a", "b"], protocols=["spots"], show=False, return_fig=True)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, [0.05 + 0.1 + 0.01, 0.05 + 0.3 + 0.01])
    assert _method_order(ax) == ["a", "b"]  # the given order, not the best-first one


def test_error_bars_with_several_seeds_only():
    fig = stmcdi.pl.benchmark(_table(), show=False, return_fig=True)
    ax = fig.axes[0]
    errs = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert errs
    # the sd over seeds 0, 1, 2 of value + 0.01 * seed
    segments = np.concatenate([c.lines[2][0].get_segments() for c in errs])
    half = (segments[:, 1, 1] - segments[:, 0, 1]) / 2
    np.testing.assert_allclose(half, np.std([0.0, 0.01, 0.02], ddof=1))
    assert "mean ± sd over 3 seeds" in ax.get_ylabel()

    fig1 = stmcdi.pl.benchmark(_table(seeds=(0,)), show=False, return_fig=True)
    ax1 = fig1.axes[0]
    assert not [c for c in ax1.containers if isinstance(c, ErrorbarContainer)]
    assert "single seed" in ax1.get_ylabel()
    assert "sd" not in ax1.get_ylabel().splitlines()[1]


def test_highlight_colour_is_distinct():
    fig = stmcdi.pl.benchmark(_table(), show=False, return_fig=True)
    colors = _bar_colors(fig.axes[0])
    assert colors["stmcdi"] == to_rgba("tab:red")
    others = [colors[m] for m in ("a", "b", "c")]
    assert all(c != colors["stmcdi"] for c in others)
    assert len(set(others)) == 3
    # the same method keeps its colour on another metric (whatever the bar order)
    colors_rmse = _bar_colors(stmcdi.pl.benchmark(_table(), metric="rmse", show=False, return_fig=True).axes[0])
    assert colors_rmse == colors
    # no highlight: no red bar
    plain = _bar_colors(stmcdi.pl.benchmark(_table(), highlight=None, show=False, return_fig=True).axes[0])
    assert plain["stmcdi"] != to_rgba("tab:red")


def test_ceiling_line():
    fig = stmcdi.pl.benchmark(_table(), ceiling=0.72, show=False, return_fig=True)
    ax = fig.axes[0]
    lines = [ln for ln in ax.get_lines() if ln.get_label() == "split-half ceiling"]
    assert len(lines) == 1
    assert lines[0].get_linestyle() == "--"
    np.testing.assert_allclose(lines[0].get_ydata(), [0.72, 0.72])
    assert "split-half ceiling" in [t.get_text() for t in ax.get_legend().get_texts()]
    no = stmcdi.pl.benchmark(_table(), show=False, return_fig=True).axes[0]
    assert not [ln for ln in no.get_lines() if ln.get_label() == "split-half ceiling"]


def test_lower_is_better_order_for_rmse():
    fig = stmcdi.pl.benchmark(_table(), metric="rmse", show=False, return_fig=True)
    ax = fig.axes[0]
    assert _method_order(ax) == ["stmcdi", "b", "c", "a"]  # smallest RMSE first
    assert ax.get_ylabel().startswith("RMSE")
    fig = stmcdi.pl.benchmark(_table(), metric="per_gene_pcc", show=False, return_fig=True)
    assert fig.axes[0].get_ylabel().startswith("per-gene PCC (median over genes)")
    # an unknown metric falls back to its column name
    fig = stmcdi.pl.benchmark(_table().assign(my_score=1.0), metric="my_score", show=False, return_fig=True)
    assert fig.axes[0].get_ylabel().startswith("my_score")


def test_several_ratios_get_their_own_group():
    df = pd.concat([_table(), _table().query("protocol == 'entries'").assign(ratio=0.3)])
    fig = stmcdi.pl.benchmark(df, show=False, return_fig=True)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["entries (0.1)", "entries (0.3)", "spots"]
    assert len(fig.axes[0].patches) == 3 * 4 - 1


def test_draws_into_given_axes_and_saves(tmp_path):
    fig, (left, right) = plt.subplots(1, 2)
    out = tmp_path / "bars.png"
    result = stmcdi.pl.benchmark(_table(), ax=right, save=out, show=False)
    assert result is None
    assert not left.patches and len(right.patches) == 7
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_from_evaluate_with_nan_gene_mean():
    adata = synthetic(n_spots=60, n_genes=15, seed=1)
    methods = {k: BASELINES[k] for k in ("gene_mean", "spot_mean")}
    df = stmcdi.benchmark.evaluate(adata, methods, seeds=(0,), min_entries=3)
    assert df.loc[df.method == "gene_mean", "per_gene_pcc"].isna().all()
    fig = stmcdi.pl.benchmark(df, show=False, return_fig=True)
    assert len(fig.axes[0].patches) == 1


def test_benchmark_bad_input():
    df = _table()
    with pytest.raises(KeyError, match="choose one of") as err:
        stmcdi.pl.benchmark(df, metric="pcc", show=False)
    assert "per_gene_pcc" in str(err.value)
    with pytest.raises(KeyError, match="metric column"):
        stmcdi.pl.benchmark(df, metric="method", show=False)
    with pytest.raises(KeyError, match="evaluate"):
        stmcdi.pl.benchmark(df.drop(columns="protocol"), show=False)
    with pytest.raises(TypeError, match="DataFrame"):
        stmcdi.pl.benchmark(df.to_dict(), show=False)
    with pytest.raises(KeyError, match="zzz"):
        stmcdi.pl.benchmark(df, methods=["a", "zzz"], show=False)
    with pytest.raises(KeyError, match="thin"):
        stmcdi.pl.benchmark(df, protocols=["thin"], show=False)
    with pytest.raises(ValueError, match="finite"):
        stmcdi.pl.benchmark(df, ceiling=float("nan"), show=False)
    with pytest.raises(TypeError, match="not numeric"):
        stmcdi.pl.benchmark(df.assign(note="x"), metric="note", show=False)


# ---------------------------------------------------------------- heatmap


@pytest.fixture(scope="module")
def split():
    adata = synthetic(n_spots=90, n_genes=25, seed=3)
    held = hold_out(adata, "entries", 0.2, seed=0)
    rows, cols = held.mask.nonzero()
    oracle = np.zeros(held.mask.shape)
    oracle[rows, cols] = held.truth
    preds = {
        "gene_mean": BASELINES["gene_mean"](held.adata),
        "spatial_knn": BASELINES["spatial_knn"](held.adata),
        "oracle": oracle,
    }
    return held, preds


def _heat_panels(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def _drawn(ax) -> np.ndarray:
    return np.ma.filled(np.ma.asarray(ax.images[0].get_array(), dtype=float), np.nan)


def test_heatmap_panels_and_labels(split):
    held, preds = split
    fig = stmcdi.pl.heatmap(held, preds, n_genes=12, show=False, return_fig=True)
    panels = _heat_panels(fig)
    assert len(panels) == 1 + len(preds)
    assert [ax.get_title() for ax in panels] == ["held-out truth", *preds]
    assert all(ax.get_xlabel() == "held-out spots" for ax in panels)
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colorbars) == 1
    assert colorbars[0].get_ylabel() == "log-normalised expression"
    genes = [t.get_text() for t in panels[0].get_yticklabels()]
    assert len(genes) == 12 and set(genes) <= set(held.adata.var_names)
    # the chosen genes are those with the most held-out entries
    counts = np.bincount(held.mask.nonzero()[1], minlength=held.mask.shape[1])
    chosen = [list(held.adata.var_names).index(g) for g in genes]
    assert counts[chosen].min() >= np.sort(counts)[::-1][11]


def test_heatmap_shared_scale_order_and_nan(split):
    held, preds = split
    fig = stmcdi.pl.heatmap(held, preds, n_genes=10, show=False, return_fig=True)
    panels = _heat_panels(fig)
    clims = {ax.images[0].get_clim() for ax in panels}
    assert len(clims) == 1
    drawn = [_drawn(ax) for ax in panels]
    assert all(d.shape == drawn[0].shape for d in drawn)
    # same NaN pattern everywhere, and the oracle panel (the truth itself) equals the truth panel cell by cell
    nan = np.isnan(drawn[0])
    assert nan.any() and not nan.all()
    assert all((np.isnan(d) == nan).all() for d in drawn)
    np.testing.assert_allclose(drawn[-1], drawn[0], equal_nan=True)
    ticks = [[t.get_text() for t in panels[0].get_yticklabels()]]
    # one shared y axis: the gene labels of the first panel hold for every panel
    assert all(panels[0].get_shared_y_axes().joined(panels[0], ax) for ax in panels)
    for ax in panels:
        fmt = ax.yaxis.get_major_formatter()
        assert [fmt(t, i) for i, t in enumerate(ax.get_yticks())] == ticks[0]
    # the colour limits span all panels' values
    lo, hi = clims.pop()
    finite = np.concatenate([d[np.isfinite(d)] for d in drawn])
    assert lo == pytest.approx(finite.min()) and hi == pytest.approx(finite.max())
    # the drawn cells are exactly the held-out entries of the shown genes
    gene_idx = [list(held.adata.var_names).index(g) for g in ticks[0]]
    n_held = held.mask[:, gene_idx].nnz
    assert int((~nan).sum()) == n_held


def test_heatmap_n_spots_and_no_cluster(split):
    held, preds = split
    fig = stmcdi.pl.heatmap(held, preds, n_genes=8, n_spots=15, cluster=False, show=False, return_fig=True)
    panels = _heat_panels(fig)
    assert _drawn(panels[0]).shape == (8, 15)
    genes = [t.get_text() for t in panels[0].get_yticklabels()]
    counts = np.bincount(held.mask.nonzero()[1], minlength=held.mask.shape[1])
    expected = np.argsort(-counts, kind="stable")[:8]
    assert genes == [held.adata.var_names[i] for i in expected]


def test_heatmap_cluster_changes_only_order(split):
    held, preds = split
    a = _drawn(_heat_panels(stmcdi.pl.heatmap(held, preds, n_genes=10, show=False, return_fig=True))[0])
    b = _drawn(_heat_panels(stmcdi.pl.heatmap(held, preds, n_genes=10, cluster=False, show=False, return_fig=True))[0])
    assert a.shape == b.shape
    np.testing.assert_allclose(np.sort(a[np.isfinite(a)]), np.sort(b[np.isfinite(b)]))


def test_heatmap_save(split, tmp_path):
    held, preds = split
    out = tmp_path / "heat.png"
    assert stmcdi.pl.heatmap(held, {"gene_mean": preds["gene_mean"]}, save=out, show=False) is None
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_heatmap_bad_input(split):
    held, preds = split
    with pytest.raises(ValueError, match=r"\(90, 24\).*\(90, 25\)"):
        stmcdi.pl.heatmap(held, {"bad": preds["gene_mean"][:, :24]}, show=False)
    with pytest.raises(ValueError, match="non-empty"):
        stmcdi.pl.heatmap(held, {}, show=False)
    with pytest.raises(ValueError, match="n_genes"):
        stmcdi.pl.heatmap(held, preds, n_genes=0, show=False)
    with pytest.raises(ValueError, match="n_spots"):
        stmcdi.pl.heatmap(held, preds, n_spots=-1, show=False)
    with pytest.raises(TypeError, match="hold_out"):
        stmcdi.pl.heatmap(held.adata, preds, show=False)
