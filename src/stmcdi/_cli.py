"""The ``stmcdi`` command line: ``demo``, ``impute``, ``benchmark`` and ``ablation``.

Every path is checked before any work; expected problems with the user's files or options end with one line
``stmcdi: error: ...`` on stderr and exit status 2 (``--debug`` adds the traceback); outputs are written beside
their final place and renamed into it only on success; SIGTERM and SIGINT stop the run and remove what was not
finished (exit status 128 + the signal number). Progress goes to stderr through the ``stmcdi`` logger.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from . import _io
from ._constants import SPREAD_SAMPLES
from ._io import Interrupted, Staged, UsageError, one_line

logger = logging.getLogger("stmcdi")

#: above this many genes (and without --n-genes) ``stmcdi impute`` warns about the cost of the panel
MANY_GENES = 3000
#: errors of the library about the user's data or options: one line and exit status 2
USER_ERRORS = (ValueError, KeyError, TypeError, FileNotFoundError, PermissionError, MemoryError)
#: methods of ``stmcdi benchmark`` that do not read the coordinates
_NON_SPATIAL = {"gene_mean", "spot_mean", "expression_knn", "soft_impute"}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``stmcdi: error: ...``, with exit status 2."""

    def error(self, message: str):
        self.exit(2, f"stmcdi: error: {message} (see '{self.prog} --help')\n")


# ------------------------------------------------------------------------------------------------ options
def _int_at_least(low: int):
    def parse(value: str) -> int:
        try:
            x = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value!r}") from None
        if x < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value!r}")
        return x

    return parse


def _n_genes_arg(value: str) -> int | str:
    """``--n-genes``: an integer or ``all`` (0 and negative numbers are refused by the command, in one line)."""
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of genes or 'all', got {value!r}") from None


def _devices_arg(value: str) -> int | str:
    return value if value == "auto" else _int_at_least(1)(value)


def _add_model_args(p: argparse.ArgumentParser, *, mask_strategy: bool = False) -> None:
    g = p.add_argument_group("model and training")
    g.add_argument("--epochs", type=_int_at_least(1), default=None,
                   help="most training epochs (default: enough for 3000 optimizer steps; training stops earlier "
                        "when the error on held-back observed entries stops improving)")
    g.add_argument("--batch-size", type=_int_at_least(1), default=64, help="spots per minibatch (default 64)")
    g.add_argument("--accelerator", default="auto", help="'auto', 'cpu' or 'gpu' (default auto)")
    g.add_argument("--devices", type=_devices_arg, default="auto", help="devices (default auto: one GPU if present)")
    g.add_argument("--n-samples", type=_int_at_least(0), default=None,
                   help="diffusion samples per spot for the spread layer imputed_std (default 0: none; 5 or more for a usable spread; demo: 5)")
    g.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim",
                   help="ddim (default, 10 deterministic steps) or ddpm (the paper's sampler, every step)")
    g.add_argument("--readout", choices=("ensemble", "network"), default="ensemble",
                   help="estimate written: the network stacked with classical estimates, weighted on held-back "
                        "entries (ensemble, default), or the network's one-pass estimate alone")
    g.add_argument("--encoder", choices=("gcn", "gat", "gin", "mlp", "none"), default="gcn",
                   help="spatial encoder (default gcn; none removes the spatial input)")
    g.add_argument("--objective", choices=("hybrid", "diffusion", "mae"), default=None,
                   help="training objective (default: the model's, hybrid: one-pass estimate + diffusion spread)")
    if mask_strategy:
        g.add_argument("--mask-strategy", choices=("entries", "nonzero", "spots", "genes"), default=None,
                       help="training targets (default entries; nonzero trains for the dropout question: what a "
                            "zero would read had it been detected)")
    g.add_argument("--expression-neighbors", type=_int_at_least(0), default=None,
                   help="nearest spots in expression space whose mean profile conditions each spot (default 20; "
                        "0 conditions on the spatial neighbours alone, as the paper does)")
    g.add_argument("--seed", type=int, default=0, help="seed of training and sampling (default 0)")
    g.add_argument("--progress", action="store_true",
                   help="show Lightning's progress bar instead of the progress lines on stderr")


