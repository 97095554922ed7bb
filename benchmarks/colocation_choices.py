"""The measurements behind the co-location analysis's defaults (docs/colocation.md, issue 24).

On structured tissues with known co-located groups and regions (:mod:`spotmap.colocation.synthetic`;
5 designs × 3 seeds, 2,000–5,000 spots, 14–59 types), prints:

1. ``scaling`` — NMF at the true factor number on raw abundances (cell2location) or with each type
   divided by its standard deviation, from 5 random starts (best kept) or one nndsvda start: adjusted
   Rand index (ARI) of each type's dominant factor against its true group, and of each spot's dominant
   factor against its true region;
2. ``restarts`` — 1, 3 or 5 random starts per factor number: how often the factor-number rule finds the
   true number, and the type ARI at the true number;
3. ``rules`` — the factor number chosen by the variance-gain rule (the default) and by the largest
   stability across restarts, against the truth;
4. ``regions`` — k-means on each spot's share of cells per factor, per type, or per type after scaling
   types to equal sd: the number of regions chosen by silhouette and the ARI against the true regions;
5. ``bins`` — Visium HD-like bins (50,000 bins × 40 types, 0–3 cells each): neighbourhood mean over
   0, 8 or 24 neighbours.

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/colocation_choices.py [--parts scaling,restarts,...]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score as ari

from spotmap.colocation import ColocationSettings, run_colocation
from spotmap.colocation.clustering import assign, choose_n_regions, proportions, region_fits
from spotmap.colocation.nmf import choose_n_factors, factor_tables, fit_range, type_scale
from spotmap.colocation.run import find_factors
from spotmap.colocation.synthetic import structured_tissue

DESIGNS = [dict(n_spots=2000, n_groups=4, types_per_group=3, n_widespread=2),
           dict(n_spots=2000, n_groups=6, types_per_group=3, n_widespread=3, layout="patches"),
           dict(n_spots=3000, n_groups=5, types_per_group=4, n_widespread=4, layout="bands", n_samples=2),
           dict(n_spots=5000, n_groups=8, types_per_group=6, n_widespread=11, layout="patches"),
           dict(n_spots=5000, n_groups=10, types_per_group=5, n_widespread=9, layout="patches", cells_per_spot=20)]
SEEDS = (1, 2, 3)


def _cases():
    for d, design in enumerate(DESIGNS):
        for seed in SEEDS:
            yield d, seed, design["n_groups"], structured_tissue(seed=seed, **design)


def _type_ari(t, coloc: np.ndarray) -> float:
    g = t.type_group.to_numpy()
    return ari(g[g >= 0], coloc.argmax(1)[g >= 0])


def part_scaling() -> pd.DataFrame:
    rows = []
    for d, seed, k, t in _cases():
        x = t.abundance.to_numpy()
        for scale in ("raw", "sd"):
            div = type_scale(x) if scale == "sd" else np.ones(x.shape[1])
            for init, n_starts in (("random", 5), ("nndsvda", 1)):
                best = None
                for r in range(n_starts):
                    m = NMF(k, init=init, solver="cd", alpha_W=0.01, alpha_H="same", l1_ratio=0.5, max_iter=1000,
                            random_state=r)
                    w = m.fit_transform(x / div)
                    if best is None or m.reconstruction_err_ < best[0]:
                        best = (m.reconstruction_err_, w, m.components_ * div)
                coloc, fab = factor_tables(best[1], best[2], t.abundance.index, t.abundance.columns)
                rows.append({"design": d, "scale": scale, "init": f"{init}×{n_starts}",
                             "type_ari": _type_ari(t, coloc.to_numpy()),
                             "spot_ari": ari(t.region, fab.to_numpy().argmax(1))})
    df = pd.DataFrame(rows)
    return df.groupby(["scale", "init"])[["type_ari", "spot_ari"]].agg(["mean", "min"])


def part_restarts() -> pd.DataFrame:
    rows = []
    for n_restarts in (1, 3, 5):
        s = ColocationSettings(n_restarts=n_restarts)
        c0 = time.process_time()
        for d, seed, k, t in _cases():
            x = t.abundance.to_numpy()
            table, fits = fit_range(x, range(2, k + 5), 0, s)
            chosen, _ = choose_n_factors(table, x.shape[1], s.gain_threshold)
            coloc, _ = factor_tables(fits[k].w_sr, fits[k].h_rf, t.abundance.index, t.abundance.columns)
            rows.append({"restarts": n_restarts, "right_number": chosen == k,
                         "type_ari_at_truth": _type_ari(t, coloc.to_numpy())})
        rows[-1]["cpu_s_all_cases"] = time.process_time() - c0
    df = pd.DataFrame(rows)
    return df.groupby("restarts").agg(right=("right_number", "sum"), cases=("right_number", "size"),
                                      type_ari_mean=("type_ari_at_truth", "mean"),
                                      type_ari_min=("type_ari_at_truth", "min"), cpu_s=("cpu_s_all_cases", "max"))


def part_rules() -> pd.DataFrame:
    s = ColocationSettings()
    rows = []
    for d, seed, k, t in _cases():
        x = t.abundance.to_numpy()
        table, _ = fit_range(x, range(2, k + 5), 0, s)
        chosen, _ = choose_n_factors(table, x.shape[1], s.gain_threshold)
        by_stability = int(table.loc[table["stability"].idxmax(), "n_factors"])
        rows.append({"design": d, "seed": seed, "truth": k, "gain_rule": chosen, "max_stability": by_stability,
                     "gain_at_truth_types": table.set_index("n_factors")["gain_per_factor"].get(k) * x.shape[1],
                     "gain_past_truth_types": table.set_index("n_factors")["gain_per_factor"].get(k + 1) * x.shape[1]})
    return pd.DataFrame(rows)


def part_regions() -> pd.DataFrame:
    rows = []
    for d, seed, k, t in _cases():
        x = t.abundance.to_numpy()
        fab = find_factors(t.abundance, k).factor_abundance.to_numpy()
        for name, feats in (("factors", proportions(fab)), ("types", proportions(x)),
                            ("types_scaled", proportions(x / type_scale(x)))):
            table, models = region_fits(feats, range(2, 13))
            chosen, _ = choose_n_regions(table)
            rows.append({"features": name, "right_number": chosen == k, "ari": ari(t.region, assign(models[chosen], feats))})
    df = pd.DataFrame(rows)
    return df.groupby("features").agg(right=("right_number", "sum"), cases=("right_number", "size"),
                                      ari_mean=("ari", "mean"), ari_min=("ari", "min"))


def part_bins() -> pd.DataFrame:
    rows = []
    for cells in (1.5, 0.8):
        t = structured_tissue(n_spots=50_000, n_groups=6, types_per_group=5, n_widespread=10, layout="patches",
                              cells_per_bin=cells, seed=2)
        for nn in (None, 8, 24):
            c0 = time.process_time()
            res = run_colocation(t.abundance, t.coords, t.samples, n_factors=(4, 10),
                                 settings=ColocationSettings(n_neighbours=nn))
            rows.append({"cells_per_bin": cells, "n_neighbours": nn or 0, "n_factors": res.factors.n_factors,
                         "type_ari": _type_ari(t, res.factors.colocation_factors.to_numpy()),
                         "n_regions": res.regions.n_regions, "region_ari": ari(t.region, res.regions.regions),
                         "cpu_s": time.process_time() - c0})
    return pd.DataFrame(rows)


PARTS = {"scaling": part_scaling, "restarts": part_restarts, "rules": part_rules, "regions": part_regions,
         "bins": part_bins}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default=",".join(PARTS))
    args = ap.parse_args()
    warnings.simplefilter("ignore", ConvergenceWarning)
    pd.set_option("display.width", 200)
    for name in args.parts.split(","):
        w0 = time.perf_counter()
        table = PARTS[name]()
        print(f"## {name} ({time.perf_counter() - w0:.0f} s)\n{table.round(3).to_string()}\n", flush=True)


if __name__ == "__main__":
    main()
