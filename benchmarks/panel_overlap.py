"""How much the gene panel changes when it is chosen after the hold-out, on observed counts only.

Until 2026-11-25 ``stmcdi benchmark`` chose the 1000-gene panel once, on all counts, and held out entries of that
panel; the held-out counts thus took part in choosing the genes (against DESIGN section 5). It now chooses the
panel inside each split, on the masked counts (``evaluate(panel=...)``). This script measures, per section, panel
and protocol, the overlap of the two panels (genes in both / panel size) for the seeds the benchmark uses; no
training involved:

    python benchmarks/panel_overlap.py ../shared/data/stahl2016_mob_rep11.h5ad \
        ../shared/data/stahl2016_breast_cancer_layer2.h5ad ../shared/data/maynard2021_dlpfc_151673_hvg5000.h5ad
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anndata as ad

import stmcdi

PROTOCOLS = (("entries", 0.1), ("nonzero", 0.1), ("thin", 0.5))


def main() -> None:
    """Print, per section / panel / protocol, the fraction of the all-counts panel kept by each split's panel."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="+", help=".h5ad files with raw counts")
    parser.add_argument("--n-genes", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    print("| section | genes | panel | protocol | overlap per seed |")
    print("|---|---|---|---|---|")
    for path in args.data:
        adata = ad.read_h5ad(path)
        for flavor in ("seurat_v3", "cv"):
            ref = adata.copy()
            stmcdi.pp.select_genes(ref, args.n_genes, flavor=flavor)
            before = set(ref.var_names[ref.var["highly_variable"].to_numpy()])
            for protocol, ratio in PROTOCOLS:
                overlaps = []
                for seed in args.seeds:
                    held = stmcdi.benchmark.hold_out(adata, protocol, ratio, seed=seed,
                                                     panel={"n_top_genes": args.n_genes, "flavor": flavor})
                    overlaps.append(len(before & set(held.adata.var_names)) / len(before))
                print(f"| {Path(path).stem} | {adata.n_vars} | {flavor} | {protocol} {ratio:g} | "
                      f"{' / '.join(f'{o:.3f}' for o in overlaps)} |")


if __name__ == "__main__":
    main()
