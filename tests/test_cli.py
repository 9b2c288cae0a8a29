import argparse
import re

import anndata as ad
import numpy as np
import pytest

import stmcdi
from stmcdi._cli import build_parser, main

TINY = ["--epochs", "2", "--n-samples", "2", "--n-steps", "3", "--batch-size", "32"]


def test_parser_defaults():
    args = build_parser().parse_args(["benchmark", "--data", "x.h5ad"])
    assert args.protocol == ["entries"] and args.ratio == 0.1 and args.n_genes == 1000 and args.panel == "seurat_v3"
    assert args.compare_to == "stmcdi" and not args.no_extras
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ablation", "--data", "x.h5ad", "--study", "everything"])


def test_model_options_reach_the_model_and_impute():
    from stmcdi._cli import _model_kwargs

    model, _, impute = _model_kwargs(build_parser().parse_args(["impute", "x.h5ad", "-o", "y.h5ad"]))
    assert "mask_strategy" not in model and "objective" not in model and "spread_scale" not in impute
    args = build_parser().parse_args(["benchmark", "--data", "x.h5ad", "--mask-strategy", "nonzero",
                                      "--objective", "mae", "--spread-scale", "1.5",
                                      "--zero-dispersion", "0.25", "--shrink", "calibrated"])
    model, _, impute = _model_kwargs(args)
    assert model["mask_strategy"] == "nonzero" and model["objective"] == "mae" and impute["spread_scale"] == 1.5
    assert impute["zero_dispersion"] == 0.25 and impute["shrink"] == "calibrated"
    _, _, impute = _model_kwargs(build_parser().parse_args(["impute", "x.h5ad", "-o", "y.h5ad", "--shrink", "0.5"]))
    assert impute["shrink"] == 0.5 and "smooth" not in impute and "smooth_neighbors" not in impute
    _, _, impute = _model_kwargs(build_parser().parse_args(["benchmark", "--data", "x.h5ad", "--smooth", "0.5",
                                                            "--smooth-neighbors", "20"]))
    assert impute["smooth"] == 0.5 and impute["smooth_neighbors"] == 20
    assert "smooth_graph" not in impute
    _, _, impute = _model_kwargs(build_parser().parse_args(["impute", "x.h5ad", "-o", "y.h5ad", "--smooth", "0.5",
                                                            "--smooth-graph", "expression"]))
    assert impute["smooth_graph"] == "expression"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["impute", "x.h5ad", "-o", "y.h5ad", "--smooth-graph", "tissue"])
    for bad in ("1.5", "x"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["impute", "x.h5ad", "-o", "y.h5ad", "--smooth", bad])
    for bad in ("2", "some"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["impute", "x.h5ad", "-o", "y.h5ad", "--shrink", bad])
    assert "n_expression_neighbors" not in model and "spot_features" not in model and "n_gene_groups" not in model
    assert "depth_weight" not in model
    args = build_parser().parse_args(["impute", "x.h5ad", "-o", "y.h5ad", "--expression-neighbors", "0",
                                      "--no-spot-features", "--gene-groups", "10", "--depth-weight", "0"])
    model, _, _ = _model_kwargs(args)
    assert model["n_expression_neighbors"] == 0 and model["spot_features"] is False and model["n_gene_groups"] == 10
    assert model["depth_weight"] == 0.0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["impute", "x.h5ad", "-o", "y.h5ad", "--mask-strategy", "rows"])


@pytest.mark.parametrize("protocol", ["everything", "entries:lots"])
def test_bad_protocol_is_a_clear_error(protocol, capsys):
    assert main(["benchmark", "--data", "x.h5ad", "--protocol", protocol]) == 2
    assert "protocol" in capsys.readouterr().err.lower()


def test_demo_prints_table_and_saves_figure(tmp_path, capsys):
    assert main(["demo", "--n-spots", "90", "--n-genes", "16", "--out", str(tmp_path), *TINY]) == 0
    out = capsys.readouterr().out
    for name in ("stmcdi", "gene_mean", "spot_mean", "expression_knn", "spatial_knn", "low_rank", "ceiling"):
        assert name in out
    assert (tmp_path / "stmcdi_demo.png").stat().st_size > 10_000


def test_impute_writes_layers(tmp_path, capsys):
    adata = stmcdi.datasets.synthetic(n_spots=80, n_genes=30, seed=3)
    dense = adata.X.toarray()
    dense[0, :5] = np.nan
    adata.X = dense
    src, dst = tmp_path / "in.h5ad", tmp_path / "out.h5ad"
    adata.write_h5ad(src)
    assert main(["impute", str(src), "-o", str(dst), "--n-genes", "20", *TINY]) == 0
    out = ad.read_h5ad(dst)
    assert out.n_vars == 20 and {"imputed", "imputed_std"} <= set(out.layers)
    assert np.isfinite(out.layers["imputed"]).all()
    assert "Wrote" in capsys.readouterr().out


