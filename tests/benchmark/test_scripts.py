"""Smoke tests of the benchmark scripts that need no training (``benchmarks/*.py`` are not a package)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

import stmcdi
from stmcdi._model import DEPTH_WEIGHT

SCRIPTS = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(script: str, argv: list[str], monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", [script, *argv])
    runpy.run_path(str(SCRIPTS / script), run_name="__main__")
    return capsys.readouterr().out


@pytest.mark.parametrize("before", [False, True])
def test_scored_genes_counts_genes_per_split(tmp_path, monkeypatch, capsys, before):
    adata = stmcdi.datasets.synthetic(n_spots=120, n_genes=60, seed=0)
    path = tmp_path / "toy.h5ad"
    adata.write_h5ad(path)
    argv = [str(path), "--n-genes", "40", "--seeds", "0", "1"] + (["--panel-before-hold-out"] if before else [])
    out = _run("scored_genes.py", argv, monkeypatch, capsys)
    rows = [line for line in out.splitlines() if line.startswith("| toy |")]
    assert len(rows) == 2 * 3  # two panels x three protocols
    for row in rows:
        counts = [int(c) for c in row.split("|")[4].split("/")]
        assert len(counts) == 2
        assert all(0 <= c <= 40 for c in counts)  # scored genes are panel genes
    # entries 10% hides 12 entries per gene of 120 spots: every panel gene is scored
    assert rows[0].split("|")[4].strip() == "40 / 40"


def test_readout_terms_scores_each_term_of_the_readout(tmp_path, monkeypatch, capsys):
    adata = stmcdi.datasets.synthetic(n_spots=200, n_genes=16, seed=0)
    path = tmp_path / "toy.h5ad"
    adata.write_h5ad(path)
    monkeypatch.syspath_prepend(str(SCRIPTS))  # the script imports tune.py beside it
    csv = tmp_path / "terms.csv"
    _run("readout_terms.py", ["--data", str(path), "--max-epochs", "1", "--n-samples", "2", "--csv", str(csv)], monkeypatch, capsys)
    import pandas as pd

    df = pd.read_csv(csv)
    # the defaults have no read-out of the spatial code with random targets (STMCDIModule's latent_readout)
    assert df["estimate"].tolist() == ["one_pass", "readout", "readout_no_offset", "readout_no_profile"]
    assert df[["per_gene_pcc", "rmse"]].notna().all().all()
    assert df["rmse"].nunique() > 1  # removing a term changes the estimate


def test_tune_scores_one_fit_at_several_depth_weights(tmp_path, monkeypatch, capsys):
    adata = stmcdi.datasets.synthetic(n_spots=200, n_genes=16, seed=0)
    path = tmp_path / "toy.h5ad"
    adata.write_h5ad(path)
    csv = tmp_path / "tune.csv"
    _run("tune.py", ["--data", str(path), "--configs", "default", "--max-epochs", "1", "--depth-weights", "0",
                     f"{DEPTH_WEIGHT:g}", "1", "--csv", str(csv)], monkeypatch, capsys)
    import pandas as pd

    df = pd.read_csv(csv).set_index("config")
    assert {"default", "default:depth0", "default:depth1"} <= set(df.index)
    assert df["seconds"].nunique() == 1  # one fit
    # weight 0 is the network's output alone; weight 1 moves every filled entry by its spot's depth term
    assert df.loc["default:depth0", "rmse"] != df.loc["default:depth1", "rmse"]
    # the weights are applied to the fit's one estimate: at the default weight it is the fit's own estimate
    assert df.loc[f"default:depth{DEPTH_WEIGHT:g}", "rmse"] == pytest.approx(df.loc["default", "rmse"])
    assert df.loc["default:depth0", "crps"] == df.loc["default", "crps"]  # the samples do not move


def test_tune_depth_weights_with_thin_validation(tmp_path, monkeypatch, capsys):
    """With ``target="zeros"`` the observed zeros are filled too; the shortcut must reproduce the fit there."""
    adata = stmcdi.datasets.synthetic(n_spots=200, n_genes=40, seed=0)
    path = tmp_path / "toy.h5ad"
    adata.write_h5ad(path)
    csv = tmp_path / "tune.csv"
    weight = f"{DEPTH_WEIGHT:g}"
    _run("tune.py", ["--data", str(path), "--protocol", "thin", "--ratio", "0.5", "--val-protocol", "thin",
                     "--val-ratio", "0.5", "--configs", "default", "--max-epochs", "1", "--depth-weights", "0",
                     weight, "2", "--zero-rounds", "2", "3", "--csv", str(csv)], monkeypatch, capsys)
    import pandas as pd

    df = pd.read_csv(csv).set_index("config")
    assert df.loc[f"default:depth{weight}", "per_gene_pcc"] == pytest.approx(df.loc["default", "per_gene_pcc"])
    assert df.loc["default:depth0", "rmse"] != df.loc["default:depth2", "rmse"]
    # the fit fills its zeros in 2 rounds: the shortcut at 2 rounds is the fit's estimate, 3 rounds another one
    assert df.loc["default:rounds2", "rmse"] == pytest.approx(df.loc["default", "rmse"])
    assert df.loc["default:rounds3", "rmse"] != pytest.approx(df.loc["default", "rmse"], abs=1e-7)
    assert "default:depth0:sample-mean" not in df.index  # the other estimates share the fit's samples


def test_thin_rmse_terms_splits_the_error_and_scores_the_moved_fills(tmp_path, monkeypatch, capsys):
    adata = stmcdi.datasets.synthetic(n_spots=150, n_genes=30, seed=0)
    path = tmp_path / "toy.h5ad"
    adata.write_h5ad(path)
    monkeypatch.syspath_prepend(str(SCRIPTS))  # the script imports tune.py beside it
    csv = tmp_path / "terms.csv"
    _run("thin_rmse_terms.py", ["--data", str(path), "--max-epochs", "1", "--baselines", "gene_mean",
                                "--csv", str(csv), "--save", str(tmp_path / "fit")], monkeypatch, capsys)
    import pandas as pd

    df = pd.read_csv(csv).set_index("method")
    np.testing.assert_allclose(df["mse"], df["level"] + df["scatter"], rtol=1e-9)
    np.testing.assert_allclose(df["rmse"] ** 2, df["mse"], rtol=1e-6)  # the package's score, the same entries
    assert df.loc["stmcdi:true_level", "level"] < 1e-12
    # moving the gene levels or shrinking within genes leaves the per-gene PCC unchanged
    assert df.loc["stmcdi:shrink0.25", "per_gene_pcc"] == pytest.approx(df.loc["stmcdi", "per_gene_pcc"])
    assert df.loc["stmcdi:shrink0.25", "level"] == pytest.approx(df.loc["stmcdi", "level"])
    # conditioning the zeros on their count moves the fills down
    assert df.loc["stmcdi:zero_dispersion1", "bias"] < df.loc["stmcdi", "bias"]
    saved = np.load(tmp_path / "fit_s0.npz")
    assert saved["samples"].shape[1] == saved["truth"].size == saved["mean"].size


def test_smooth_fills_scores_every_variant_and_recentring_keeps_the_per_gene_pcc(tmp_path, monkeypatch, capsys):
    adata = stmcdi.datasets.synthetic(n_spots=150, n_genes=30, seed=0)
    path = tmp_path / "toy.h5ad"
    adata.write_h5ad(path)
    monkeypatch.syspath_prepend(str(SCRIPTS))  # the script imports tune.py beside it
    csv = tmp_path / "smooth.csv"
    _run("smooth_fills.py", ["--data", str(path), "--max-epochs", "1", "--no-magic", "--ks", "5", "--steps", "1",
                             "--alphas", "0.5", "1", "--csv", str(csv)], monkeypatch, capsys)
    import pandas as pd

    df = pd.read_csv(csv).set_index("method")
    expect = {"stmcdi"} | {f"stmcdi:{s}_k5_t1_a{a}{rc}" for s in ("expr", "space") for a in ("0.5", "1")
                           for rc in ("", "_rc")}
    assert set(df.index) == expect
    for s in ("expr", "space"):  # a per-gene constant changes no per-gene PCC
        assert df.loc[f"stmcdi:{s}_k5_t1_a1_rc", "per_gene_pcc"] == pytest.approx(
            df.loc[f"stmcdi:{s}_k5_t1_a1", "per_gene_pcc"], abs=1e-9)
    assert df.loc["stmcdi:space_k5_t1_a1", "rmse"] != pytest.approx(df.loc["stmcdi", "rmse"])


@pytest.mark.parametrize("large", [False, True])
def test_zero_readouts_reproduces_the_default_read_out_and_scores_each_chain(tmp_path, monkeypatch, capsys, large):
    import stmcdi._model

    if large:  # the toy counts as a large section: the default read-out smooths the filled zeros
        monkeypatch.setattr(stmcdi._model, "ZERO_READOUT_MIN_SPOTS", 100)
    adata = stmcdi.datasets.synthetic(n_spots=150, n_genes=30, seed=0)
    path = tmp_path / "toy.h5ad"
    adata.write_h5ad(path)
    monkeypatch.syspath_prepend(str(SCRIPTS))  # the script imports tune.py beside it
    csv = tmp_path / "readouts.csv"
    _run("zero_readouts.py", ["--data", str(path), "--split", "test", "--max-epochs", "1", "--no-magic",
                              "--spaces", "expr", "space", "--ks", "5", "--steps", "2", "--alphas", "0.5",
                              "--phis", "0", "0.5", "--csv", str(csv), "--save", str(tmp_path / "fit")],
         monkeypatch, capsys)
    import pandas as pd

    df = pd.read_csv(csv).set_index("method")
    assert {"stmcdi:raw", "stmcdi", "stmcdi:shrink", "stmcdi:phi0.5", "stmcdi:expr_k5_t2_a0.5",
            "stmcdi:space_k5_t2_a0.5_shrink_phi0.5"} <= set(df.index)
    assert len(df) == 3 + 2 + 2 * 2 * 2
    # the shrink changes no per-gene PCC; smoothing and the zero conditioning move RMSE
    assert df.loc["stmcdi:shrink", "per_gene_pcc"] == pytest.approx(df.loc["stmcdi:raw", "per_gene_pcc"], abs=1e-9)
    if large:
        assert df.loc["stmcdi", "rmse"] != pytest.approx(df.loc["stmcdi:shrink", "rmse"])
    else:  # 150 spots: the network's estimate and the calibrated shrink
        assert df.loc["stmcdi", "rmse"] == df.loc["stmcdi:shrink", "rmse"]
    assert df.loc["stmcdi:expr_k5_t2_a0.5", "rmse"] != pytest.approx(df.loc["stmcdi:raw", "rmse"])
    assert df.loc["stmcdi:phi0.5", "rmse"] != pytest.approx(df.loc["stmcdi:raw", "rmse"])
    # the default row is what stmcdi benchmark scores on the same split with the same seed
    bench = stmcdi.benchmark.evaluate(adata, {"stmcdi": stmcdi.benchmark.stmcdi_method(
        {}, {"max_epochs": 1})}, protocols=[("thin", 0.5)], seeds=[0], panel={"n_top_genes": 1000,
                                                                            "flavor": "seurat_v3"})
    assert bench["rmse"].iloc[0] == pytest.approx(df.loc["stmcdi", "rmse"], rel=1e-5)
    assert np.load(tmp_path / "fit_s0.npz")["x"].shape[0] == 150


def test_spatial_stats_scores_morans_i_of_every_layer(tmp_path, monkeypatch, capsys):
    adata = stmcdi.datasets.synthetic(n_spots=150, n_genes=30, seed=0)
    path = tmp_path / "toy.h5ad"
    adata.write_h5ad(path)
    csv = tmp_path / "moran.csv"
    out = _run("spatial_stats.py", ["--data", str(path), "--n-genes", "30", "--n-null", "10", "--max-epochs", "1",
                                    "--no-magic", "--smooth", "1", "--expr-smooth", "0.5", "--zero-dispersion", "0.25",
                                    "--csv", str(csv)], monkeypatch, capsys)
    import pandas as pd

    df = pd.read_csv(csv).set_index("layer")
    assert list(df.index[:3]) == ["full", "visible", "stmcdi"] and df.index[3].startswith("stmcdi+shrink")
    assert df.index[4] == "stmcdi:smooth1" and df.index[5].startswith("stmcdi:smooth1+shrink")
    assert list(df.index[6:9]) == ["stmcdi+phi0.25", "stmcdi:expr0.5", "stmcdi:expr0.5+phi0.25"]
    assert df.index[9].startswith("stmcdi:expr0.5+shrink") and df.index[9].endswith("+phi0.25") and len(df) == 10
    assert df.loc["stmcdi:expr0.5", "null_I_mean"] != pytest.approx(df.loc["stmcdi:smooth1", "null_I_mean"])
    assert df.loc["full", "real_spearman_vs_full"] == pytest.approx(1.0)
    assert df.loc["full", "real_kept_of_full_calls"] == 1.0 and df.loc["full", "real_added_to_full_calls"] == 0
    assert df.loc[["full", "visible"], "per_gene_pcc"].isna().all()
    assert df.loc[["stmcdi", "stmcdi:smooth1"], "per_gene_pcc"].notna().all()
    assert df.loc["stmcdi:smooth1", "null_I_mean"] != pytest.approx(df.loc["stmcdi", "null_I_mean"])
    assert ((df[["null_called", "real_called"]] >= 0) & (df[["null_called", "real_called"]] <= 1)).all().all()
    assert "null_I_mean" in out


def test_spatial_stats_permutes_only_the_chosen_genes():
    sys.path.insert(0, str(SCRIPTS))
    try:
        from spatial_stats import permute_genes
    finally:
        sys.path.remove(str(SCRIPTS))
    adata = stmcdi.datasets.synthetic(n_spots=60, n_genes=8, seed=1)
    out = permute_genes(adata, np.array([2, 5]), seed=0)
    x, y = np.asarray(adata.X.todense() if hasattr(adata.X, "todense") else adata.X), \
        np.asarray(out.X.todense() if hasattr(out.X, "todense") else out.X)
    keep = [g for g in range(8) if g not in (2, 5)]
    np.testing.assert_array_equal(x[:, keep], y[:, keep])
    for g in (2, 5):
        np.testing.assert_array_equal(np.sort(x[:, g]), np.sort(y[:, g]))
        assert not np.array_equal(x[:, g], y[:, g])
    assert adata.X is not out.X
