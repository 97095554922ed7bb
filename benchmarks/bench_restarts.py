#!/usr/bin/env python
"""Do restarts expose what they should? Independent starts, scale stability and flagged restarts (issue 21).

Three measurements, each a subcommand; every mapping is ``map_cell_types`` with its defaults (apart from the
seed), every aggregation ``spotmap.aggregate.aggregate`` with its defaults:

``twins``
    A simulated case (``--spots`` × ``--genes`` × 12 types, one sample) whose reference has one abundant
    cell type's cells split at random into two labels (``<type>_a``, ``<type>_b``): two near-identical
    signatures, so how a spot's cells of that type divide between them is not identifiable. Signatures are
    the reference's cluster averages (``spotmap.reference.cluster_averages``). Three restarts (seeds 0, 1,
    2), then their aggregate. Printed: the twins' stability (correlation) and total ratio, their flags,
    Pearson r of their summed abundance with the true type over spots, the other types' median stability
    and how many of them are flagged, and the restarts' flags. ``--variants`` compares starts (below).
``missing``
    The same case without the split, and the most abundant type left out of the reference
    (``SimulationParams.missing_types_in_reference``): the stability of the remaining types and their flags.
``accuracy``
    The simulated settings of ``compare_cell2location.py`` (500 spots × 2,000 genes × 12 types, true
    signatures), three restarts each, aggregated: median per-type r of the consensus q05 with the true cell
    numbers, RMSE of cell counts per spot (mean over spots of the root mean square over types of posterior
    mean − truth), estimated / true total cells, wall and CPU time to the result (three fits + aggregation).
    Run it once with the code to compare against on ``PYTHONPATH`` (e.g. an export of the branch point) and
    once with this one; only APIs both have are used.

``twice``
    Does the stopping rule stop late enough? On each of those settings, one fit (seed ``--restart-seeds``'
    first) with the defaults, stopping at epoch E by the convergence rule, and the same fit trained to 2E
    (``min_epochs = max_epochs = 2E``: the same seed gives the same first E epochs bit for bit, so this is
    the first fit continued). Printed: the median per-type r (q05 and posterior mean) of both, its change,
    and the change of the mean total cells per spot (posterior means; relative). Issue 21's target: |Δr| <
    0.005 and |Δ total| < 1 %. The JSON also has where each fit puts the counts (:func:`count_budget`).

Start variants (``--variants``, comma-separated; ``twins`` and ``missing`` only), set through
``spotmap.mapping.start``'s ``START_SPOT_SHAPE`` / ``START_TYPE_SHAPE``: ``det`` — the deterministic start
(every restart's factorisation from w_sf = N/F, both shapes inf); ``gamma<a>`` — w_sf⁽⁰⁾ = N/F · Gamma(a, a)
per spot and type; ``type<b>`` — N/F · Gamma(b, b) per type (shared by all spots); ``type<b>+gamma<a>`` —
both; ``default`` — the code's own defaults (``type2+gamma1``). (``half``, the factorisation on a random half
of the separating genes, was measured at commit f4fb9da, whose ``START_GENE_FRACTION`` knob is gone.)

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_restarts.py twins --variants det,default
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_restarts.py missing
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_restarts.py accuracy --settings default,rare,batch,lowdepth
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_restarts.py twice --settings default,rare,batch,lowdepth

Results (JSON) go to ``--outdir``; Markdown rows are printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SEEDS = (0, 1, 2)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------------
# the cases
# ------------------------------------------------------------------------------------------------------------
def twin_case(workdir: Path, n_spots: int, n_genes: int, seed: int, missing: bool = False):
    """``(adata, signatures, truth, info)``: a simulated case whose reference has its most abundant tissue
    type split into two labels (``missing=False``) or left out (``missing=True``); cluster-average
    signatures."""
    import anndata as ad
    import numpy as np

    from compare_cell2location import BASE, read_sim
    from spotmap.reference.signatures import cluster_averages
    from spotmap.simulate import SimulationParams, simulate

    params = dict(BASE, n_spots=n_spots, n_genes=n_genes, seed=seed)
    sim = workdir / "sim"
    pfile = sim / "truth" / "params.json"
    want = json.loads(json.dumps(dataclasses.asdict(SimulationParams(**params))))
    if not (pfile.exists() and json.loads(pfile.read_text()) == want):
        simulate(sim, SimulationParams(**params))
    adata, true_sig, truth = read_sim(sim)
    ref = ad.read_h5ad(sim / "reference.h5ad")
    ref = ref[:, adata.var_names].copy()
    target = truth.sum().idxmax()  # the most abundant tissue type
    labels = ref.obs["cell_type"].astype(str).to_numpy().copy()
    rng = np.random.default_rng(seed + 21)
    cells = np.flatnonzero(labels == target)
    if missing:
        ref = ref[labels != target].copy()
        ref.obs["cell_type"] = labels[labels != target]
        info = {"missing_type": target, "cells": int(len(cells))}
    else:
        half = rng.permutation(cells)[: len(cells) // 2]
        labels = labels.astype(object)
        labels[cells] = f"{target}_a"
        labels[half] = f"{target}_b"
        ref.obs["cell_type"] = labels.astype(str)
        info = {"twin_type": target, "twins": [f"{target}_a", f"{target}_b"],
                "cells": [int((labels == f"{target}_a").sum()), int((labels == f"{target}_b").sum())]}
    sig = cluster_averages(ref, "cell_type")
    sig = sig.loc[:, (sig.sum(0) > 0)]
    if not missing:
        a, b = sig[f"{target}_a"].to_numpy(), sig[f"{target}_b"].to_numpy()
        info["twin_signature_correlation"] = float(np.corrcoef(np.log1p(a), np.log1p(b))[0, 1])
        info["twin_signature_cosine"] = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    info["true_total_cells"] = {k: float(v) for k, v in truth.sum().items()}
    return adata, sig, truth, info




# ------------------------------------------------------------------------------------------------------------
# restarts and their aggregate
# ------------------------------------------------------------------------------------------------------------
def set_variant(variant: str) -> None:
    """Point the start at ``variant`` (see the module docstring)."""
    import math

    if variant == "default":
        return
    try:
        import spotmap.mapping.start as M
    except ImportError:
        raise SystemExit(f"variant {variant!r} needs a spotmap with random starts (spotmap.mapping.start)") from None
    M.START_SPOT_SHAPE, M.START_TYPE_SHAPE = math.inf, math.inf
    for part in variant.split("+"):
        if part == "det":
            continue
        elif part.startswith("gamma"):
            M.START_SPOT_SHAPE = float(part[5:])
        elif part.startswith("type"):
            M.START_TYPE_SHAPE = float(part[4:])
        else:  # 'half' (a random half of the genes) was measured at commit f4fb9da (START_GENE_FRACTION)
            raise SystemExit(f"unknown variant part {part!r}")


def restarts(adata, sig, seeds=SEEDS, settings: dict | None = None):
    """``({restart name: result}, {name: history}, wall s, CPU s)`` of one fit per seed, defaults otherwise
    (or ``settings``, more map_cell_types settings)."""
    from spotmap.mapping import map_cell_types

    out, hists, wall, cpu = {}, {}, 0.0, 0.0
    for seed in seeds:
        t, c = time.perf_counter(), time.process_time()
        res, hist = map_cell_types(adata.copy(), sig, seed=seed, progress=False, device="cpu", **(settings or {}))
        wall += time.perf_counter() - t
        cpu += time.process_time() - c
        out[f"restart_{seed}"], hists[f"restart_{seed}"] = res, hist
        log(f"  seed {seed}: {len(hist)} epochs, {time.perf_counter() - t:.1f} s")
    return out, hists, wall, cpu


def totals(results: dict) -> "pd.DataFrame":
    """restarts × types: total posterior-mean cells over spots."""
    import pandas as pd

    from spotmap.results import table

    return pd.DataFrame({name: table(a, "means").sum() for name, a in results.items()}).T


def aggregate_all(results, hists):
    from spotmap.aggregate import aggregate

    t, c = time.perf_counter(), time.process_time()
    res = aggregate(results, histories=hists)
    return res, time.perf_counter() - t, time.process_time() - c


def pearson(x, y) -> float:
    import numpy as np

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else float("nan")


def start_spread(adata, sig, seeds=SEEDS) -> dict:
    """How far apart the restarts' starts are: per type, the median over spots of the coefficient of variation
    over seeds of the initial w_sf (after the factorisation)."""
    import numpy as np

    import spotmap.mapping.model as M
    from spotmap.mapping.priors import MappingPriors

    X = M._counts_matrix(adata, "case")
    g = sig.loc[adata.var_names].to_numpy(dtype=np.float64).T
    pri = MappingPriors()
    mean = M.detection_mean_from_data(X, g, pri.N_cells_per_location)
    ws = []
    for seed in seeds:
        kw = {"rng": np.random.default_rng(seed)} if "rng" in M.initial_values.__code__.co_varnames else {}
        ws.append(M.initial_values(X, g, mean, pri, **kw)["w_sf"])
    ws = np.stack(ws)
    cv = ws.std(0) / ws.mean(0)
    return {str(f): float(np.median(cv[:, k])) for k, f in enumerate(sig.columns)}


# ------------------------------------------------------------------------------------------------------------
# subcommands
# ------------------------------------------------------------------------------------------------------------
def run_twins(a, missing: bool = False) -> list[dict]:
    import numpy as np

    from spotmap.results import table

    wd = Path(a.outdir) / ("missing" if missing else "twins")
    wd.mkdir(parents=True, exist_ok=True)
    adata, sig, truth, info = twin_case(wd, a.spots, a.genes, a.seed, missing=missing)
    log(f"{'missing' if missing else 'twins'}: {adata.n_obs} spots × {adata.n_vars} genes × {sig.shape[1]} "
        f"signatures; {info}")
    rows = []
    for variant in a.variants.split(","):
        set_variant(variant)
        log(f"variant {variant}")
        results, hists, wall, cpu = restarts(adata, sig, a.restart_seeds, a.map_settings)
        res, agg_wall, _ = aggregate_all(results, hists)
        tot = totals(results)
        stab = res.stability.set_index("cell_type")
        rst = res.restarts.set_index("restart")
        q05 = table(res.consensus, "q05")
        row = {"variant": variant, **info, "wall_s": wall + agg_wall, "cpu_s": cpu,
               "epochs": [int(len(h)) for h in hists.values()],
               "stability": stab["stability"].round(4).to_dict(), "flagged": stab["flagged"].to_dict(),
               "stability_columns": {c: stab[c].to_dict() for c in stab.columns if c not in ("stability", "flagged")},
               "restarts": {c: rst[c].to_dict() for c in rst.columns},
               "totals": tot.round(2).to_dict(orient="index"), "summary": res.summary,
               "start_cv": start_spread(adata, sig, a.restart_seeds)}
        if missing:
            others = list(stab.index)
        else:
            twins = info["twins"]
            others = [t for t in stab.index if t not in twins]
            summed = q05[twins].sum(1)
            row["twins_sum_r"] = pearson(summed, truth.loc[q05.index, info["twin_type"]])
            row["twins_sum_r_means"] = pearson(table(res.consensus, "means")[twins].sum(1),
                                               truth.loc[q05.index, info["twin_type"]])
            row["twins_flagged"] = [bool(stab.loc[t, "flagged"]) for t in twins]
            row["twins_stability"] = [float(stab.loc[t, "stability"]) for t in twins]
            tw = tot[twins].to_numpy()
            row["twins_share_a"] = [float(x) for x in tw[:, 0] / tw.sum(1)]
            row["twins_total_log_ratio"] = float(np.log(tw[:, 0].max() / tw[:, 0].min()))
        common = [t for t in others if t in truth.columns]
        for name, var in (("variant", variant), ("restart_seeds", a.restart_seeds), ("map_settings", a.map_settings)):
            row[name] = var
        row["others_median_stability"] = float(stab.loc[others, "stability"].median())
        row["others_flagged"] = int(stab.loc[others, "flagged"].sum())
        row["others_median_r_q05"] = float(np.median([pearson(q05[t], truth.loc[q05.index, t]) for t in common]))
        rows.append(row)
        log(f"  {json.dumps({k: row[k] for k in row if k in ('twins_stability', 'twins_flagged', 'twins_share_a', 'twins_sum_r', 'others_median_stability', 'others_flagged', 'others_median_r_q05')})}")
    return rows


def run_accuracy(a) -> list[dict]:
    import numpy as np

    from compare_cell2location import load_case
    from spotmap.metrics import evaluate
    from spotmap.results import table

    rows = []
    for s in a.settings.split(","):
        wd = Path(a.outdir) / "accuracy" / s
        wd.mkdir(parents=True, exist_ok=True)
        adata, sig, truth, _ = load_case(s, wd, a.seed)
        log(f"{s}: {adata.n_obs} spots × {adata.n_vars} genes × {sig.shape[1]} types")
        set_variant(a.variants)
        results, hists, wall, cpu = restarts(adata, sig, a.restart_seeds, a.map_settings)
        res, agg_wall, agg_cpu = aggregate_all(results, hists)
        q05, means = table(res.consensus, "q05"), table(res.consensus, "means")
        t = truth.loc[means.index, means.columns]
        rmse = float(np.sqrt(((means - t) ** 2).mean(1)).mean())
        used = res.consensus.uns["mod"]["consensus"]["used"]
        row = {"setting": s, "variant": a.variants, "map_settings": a.map_settings, "median_r_q05": evaluate(q05, truth)["median_pearson"],
               "median_r_means": evaluate(means, truth)["median_pearson"], "rmse_cells": rmse,
               "total_ratio_est_true": float(means.to_numpy().sum() / t.to_numpy().sum()),
               "wall_s": wall + agg_wall, "cpu_s": cpu + agg_cpu,
               "epochs": [int(len(h)) for h in hists.values()], "used": list(used),
               "stability_flagged": int(res.stability["flagged"].sum()),
               "restarts_flagged": int(res.restarts["flagged"].sum()),
               "per_restart_median_r_q05": {n: evaluate(table(r, "q05"), truth)["median_pearson"]
                                            for n, r in results.items()},
               "totals": totals(results).round(2).to_dict(orient="index"),
               "true_totals": {k: float(v) for k, v in t.sum().items()},
               "stability": res.stability.set_index("cell_type")["stability"].round(4).to_dict()}
        rows.append(row)
        log(f"  {json.dumps({k: row[k] for k in ('median_r_q05', 'rmse_cells', 'total_ratio_est_true', 'wall_s', 'cpu_s', 'epochs', 'used')})}")
    return rows


def count_budget(mapper) -> dict:
    """Where a fit puts the observed counts (posterior means; needs a spotmap with a fixed detection level d_e,
    else {}): the share of the observed total expected from cells and from the background, and the mean
    absolute detection d_e · ỹ_s over spots."""
    import numpy as np

    if getattr(mapper, "detection", None) is None:
        return {}
    mean = mapper.posterior_mean   # y_s: the absolute detection d_e · ỹ_s; m_g: the relative m̃_g
    w, det, m, s = mean("w_sf"), mean("y_s").reshape(-1), mean("m_g").reshape(1, -1), mean("s_eg")
    g, b = mapper.g_fg, mapper.batch_codes
    observed = float(mapper.X.sum())
    return {"counts_from_cells_share": float((det[:, None] * (w @ (m * g))).sum() / observed),
            "counts_from_background_share": float((det[:, None] * s[b]).sum() / observed),
            "mean_absolute_detection": float(det.mean())}


def run_twice(a) -> list[dict]:
    """The ``twice`` subcommand (module docstring): one setting after the other."""
    import numpy as np

    from compare_cell2location import load_case
    from spotmap.mapping import map_cell_types
    from spotmap.metrics import evaluate
    from spotmap.results import table

    seed = a.restart_seeds[0]
    rows = []
    for s in a.settings.split(","):
        wd = Path(a.outdir) / "accuracy" / s
        wd.mkdir(parents=True, exist_ok=True)
        adata, sig, truth, _ = load_case(s, wd, a.seed)
        set_variant(a.variants)
        fits = {}
        for name in ("stop", "twice"):
            extra = {}
            if name == "twice":
                n = 2 * fits["stop"]["epochs"]
                extra = {"min_epochs": n, "max_epochs": n}
            t = time.perf_counter()
            res, hist, mapper = map_cell_types(adata.copy(), sig, seed=seed, progress=False, device="cpu",
                                               return_mapper=True, **{**a.map_settings, **extra})
            q05, means = table(res, "q05"), table(res, "means")
            fits[name] = {"epochs": int(len(hist)), "converged": bool(hist.attrs.get("converged", False)),
                          **count_budget(mapper),
                          "median_r_q05": evaluate(q05, truth)["median_pearson"],
                          "median_r_means": evaluate(means, truth)["median_pearson"],
                          "mean_total_cells_per_spot": float(means.to_numpy().sum(1).mean()),
                          "true_mean_total_cells_per_spot": float(truth.loc[means.index, means.columns]
                                                                  .to_numpy().sum(1).mean()),
                          "wall_s": time.perf_counter() - t}
            log(f"  {s} {name}: {json.dumps(fits[name])}")
        st, tw = fits["stop"], fits["twice"]
        row = {"setting": s, "seed": seed, "variant": a.variants, "map_settings": a.map_settings, **{
            f"{k}_{name}": v for name, f in fits.items() for k, v in f.items()},
            "delta_median_r_q05": tw["median_r_q05"] - st["median_r_q05"],
            "delta_median_r_means": tw["median_r_means"] - st["median_r_means"],
            "rel_change_total_cells": tw["mean_total_cells_per_spot"] / st["mean_total_cells_per_spot"] - 1}
        row["meets_target"] = bool(abs(row["delta_median_r_q05"]) < 0.005 and abs(row["rel_change_total_cells"]) < 0.01)
        rows.append(row)
        print(f"| {s} | {st['epochs']} → {tw['epochs']} | {st['median_r_q05']:.4f} → {tw['median_r_q05']:.4f} "
              f"({row['delta_median_r_q05']:+.4f}) | {st['median_r_means']:.4f} → {tw['median_r_means']:.4f} | "
              f"{st['mean_total_cells_per_spot']:.3f} → {tw['mean_total_cells_per_spot']:.3f} "
              f"({100 * row['rel_change_total_cells']:+.2f} %) | {'met' if row['meets_target'] else 'missed'} |",
              flush=True)
    return rows


def _pair_ratios(totals: dict) -> dict:
    """{type: exp(median over restart pairs of |log(T_a / T_b)|)} from {restart: {type: total}}."""
    import itertools

    import numpy as np

    names = list(totals)
    return {t: float(np.exp(np.median([abs(np.log(totals[a][t] / totals[b][t]))
                                       for a, b in itertools.combinations(names, 2)]))) for t in totals[names[0]]}


def summarise(files: list[str]) -> None:
    """Markdown rows of earlier runs' JSON files (twins / missing / accuracy)."""
    for f in files:
        d = json.loads(Path(f).read_text())
        m = d["meta"]
        print(f"\n{f}: {m['started']} – {m['finished']}, load {m['loadavg_1min']:.1f}, {m['git_head']}, {m['argv']}")
        for r in d["rows"]:
            ratios = _pair_ratios(r["totals"])
            if "setting" in r:
                print(f"| {r['setting']} | {r.get('variant', '')} | {r['median_r_q05']:.4f} | {r['rmse_cells']:.4f} | "
                      f"{r['total_ratio_est_true']:.3f} | {r['wall_s']:.0f} | {r['cpu_s']:.1f} | "
                      f"{', '.join(map(str, r['epochs']))} | {max(ratios.values()):.3f} | "
                      f"{min(r['stability'].values()):.3f} | {r['stability_flagged']} / {r['restarts_flagged']} |")
                continue
            twins = r.get("twins", [])
            others = {t: v for t, v in ratios.items() if t not in twins}
            tw = " / ".join(f"{r['stability'][t]:.3f}, {ratios[t]:.2f}{' F' if r['flagged'][t] else ''}" for t in twins)
            print(f"| {r['variant']} | {','.join(map(str, r.get('restart_seeds', SEEDS)))} | {tw or '—'} | "
                  f"{', '.join(f'{x:.2f}' for x in r.get('twins_share_a', [])) or '—'} | "
                  f"{r.get('twins_sum_r_means', float('nan')):.3f} / {r.get('twins_sum_r', float('nan')):.3f} | "
                  f"{r['others_median_stability']:.3f} | {min(r['stability'][t] for t in others):.3f} | "
                  f"{max(others.values()):.3f} ({max(others, key=others.get)}) | {r['others_flagged']} | "
                  f"{sum(bool(v) for v in r['restarts']['flagged'].values())} | {r['others_median_r_q05']:.4f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("twins", "missing", "accuracy", "twice", "summarise"))
    ap.add_argument("files", nargs="*", help="summarise: the JSON files of earlier runs")
    ap.add_argument("--variants", default="default", help="start variants (twins, missing; accuracy: one); see above")
    ap.add_argument("--map-settings", default={}, type=json.loads, help="JSON of more map_cell_types settings")
    ap.add_argument("--settings", default="default,rare,batch,lowdepth",
                    help="accuracy, twice: compare_cell2location settings")
    ap.add_argument("--spots", type=int, default=400)
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0, help="simulation seed")
    ap.add_argument("--restart-seeds", default="0,1,2", type=lambda v: [int(x) for x in v.split(",")],
                    help="the restarts' seeds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--label", default="", help="name of this run in the JSON (e.g. 'before')")
    ap.add_argument("--outdir", default=str(Path(tempfile.gettempdir()) / "spotmap-bench-restarts"))
    a = ap.parse_args(argv)
    if a.what == "summarise":
        summarise(a.files)
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch

    torch.set_num_threads(a.threads)
    import spotmap

    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": platform.node(), "cpus": os.cpu_count(),
            "threads": a.threads, "loadavg_1min": os.getloadavg()[0], "spotmap": str(Path(spotmap.__file__).parent),
            "git_head": subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
                                       capture_output=True, text=True).stdout.strip(),
            "argv": sys.argv[1:], "label": a.label}
    if a.what == "accuracy":
        rows = run_accuracy(a)
    elif a.what == "twice":
        rows = run_twice(a)
    else:
        rows = run_twins(a, missing=a.what == "missing")
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    meta["loadavg_1min_end"] = os.getloadavg()[0]
    out = Path(a.outdir) / f"{a.what}{'_' + a.label if a.label else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str))
    print(json.dumps(rows, indent=1, default=str))
    log(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