def test_benchmark_baselines_only_and_csv(tmp_path, capsys):
    adata = stmcdi.datasets.synthetic(n_spots=80, n_genes=30, seed=3)
    src = tmp_path / "in.h5ad"
    adata.write_h5ad(src)
    csv = tmp_path / "res.csv"
    md = tmp_path / "res.md"
    code = main(["benchmark", "--data", str(src), "--no-stmcdi", "--no-extras", "--n-genes", "0", "--protocol",
                 "entries", "entries:0.5", "thin:0.5", "--seeds", "0", "1", "--csv", str(csv), "--markdown", str(md),
                 "--compare-to", "low_rank"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Split-half ceiling" in out and "| thin" in out
    # the basis of the per-gene median is printed: at entries 50% each of the 30 genes has 40 held-out
    # entries; thinning these low counts leaves few genes with 10 held-out entries, which is flagged
    assert "Genes in the per-gene PCC median" in out
    assert int(re.search(r"entries 0\.5: (\d+)", out).group(1)) >= 25
    assert "Few genes under thin 0.5:" in out
    import pandas as pd

    df = pd.read_csv(csv)
    assert len(df) == 3 * 2 * 5 and set(df["protocol"]) == {"entries", "thin"}
    assert sorted(set(df["ratio"])) == [0.1, 0.5]
    text = md.read_text()
    assert "Paired comparison across seeds: low_rank minus each method" in text and "| spot_mean |" in text
    assert main(["benchmark", "--data", str(src), "--no-stmcdi", "--methods", "nope"]) == 2


def test_benchmark_scores_stmcdi_samples_and_compares(tmp_path, capsys):
    adata = stmcdi.datasets.synthetic(n_spots=80, n_genes=30, seed=3)
    src = tmp_path / "in.h5ad"
    adata.write_h5ad(src)
    csv = tmp_path / "res.csv"
    assert main(["benchmark", "--data", str(src), "--n-genes", "0", "--methods", "stmcdi", "gene_mean",
                 "--seeds", "0", "1", "--csv", str(csv), *TINY]) == 0
    out = capsys.readouterr().out
    assert "coverage_90" in out and "stmcdi minus each method" in out
    import pandas as pd

    df = pd.read_csv(csv).set_index("method")
    assert np.isfinite(df.loc["stmcdi", "crps"]).all() and df.loc["gene_mean", "crps"].isna().all()


def test_ablation_runs_each_variant_on_the_same_splits(tmp_path, capsys):
    adata = stmcdi.datasets.synthetic(n_spots=80, n_genes=30, seed=3)
    src = tmp_path / "in.h5ad"
    adata.write_h5ad(src)
    csv = tmp_path / "abl.csv"
    assert main(["ablation", "--study", "objective", "--variants", "diffusion", "mae", "--data", str(src),
                 "--n-genes", "0", "--csv", str(csv), *TINY]) == 0
    out = capsys.readouterr().out
    assert "objective=diffusion minus each method" in out
    import pandas as pd

    df = pd.read_csv(csv).set_index("method")
    assert list(df.index) == ["objective=diffusion", "objective=mae"]
    assert df.loc["objective=diffusion", "n_scored"] == df.loc["objective=mae", "n_scored"]
    assert main(["ablation", "--study", "encoder", "--variants", "transformer", "--data", str(src)]) == 2


@pytest.mark.parametrize("command", ["demo", "impute", "benchmark", "ablation"])
def test_every_command_documents_its_output_and_examples(command):
    # the API reference shows these help texts: each says what it writes and gives runnable examples
    from stmcdi._cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    text = sub.format_help()
    assert "output:" in text and "examples:" in text
    examples = [line.split()[1:] for line in text.split("examples:")[1].splitlines() if line.strip()]
    assert examples and all(args[0] == command for args in examples)
    parser = build_parser()
    for args in examples:  # every example parses
        parser.parse_args(args)
    undocumented = [a.dest for a in sub._actions if not a.help and a.dest != "help"]
    assert not undocumented, f"options without help: {undocumented}"


def test_benchmark_panel_per_split_or_before_hold_out(tmp_path, capsys):
    adata = stmcdi.datasets.synthetic(n_spots=80, n_genes=30, seed=3)
    src = tmp_path / "in.h5ad"
    adata.write_h5ad(src)
    csv = tmp_path / "res.csv"
    common = ["benchmark", "--data", str(src), "--no-stmcdi", "--no-extras", "--methods", "gene_mean", "--n-genes",
              "12", "--panel", "cv", "--csv", str(csv)]
    assert main(common) == 0
    assert "12 genes (cv panel chosen in each split on its observed counts)" in capsys.readouterr().out
    import pandas as pd

    per_split = pd.read_csv(csv)
    assert main([*common, "--panel-before-hold-out"]) == 0
    assert "12 genes (cv panel chosen on all counts)" in capsys.readouterr().out
    before = pd.read_csv(csv)
    assert per_split["n_scored"].iloc[0] > 0 and before["n_scored"].iloc[0] > 0
