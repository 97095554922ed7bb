"""spotmap on the real paired sets in ../shared/data, against the published (RCTD) results.

Every set goes through the user-facing CLI, one subprocess per step (``spotmap qc`` → ``spotmap
signatures`` → ``spotmap map``), reading the shared files as they are (no edits). Then the agreement
figures are computed from the result folders and printed (and written to OUTDIR/figures.json);
``--figures`` also draws the PNGs used by examples/real_data.md.

    python benchmarks/run_real_data.py --outdir /tmp/real --seeds 0 1 2 --figures examples/figures
    python benchmarks/run_real_data.py --outdir /tmp/real_run --seeds 0 1 2 --via-run   # through `spotmap run`

Defaults: the steps' own default epochs (signatures: min(400, 20000/cells·400); map: up to 3000 with the
convergence rule). ``--signatures-max-epochs`` / ``--map-max-epochs`` fix them instead (the mapping then runs
exactly that many epochs, ``--min-epochs`` too; the tests use 200 / 500).

Parameters per set (see examples/real_data.md for the reasons):

* Slide-seq cerebellum: ``--n-cells-per-location 1.5`` (10 µm beads hold one or two cells; RCTD's doublet
  mode assumes the same), ``--detection-alpha 20``, QC thresholds 0 (beads have a median of 120 UMI over
  378 genes: the Visium defaults 500 UMI / 250 genes would drop every bead);
* Visium hippocampus: ``--n-cells-per-location 8`` (spotmap's default), ``--detection-alpha 20``, QC 0/0
  (the table holds only 276 genes, so min 250 genes would drop most spots);
* MERFISH hypothalamus: ``--n-cells-per-location 1`` (segmented single cells), ``--detection-alpha 20``, QC 0/0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]

#: RCTD (visium_full_regions vignette, full mode) normalized weights of the first six spots (README of the set)
RCTD_HIPPOCAMPUS = pd.DataFrame(
    {"Neurogenesis": [0.2973533, 0.1662856, 0.1972219, 0.3324192, 0.2902799, 0.4253288],
     "Astrocyte": [0.05574455, 0.01127636, 0.06214291, 0.05533508, 0.06701348, 0.04751156]},
    index=["AAAGGGATGTAGCAAG-1", "AAAGGGCAGCTTGAAT-1", "AACAACTGGTAGTTGC-1", "AACCCAGAGACGGAGA-1",
           "AACCGAGCTTGGTCAT-1", "AACGATAGAAGGGCCG-1"])
#: RCTD vignette fig3 (full mode): confident pixels per type, read off the figure (README of the set)
RCTD_CEREBELLUM_CONFIDENT = {"Granule": 15, "Purkinje": 7, "Ependymal": 2, "Golgi": 2, "MLI1": 1, "MLI2": 1,
                             "Oligodendrocytes": 1}


def shared_data() -> Path:
    env = os.environ.get("SPOTMAP_SHARED_DATA")
    d = Path(env) if env else REPO.parent / "shared" / "data"
    if not d.is_dir():
        sys.exit(f"real data not found at {d} (set SPOTMAP_SHARED_DATA)")
    return d


def sets(data: Path) -> dict[str, dict]:
    """Inputs and parameters of each paired set, as a user would give them to the CLI."""
    cb, hc, mf = (data / "spacexr_slideseq_cerebellum", data / "spacexr_visium_hippocampus",
                  data / "spacexr_merfish_hypothalamus")
    return {
        "cerebellum": dict(counts=cb / "spatial/MappedDGEForR.csv", coordinates=cb / "spatial/BeadLocationsForR.csv",
                           reference=cb / "reference/dge.csv", cell_types=cb / "reference/meta_data.csv",
                           labels_key="cluster", n_cells=1.5, alpha=20),
        "hippocampus": dict(counts=hc / "spatial/counts.csv", coordinates=hc / "spatial/coords.csv",
                            reference=hc / "reference/counts.csv", cell_types=hc / "reference/cell_types.csv",
                            labels_key="x", n_cells=8, alpha=20),
        "merfish": dict(counts=mf / "spatial/counts.csv", coordinates=mf / "spatial/coords.csv",
                        reference=mf / "reference/counts.csv", cell_types=mf / "reference/cell_types.csv",
                        labels_key="x", n_cells=1, alpha=20),
    }


def spotmap(*args) -> float:
    """Run one ``spotmap`` step in a subprocess; return its wall time (s)."""
    cmd = [str(Path(sys.executable).parent / "spotmap"), *map(str, args)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def run_set(name: str, spec: dict, out: Path, seeds: list[int], sig_epochs: int | None,
            map_epochs: int | None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    times = {}
    times["qc"] = spotmap("qc", "--sample", name, "--input", spec["counts"], "--coordinates", spec["coordinates"],
                          "--outdir", out / "qc", "--min-counts", 0, "--min-genes", 0,
                          "--reference", spec["reference"], "--cell-types", spec["cell_types"],
                          "--labels-key", spec["labels_key"])
    sig = ["signatures", "--reference", spec["reference"], "--cell-types", spec["cell_types"],
           "--labels-key", spec["labels_key"], "--outdir", out / "signatures", "--no-progress", "--no-umap"]
    times["signatures"] = spotmap(*sig, *(["--max-epochs", sig_epochs] if sig_epochs else []))
    times["map"] = []
    for seed in seeds:
        args = ["map", "--spatial", out / "qc" / f"{name}.h5ad", "--signatures", out / "signatures" / "signatures.csv",
                "--outdir", out / f"map_{seed}", "--seed", seed, "--n-cells-per-location", spec["n_cells"],
                "--detection-alpha", spec["alpha"], "--checkpoint-every", 0]
        fixed = ["--max-epochs", map_epochs, "--min-epochs", map_epochs] if map_epochs else []  # exactly map_epochs
        times["map"].append(spotmap(*args, *fixed))
    return times


def run_set_pipeline(name: str, spec: dict, out: Path, seeds: list[int], sig_epochs: int | None,
                     map_epochs: int | None, qc_zero: bool) -> dict:
    """The same set through ``spotmap run`` (restarts = seeds, consensus included); map_<seed> links to the
    restart folders and ``consensus`` to the consensus, so the figure functions read either."""
    out.mkdir(parents=True, exist_ok=True)
    sheet = out / "samplesheet.csv"
    sheet.write_text(f"sample,counts,coordinates\n{name},{spec['counts']},{spec['coordinates']}\n")
    args = ["run", "--samplesheet", sheet, "--reference", spec["reference"], "--cell-types", spec["cell_types"],
            "--labels-key", spec["labels_key"], "--outdir", out / "run", "--restarts", len(seeds), "--seed", seeds[0],
            "--n-cells-per-location", spec["n_cells"], "--detection-alpha", spec["alpha"]]
    if qc_zero:
        args += ["--qc-min-counts", 0, "--qc-min-genes", 0]
    if sig_epochs:
        args += ["--signatures-max-epochs", sig_epochs]
    if map_epochs:
        args += ["--map-max-epochs", map_epochs]
    t = spotmap(*args)
    for s in seeds:
        link = out / f"map_{s}"
        if not link.exists():
            link.symlink_to(out / "run" / "mapping" / f"restart_{s}")
    if not (out / "consensus").exists():
        (out / "consensus").symlink_to(out / "run" / "mapping" / "consensus")
    return {"run": t}


# ------------------------------------------------------------------------------------------------ figures
def load(result: Path):
    import anndata as ad

    from spotmap.results import table

    res = ad.read_h5ad(result / "sp.h5ad")
    return res, table(res, "means"), table(res, "q05")


def cerebellum_names(data: Path) -> pd.Series:
    d = pd.read_csv(data / "spacexr_slideseq_cerebellum/reference/cell_type_dict.csv", index_col=0)["Name"]
    d.index = d.index.astype(str)
    return d


def confident_counts(w: pd.DataFrame, share: float = 0.5) -> pd.Series:
    """Beads whose top type holds more than ``share`` of the bead's abundance, counted by that type."""
    p = w.div(w.sum(1), axis=0)
    return w.idxmax(1)[p.max(1) > share].value_counts()


