"""The ``stmcdi`` command line: ``demo``, ``impute`` and ``benchmark``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np

logger = logging.getLogger("stmcdi")


def _quiet_lightning() -> None:
    # squidpy 1.8.2 emits docrep SyntaxWarnings on import: filter before importing.
    warnings.filterwarnings("ignore", category=SyntaxWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
    # Lightning, scvi-tools and squidpy (logging through spatialdata._logging) set their logger levels when
    # imported: import them first, then quieten them.
    import lightning.pytorch  # noqa: F401
    import scvi  # noqa: F401
    import squidpy  # noqa: F401

    for name in ("lightning.pytorch", "lightning.fabric", "scvi", "spatialdata._logging"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and training")
    g.add_argument("--epochs", type=int, default=None, help="training epochs (default: ~2000 optimizer steps, at most 125 epochs)")
    g.add_argument("--batch-size", type=int, default=64, help="spots per minibatch (default 64)")
    g.add_argument("--accelerator", default="auto", help="'auto', 'cpu' or 'gpu' (default auto)")
    g.add_argument("--devices", default="auto", help="devices (default auto: one GPU if present)")
    g.add_argument("--n-samples", type=int, default=None,
                   help="diffusion samples per spot (default 10); with another value the spread is recalibrated")
    g.add_argument("--n-steps", type=int, default=None, help="DDIM steps (default 10)")
    g.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim",
                   help="ddim (default, --n-steps steps) or ddpm (the paper's sampler, every step)")
    g.add_argument("--encoder", choices=("gcn", "gat", "gin", "mlp", "none"), default="gcn",
                   help="spatial encoder (default gcn; none removes the spatial input)")
    g.add_argument("--objective", choices=("hybrid", "diffusion", "mae"), default=None,
                   help="training objective (default: the model's, hybrid: one-pass estimate + diffusion spread)")
    g.add_argument("--mask-strategy", choices=("entries", "nonzero", "spots", "genes"), default=None,
                   help="training targets (default entries; nonzero trains for the dropout question: "
                        "what a zero would read had it been detected)")
    g.add_argument("--expression-neighbors", type=int, default=None,
                   help="nearest spots in expression space whose mean profile conditions each spot (default 20; "
                        "0 conditions on the spatial neighbours alone, as the paper does)")
    g.add_argument("--gene-groups", type=int, default=None,
                   help="share the spot offset and the expression-profile weight within this many groups of genes "
                        "of similar detected fraction (default: the model's)")
    g.add_argument("--no-spot-features", action="store_true",
                   help="do not give the network the summaries of each spot's visible entries (an ablation)")
    g.add_argument("--depth-weight", type=float, default=None,
                   help="weight of the spot depth term added to the filled entries at imputation (default: the "
                        "model's, 0.75; 0 imputes the network's output alone)")
    g.add_argument("--zero-dispersion", type=float, default=None,
                   help="with zeros to fill (impute --target zeros, benchmark protocol thin): condition each filled "
                        "zero on its zero count, gamma-Poisson with this dispersion (default: 0.25 on sections of at least 1000 "
                        "spots, 0 (off) on smaller ones)")
    g.add_argument("--shrink", type=_shrink_arg, default=None,
                   help="factor on each filled entry's deviation from its gene's mean fill, or 'calibrated' for the "
                        "within-gene slope measured on the entries held back from training (default: 'calibrated' for "
                        "filled zeros, 1 (off) for missing entries)")
    g.add_argument("--smooth", type=_unit_arg, default=None,
                   help="weight in [0, 1] of the average over each spot's --smooth-neighbors nearest spots in each "
                        "filled entry, recentred per gene (default: 0.5 for filled zeros on sections of at least 1000 "
                        "spots, 0 (off) otherwise)")
    g.add_argument("--smooth-neighbors", type=int, default=None,
                   help="spots averaged with each spot by --smooth (default 40)")
    g.add_argument("--smooth-graph", choices=("spatial", "expression"), default=None,
                   help="neighbours of --smooth: nearest in expression space (default; 50 principal components of "
                        "the estimate) or in tissue space")
    g.add_argument("--spread-scale", type=float, default=None,
                   help="factor on the samples' deviations from their mean (default: impute's)")
    g.add_argument("--seed", type=int, default=0, help="seed of training and sampling (default 0)")
    g.add_argument("--progress", action="store_true", help="show the per-epoch progress bar")


def _shrink_arg(value: str) -> float | str:
    """``--shrink``: a number in [0, 1] or ``calibrated``."""
    if value == "calibrated":
        return value
    try:
        return _unit_arg(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or 'calibrated', got {value!r}") from None


def _unit_arg(value: str) -> float:
    """A number in [0, 1] (``--smooth``)."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value!r}") from None
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value!r}")
    return x


