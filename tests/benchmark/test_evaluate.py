from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from stmcdi.benchmark import BASELINES, evaluate, hold_out, split_half_ceiling, summarize, to_markdown
from stmcdi.pp import log_normalize

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "stahl2016_mob_rep11.h5ad"


def _data(seed: int = 0) -> AnnData:
    rng = np.random.default_rng(seed)
    n_side, n_genes = 12, 40
    xx, yy = np.meshgrid(np.arange(n_side), np.arange(n_side))
    coords = np.c_[xx.ravel(), yy.ravel()].astype(float)
    fields = np.c_[np.sin(coords[:, 0] / 3.0), np.cos(coords[:, 1] / 4.0)]
    rate = np.exp(rng.uniform(0, 2.5, n_genes) + fields @ rng.normal(0, 0.8, (2, n_genes)))
    adata = AnnData(sp.csr_matrix(rng.poisson(rate).astype(np.float32)))
    adata.obsm["spatial"] = coords
    return adata


def test_evaluate_rows_and_columns(caplog):
    adata = _data()
    methods = {k: BASELINES[k] for k in ("gene_mean", "spatial_knn")}
    with caplog.at_level(logging.INFO, logger="stmcdi.benchmark._evaluate"):
        df = evaluate(
            adata, methods, protocols=("entries", "spots"), ratio={"entries": 0.1, "spots": 0.2}, seeds=(0, 1)
        )
    assert len(df) == 2 * 2 * 2
    assert list(df.columns[:4]) == ["protocol", "ratio", "seed", "method"]
    for col in ("per_gene_pcc", "per_spot_pcc", "pcc", "cosine", "rmse", "mae", "pcc_z", "n_scored", "seconds"):
        assert col in df.columns
    assert set(df.loc[df.protocol == "spots", "ratio"]) == {0.2}
    assert (df.seconds >= 0).all()
    assert df.loc[df.protocol == "spots", "n_scored"].iloc[0] == round(0.2 * adata.n_obs) * adata.n_vars
    sk = df[(df.method == "spatial_knn") & (df.protocol == "entries")]
    gm = df[(df.method == "gene_mean") & (df.protocol == "entries")]
    assert (sk.rmse.values < gm.rmse.values).all()
    assert any("spatial_knn" in r.getMessage() for r in caplog.records)
    # reproducible, and the input is not modified
    again = evaluate(adata, methods, protocols=("entries",), seeds=(1,))
    row = df[(df.protocol == "entries") & (df.seed == 1)].reset_index(drop=True)
    pd.testing.assert_frame_equal(again.drop(columns="seconds"), row.drop(columns="seconds"), check_dtype=False)
    assert not np.isnan(adata.X.data).any()


def test_evaluate_custom_method_receives_masked_data():
    adata = _data()
    seen = {}

    def oracle_free(adata_masked, *, layer=None, seed=0, target="missing", nonzero=False):
        X = adata_masked.layers[layer] if layer else adata_masked.X
        seen["n_nan"] = int(np.isnan(X.data).sum())
        seen["seed"] = seed
        x, _, _ = log_normalize(X)
        return np.where(np.isnan(x), 0.0, x)

    adata.layers["counts"] = adata.X.copy()
    df = evaluate(adata, {"zeros": oracle_free}, ratio=0.2, seeds=(7,), layer="counts")
    assert seen["n_nan"] == df.n_scored.iloc[0] and seen["seed"] == 7
    assert df.method.tolist() == ["zeros"]


def test_evaluate_errors():
    adata = _data()
    with pytest.raises(ValueError, match="Unknown hold-out protocol"):
        evaluate(adata, protocols=("nope",))
    with pytest.raises(KeyError, match="spots"):
        evaluate(adata, {"g": BASELINES["gene_mean"]}, protocols=("spots",), ratio={"entries": 0.1})
    with pytest.raises(ValueError, match="empty"):
        evaluate(adata, {})
    with pytest.raises(ValueError, match="shape"):
        evaluate(adata, {"bad": lambda a, **kw: np.zeros((2, 2))})


def test_summarize_and_markdown():
    df = pd.DataFrame(
        {
            "protocol": ["entries"] * 4 + ["thin"] * 2,
            "ratio": [0.1] * 4 + [0.5] * 2,
            "seed": [0, 1, 0, 1, 0, 1],
            "method": ["a", "a", "b", "b", "a", "b"],
            "per_gene_pcc": [0.5, 0.52, 0.6, 0.6, 0.3, 0.4],
            "pcc": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
            "rmse": [1.0, 1.0, 2.0, 2.0, 3.0, 3.0],
            "mae": [1.0, 1.0, 2.0, 2.0, 3.0, 3.0],
        }
    )
    s = summarize(df, ceiling=0.8)
    assert s[["protocol", "method"]].values.tolist() == [
        ["entries", "b"],
        ["entries", "a"],
        ["thin", "b"],
        ["thin", "a"],
    ]
    assert s.loc[1, "per_gene_pcc"] == "0.510 ± 0.014"
    assert s.loc[0, "per_gene_pcc"] == "0.600 ± 0.000"
    assert s.loc[0, "per_gene_pcc / ceiling"] == "0.750 ± 0.000"
    assert s.loc[2, "per_gene_pcc"] == "0.400"  # one seed: the mean alone
    assert s.n_seeds.tolist() == [2, 2, 1, 1]
    pattern = re.compile(r"^-?\d\.\d{3}( ± \d\.\d{3})?$")
    assert all(pattern.match(v) for v in s.pcc)
    md = to_markdown(s)
    lines = md.splitlines()
    assert len(lines) == 2 + len(s)
    assert lines[0] == "| " + " | ".join(s.columns) + " |"
    assert lines[1].count("---") == s.shape[1]
    assert "| entries | 0.1 | b | 2 | 0.600 ± 0.000 |" in lines[2]
    assert to_markdown(pd.DataFrame({"x": ["a|b"]})).splitlines()[2] == "| a\\|b |"
    with pytest.raises(KeyError, match="nope"):
        summarize(df, metrics=("nope",))