def cerebellum_figures(result: Path, data: Path) -> dict:
    res, means, q05 = load(result)
    names = cerebellum_names(data)
    means, q05 = means.rename(columns=names), q05.rename(columns=names)
    rank_q05 = q05.sum().rank(ascending=False, method="min")
    rank_means = means.sum().rank(ascending=False, method="min")
    conf = confident_counts(q05)
    return {"spots": res.n_obs, "genes": res.n_vars, "epochs": res.uns["mod"].get("epochs"),
            "top_q05": q05.sum().idxmax(), "top_means": means.sum().idxmax(),
            "purkinje_rank_q05": int(rank_q05["Purkinje"]), "purkinje_rank_means": int(rank_means["Purkinje"]),
            "total_q05": q05.sum().sort_values(ascending=False).round(2).head(6).to_dict(),
            "total_means": means.sum().sort_values(ascending=False).round(2).head(6).to_dict(),
            "confident_q05": {k: int(v) for k, v in conf.items()},
            "dominant_means": {k: int(v) for k, v in means.idxmax(1).value_counts().items()},
            "detection_y_s_mean": float(res.obs["detection_y_s"].mean()),
            "detection_level_d_e": res.uns["mod"].get("globals", {}).get("y_e"),
            "detection_mean_cell2location": res.uns["mod"].get("globals", {}).get("detection_mean_cell2location")}