def _model_kwargs(args) -> tuple[dict, dict, dict]:
    devices = args.devices if args.devices == "auto" else int(args.devices)
    train = {
        "max_epochs": args.epochs,
        "batch_size": args.batch_size,
        "accelerator": args.accelerator,
        "devices": devices,
        "enable_progress_bar": args.progress,
    }
    impute = {"n_steps": args.n_steps, "sampler": args.sampler}
    if args.n_samples is not None:
        impute["n_samples"] = args.n_samples
    if args.spread_scale is not None:
        impute["spread_scale"] = args.spread_scale
    if args.zero_dispersion is not None:
        impute["zero_dispersion"] = args.zero_dispersion
    if args.shrink is not None:
        impute["shrink"] = args.shrink
    if args.smooth is not None:
        impute["smooth"] = args.smooth
    if args.smooth_neighbors is not None:
        impute["smooth_neighbors"] = args.smooth_neighbors
    if args.smooth_graph is not None:
        impute["smooth_graph"] = args.smooth_graph
    model = {"encoder": args.encoder}
    if args.objective is not None:
        model["objective"] = args.objective
    if args.mask_strategy is not None:
        model["mask_strategy"] = args.mask_strategy
    if args.expression_neighbors is not None:
        model["n_expression_neighbors"] = args.expression_neighbors
    if args.gene_groups is not None:
        model["n_gene_groups"] = args.gene_groups
    if args.no_spot_features:
        model["spot_features"] = False
    if args.depth_weight is not None:
        model["depth_weight"] = args.depth_weight
    return model, train, impute


def _add_panel_args(p: argparse.ArgumentParser, default_genes: int | None) -> None:
    p.add_argument("--layer", default=None, help="layer with raw counts (default: X)")
    p.add_argument("--n-genes", type=int, default=default_genes,
                   help=f"impute this many selected genes (default {default_genes}; 0 keeps all)")
    p.add_argument("--panel", choices=("seurat_v3", "cv"), default="seurat_v3",
                   help="gene panel: scanpy seurat_v3 HVG (default) or the paper's coefficient of variation")


def _select(adata, args):
    import stmcdi

    if args.n_genes and args.n_genes < adata.n_vars:
        stmcdi.pp.select_genes(adata, args.n_genes, flavor=args.panel, layer=args.layer, subset=True)
    return adata


def _table(held, results: dict[str, np.ndarray], ceiling: float | None) -> str:
    import pandas as pd

    import stmcdi

    rows = []
    for name, (pred, seconds) in results.items():
        s = stmcdi.benchmark.score(held, pred)
        rows.append({"method": name, **{k: s[k] for k in ("per_gene_pcc", "pcc", "rmse", "mae")}, "seconds": seconds})
    df = pd.DataFrame(rows).sort_values("per_gene_pcc", ascending=False, na_position="last")
    if ceiling is not None:
        df["per_gene_pcc / ceiling"] = df["per_gene_pcc"] / ceiling
    return df.to_string(index=False, float_format=lambda v: f"{v:.3f}")


