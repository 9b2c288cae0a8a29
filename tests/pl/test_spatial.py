from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

import stmcdi
from stmcdi.datasets import synthetic

LAYERS = ("lognorm", "imputed", "imputed_std")


@pytest.fixture(scope="module")
def adata():
    a = synthetic(n_spots=120, n_genes=10, seed=2)
    x = np.log1p(a.X.toarray() / a.X.toarray().sum(1, keepdims=True) * 1e4).astype(np.float32)
    miss = np.random.default_rng(0).random(x.shape) < 0.2
    a.layers["imputed"] = x.copy()
    std = np.zeros_like(x)
    std[miss] = 0.3
    a.layers["imputed_std"] = std
    x[miss] = np.nan
    a.layers["lognorm"] = x
    return a


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def test_grid_and_titles(adata):
    genes = ["gene0", "gene3"]
    fig = stmcdi.pl.imputation(adata, genes, show=False, return_fig=True)
    panels = _panels(fig)
    assert len(panels) == len(genes) * len(LAYERS)
    titles = [ax.get_title() for ax in panels]
    assert titles[0] == "gene0 — observed (lognorm)"
    assert titles[1] == "gene0 — imputed"
    assert titles[2] == "gene0 — spread (sd)"
    assert titles[3].startswith("gene3")
    for ax in panels:
        assert ax.yaxis_inverted()
        assert ax.get_xticks().size == 0 and ax.get_yticks().size == 0
        assert ax.get_aspect() == 1.0
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colorbars) == len(panels)
    labels = {ax.get_ylabel() for ax in colorbars}
    assert labels == {"log-normalised expression", "sd"}


def test_missing_drawn_grey(adata):
    fig = stmcdi.pl.imputation(adata, "gene1", layers=["lognorm", "imputed"], show=False, return_fig=True)
    observed, imputed = _panels(fig)
    n_missing = int(np.isnan(adata[:, "gene1"].layers["lognorm"]).sum())
    assert n_missing > 0
    # observed panel: observed spots + grey missing spots; imputed panel: plain + outlined filled spots
    sizes = sorted(len(c.get_offsets()) for c in observed.collections)
    assert sizes == sorted([adata.n_obs - n_missing, n_missing])
    grey = [c for c in observed.collections if len(c.get_offsets()) == n_missing][0]
    np.testing.assert_allclose(grey.get_facecolors()[0][:3], [0.85] * 3)
    assert sum(len(c.get_offsets()) for c in imputed.collections) == adata.n_obs


def test_save_png(adata, tmp_path):
    out = tmp_path / "maps.png"
    result = stmcdi.pl.imputation(adata, ["gene2"], save=out, show=False)
    assert result is None
    assert out.is_file() and out.stat().st_size > 1000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ncols_wraps(adata):
    fig = stmcdi.pl.imputation(adata, ["gene0", "gene1"], ncols=2, show=False, return_fig=True)
    assert len(_panels(fig)) == 6


def test_show_default_follows_interactive(adata, monkeypatch):
    called = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: called.append(1))
    monkeypatch.setattr(plt, "isinteractive", lambda: False)
    stmcdi.pl.imputation(adata, "gene0", show=None)
    assert called == []
    monkeypatch.setattr(plt, "isinteractive", lambda: True)
    stmcdi.pl.imputation(adata, "gene0", show=None)
    assert called == [1]


def test_bad_gene(adata):
    with pytest.raises(KeyError, match="nope"):
        stmcdi.pl.imputation(adata, ["gene0", "nope"], show=False)


def test_bad_layer(adata):
    with pytest.raises(KeyError, match="available") as err:
        stmcdi.pl.imputation(adata, "gene0", layers=["lognorm", "denoised"], show=False)
    assert "imputed_std" in str(err.value)
    with pytest.raises(KeyError, match="missing_layer"):
        stmcdi.pl.imputation(adata, "gene0", missing_layer="mask", show=False)


def test_bad_spatial_key(adata):
    with pytest.raises(KeyError, match="obsm"):
        stmcdi.pl.imputation(adata, "gene0", spatial_key="xy", show=False)