def _model_kwargs(args) -> tuple[dict, dict, dict]:
    """``(model, train, impute)`` keyword arguments from the parsed options."""
    train = {"max_epochs": args.epochs, "batch_size": args.batch_size, "accelerator": args.accelerator,
             "devices": args.devices, "enable_progress_bar": args.progress}
    impute = {"sampler": args.sampler, "readout": args.readout}
    if args.n_samples is not None:
        impute["n_samples"] = args.n_samples
    if args.objective == "diffusion":  # it estimates by sampling: refuse 0 before training, default to 5
        if args.n_samples == 0:
            raise UsageError("--objective diffusion estimates by sampling: pass --n-samples 1 or more.")
        impute.setdefault("n_samples", SPREAD_SAMPLES)
    model = {"encoder": args.encoder}
    if args.objective is not None:
        model["objective"] = args.objective
    if getattr(args, "mask_strategy", None) is not None:
        model["mask_strategy"] = args.mask_strategy
    if args.expression_neighbors is not None:
        model["n_expression_neighbors"] = args.expression_neighbors
    return model, train, impute


def _add_panel_args(p: argparse.ArgumentParser, default_genes: int | None) -> None:
    p.add_argument("--layer", default=None, help="layer with raw counts (default: X)")
    shown = "all genes" if default_genes is None else default_genes
    p.add_argument("--n-genes", type=_n_genes_arg, default=default_genes, metavar="N|all",
                   help=f"impute a panel of this many selected genes, or 'all' (default {shown})")
    p.add_argument("--panel", choices=("seurat_v3", "cv"), default="seurat_v3",
                   help="gene panel: scanpy seurat_v3 HVG (default) or the paper's coefficient of variation")


def _panel_size(args, n_vars: int) -> int | None:
    """Genes to select with ``--n-genes``, or ``None`` to keep every gene."""
    n = args.n_genes
    if n is None or n == "all":
        return None
    if n < 1:
        raise UsageError(f"--n-genes {n} selects no genes; give a positive number of genes, or 'all' to keep "
                         "every gene.")
    return n if n < n_vars else None


def _select(adata, args) -> None:
    """Subset ``adata`` to the ``--n-genes`` panel in place (logged)."""
    import stmcdi

    n = _panel_size(args, adata.n_vars)
    if n is None:
        logger.info("Gene panel: all %d genes.", adata.n_vars)
        return
    n_all = adata.n_vars
    stmcdi.pp.select_genes(adata, n, flavor=args.panel, layer=args.layer, subset=True)
    logger.info("Gene panel: %d of %d genes (%s).", adata.n_vars, n_all, args.panel)


def _train(model, train_kw: dict, shape, args) -> None:
    """Train with the progress callback and log how it finished."""
    progress = _io.progress_callback(shape, lines=not args.progress)
    t0 = time.perf_counter()
    model.train(**train_kw, callbacks=[progress])
    stopped = progress.max_epochs and progress.epochs < progress.max_epochs
    early = " (stopped early: the held-back error stopped improving)" if stopped else ""
    logger.info("Training finished: %d epochs, %d optimizer steps, %.0f s%s.", progress.epochs, progress.steps,
                time.perf_counter() - t0, early)