def cmd_demo(args) -> int:
    """Synthetic section: hold out 10% of entries, train, impute, compare with the baselines, save a figure."""
    import scvi

    import stmcdi

    t0 = time.perf_counter()
    scvi.settings.seed = args.seed
    adata = stmcdi.datasets.synthetic(n_spots=args.n_spots, n_genes=args.n_genes, seed=args.seed)
    held = stmcdi.benchmark.hold_out(adata, "entries", 0.1, seed=args.seed)
    print(f"Synthetic section: {adata.n_obs} spots x {adata.n_vars} genes; "
          f"held out {held.n_scored} entries (10%, protocol 'entries', seed {args.seed}).")
    model_kw, train_kw, impute_kw = _model_kwargs(args)
    masked = held.adata
    stmcdi.pp.spatial_graph(masked)
    stmcdi.STMCDI.setup_anndata(masked)
    model = stmcdi.STMCDI(masked, **model_kw)
    t1 = time.perf_counter()
    model.train(**train_kw)
    model.impute(seed=args.seed, **impute_kw)
    t_model = time.perf_counter() - t1
    results = {"stmcdi": (masked.layers["imputed"], t_model)}
    for name, method in stmcdi.benchmark.BASELINES.items():
        ts = time.perf_counter()
        pred = method(masked, seed=args.seed)
        results[name] = (pred, time.perf_counter() - ts)
    ceiling = stmcdi.benchmark.split_half_ceiling(adata.X, seed=args.seed)
    print(f"\nHeld-out entries, log-normalised scale (split-half ceiling of per-gene PCC: {ceiling:.3f}):")
    print(_table(held, results, ceiling))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    masked.layers["lognorm"] = stmcdi.pp.normalize(masked, copy=True)
    genes = list(masked.var_names[np.argsort(-np.nanvar(masked.layers["lognorm"], axis=0))[:3]])
    fig_path = out / "stmcdi_demo.png"
    stmcdi.pl.imputation(masked, genes, save=fig_path, show=False)
    print(f"\nFigure: {fig_path} (observed with held-out entries in grey | imputed | spread, genes {genes})")
    print(f"Total wall time: {time.perf_counter() - t0:.0f} s (train + impute {t_model:.0f} s)")
    return 0


def cmd_impute(args) -> int:
    """Impute an .h5ad file and write the result with layers 'imputed' and 'imputed_std'."""
    import anndata as ad
    import scvi

    import stmcdi

    scvi.settings.seed = args.seed
    adata = _select(ad.read_h5ad(args.input), args)
    stmcdi.pp.spatial_graph(adata, n_neighs=args.n_neighs, spatial_key=args.spatial_key,
                            library_key=args.library_key)
    stmcdi.STMCDI.setup_anndata(adata, layer=args.layer, spatial_key=args.spatial_key)
    model_kw, train_kw, impute_kw = _model_kwargs(args)
    model = stmcdi.STMCDI(adata, **model_kw)
    model.train(**train_kw)
    model.impute(target=args.target, seed=args.seed, **impute_kw)
    adata.write_h5ad(args.output)
    print(f"Wrote {args.output}: layers 'imputed' and 'imputed_std' ({adata.n_obs} spots x {adata.n_vars} genes).")
    if args.save_model:
        model.save(args.save_model, overwrite=True)
        print(f"Saved the model to {args.save_model}")
    return 0


def _load_panel(args):
    import anndata as ad

    return _select(ad.read_h5ad(args.data), args)


def _load_for_benchmark(args):
    """The data, the per-split panel (``evaluate(panel=...)``) and the split-half ceiling of the panel.

    The panel is chosen inside every split on the masked counts (DESIGN section 5); the ceiling, a property of
    the data, is computed on the panel chosen from all counts. ``--panel-before-hold-out`` chooses the panel
    once on all counts instead (how the tables before 2026-11-25 were made).
    """
    import anndata as ad

    import stmcdi

    adata = ad.read_h5ad(args.data)
    full = _select(adata.copy(), args)
    ceiling = stmcdi.benchmark.split_half_ceiling(full.layers[args.layer] if args.layer else full.X, seed=0)
    if args.panel_before_hold_out or not (args.n_genes and args.n_genes < adata.n_vars):
        return full, None, ceiling, f"{full.n_vars} genes ({args.panel} panel chosen on all counts)"
    panel = {"n_top_genes": args.n_genes, "flavor": args.panel}
    return adata, panel, ceiling, f"{args.n_genes} genes ({args.panel} panel chosen in each split on its observed counts)"


def _csv_writer(path: str | None):
    """Append each result row to ``path`` as it arrives (header first), so an interrupted run keeps its rows."""
    if not path:
        return None
    import csv

    Path(path).unlink(missing_ok=True)

    def write(row: dict) -> None:
        new = not Path(path).exists()
        with open(path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)

    return write


