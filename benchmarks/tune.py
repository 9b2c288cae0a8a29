"""Choose STMCDI's defaults by validation on observed entries, never on the held-out test entries.

For each seed, the test split (``--protocol``, ``--ratio``) is hidden first; from what stays observed a second,
validation split (``--val-protocol``, default ``entries``, 10% of the observed entries, seed ``1000 + seed``) is
hidden too. The 1000-gene panel is chosen on the test split's observed counts (``--panel-before-hold-out``: once
on all counts, as the runs before 2026-11-25 did). Every configuration trains on the data with both splits hidden and is scored on the validation
entries only; the test entries are never imputed or read. The chosen configuration is then the one to run on the test split
with ``stmcdi benchmark``.

    python benchmarks/tune.py --data ../shared/data/stahl2016_mob_rep11.h5ad --configs default steps1000 mask0.6
    python benchmarks/tune.py --data ../shared/data/stahl2016_mob_rep11.h5ad --configs --baselines magic spot_mean
    python benchmarks/tune.py --data ../shared/data/stahl2016_mob_rep11.h5ad --protocol thin --ratio 0.5 \
        --val-protocol thin --val-ratio 0.5 --configs default former   # filling zeros (impute target="zeros")

Configurations are named in CONFIGS below (model arguments, train arguments).
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

import stmcdi
from stmcdi._data import registered_counts
from stmcdi._model import N_SAMPLES
from stmcdi._validation import missing_mask

#: factors on the samples' deviations from their mean, scored for calibration (1.0: the samples as drawn)
SPREAD_SCALES = (1.0, 1.25, 1.5, 1.75, 2.0)

#: impute arguments of every fit: the filled zeros are scored as the network gives them (before the read-outs
#: impute(target="zeros") applies by default: the 2026-12-06 shrink="calibrated", which only moves their RMSE, and
#: the 2026-12-07 smoothing over the expression graph and zero conditioning), so recorded runs reproduce
PLAIN = {"shrink": 1.0, "smooth": 0.0, "zero_dispersion": 0.0}

#: name -> (STMCDI arguments, train arguments); "default" is the package's defaults.
CONFIGS: dict[str, tuple[dict, dict]] = {
    "default": ({}, {}),
    "steps500": ({}, {"max_steps": 500}),
    "steps1000": ({}, {"max_steps": 1000}),
    "steps2000": ({}, {"max_steps": 2000}),
    "steps3000": ({}, {"max_steps": 3000}),
    "mask0.6": ({"mask_ratio": 0.6}, {}),
    "dropout0.1": ({"dropout": 0.1}, {}),
    "channels32": ({"n_channels": 32}, {}),
    "channels96": ({"n_channels": 96}, {}),
    "layers3": ({"n_layers": 3}, {}),
    "latent64": ({"n_latent": 64}, {}),
    "mae": ({"objective": "mae"}, {}),
    "hybrid": ({"objective": "hybrid"}, {}),
    "hybrid0.25": ({"objective": "hybrid", "point_fraction": 0.25}, {}),
    "mask_nonzero": ({"mask_strategy": "nonzero"}, {}),
    "no_spot_features": ({"spot_features": False}, {}),
    "no_expression": ({"n_expression_neighbors": 0}, {}),
    "sighted_neighbors": ({"blind_expression_neighbors": False}, {}),
    "blind_library": ({"blind_library": True}, {}),
    "no_depth": ({"depth_weight": 0.0}, {}),
    "no_expression_no_spot": ({"n_expression_neighbors": 0, "spot_features": False}, {}),
    "expression10": ({"n_expression_neighbors": 10}, {}),
    "expression40": ({"n_expression_neighbors": 40}, {}),
    "readout_zeros": ({"readout_init": "zeros"}, {}),
    "readout_zeros_steps1000": ({"readout_init": "zeros"}, {"max_steps": 1000}),
    "groups10": ({"n_gene_groups": 10}, {}),
    "no_latent_readout": ({"latent_readout": False}, {}),
    # the read-out of the spatial code that the defaults before 2026-12-01 (third session) had with every mask
    "latent_readout": ({"latent_readout": True}, {}),
    "mask_nonzero_no_latent_readout": ({"mask_strategy": "nonzero", "latent_readout": False}, {}),
    "mask_nonzero_expression40": ({"mask_strategy": "nonzero", "n_expression_neighbors": 40}, {}),
    # the defaults before 2026-12-01: spatial conditions only, about 2000 steps on small sections
    "former": ({"n_expression_neighbors": 0, "spot_features": False}, {"max_steps": 2000}),
}


def _train_kwargs(train: dict) -> dict:
    """``max_steps`` -> ``train(max_steps_default=...)``: about that many optimizer steps."""
    train = dict(train)
    steps = train.pop("max_steps", None)
    if steps is not None:
        train["max_steps_default"] = steps
    return {"enable_progress_bar": False, **train}


def validation_split(adata, seed: int, protocol: str = "entries", ratio: float = 0.1, panel: dict | None = None,
                     val_protocol: str = "entries", val_ratio: float = 0.1):
    """The test split of ``seed`` (held out first, never read), then the validation split among its visible entries.

    Returns ``(test, val)`` (:func:`stmcdi.benchmark.hold_out` results); ``val`` is scored, ``val.adata`` trained on.
    """
    test = stmcdi.benchmark.hold_out(adata, protocol, ratio, seed=seed, panel=panel)
    val = stmcdi.benchmark.hold_out(test.adata, val_protocol, val_ratio, seed=1000 + seed)
    return test, val


def _estimates(outputs, r, c):
    """``(label, estimate, draws at the scored entries)`` of each imputation.

    The model's own estimate, and for the first (the fit's own imputation) where it is not the samples' mean,
    that mean and the average of the two; the others share the first's samples.
    """
    for i, (name, out) in enumerate(outputs):
        draws = out["samples"][:, r, c].astype(np.float64)
        sample_mean = out["samples"].mean(0)
        yield name, out["mean"], draws
        if i == 0 and not np.allclose(sample_mean[r, c], out["mean"][r, c]):
            yield f"{name}:sample-mean", sample_mean, draws
            yield f"{name}:blend", 0.5 * (sample_mean + out["mean"]), draws


def one_pass_estimate(model, adata, target, seed, zero_rounds: int = 2) -> np.ndarray:
    """The point estimate of a hybrid fit without its samples: ``impute()`` with one one-step sample.

    The batches are those of ``impute()``'s default ``n_samples`` (the estimate moves by up to ~1e-4 with the
    batch composition, float32 round-off of other batch shapes), so at the fit's settings it equals the fit's
    own ``mean``.
    """
    if model.module.objective != "hybrid":
        raise ValueError("one_pass_estimate needs a hybrid fit: the diffusion model's estimate is its samples' mean.")
    batch_size = max(1, (640 if model.device.type != "cpu" else 160) // N_SAMPLES)
    return model.impute(adata, n_samples=1, n_steps=1, spread_scale=1.0, target=target, inplace=False,
                        seed=seed, batch_size=batch_size, zero_rounds=zero_rounds, **PLAIN)["mean"]


def depth_estimates(model, adata, mean, weights, target, seed):
    """``(weight, estimate)`` of one fit's point estimate at other weights of the spot depth term, no re-sampling.

    The term moves only the point estimate: at weight ``w`` a filled entry is ``max(v + w d_i, 0)``, with ``v``
    the estimate without the term (one pass of the one-pass predictor: ``depth_weight=0`` and a single one-step
    sample, whose value is discarded) and ``d_i`` the spot's depth (:meth:`~stmcdi.STMCDIModule.spot_depth`,
    from the observed log-normalised values). The formula is checked against ``mean``, the fit's own estimate
    at its own weight, before any other weight is scored.
    """
    module = model.module
    w0 = module.depth_weight
    module.depth_weight = 0.0
    try:
        base = one_pass_estimate(model, adata, target, seed).astype(np.float64)
    finally:
        module.depth_weight = w0
    counts, mask = registered_counts(model.get_anndata_manager(adata, required=True))
    missing = missing_mask(counts, mask)
    c = counts.toarray() if sp.issparse(counts) else np.array(counts, dtype=np.float64)
    c[missing.toarray()] = np.nan
    library = np.nansum(c, axis=1)  # from the observed entries, as the model's batches carry it
    with torch.inference_mode():  # the module's own depth term, at weight 1
        ct = torch.as_tensor(c, dtype=torch.float32, device=module.gene_mean.device)
        lt = torch.as_tensor(library, dtype=torch.float32, device=ct.device)
        depth = module.spot_depth(module.scale(ct, lt), ~torch.isnan(ct)).double().cpu().numpy()
    filled = np.isnan(c) if target == "missing" else np.isnan(c) | (c == 0)  # as impute() fills them

    def at(w):
        est = np.where(filled, np.maximum(base + w * depth[:, None], 0.0), base)
        return est.astype(np.float32)

    gap = np.abs(at(w0)[filled] - mean[filled]).max(initial=0.0)
    if gap > 1e-4:
        raise RuntimeError(f"The depth term does not reproduce the fit's estimate at weight {w0} (max gap {gap:.2g}).")
    for w in weights:
        yield float(w), at(float(w))


def format_row(row: dict) -> str:
    """One printed line of a result row: ``key=value``, floats to 4 decimals."""
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def main() -> None:
    """Score each configuration on the validation entries and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--protocol", default="entries")
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--val-protocol", default="entries",
                   help="protocol of the validation split among observed entries (default entries)")
    p.add_argument("--val-ratio", type=float, default=0.1,
                   help="ratio of the validation split (default 0.1; use 0.5 with --val-protocol thin)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--panel", default="seurat_v3", choices=("seurat_v3", "cv"))
    p.add_argument("--panel-before-hold-out", action="store_true",
                   help="choose the 1000-gene panel once on all counts, held-out ones included (how the tuning "
                        "runs before 2026-11-25 were made); default: in each split, on its observed counts")
    p.add_argument("--baselines", nargs="*", default=[],
                   help="also score these methods on the same validation entries (BASELINES names, 'magic', 'scvi')")
    p.add_argument("--csv", default=None)
    p.add_argument("--max-epochs", type=int, default=None, help="override the training length (smoke runs)")
    p.add_argument("--depth-weights", type=float, nargs="*", default=[],
                   help="also score each configuration's fit at these depth weights (STMCDI(depth_weight=...), "
                        "applied to the point estimate only: one fit, its samples, one extra one-pass "
                        "estimate for all weights), as 'config:depthW'")
    p.add_argument("--zero-rounds", type=int, nargs="*", default=[],
                   help="with --val-protocol thin: also score each fit's point estimate with its zeros filled in "
                        "these numbers of rounds (impute(zero_rounds=...); default 2), as 'config:roundsK'")
    args = p.parse_args()
    if args.zero_rounds and args.val_protocol != "thin":
        p.error("--zero-rounds needs --val-protocol thin (the zeros are filled with impute(target='zeros'))")
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    adata = ad.read_h5ad(args.data)
    panel = {"n_top_genes": 1000, "flavor": args.panel}
    if args.panel_before_hold_out:
        stmcdi.pp.select_genes(adata, subset=True, **panel)
        panel = None
    rows = []
    for seed in args.seeds:
        test, val = validation_split(adata, seed, args.protocol, args.ratio, panel, args.val_protocol, args.val_ratio)
        if "thin" not in (args.protocol, args.val_protocol):  # thinning thins the visible counts again
            assert not (val.mask.multiply(test.mask)).nnz  # validation entries are observed in the test split
        target = "zeros" if args.val_protocol == "thin" else "missing"  # as stmcdi.benchmark.evaluate does
        methods = {**stmcdi.benchmark.BASELINES, **stmcdi.benchmark.available_extras()}
        for name in args.baselines:
            s = stmcdi.benchmark.score(val, methods[name](val.adata, seed=seed, target=target))
            row = {"seed": seed, "config": name, **{k: s[k] for k in ("per_gene_pcc", "pcc", "rmse", "mae")}}
            rows.append(row)
            print(format_row(row), flush=True)
        for name in args.configs:
            model_kw, train_kw = CONFIGS[name]
            if args.max_epochs is not None:
                train_kw = {"max_epochs": args.max_epochs}
            method = stmcdi.benchmark.stmcdi_method(model_kw, _train_kwargs(train_kw), PLAIN, samples=True)
            t0 = time.perf_counter()
            out = method(val.adata, seed=seed, target=target)
            seconds = time.perf_counter() - t0
            r, c = val.mask.nonzero()
            outputs = [(name, out)]
            for k in args.zero_rounds:  # the same fit, its zeros filled in another number of rounds
                est = one_pass_estimate(method.last_model, val.adata, target, seed, zero_rounds=k)
                outputs.append((f"{name}:rounds{k}", {"mean": est, "samples": out["samples"]}))
            if args.depth_weights:  # the same fit and the same samples, the point estimate at other weights
                for w, est in depth_estimates(method.last_model, val.adata, out["mean"], args.depth_weights,
                                              target, seed):
                    outputs.append((f"{name}:depth{w:g}", {"mean": est, "samples": out["samples"]}))
            for label, est, draws in _estimates(outputs, r, c):
                s = stmcdi.benchmark.score(val, est)
                row = {"seed": seed, "config": label, **{k: s[k] for k in ("per_gene_pcc", "pcc", "rmse", "mae")},
                       "crps": stmcdi.benchmark.crps_ensemble(val.truth, draws),
                       "coverage_90": stmcdi.benchmark.interval_coverage(val.truth, draws, 0.9)}
                # the samples' spread, scaled by k, around their own mean and around this estimate ("moved")
                for k in SPREAD_SCALES:
                    for where, centre in (("", draws.mean(0)), ("moved_", est[r, c])):
                        d = np.clip(centre + k * (draws - draws.mean(0)), 0.0, None)
                        row[f"crps_{where}x{k}"] = stmcdi.benchmark.crps_ensemble(val.truth, d)
                        row[f"coverage_90_{where}x{k}"] = stmcdi.benchmark.interval_coverage(val.truth, d, 0.9)
                row["seconds"] = seconds
                rows.append(row)
                print(format_row(row), flush=True)
                if args.csv:
                    pd.DataFrame(rows).to_csv(args.csv, index=False)
    df = pd.DataFrame(rows)
    if args.csv:
        df.to_csv(args.csv, index=False)
    if not args.configs:  # baselines only
        print(df.to_string(index=False))
        return
    spread_cols = [c for c in df.columns if c.startswith(("crps_", "coverage_90_"))]
    summary = stmcdi.benchmark.summarize(df.rename(columns={"config": "method"}).assign(protocol="validation"),
                                         metrics=("per_gene_pcc", "rmse", "crps", "coverage_90", "seconds"))
    print(stmcdi.benchmark.to_markdown(summary))
    print("\nSpread scaled by k (mean over seeds):")
    print(df.groupby("config", sort=False)[spread_cols].mean().T.round(4).to_string())


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