def hippocampus_props(result: Path) -> pd.DataFrame:
    res, means, _ = load(result)
    p = means.div(means.sum(1), axis=0)
    p.index = res.obs["barcode"].astype(str).to_numpy()
    return p


def hippocampus_figures(result: Path) -> dict:
    p = hippocampus_props(result)
    ours = p.loc[RCTD_HIPPOCAMPUS.index, RCTD_HIPPOCAMPUS.columns]
    pooled = float(np.corrcoef(ours.to_numpy().ravel(), RCTD_HIPPOCAMPUS.to_numpy().ravel())[0, 1])
    per_type = {c: float(np.corrcoef(ours[c], RCTD_HIPPOCAMPUS[c])[0, 1]) for c in RCTD_HIPPOCAMPUS}
    return {"pearson_pooled": pooled, "pearson_per_type": per_type,
            "spotmap_weights": ours.round(4).to_dict(orient="index"),
            "ratio_spotmap_over_rctd": (ours / RCTD_HIPPOCAMPUS).mean().round(3).to_dict(),
            "top_share_median_means": float(p.max(1).median())}


def merfish_figures(result: Path) -> dict:
    res, means, q05 = load(result)
    out = {"cells": res.n_obs, "genes": res.n_vars, "epochs": res.uns["mod"].get("epochs"),
           "detection_y_s_mean": float(res.obs["detection_y_s"].mean()),
           "total_cell_abundance_median": float(res.obs["total_cell_abundance"].median())}
    for k, w in (("q05", q05), ("means", means)):
        top = w.div(w.sum(1), axis=0).max(1)
        out[f"top_share_median_{k}"] = float(top.median())
        out[f"frac_top_share_over_half_{k}"] = float((top > 0.5).mean())
    out["dominant_q05"] = {k: int(v) for k, v in q05.idxmax(1).value_counts().items()}
    return out