# ------------------------------------------------------------------------------------------------ commands
def _table(held, results: dict, ceiling: float | None) -> str:
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
    out = _io.check_folder(args.out, "--out")
    _io.quiet_lightning(args.verbose)
    import scvi

    import stmcdi

    t0 = time.perf_counter()
    scvi.settings.seed = args.seed
    adata = stmcdi.datasets.synthetic(n_spots=args.n_spots, n_genes=args.n_genes, seed=args.seed)
    held = stmcdi.benchmark.hold_out(adata, "entries", 0.1, seed=args.seed)
    print(f"Synthetic section: {adata.n_obs} spots x {adata.n_vars} genes; "
          f"held out {held.n_scored} entries (10%, protocol 'entries', seed {args.seed}).", flush=True)
    model_kw, train_kw, impute_kw = _model_kwargs(args)
    masked = held.adata
    stmcdi.pp.spatial_graph(masked)
    stmcdi.STMCDI.setup_anndata(masked)
    model = stmcdi.STMCDI(masked, **model_kw)
    t1 = time.perf_counter()
    _train(model, train_kw, masked.shape, args)
    model.impute(seed=args.seed, **{"n_samples": SPREAD_SAMPLES, **impute_kw})  # the figure shows the spread
    t_model = time.perf_counter() - t1
    results = {"stmcdi": (masked.layers["imputed"], t_model)}
    t2 = time.perf_counter()
    n_net = 0 if model.module.objective != "diffusion" else impute_kw.get("n_samples", 10)
    net = model.impute(readout="network", inplace=False, n_samples=n_net, seed=args.seed)["mean"]
    results["stmcdi (network alone)"] = (net, time.perf_counter() - t2)
    for name, method in stmcdi.benchmark.BASELINES.items():
        ts = time.perf_counter()
        results[name] = (method(masked, seed=args.seed), time.perf_counter() - ts)
    ceiling = stmcdi.benchmark.split_half_ceiling(adata.X, seed=args.seed)
    print(f"\nHeld-out entries, log-normalised scale (split-half ceiling of per-gene PCC: {ceiling:.3f}):")
    print(_table(held, results, ceiling))
    out.mkdir(parents=True, exist_ok=True)
    masked.layers["lognorm"] = stmcdi.pp.normalize(masked, copy=True)
    genes = list(masked.var_names[np.argsort(-np.nanvar(masked.layers["lognorm"], axis=0))[:3]])
    fig_path = out / "stmcdi_demo.png"
    stmcdi.pl.imputation(masked, genes, save=fig_path, show=False)
    print(f"\nFigure: {fig_path} (observed with held-out entries in grey | imputed | spread, genes {genes})")
    print(f"Total wall time: {time.perf_counter() - t0:.0f} s (train + impute {t_model:.0f} s)")
    return 0


def cmd_impute(args) -> int:
    """Impute an .h5ad file and write the result with the layer 'imputed' (and 'imputed_std' with samples)."""
    from ._imputation import nothing_to_fill_message

    src = _io.check_input(args.input)
    dst = _io.check_output(args.output, inputs=[src], force=args.force)
    model_dir = _io.check_model_folder(args.save_model, inputs=[src, dst], force=args.force) if args.save_model else None
    if args.n_genes is not None:
        _panel_size(args, sys.maxsize)  # refuse --n-genes 0 before reading
    adata = _io.read_h5ad(src)
    _io.check_data(adata, args.layer, args.spatial_key, args.mask_layer)
    _select(adata, args)
    if args.n_genes is None and adata.n_vars > MANY_GENES:
        logger.warning("Modelling all %d genes: the cost of each training and imputation step grows linearly with "
                       "the number of genes. To impute a panel of highly variable genes instead, pass --n-genes 1000 "
                       "(--panel seurat_v3 or cv); --n-genes all keeps every gene without this warning.", adata.n_vars)
    n_missing = _io.count_missing(adata, args.layer, args.mask_layer)
    if args.target == "missing" and n_missing == 0:
        raise UsageError(nothing_to_fill_message(adata.n_obs, adata.n_vars))
    logger.info("Entries to fill: %d missing%s.", n_missing, " and every zero count" if args.target == "zeros" else "")
    _io.quiet_lightning(args.verbose)
    import scvi

    import stmcdi

    scvi.settings.seed = args.seed
    stmcdi.pp.spatial_graph(adata, n_neighs=args.n_neighs, spatial_key=args.spatial_key, library_key=args.library_key)
    stmcdi.STMCDI.setup_anndata(adata, layer=args.layer, spatial_key=args.spatial_key, mask_layer=args.mask_layer)
    model_kw, train_kw, impute_kw = _model_kwargs(args)
    model = stmcdi.STMCDI(adata, **model_kw)
    _train(model, train_kw, adata.shape, args)
    t0 = time.perf_counter()
    model.impute(target=args.target, seed=args.seed, **impute_kw)
    record = adata.uns.get("stmcdi", {}).get("impute", {})
    logger.info("Imputation finished: %s entries filled (readout %s, %s samples), %.1f s.", record.get("n_filled", "?"),
                args.readout, record.get("n_samples", "?"), time.perf_counter() - t0)
    t0 = time.perf_counter()
    try:
        with Staged() as staged:
            adata.write_h5ad(staged.file(dst))
            if model_dir is not None:
                model.save(str(staged.folder(model_dir)), overwrite=True, save_anndata=False)
            staged.commit()
    except OSError as err:  # a full disk, a folder removed meanwhile: nothing is left behind
        raise UsageError(f"cannot write {str(dst)!r}: {one_line(err)}") from err
    layers = [k for k in ("imputed", "imputed_std") if k in adata.layers]
    logger.info("Wrote %s: %d spots x %d genes, layers %s (%.1f s).", dst, adata.n_obs, adata.n_vars,
                " and ".join(map(repr, layers)), time.perf_counter() - t0)
    if model_dir is not None:
        logger.info("Saved the model to %s.", model_dir)
    return 0


