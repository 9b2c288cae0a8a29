"""How many genes the per-gene PCC is a median of, per section, gene panel and hold-out protocol.

``benchmark.score`` takes the per-gene PCC over genes with at least 10 held-out entries. Under ``nonzero`` on a
shallow section few genes of a sparse panel have 10 nonzero held-out entries, so the headline rests on a handful
of genes there. This script counts them for the splits the benchmark uses (seeds 0-2, panel chosen in each split on
its observed counts), no training involved:

    python benchmarks/scored_genes.py ../shared/data/stahl2016_mob_rep11.h5ad \
        ../shared/data/stahl2016_breast_cancer_layer2.h5ad
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anndata as ad
import numpy as np

import stmcdi

PROTOCOLS = (("entries", 0.1), ("nonzero", 0.1), ("thin", 0.5))


def main() -> None:
    """Print, per section / panel / protocol, the genes with >= ``--min-entries`` held-out entries per seed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="+", help=".h5ad files with raw counts")
    parser.add_argument("--n-genes", type=int, default=1000)
    parser.add_argument("--min-entries", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--panel-before-hold-out", action="store_true",
                        help="choose the panel once on all counts (the tables before 2026-11-25); default: in "
                             "each split, on its observed counts, as `stmcdi benchmark` does")
    args = parser.parse_args()
    print("| section | panel | protocol | genes scored per seed |")
    print("|---|---|---|---|")
    for path in args.data:
        for panel in ("seurat_v3", "cv"):
            adata = ad.read_h5ad(path)
            choice = {"n_top_genes": args.n_genes, "flavor": panel}
            if args.panel_before_hold_out:
                stmcdi.pp.select_genes(adata, subset=True, **choice)
                choice = None
            for protocol, ratio in PROTOCOLS:
                counts = []
                for seed in args.seeds:
                    held = stmcdi.benchmark.hold_out(adata, protocol, ratio, seed=seed, panel=choice)
                    counts.append(int((np.asarray(held.mask.sum(0)).ravel() >= args.min_entries).sum()))
                print(f"| {Path(path).stem} | {panel} | {protocol} {ratio:g} | {' / '.join(map(str, counts))} |")


if __name__ == "__main__":
    main()