def _report(args, df, ceiling: float, reference: str | None, n_vars: int) -> None:
    """Print the summary (and the paired comparison against ``reference``); write CSV / markdown files."""
    import stmcdi

    metrics = ["per_gene_pcc", "pcc", "rmse", "mae"]
    if "crps" in df and df["crps"].notna().any():
        metrics += ["crps", "coverage_90"]
    summary = stmcdi.benchmark.summarize(df, metrics=metrics, ceiling=ceiling)
    text = [f"Split-half ceiling of per-gene PCC: {ceiling:.3f}"]
    if "n_genes_scored" in df and (df["n_genes_scored"] > 0).any():
        basis = df[df["n_genes_scored"] > 0].groupby(["protocol", "ratio"])["n_genes_scored"].median()
        text.append("Genes in the per-gene PCC median (>= 10 held-out entries, non-constant; median over methods and seeds): "
                    + ", ".join(f"{p} {r:g}: {int(n)}" for (p, r), n in basis.items()))
        few = [f"{p} {r:g}" for (p, r), n in basis.items() if n < min(50, n_vars / 2)]
        if few:
            text.append(f"Few genes under {', '.join(few)}: there the per-gene PCC is the median of a handful of "
                        "genes; read it with the pooled PCC and RMSE.")
    text += ["", stmcdi.benchmark.to_markdown(summary)]
    if reference is not None and reference in set(df["method"]) and df["method"].nunique() > 1:
        cmp = stmcdi.benchmark.compare(df, reference=reference, metrics=("per_gene_pcc", "rmse"))
        cmp = cmp.round({"diff_mean": 4, "diff_sd": 4, "p_value": 4})
        text += ["", f"Paired comparison across seeds: {reference} minus each method", "",
                 stmcdi.benchmark.to_markdown(cmp)]
    print("\n" + "\n".join(text))
    if args.markdown:
        Path(args.markdown).write_text("\n".join(text) + "\n")
        print(f"\nMarkdown tables: {args.markdown}")
    if args.csv:
        df.to_csv(args.csv, index=False)  # the same rows as written while running, in one consistent file
        print(f"\nPer-seed results: {args.csv}")


def _protocol_pairs(args) -> list[tuple[str, float]] | None:
    """``--protocol`` / ``--ratio`` as ``(protocol, ratio)`` pairs; ``None`` (message on stderr) if invalid."""
    import stmcdi

    try:
        return stmcdi.benchmark.parse_protocols(args.protocol, args.ratio)
    except ValueError as err:
        print(err, file=sys.stderr)
        return None


def cmd_benchmark(args) -> int:
    """Benchmark STMCDI, the baselines and the installed extra tools on any .h5ad with counts and coordinates."""
    import stmcdi

    pairs = _protocol_pairs(args)
    if pairs is None:
        return 2
    adata, panel, ceiling, genes = _load_for_benchmark(args)
    methods = dict(stmcdi.benchmark.BASELINES)
    if not args.no_extras:
        methods.update(stmcdi.benchmark.available_extras())
    if not args.no_stmcdi:
        model_kw, train_kw, impute_kw = _model_kwargs(args)
        methods = {"stmcdi": stmcdi.benchmark.stmcdi_method(model_kw, train_kw, impute_kw, samples=True), **methods}
    if args.methods:
        unknown = sorted(set(args.methods) - set(methods))
        if unknown:
            print(f"Unknown methods {unknown}; choose from {sorted(methods)}", file=sys.stderr)
            return 2
        methods = {k: methods[k] for k in args.methods}
    print(f"{args.data}: {adata.n_obs} spots x {genes}; "
          f"protocols {[f'{p}:{r:g}' for p, r in pairs]}, seeds {args.seeds}; methods {list(methods)}")
    df = stmcdi.benchmark.evaluate(adata, methods, protocols=pairs, seeds=args.seeds, layer=args.layer,
                                   on_result=_csv_writer(args.csv), panel=panel)
    _report(args, df, ceiling, args.compare_to, panel["n_top_genes"] if panel else adata.n_vars)
    return 0


def cmd_ablation(args) -> int:
    """Run one of the paper's ablations (or the masked-autoencoder control) on an .h5ad."""
    import stmcdi

    pairs = _protocol_pairs(args)
    if pairs is None:
        return 2
    table = stmcdi.benchmark.ABLATIONS[args.study]
    variants = args.variants or list(table)
    unknown = [v for v in variants if v not in table]
    if unknown:
        print(f"Unknown variants {unknown} of {args.study}; choose from {list(table)}", file=sys.stderr)
        return 2
    adata, panel, ceiling, genes = _load_for_benchmark(args)
    model_kw, train_kw, impute_kw = _model_kwargs(args)
    model_kw.pop("encoder")  # the encoder study sets it; the others keep the default
    if args.encoder != "gcn" and args.study != "encoder":
        model_kw["encoder"] = args.encoder
    print(f"{args.data}: {adata.n_obs} spots x {genes}; study {args.study}, "
          f"variants {variants}; protocols {[f'{p}:{r:g}' for p, r in pairs]}, seeds {args.seeds}")
    df = stmcdi.benchmark.ablation(adata, args.study, variants=variants, protocols=pairs, seeds=args.seeds,
                                   layer=args.layer, model_kwargs=model_kw, train_kwargs=train_kw,
                                   impute_kwargs=impute_kw, on_result=_csv_writer(args.csv), panel=panel)
    _report(args, df, ceiling, f"{args.study}={variants[0]}", panel["n_top_genes"] if panel else adata.n_vars)
    return 0