def _benchmark_paths(args) -> Path:
    """Check ``--data``, ``--csv`` and ``--markdown`` before any work; return the data path."""
    data = _io.check_input(args.data, "--data")
    for what, path in (("--csv", args.csv), ("--markdown", args.markdown)):
        if path:
            _io.check_output(path, inputs=[data], force=True, what=what)
    if args.csv and args.markdown and Path(args.csv).resolve() == Path(args.markdown).resolve():
        raise UsageError("--csv and --markdown name the same file; give two paths.")
    if args.n_genes is not None:
        _panel_size(args, sys.maxsize)
    return data


def _load_for_benchmark(args, path: Path, methods) -> tuple:
    """The data, the per-split panel (``evaluate(panel=...)``), the split-half ceiling and a description.

    The panel is chosen inside every split on its masked counts; the ceiling, a property of the data, is
    computed on the panel chosen from all counts.
    """
    import stmcdi

    adata = _io.read_h5ad(path)
    spatial = "spatial" in adata.obsm or not set(methods) <= _NON_SPATIAL
    _io.check_data(adata, args.layer, "spatial" if spatial else None)
    n = _panel_size(args, adata.n_vars)
    full = adata
    if n is not None:
        full = adata.copy()
        stmcdi.pp.select_genes(full, n, flavor=args.panel, layer=args.layer, subset=True)
    ceiling = stmcdi.benchmark.split_half_ceiling(full.layers[args.layer] if args.layer else full.X, seed=0)
    if n is None:
        return adata, None, ceiling, f"all {adata.n_vars} genes"
    return adata, {"n_top_genes": n, "flavor": args.panel}, ceiling, \
        f"{n} genes ({args.panel} panel chosen in each split on its observed counts)"


def _protocol_pairs(args) -> list[tuple[str, float]]:
    """``--protocol`` / ``--ratio`` as ``(protocol, ratio)`` pairs (a one-line error if invalid)."""
    import stmcdi

    try:
        return stmcdi.benchmark.parse_protocols(args.protocol, args.ratio)
    except ValueError as err:
        raise UsageError(one_line(err)) from None


def cmd_benchmark(args) -> int:
    """Benchmark STMCDI, the baselines and the installed extra tools on any .h5ad with counts and coordinates."""
    import stmcdi

    pairs = _protocol_pairs(args)
    data = _benchmark_paths(args)
    methods = dict(stmcdi.benchmark.BASELINES)
    if not args.no_extras:
        methods.update(stmcdi.benchmark.available_extras())
    if not args.no_stmcdi:
        methods = {"stmcdi": None, **methods}
    if args.methods:
        unknown = sorted(set(args.methods) - set(methods))
        if unknown:
            raise UsageError(f"unknown methods {unknown}; choose from {sorted(methods)}.")
        methods = {k: methods[k] for k in args.methods}
    adata, panel, ceiling, genes = _load_for_benchmark(args, data, methods)
    _io.quiet_lightning(args.verbose)
    if "stmcdi" in methods:
        model_kw, train_kw, impute_kw = _model_kwargs(args)
        train_kw["callbacks"] = [_io.progress_callback(lines=not args.progress)]
        methods["stmcdi"] = stmcdi.benchmark.stmcdi_method(model_kw, train_kw, impute_kw, samples=True)
    print(f"{args.data}: {adata.n_obs} spots x {genes}; "
          f"protocols {[f'{p}:{r:g}' for p, r in pairs]}, seeds {args.seeds}; methods {list(methods)}", flush=True)
    df = stmcdi.benchmark.evaluate(adata, methods, protocols=pairs, seeds=args.seeds, layer=args.layer,
                                   on_result=_io.csv_writer(args.csv), panel=panel)
    _io.report_benchmark(args, df, ceiling, args.compare_to, panel["n_top_genes"] if panel else adata.n_vars)
    return 0


