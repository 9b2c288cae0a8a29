"""Filling zeros: hide every zero at once, or fill them in rounds? Scored on validation entries only.

``impute(target="zeros", zero_rounds=1)`` hides every zero count from the encoder and the condition at once. On a shallow
section that is most of the matrix, a mask the model never trained on (it trains with 10-90% of the observed
entries of a spot hidden at random) and one that tells it nothing about which entries were zeros. The
alternative fills the zeros in ``K`` rounds: the zeros are split at random into ``K`` groups and each group is
imputed (``impute(target=group)``) with every other entry, zeros included, visible: what
``impute(target="zeros")`` does since this comparison (``zero_rounds=2``, its own random groups).

For each seed the test split (``thin`` 50%, gene panel chosen on its visible counts) is hidden first and never
read; its visible counts are thinned again (``thin`` 50%, seed ``1000 + seed``) to make a validation split.
STMCDI (defaults) trains on the twice-thinned counts and fills their zeros both ways; MAGIC (when installed)
and low-rank completion are scored on the same validation entries for reference:

    python benchmarks/zeros_rounds.py --data ../shared/data/stahl2016_mob_rep11.h5ad --seeds 0 --rounds 2 5
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from functools import partial

import anndata as ad
import numpy as np
import scvi

import stmcdi
from stmcdi import STMCDI


def fill_in_rounds(model: STMCDI, k: int, seed: int, n_samples: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Fill the zeros of the model's AnnData in ``k`` rounds; returns the estimate and the samples."""
    X = model.adata.X
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    zeros = X == 0
    group = np.random.default_rng([seed, k]).integers(0, k, size=X.shape)
    mean = samples = None
    for g in range(k):
        target = zeros & (group == g)
        out = model.impute(target=target, inplace=False, return_samples=True, seed=seed + g, n_samples=n_samples)
        if mean is None:
            mean, samples = out["mean"].copy(), out["samples"].copy()
        else:
            mean[target] = out["mean"][target]
            samples[:, target] = out["samples"][:, target]
    return mean, samples


def _report(val, seed: int, name: str, mean: np.ndarray, samples: np.ndarray | None = None,
            seconds: float = 0.0) -> None:
    """Print the scores of one way of filling on the validation entries."""
    bm = stmcdi.benchmark
    s = bm.score(val, mean)
    extra = ""
    if samples is not None:
        r, c = val.mask.nonzero()
        d = samples[:, r, c]
        extra = f" CRPS {bm.crps_ensemble(val.truth, d):.4f} cov90 {bm.interval_coverage(val.truth, d, 0.9):.3f}"
    print(f"seed {seed} {name}: per-gene PCC {s['per_gene_pcc']:.4f} pooled PCC {s['pcc']:.4f} "
          f"RMSE {s['rmse']:.4f}{extra} ({seconds:.0f} s)", flush=True)


def main() -> None:
    """Print one line per seed and way of filling: per-gene PCC, pooled PCC, RMSE, CRPS, 90% coverage."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--rounds", type=int, nargs="+", default=[2, 5])
    p.add_argument("--panel", default="seurat_v3", choices=("seurat_v3", "cv"))
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    adata = ad.read_h5ad(args.data)
    bm = stmcdi.benchmark
    for seed in args.seeds:
        test = bm.hold_out(adata, "thin", 0.5, seed=seed, panel={"n_top_genes": 1000, "flavor": args.panel})
        val = bm.hold_out(test.adata, "thin", 0.5, seed=1000 + seed)
        report = partial(_report, val, seed)
        refs = {"low_rank": bm.BASELINES["low_rank"], **{k: v for k, v in bm.available_extras().items() if k == "magic"}}
        for name, method in refs.items():
            t0 = time.perf_counter()
            report(name, method(val.adata, seed=seed, target="zeros"), seconds=time.perf_counter() - t0)
        work = val.adata.copy()
        scvi.settings.seed = seed
        STMCDI.setup_anndata(work)
        model = STMCDI(work)
        t0 = time.perf_counter()
        model.train(enable_progress_bar=False)
        print(f"seed {seed}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
        t0 = time.perf_counter()
        out = model.impute(target="zeros", zero_rounds=1, inplace=False, return_samples=True, seed=seed, shrink=1.0,
                             smooth=0.0, zero_dispersion=0.0)
        report("stmcdi all zeros at once", out["mean"], out["samples"], time.perf_counter() - t0)
        for k in args.rounds:
            t0 = time.perf_counter()
            mean, samples = fill_in_rounds(model, k, seed)
            report(f"stmcdi {k} rounds", mean, samples, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