def _add_protocol_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help=".h5ad with raw counts and obsm['spatial']")
    p.add_argument("--protocol", nargs="+", default=["entries"], metavar="PROTOCOL[:RATIO]",
                   help="hold-out protocols, each optionally with its own ratio, e.g. entries:0.1 entries:0.6 "
                        "nonzero spots thin:0.5 (default entries; protocols: entries, nonzero, spots, genes, thin)")
    p.add_argument("--ratio", type=float, default=0.1,
                   help="fraction held out for protocols given without a ratio (default 0.1)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the hold-out splits (default 0)")
    p.add_argument("--csv", default=None,
                   help="write per-seed results here (row by row as they finish, so an interrupted run keeps them)")
    p.add_argument("--markdown", default=None, help="write the markdown tables here")
    p.add_argument("--panel-before-hold-out", action="store_true",
                   help="choose the --n-genes panel once on all counts, held-out ones included (how the tables "
                        "made before 2026-11-25 were made); default: in each split, on its observed counts")


def build_parser() -> argparse.ArgumentParser:
    """The ``stmcdi`` argument parser (``demo``, ``impute``, ``benchmark``, ``ablation``).

    Returns
    -------
    The :class:`argparse.ArgumentParser`.

    Examples
    --------
    >>> build_parser().parse_args(["demo", "--n-spots", "200"]).n_spots
    200
    """
    parser = argparse.ArgumentParser(prog="stmcdi", description="Spatial transcriptomics imputation with stMCDI.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)

    raw = argparse.RawDescriptionHelpFormatter
    demo = sub.add_parser(
        "demo",
        help="impute a built-in synthetic section and compare with baselines",
        formatter_class=raw,
        description=(
            "Simulate a section (stmcdi.datasets.synthetic), hide 10%% of its entries, train STMCDI, impute and\n"
            "score it against the baselines on the hidden entries.\n\n"
            "output: a table of per-gene PCC, pooled PCC and RMSE per method on stdout, and OUT/demo.png\n"
            "(tissue maps of observed, imputed and spread for three genes)."
        ),
        epilog="examples:\n  stmcdi demo\n  stmcdi demo --n-spots 300 --n-genes 100 --epochs 20 --out demo-small",
    )
    demo.add_argument("--n-spots", type=int, default=600, help="spots of the simulated section (default 600)")
    demo.add_argument("--n-genes", type=int, default=200, help="genes of the simulated section (default 200)")
    demo.add_argument("--out", default="stmcdi-demo", help="folder for the figure (default ./stmcdi-demo)")
    _add_model_args(demo)
    demo.set_defaults(func=cmd_demo)

    imp = sub.add_parser(
        "impute",
        help="impute IN.h5ad and write OUT.h5ad",
        formatter_class=raw,
        description=(
            "Read an .h5ad with raw counts (NaN marks a missing entry) and coordinates in obsm, build the spatial\n"
            "graph, train STMCDI and impute.\n\n"
            "output: OUT.h5ad, the input (restricted to the gene panel when --n-genes is set) with\n"
            "layers['imputed'] (log-normalised; observed entries unchanged) and layers['imputed_std'] (spread of\n"
            "the samples); with --save-model, the trained model in that folder."
        ),
        epilog=(
            "examples:\n"
            "  stmcdi impute section.h5ad -o section_imputed.h5ad\n"
            "  stmcdi impute section.h5ad -o out.h5ad --n-genes 1000 --target zeros --accelerator gpu\n"
            "  stmcdi impute sections.h5ad -o out.h5ad --library-key sample --save-model model/"
        ),
    )
    imp.add_argument("input", help="input .h5ad with raw counts (NaN = missing) and coordinates")
    imp.add_argument("-o", "--output", required=True, help="output .h5ad")
    imp.add_argument("--spatial-key", default="spatial", help="obsm key of the coordinates (default spatial)")
    imp.add_argument("--library-key", default=None, help="obs column naming the section of each spot")
    imp.add_argument("--n-neighs", type=int, default=5, help="spatial neighbours per spot (default 5)")
    imp.add_argument("--target", choices=("missing", "zeros"), default="missing",
                     help="fill missing (NaN) entries, or also every zero ('zeros')")
    imp.add_argument("--save-model", default=None, help="folder to save the trained model to")
    _add_panel_args(imp, default_genes=0)
    _add_model_args(imp)
    imp.set_defaults(func=cmd_impute)

    bench = sub.add_parser(
        "benchmark",
        help="held-out benchmark of STMCDI and the baselines on an .h5ad",
        formatter_class=raw,
        description=(
            "Hide entries of an .h5ad with the chosen protocols and seeds (stmcdi.benchmark.hold_out), impute\n"
            "them with STMCDI, every baseline and the other tools that are installed (MAGIC, scVI, STAGATE), and\n"
            "score them (stmcdi.benchmark.score; CRPS and interval coverage for STMCDI's samples).\n\n"
            "output: the split-half ceiling, a markdown table of mean +- sd over seeds per protocol and method,\n"
            "and the paired comparison of --compare-to against each method on stdout (also to --markdown);\n"
            "with --csv, one row per protocol, seed and method."
        ),
        epilog=(
            "examples:\n"
            "  stmcdi benchmark --data section.h5ad --protocol entries --ratio 0.1 --seeds 0 1 2\n"
            "  stmcdi benchmark --data section.h5ad --protocol entries:0.1 entries:0.6 nonzero spots thin:0.5 "
            "--seeds 0 1 2 --csv results.csv --markdown results.md\n"
            "  stmcdi benchmark --data section.h5ad --protocol thin:0.5 --no-stmcdi --csv thin.csv"
        ),
    )
    _add_protocol_args(bench)
    bench.add_argument("--methods", nargs="+", default=None, help="subset of methods to run")
    bench.add_argument("--no-stmcdi", action="store_true", help="baselines only")
    bench.add_argument("--no-extras", action="store_true",
                       help="leave out the other tools (MAGIC, scVI, STAGATE) even where installed")
    bench.add_argument("--compare-to", default="stmcdi",
                       help="method compared, seed by seed, against every other (default stmcdi)")
    _add_panel_args(bench, default_genes=1000)
    _add_model_args(bench)
    bench.set_defaults(func=cmd_benchmark)

    abl = sub.add_parser(
        "ablation",
        help="one of the paper's ablations, or the masked-autoencoder control",
        formatter_class=raw,
        description=(
            "Train and score STMCDI once per variant of a study (stmcdi.benchmark.ABLATIONS) on the same\n"
            "hold-out splits: mask-strategy (entries / spots / genes), mask-phase (input mask, representation\n"
            "re-mask, both, none), encoder (gcn / gat / gin / mlp / none), mask-ratio (training mask ratio\n"
            "sweep, the paper's Fig. 3), objective (diffusion against the masked autoencoder: the same\n"
            "network trained to predict the targets in one pass) and conditions (expression neighbours and\n"
            "spot summaries, each on or off).\n\n"
            "output: the split-half ceiling, a markdown table of mean +- sd over seeds per variant (CRPS and\n"
            "90%% coverage included) and the paired comparison of the first (default) variant against each\n"
            "other on stdout; with --csv and --markdown, files."
        ),
        epilog=(
            "examples:\n"
            "  stmcdi ablation --study encoder --data section.h5ad --seeds 0 1 2\n"
            "  stmcdi ablation --study objective --data section.h5ad --protocol entries:0.1 thin:0.5\n"
            "  stmcdi ablation --study mask-ratio --data section.h5ad --variants 0.1-0.9 0.2 0.6 --csv ratio.csv"
        ),
    )
    abl.add_argument("--study", required=True, choices=("mask-strategy", "mask-phase", "encoder", "mask-ratio",
                                                         "objective", "conditions"),
                     help="which ablation to run")
    abl.add_argument("--variants", nargs="+", default=None,
                     help="subset of the study's variants (default all; the first is the reference)")
    _add_protocol_args(abl)
    _add_panel_args(abl, default_genes=1000)
    _add_model_args(abl)
    abl.set_defaults(func=cmd_ablation)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stmcdi`` console script.

    Parameters
    ----------
    argv
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    The exit status.

    Examples
    --------
    >>> main(["demo", "--n-spots", "200", "--n-genes", "40", "--epochs", "2"])  # doctest: +SKIP
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    _quiet_lightning()
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