def test_real_data_mob():
    if not DATA.exists():
        pytest.skip("../shared/data not present")
    import anndata as ad

    full = ad.read_h5ad(DATA)
    total = np.asarray(full.X.sum(axis=0)).ravel()
    adata = full[:, np.sort(np.argsort(-total)[:200])].copy()
    df = evaluate(adata, BASELINES, protocols=("entries",), ratio=0.1, seeds=(0,)).set_index("method")
    assert df.loc["gene_mean", "pcc"] > 0.5
    # structure beyond the gene mean: the expression-space and low-rank baselines lower the error
    for name in ("expression_knn", "soft_impute", "stack"):
        assert df.loc[name, "rmse"] < df.loc["gene_mean", "rmse"], name
    assert df.loc["spatial_knn", "per_gene_pcc"] > 0.1
    # the split-half noise ceiling bounds what the best baseline reaches
    ceiling = split_half_ceiling(adata)
    assert 0.5 < ceiling < 0.95
    assert df.per_gene_pcc.max() < ceiling
    assert "soft_impute" in to_markdown(summarize(df.reset_index(), ceiling=ceiling))


def test_parse_protocols_and_ratios():
    from stmcdi.benchmark import parse_protocols

    assert parse_protocols("thin", {"thin": 0.5}) == [("thin", 0.5)]
    assert parse_protocols(["entries:0.6", ("spots", 0.2), "nonzero"], 0.1) == [
        ("entries", 0.6), ("spots", 0.2), ("nonzero", 0.1)]
    with pytest.raises(ValueError, match="ratio such as"):
        parse_protocols(["entries:x"])
    with pytest.raises(ValueError, match="Unknown hold-out protocol"):
        parse_protocols(["rows:0.1"])
    with pytest.raises(ValueError, match="empty"):
        parse_protocols([])


def test_evaluate_scores_samples_when_a_method_returns_them():
    rng = np.random.default_rng(0)
    adata = AnnData(rng.poisson(3.0, size=(60, 20)).astype(np.float32))

    def noisy(a, *, layer=None, seed=0, target="missing", nonzero=False):
        mean = BASELINES["gene_mean"](a, layer=layer, seed=seed, target=target)
        draws = mean[None] + np.random.default_rng(seed).normal(0, 0.3, size=(25, *mean.shape))
        return {"mean": mean, "samples": draws}

    df = evaluate(adata, {"noisy": noisy, "point": BASELINES["gene_mean"]}, min_entries=3).set_index("method")
    assert 0.0 < df.loc["noisy", "coverage_50"] < df.loc["noisy", "coverage_90"] <= 1.0
    assert df.loc["noisy", "crps"] > 0 and np.isnan(df.loc["point", "crps"])
    assert df.loc["noisy", "rmse"] == df.loc["point", "rmse"]  # the mean is scored as the point prediction


def test_compare_is_paired_and_knows_which_way_is_better():
    from stmcdi.benchmark import compare

    df = pd.DataFrame({"protocol": "entries", "ratio": 0.1, "seed": [0, 1, 2] * 2, "method": ["a"] * 3 + ["b"] * 3,
                       "per_gene_pcc": [0.5, 0.6, 0.7, 0.4, 0.5, 0.65], "rmse": [1.0, 1.1, 0.9, 1.2, 1.0, 1.3]})
    out = compare(df, "a").set_index("metric")
    assert out.loc["per_gene_pcc", "wins"] == 3 and out.loc["per_gene_pcc", "better"] == "higher"
    assert out.loc["rmse", "wins"] == 2 and out.loc["rmse", "better"] == "lower"
    assert out.loc["per_gene_pcc", "diff_mean"] == pytest.approx(0.0833, abs=1e-3)
    assert 0 < out.loc["per_gene_pcc", "p_value"] < 0.1
    with pytest.raises(ValueError, match="Reference method"):
        compare(df, "c")


def test_evaluate_hands_each_row_to_on_result_as_it_is_scored():
    rng = np.random.default_rng(0)
    adata = AnnData(rng.poisson(3.0, size=(40, 12)).astype(np.float32))
    seen = []
    df = evaluate(adata, {"g": BASELINES["gene_mean"], "s": BASELINES["spot_mean"]}, seeds=(0, 1), min_entries=3,
                  on_result=seen.append)
    assert pd.DataFrame(seen).equals(df)


def test_evaluate_chooses_the_panel_in_each_split():
    adata = _data()
    seen = []

    def record(adata_masked, *, layer=None, seed=0, target="missing", nonzero=False):
        seen.append((seed, tuple(adata_masked.var_names)))
        x, _, _ = log_normalize(adata_masked.X)
        return np.where(np.isnan(x), 0.0, x)

    panel = {"n_top_genes": 8, "flavor": "cv", "min_detection": 0.0}
    df = evaluate(adata, {"zeros": record}, ratio=0.3, seeds=(0, 1), panel=panel, min_entries=3)
    assert [len(g) for _, g in seen] == [8, 8] and len(df) == 2
    for (seed, genes), n in zip(seen, df["n_scored"], strict=True):
        held = hold_out(adata, "entries", 0.3, seed=seed, panel=panel)
        assert genes == tuple(held.adata.var_names) and n == held.n_scored
