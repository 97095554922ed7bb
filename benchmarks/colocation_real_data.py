"""Co-location on the real sets (examples/real_data.md): what the factors and regions show.

Reads the consensus folders that ``benchmarks/run_real_data.py --via-run`` writes (``<results>/<set>/run/``),
takes the co-location that ``spotmap run`` wrote beside each consensus (``run/mapping/colocation/``; runs
``spotmap colocation`` there with the defaults when it is missing), and prints:

* the factors with their main cell types (cerebellum cluster ids translated to names), and the regions with
  their composition;
* the fit curve over 2-10 factors and the number chosen from other ranges and seeds (how firm the choice is);
* how spatially coherent the regions are: the share of each spot's 6 nearest spots in its own region, against
  the same share after shuffling the regions over the spots (1,000 permutations);

and with ``--figures`` draws ``<set>_colocation_dotplot.png``, ``<set>_colocation_factors.png`` and
``<set>_colocation_regions.png`` (small PNGs for examples/figures/). Maps are drawn with y upwards, as the
RCTD vignettes and the other figures of examples/real_data.md draw them.

    python benchmarks/run_real_data.py --outdir /tmp/real --seeds 0 1 2 --via-run --sets cerebellum hippocampus
    python benchmarks/colocation_real_data.py --results /tmp/real --figures examples/figures
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    env = os.environ.get("SPOTMAP_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def type_names(name: str) -> dict[str, str]:
    """Cerebellum labels are cluster ids (as RCTD's vignette uses them): their names; others unchanged."""
    if name != "cerebellum":
        return {}
    d = pd.read_csv(shared_data() / "spacexr_slideseq_cerebellum" / "reference" / "cell_type_dict.csv")
    return {str(k): v for k, v in zip(d["Cluster"], d["Name"])}


def colocation_folder(run: Path) -> Path:
    out = run / "mapping" / "colocation"
    if not (out / "colocation_factors.csv").exists():
        cmd = [str(Path(sys.executable).parent / "spotmap"), "colocation", "--mapping", str(run / "mapping" / "consensus"),
               "--outdir", str(out)]
        subprocess.run(cmd, check=True)
    return out


def region_coherence(xy: np.ndarray, labels: np.ndarray, k: int = 6, n_perm: int = 1000, seed: int = 0) -> dict:
    """Share of each spot's ``k`` nearest spots in its own region, observed and under shuffled labels."""
    from scipy.spatial import cKDTree

    _, nn = cKDTree(xy).query(xy, k=k + 1)
    nn = nn[:, 1:]
    observed = float((labels[nn] == labels[:, None]).mean())
    rng = np.random.default_rng(seed)
    null = np.array([(p[nn] == p[:, None]).mean() for p in (rng.permutation(labels) for _ in range(n_perm))])
    return {"same_region_share": round(observed, 3), "shuffled_mean": round(float(null.mean()), 3),
            "shuffled_max": round(float(null.max()), 3), "p": float((np.sum(null >= observed) + 1) / (n_perm + 1))}


def main_types(shares: pd.Series, n: int = 4, fmt: str = "{:.2f}", floor: float = 0.0) -> str:
    top = shares.sort_values(ascending=False)
    return ", ".join(f"{t} {fmt.format(v)}" for t, v in top.head(n).items() if v > floor)


def sensitivity(table: pd.DataFrame) -> dict:
    """The fit over 2-10 factors, and the number chosen from other ranges and seeds."""
    from spotmap.colocation import run_colocation

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wide = run_colocation(table, n_factors=(2, 10), seed=0)
        fits = wide.factors.fits.assign(gain_types=lambda f: f["gain_per_factor"] * table.shape[1])
        chosen = {f"{lo}-{hi}, seed {s}": run_colocation(table, n_factors=(lo, hi), seed=s).factors.n_factors
                  for lo, hi in ((2, 10), (3, 30), (5, 30)) for s in (0, 1, 2)}
    return {"fits_2_10": fits[["n_factors", "explained_variance", "gain_types", "stability"]].round(3)
            .to_dict("records"), "chosen": chosen}


def analyse(name: str, results: Path) -> dict:
    import anndata as ad

    from spotmap.colocation import abundance_table

    run = results / name / "run"
    folder = colocation_folder(run)
    names = type_names(name)
    coloc = pd.read_csv(folder / "colocation_factors.csv", index_col=0).rename(index=lambda t: names.get(str(t), t))
    comp = pd.read_csv(folder / "region_composition.csv", index_col=0).rename(columns=lambda t: names.get(str(t), t))
    regions = pd.read_csv(folder / "regions.csv", index_col=0)["region"]
    summary = json.loads((folder / "colocation_summary.json").read_text())
    adata = ad.read_h5ad(run / "mapping" / "consensus" / "sp.h5ad")
    table = abundance_table(adata, "q05").rename(columns=lambda t: names.get(str(t), t))
    share = table.div(table.sum(1).replace(0, np.nan), axis=0).max(1)
    return {
        "folder": str(folder), "spots": int(len(regions)), "types": int(coloc.shape[0]),
        "q05_cells_per_spot_median": round(float(table.sum(1).median()), 2),
        "top_type_share_median": round(float(share.median()), 2),
        "n_factors": summary["n_factors"], "factor_reason": summary["factor_reason"],
        "n_regions": summary["n_regions"], "region_reason": summary["region_reason"],
        "factors": {f: main_types(coloc[f], floor=0.3) for f in coloc.columns},
        "regions": {int(r): {"spots": int((regions == r).sum()), "main": main_types(comp.loc[r])} for r in comp.index},
        "coherence": region_coherence(np.asarray(adata.obsm["spatial"], float), regions.to_numpy()),
        **sensitivity(table),
    }


def draw(name: str, results: Path, figdir: Path) -> None:
    import anndata as ad

    from spotmap.colocation import plots

    folder = results / name / "run" / "mapping" / "colocation"
    names = type_names(name)
    coloc = pd.read_csv(folder / "colocation_factors.csv", index_col=0).rename(index=lambda t: names.get(str(t), t))
    fab = pd.read_csv(folder / "factor_abundance.csv", index_col=0)
    regions = pd.read_csv(folder / "regions.csv", index_col=0)["region"]
    comp = pd.read_csv(folder / "region_composition.csv", index_col=0).rename(columns=lambda t: names.get(str(t), t))
    xy = np.asarray(ad.read_h5ad(folder.parent / "consensus" / "sp.h5ad", backed="r").obsm["spatial"], float)
    xy = xy * np.array([1.0, -1.0])  # y upwards, as RCTD's vignettes draw these sets
    figdir.mkdir(parents=True, exist_ok=True)
    figs = {"dotplot": plots.dotplot_factors(coloc, title=f"{name}: co-location factors"),
            "factors": plots.spatial_factors(fab, xy, ncols=5),
            "regions": _regions_and_composition(plots, regions, xy, comp)}
    import io

    from spotmap.report.content import compact_png

    for kind, fig in figs.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=70, bbox_inches="tight")
        (figdir / f"{name}_colocation_{kind}.png").write_bytes(compact_png(buf.getvalue()))  # 256 colours


