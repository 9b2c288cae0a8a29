"""The accuracy table of the Benchmarks page: STMCDI against self-tuned baselines on the five shared sections.

For each section (1000 ``seurat_v3`` HVG chosen inside each split, or every gene where the section has fewer), each
protocol (``entries`` 10%, fair ``thin`` 50%) and each seed, every method imputes the same masked data and is told the
same things (:func:`stmcdi.benchmark.evaluate`); STMCDI runs with its defaults and is reported with its network alone
(``stmcdi:network``). Rows are appended to the CSV as they are scored, and a run picks up where an earlier one
stopped. ``--table`` prints the Markdown table of the page from the CSV.

    OMP_NUM_THREADS=2 python benchmarks/accuracy.py --csv benchmarks/results/accuracy.csv
    python benchmarks/accuracy.py --csv benchmarks/results/accuracy.csv --table

After a change of STMCDI's defaults, remove its rows (methods ``stmcdi`` and ``stmcdi:network``) from the CSV and
add ``--stmcdi-only``: the baselines' rows, which do not depend on it, are kept.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

import stmcdi
from stmcdi.benchmark import BASELINES, available_extras, evaluate, stmcdi_method

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SECTIONS = {
    "mouse olfactory bulb (ST)": "stahl2016_mob_rep11.h5ad",
    "breast cancer (ST)": "stahl2016_breast_cancer_layer2.h5ad",
    "DLPFC (Visium)": "maynard2021_dlpfc_151673_hvg5000.h5ad",
    "mouse brain window (Visium)": "giotto_visium_mouse_brain_dg_mini.h5ad",
    "lung crop (CosMx)": "giotto_cosmx_lung12_mini.h5ad",
}
PROTOCOLS = (("entries", 0.1), ("thin", 0.5))


def methods(with_scvi: bool) -> dict:
    """Every baseline, MAGIC (and scVI) where installed, and STMCDI with its defaults."""
    out = dict(BASELINES)
    for name, fn in available_extras().items():
        if name == "magic" or (name == "scvi" and with_scvi):
            out[name] = fn
    out["stmcdi"] = stmcdi_method(samples=True)
    return out


def run(csv: Path, sections: list[str], seeds: list[int], with_scvi: bool, data: Path,
        stmcdi_only: bool = False) -> None:
    """Evaluate every (section, protocol, seed) not yet in ``csv``, appending rows as they are scored.

    With ``stmcdi_only``, STMCDI alone runs, on the cells that have no STMCDI row.
    """
    done = pd.read_csv(csv) if csv.exists() else pd.DataFrame(columns=["section", "protocol", "seed", "method"])
    if stmcdi_only:
        done = done[done["method"] == "stmcdi"]
    for label in sections:
        adata = ad.read_h5ad(data / SECTIONS[label])
        panel = {"n_top_genes": 1000, "flavor": "seurat_v3"} if adata.n_vars > 1000 else None
        for protocol, ratio in PROTOCOLS:
            for seed in seeds:
                if ((done["section"] == label) & (done["protocol"] == protocol) & (done["seed"] == seed)).any():
                    continue

                def write(row, label=label):
                    pd.DataFrame([{"section": label, **row}]).to_csv(csv, mode="a", header=not csv.exists(),
                                                                      index=False)

                chosen = methods(with_scvi)
                if stmcdi_only:
                    chosen = {"stmcdi": chosen["stmcdi"]}
                evaluate(adata, chosen, protocols=[(protocol, ratio)], seeds=[seed], panel=panel,
                         on_result=write)


def table(csv: Path) -> str:
    """Mean over seeds per section, protocol and method; STMCDI against the best baseline, with the margin.

    The per-gene PCC margin carries the standard deviation over seeds of the paired (same split) difference.
    """
    df = pd.read_csv(csv)
    rows = []
    for (section, protocol), grp in df.groupby(["section", "protocol"], sort=False):
        mean = grp.groupby("method")[["per_gene_pcc", "rmse", "seconds"]].mean()
        n = grp.groupby("method")["seed"].nunique().min()
        base = mean.drop(index=[m for m in mean.index if m.startswith("stmcdi")])
        best_pcc, best_rmse = base["per_gene_pcc"].idxmax(), base["rmse"].idxmin()
        s, net = mean.loc["stmcdi"], mean.loc["stmcdi:network"]
        paired = grp.pivot(index="seed", columns="method", values="per_gene_pcc")
        wins = int((paired["stmcdi"] > paired[best_pcc]).sum())
        sd = float((paired["stmcdi"] - paired[best_pcc]).std(ddof=1)) if n > 1 else float("nan")
        dp, dr = s["per_gene_pcc"] - base.loc[best_pcc, "per_gene_pcc"], s["rmse"] - base.loc[best_rmse, "rmse"]
        rows.append({
            "section": section, "protocol": protocol, "seeds": n,
            "STMCDI per-gene PCC / RMSE": f"{s['per_gene_pcc']:.4f} / {s['rmse']:.4f}",
            "network alone": f"{net['per_gene_pcc']:.4f} / {net['rmse']:.4f}",
            "best baseline per-gene PCC": f"{best_pcc} {base.loc[best_pcc, 'per_gene_pcc']:.4f}",
            "best baseline RMSE": f"{best_rmse} {base.loc[best_rmse, 'rmse']:.4f}",
            "STMCDI - best": f"{dp:+.4f} ± {sd:.4f} ({wins}/{n} seeds) / {dr:+.4f}",
            "holds": "yes" if dp > 0 and dr <= 0 else "no",
            "seconds STMCDI / best": f"{s['seconds']:.0f} / {base.loc[best_pcc, 'seconds']:.0f}",
        })
    return stmcdi.benchmark.to_markdown(pd.DataFrame(rows))


def main() -> None:
    """Command line: run the missing cells, or print the table (``--table``)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", type=Path, required=True, help="results file (appended to; resumed from)")
    p.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=list(SECTIONS))
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--scvi", action="store_true", help="also run scVI (slow)")
    p.add_argument("--data", type=Path, default=DATA, help="folder of the .h5ad files (default ../shared/data)")
    p.add_argument("--table", action="store_true", help="print the Markdown table from the CSV and exit")
    p.add_argument("--stmcdi-only", action="store_true", help="run STMCDI alone, where the CSV has no STMCDI row")
    args = p.parse_args()
    if args.table:
        print(table(args.csv))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    np.seterr(all="ignore")
    run(args.csv, args.sections, args.seeds, args.scvi, args.data, args.stmcdi_only)
    print(table(args.csv))


if __name__ == "__main__":
    main()