def cmd_ablation(args) -> int:
    """Run one of the paper's ablations (or the masked-autoencoder control) on an .h5ad."""
    import stmcdi

    pairs = _protocol_pairs(args)
    table = stmcdi.benchmark.ABLATIONS[args.study]
    variants = args.variants or list(table)
    unknown = [v for v in variants if v not in table]
    if unknown:
        raise UsageError(f"unknown variants {unknown} of {args.study}; choose from {list(table)}.")
    data = _benchmark_paths(args)
    adata, panel, ceiling, genes = _load_for_benchmark(args, data, ["stmcdi"])
    _io.quiet_lightning(args.verbose)
    model_kw, train_kw, impute_kw = _model_kwargs(args)
    train_kw["callbacks"] = [_io.progress_callback(lines=not args.progress)]
    model_kw.pop("encoder")  # the encoder study sets it; the others keep the default
    if args.encoder != "gcn" and args.study != "encoder":
        model_kw["encoder"] = args.encoder
    print(f"{args.data}: {adata.n_obs} spots x {genes}; study {args.study}, "
          f"variants {variants}; protocols {[f'{p}:{r:g}' for p, r in pairs]}, seeds {args.seeds}", flush=True)
    df = stmcdi.benchmark.ablation(adata, args.study, variants=variants, protocols=pairs, seeds=args.seeds,
                                   layer=args.layer, model_kwargs=model_kw, train_kwargs=train_kw,
                                   impute_kwargs=impute_kw, on_result=_io.csv_writer(args.csv), panel=panel)
    _io.report_benchmark(args, df, ceiling, f"{args.study}={variants[0]}", panel["n_top_genes"] if panel else adata.n_vars)
    return 0


# ------------------------------------------------------------------------------------------------ parser
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


def _add_common_args(p: argparse.ArgumentParser, suppress: bool) -> None:
    d = argparse.SUPPRESS if suppress else None
    p.add_argument("-v", "--verbose", action="count", default=d if suppress else 0,
                   help="more detail: -v adds debug lines and Lightning's messages; -v -v also tracebacks")
    p.add_argument("-q", "--quiet", action="store_true", default=d if suppress else False,
                   help="no progress lines, only warnings and errors")
    p.add_argument("--debug", action="store_true", default=d if suppress else False,
                   help="show the traceback of an error")