def _regions_and_composition(plots, regions: pd.Series, xy: np.ndarray, comp: pd.DataFrame):
    """The region map beside the composition bars, in one figure (both drawn by spotmap.colocation.plots)."""
    from matplotlib.figure import Figure

    import io

    from PIL import Image

    parts = []
    for part in (plots.spatial_regions(regions, xy), plots.composition_bars(comp)):
        buf = io.BytesIO()
        part.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        parts.append(np.asarray(Image.open(buf).convert("RGB")))
    height = max(p.shape[0] for p in parts)
    widths = [p.shape[1] for p in parts]
    fig = Figure(figsize=(sum(widths) / 90, height / 90))
    x = 0.0
    for p, w in zip(parts, widths):
        ax = fig.add_axes((x / sum(widths), 1 - p.shape[0] / height, w / sum(widths), p.shape[0] / height))
        ax.imshow(p)
        ax.set_axis_off()
        x += w
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, required=True, help="the --outdir of run_real_data.py --via-run")
    ap.add_argument("--sets", nargs="+", default=["cerebellum", "hippocampus"])
    ap.add_argument("--figures", type=Path, default=None)
    a = ap.parse_args()
    report = {name: analyse(name, a.results) for name in a.sets}
    print(json.dumps(report, indent=1, default=str))
    (a.results / "colocation.json").write_text(json.dumps(report, indent=1, default=str))
    if a.figures:
        for name in a.sets:
            draw(name, a.results, a.figures)


if __name__ == "__main__":
    main()