# ------------------------------------------------------------------------------------------------ plots
def draw(root: Path, data: Path, figdir: Path, which: str) -> None:
    """The three PNGs of examples/real_data.md from the result folders ``root/<set>/<which>``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figdir.mkdir(parents=True, exist_ok=True)
    # cerebellum: dominant type per bead (q05) and confident-bead counts next to RCTD's
    res, _, q05 = load(root / "cerebellum" / which)
    q05 = q05.rename(columns=cerebellum_names(data))
    xy = res.obsm["spatial"]
    dom = q05.idxmax(1)
    conf = confident_counts(q05)
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    types = dom.value_counts().index
    cmap = plt.get_cmap("tab20")
    for i, t in enumerate(types):
        m = (dom == t).to_numpy()
        ax[0].scatter(xy[m, 0], xy[m, 1], s=28, color=cmap(i % 20), label=f"{t} ({m.sum()})")
    ax[0].set_title("Slide-seq cerebellum: dominant type per bead (q05)")
    ax[0].legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    ax[0].set_aspect("equal")
    ax[0].set_xticks([]), ax[0].set_yticks([])
    names = list(dict.fromkeys(list(conf.index) + list(RCTD_CEREBELLUM_CONFIDENT)))
    x = np.arange(len(names))
    ax[1].bar(x - 0.2, [conf.get(n, 0) for n in names], 0.4, label="spotmap (q05 share > 0.5)")
    ax[1].bar(x + 0.2, [RCTD_CEREBELLUM_CONFIDENT.get(n, 0) for n in names], 0.4, label="RCTD vignette (confident)")
    ax[1].set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax[1].set_ylabel("beads")
    ax[1].set_title("Confidently assigned beads per type")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(figdir / "cerebellum.png", dpi=80)
    plt.close(fig)

    # hippocampus: spotmap proportions vs RCTD weights for the six published spots; maps of the two types
    res, means, _ = load(root / "hippocampus" / which)
    p = hippocampus_props(root / "hippocampus" / which)
    ours = p.loc[RCTD_HIPPOCAMPUS.index, RCTD_HIPPOCAMPUS.columns]
    fig, ax = plt.subplots(1, 3, figsize=(13, 4))
    for c, mk in zip(RCTD_HIPPOCAMPUS.columns, ("o", "s")):
        ax[0].scatter(RCTD_HIPPOCAMPUS[c], ours[c], marker=mk, label=c)
    lim = [0, max(RCTD_HIPPOCAMPUS.to_numpy().max(), ours.to_numpy().max()) * 1.1]
    ax[0].plot(lim, lim, "k:", lw=1)
    ax[0].set_xlabel("RCTD normalized weight (published)")
    ax[0].set_ylabel("spotmap proportion (posterior mean)")
    ax[0].set_title("Six published spots")
    ax[0].legend(fontsize=8)
    xy = res.obsm["spatial"]
    for a, c in zip(ax[1:], RCTD_HIPPOCAMPUS.columns):
        sc = a.scatter(xy[:, 0], -xy[:, 1], c=p[c].to_numpy(), s=14, cmap="viridis")
        a.set_title(f"spotmap proportion: {c}")
        a.set_aspect("equal")
        a.set_xticks([]), a.set_yticks([])
        fig.colorbar(sc, ax=a, shrink=0.8)
    fig.tight_layout()
    fig.savefig(figdir / "hippocampus.png", dpi=80)
    plt.close(fig)

    # MERFISH: top-type share per cell (vs Visium spots), dominant type map
    res, means, q05 = load(root / "merfish" / which)
    hp = hippocampus_props(root / "hippocampus" / which)
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.2))
    bins = np.linspace(0, 1, 21)
    for w, lab in ((q05, "MERFISH cells, q05"), (means, "MERFISH cells, means")):
        ax[0].hist(w.div(w.sum(1), axis=0).max(1), bins=bins, histtype="step", lw=2, density=True, label=lab)
    ax[0].hist(hp.max(1), bins=bins, histtype="step", lw=2, density=True, ls="--", label="Visium spots, means")
    ax[0].set_xlabel("share of the top cell type in a cell / spot")
    ax[0].set_ylabel("density")
    ax[0].legend(fontsize=8)
    ax[0].set_title("One type per MERFISH cell?")
    xy = res.obsm["spatial"]
    dom = q05.idxmax(1)
    for i, t in enumerate(dom.value_counts().index):
        m = (dom == t).to_numpy()
        ax[1].scatter(xy[m, 0], xy[m, 1], s=8, color=cmap(i % 20), label=f"{t} ({m.sum()})")
    ax[1].set_aspect("equal")
    ax[1].set_xticks([]), ax[1].set_yticks([])
    ax[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    ax[1].set_title("MERFISH: dominant type per cell (q05)")
    fig.tight_layout()
    fig.savefig(figdir / "merfish.png", dpi=80)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outdir", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--signatures-max-epochs", type=int, default=None)
    ap.add_argument("--map-max-epochs", type=int, default=None)
    ap.add_argument("--sets", nargs="+", default=["cerebellum", "hippocampus", "merfish"])
    ap.add_argument("--figures", type=Path, default=None, help="write the PNGs here (needs all three sets)")
    ap.add_argument("--skip-run", action="store_true", help="only compute figures from an earlier --outdir")
    ap.add_argument("--via-run", action="store_true",
                    help="use `spotmap run` (restarts = --seeds, QC 0/0 for Slide-seq and MERFISH) instead of "
                         "the steps; also reports the consensus")
    a = ap.parse_args()
    data = shared_data()
    specs = sets(data)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.platform(), "cpus": os.cpu_count(),
              "seeds": a.seeds, "signatures_max_epochs": a.signatures_max_epochs, "map_max_epochs": a.map_max_epochs,
              "sets": {}}
    fig_fn = {"cerebellum": lambda r: cerebellum_figures(r, data), "hippocampus": hippocampus_figures,
              "merfish": merfish_figures}
    for name in a.sets:
        if a.skip_run:
            times = None
        elif a.via_run:
            times = run_set_pipeline(name, specs[name], a.outdir / name, a.seeds, a.signatures_max_epochs,
                                     a.map_max_epochs, qc_zero=name != "hippocampus")
        else:
            times = run_set(name, specs[name], a.outdir / name, a.seeds, a.signatures_max_epochs, a.map_max_epochs)
        per_seed = {s: fig_fn[name](a.outdir / name / f"map_{s}") for s in a.seeds}
        if (a.outdir / name / "consensus").exists():
            per_seed["consensus"] = fig_fn[name](a.outdir / name / "consensus")
        report["sets"][name] = {"times_s": times, "per_seed": per_seed}
        print(f"== {name}  (times: {times})")
        for s, f in per_seed.items():
            print(f"  seed {s}: {json.dumps(f, default=float)}")
    (a.outdir / "figures.json").write_text(json.dumps(report, indent=2, default=float))
    if a.figures:
        which = "consensus" if (a.outdir / "cerebellum" / "consensus").exists() else f"map_{a.seeds[0]}"
        draw(a.outdir, data, a.figures, which)
        print(f"figures in {a.figures}")


if __name__ == "__main__":
    main()