#: the description of each subcommand in its --help (argparse %-formatting: %% is a percent sign)
_DESCRIPTIONS = {
    "demo": """\
Simulate a section (stmcdi.datasets.synthetic), hide 10%% of its entries, train STMCDI, impute and
score it, its network alone and the baselines on the hidden entries.

output: a table of per-gene PCC, pooled PCC and RMSE per method on stdout, and OUT/stmcdi_demo.png
(tissue maps of observed, imputed and spread for three genes).""",
    "impute": """\
Read an .h5ad with raw counts (NaN marks a missing entry) and coordinates in obsm, build the spatial
graph, train STMCDI and impute. Paths, counts and coordinates are checked before training; the output
is written beside OUT and renamed into place on success, never over the input.

output: OUT.h5ad, the input (restricted to the gene panel when --n-genes is set) with
layers['imputed'] (log-normalised; observed entries unchanged), with --n-samples N layers['imputed_std']
(spread of N samples) and uns['stmcdi']['impute'] (how it was made); with --save-model, the trained model
in that folder. Progress lines go to stderr (--quiet turns them off).""",
    "benchmark": """\
Hide entries of an .h5ad with the chosen protocols and seeds (stmcdi.benchmark.hold_out), choose the
gene panel inside each split, impute them with STMCDI, every baseline and the other tools that are
installed (MAGIC, scVI, STAGATE), and score them (stmcdi.benchmark.score; CRPS and interval coverage
for STMCDI's samples; its network alone is scored as stmcdi:network).

output: the split-half ceiling, a markdown table of mean +- sd over seeds per protocol and method,
and the paired comparison of --compare-to against each method on stdout (also to --markdown);
with --csv, one row per protocol, seed and method.""",
    "ablation": """\
Train and score STMCDI once per variant of a study (stmcdi.benchmark.ABLATIONS) on the same
hold-out splits: mask-strategy (entries / spots / genes), mask-phase (input mask, representation
re-mask, both, none), encoder (gcn / gat / gin / mlp / none), mask-ratio (training mask ratio
sweep, the paper's Fig. 3), objective (hybrid, diffusion alone and the masked autoencoder: the same
network trained to predict the targets in one pass) and conditions (expression neighbours and
spot summaries, each on or off).

output: the split-half ceiling, a markdown table of mean +- sd over seeds per variant (CRPS and
90%% coverage included) and the paired comparison of the first (default) variant against each
other on stdout; with --csv and --markdown, files.""",
}


def _command(sub, common, func, help: str, description: str, examples: list[str]) -> argparse.ArgumentParser:
    """The subcommand running ``func``; its help shows ``description`` as written and ``examples``."""
    p = sub.add_parser(func.__name__.removeprefix("cmd_"), parents=[common], help=help, description=description,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n" + "\n".join(f"  stmcdi {e}" for e in examples))
    p.set_defaults(func=func)
    return p


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
    parser = _Parser(prog="stmcdi", description="Spatial transcriptomics imputation with stMCDI.")
    _add_common_args(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _add_common_args(common, suppress=True)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = _command(sub, common, cmd_demo, "impute a built-in synthetic section and compare with baselines", _DESCRIPTIONS["demo"], [
        "demo",
        "demo --n-spots 300 --n-genes 100 --epochs 20 --out demo-small",
    ])
    demo.add_argument("--n-spots", type=_int_at_least(2), default=600, help="spots of the simulated section (default 600)")
    demo.add_argument("--n-genes", type=_int_at_least(1), default=200, help="genes of the simulated section (default 200)")
    demo.add_argument("--out", default="stmcdi-demo", help="folder for the figure (default ./stmcdi-demo)")
    _add_model_args(demo)

    imp = _command(sub, common, cmd_impute, "impute IN.h5ad and write OUT.h5ad", _DESCRIPTIONS["impute"], [
        "impute section.h5ad -o section_imputed.h5ad",
        "impute section.h5ad -o out.h5ad --n-genes 1000 --target zeros --accelerator gpu",
        "impute sections.h5ad -o out.h5ad --library-key sample --save-model model/ --force",
    ])
    imp.add_argument("input", help="input .h5ad with raw counts (NaN = missing) and coordinates")
    imp.add_argument("-o", "--output", required=True, help="output .h5ad (not the input)")
    imp.add_argument("--force", action="store_true", help="replace an existing output (and saved model)")
    imp.add_argument("--spatial-key", default="spatial", help="obsm key of the coordinates (default spatial)")
    imp.add_argument("--library-key", default=None, help="obs column naming the section of each spot")
    imp.add_argument("--n-neighs", type=_int_at_least(1), default=5, help="spatial neighbours per spot (default 5)")
    imp.add_argument("--target", choices=("missing", "zeros"), default="missing",
                     help="fill missing (NaN) entries (default), or also every zero count ('zeros')")
    imp.add_argument("--mask-layer", default=None,
                     help="layer whose nonzero entries mark further entries to fill (as NaN does)")
    imp.add_argument("--save-model", default=None, help="folder to save the trained model to")
    _add_panel_args(imp, default_genes=None)
    _add_model_args(imp, mask_strategy=True)

    bench = _command(sub, common, cmd_benchmark, "held-out benchmark of STMCDI and the baselines on an .h5ad", _DESCRIPTIONS["benchmark"], [
        "benchmark --data section.h5ad --protocol entries --ratio 0.1 --seeds 0 1 2",
        "benchmark --data section.h5ad --protocol entries:0.1 entries:0.6 nonzero spots thin:0.5 --seeds 0 1 2 "
        "--csv results.csv --markdown results.md",
        "benchmark --data section.h5ad --protocol thin:0.5 --no-stmcdi --csv thin.csv",
    ])
    _add_protocol_args(bench)
    bench.add_argument("--methods", nargs="+", default=None, help="subset of methods to run")
    bench.add_argument("--no-stmcdi", action="store_true", help="baselines only")
    bench.add_argument("--no-extras", action="store_true",
                       help="leave out the other tools (MAGIC, scVI, STAGATE) even where installed")
    bench.add_argument("--compare-to", default="stmcdi",
                       help="method compared, seed by seed, against every other (default stmcdi)")
    _add_panel_args(bench, default_genes=1000)
    _add_model_args(bench)

    abl = _command(sub, common, cmd_ablation, "one of the paper's ablations, or the masked-autoencoder control", _DESCRIPTIONS["ablation"], [
        "ablation --study encoder --data section.h5ad --seeds 0 1 2",
        "ablation --study objective --data section.h5ad --protocol entries:0.1 thin:0.5",
        "ablation --study mask-ratio --data section.h5ad --variants 0.1-0.9 0.2 0.6 --csv ratio.csv",
    ])
    abl.add_argument("--study", required=True, choices=("mask-strategy", "mask-phase", "encoder", "mask-ratio",
                                                         "objective", "conditions"),
                     help="which ablation to run")
    abl.add_argument("--variants", nargs="+", default=None,
                     help="subset of the study's variants (default all; the first is the reference)")
    _add_protocol_args(abl)
    _add_panel_args(abl, default_genes=1000)
    _add_model_args(abl)
    return parser


def _fail(message: str, debug: bool) -> int:
    if debug:
        import traceback

        traceback.print_exc()
    print(f"stmcdi: error: {message}", file=sys.stderr, flush=True)
    return 2


def _lightning_config_errors() -> tuple[type, ...]:
    """Lightning's error about the accelerator or devices asked for (a GPU where there is none), once imported."""
    module = sys.modules.get("lightning.fabric.utilities.exceptions")
    return (module.MisconfigurationException,) if module is not None else ()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``stmcdi`` console script.

    Parameters
    ----------
    argv
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    The exit status: 0 on success, 2 for a problem with the options or the input (one line on stderr),
    128 + the signal number when stopped by SIGTERM or SIGINT.

    Examples
    --------
    >>> main(["demo", "--n-spots", "200", "--n-genes", "40", "--epochs", "2"])  # doctest: +SKIP
    """
    args = build_parser().parse_args(argv)
    debug = args.debug or args.verbose >= 2
    with _io.cli_logging(args.verbose, args.quiet), _io.raise_on_signals(), _io.passive_openmp():
        try:
            try:
                return int(args.func(args) or 0)
            except Exception as err:
                if (signum := _io.received_signal()) is not None:  # library code replaced the signal's exception
                    raise Interrupted(signum) from err
                raise
        except UsageError as err:
            return _fail(one_line(err), debug)
        except MemoryError as err:
            return _fail(f"out of memory: {one_line(err)}" if str(err) else "out of memory; select fewer genes "
                         "(--n-genes) or draw fewer samples (--n-samples).", debug)
        except USER_ERRORS as err:
            return _fail(one_line(err), debug)
        except Exception as err:
            if not isinstance(err, _lightning_config_errors()):
                raise
            return _fail(f"{one_line(err)} (check --accelerator and --devices)", debug)
        except Interrupted as err:
            print(f"stmcdi: interrupted by {err}; unfinished outputs were removed.", file=sys.stderr, flush=True)
            return 128 + err.signum


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
