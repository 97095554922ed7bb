"""Benchmark the co-location analysis (issue 24): time, peak memory and accuracy at two sizes.

Cases (structured tissues from :func:`spotmap.colocation.synthetic.structured_tissue`, known regions and
co-located groups, patches layout):

* ``seed`` — 5,000 spots × 59 types (the seed tutorial's size): 8 groups of 6 co-located types and 11
  widespread types, about 8 cells per spot; ``run_colocation`` with the default ranges (5–30 factors,
  2–15 regions);
* ``hd`` — one Visium HD sample: 400,000 8 µm bins × 40 types (6 groups of 5 and 10 widespread types),
  0–3 cells per bin; ``run_colocation`` with the default ranges and the bins' neighbourhood mean
  (``hd_n_neighbours``): the factor numbers compared on ``range_fit_spots`` bins, the chosen one and
  the regions fitted on ``max_fit_spots`` bins, and every bin projected;
* ``hd-projection`` — the accuracy and time of that subsample-and-project shortcut against fitting all
  bins, at the chosen factor number, for several subsample sizes.

Each case runs in its own subprocess, which prints wall and CPU time, its RSS before the analysis (data
made) and its peak RSS (``ru_maxrss``), the numbers chosen and their accuracy (adjusted Rand index of the
types' dominant factor against the true groups, and of the regions against the true regions).
Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/bench_colocation.py [--cases seed,hd,hd-projection]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

HD_BINS = 400_000


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _tissue(case: str):
    from spotmap.colocation.synthetic import structured_tissue

    if case == "seed":
        return structured_tissue(n_spots=5000, n_groups=8, types_per_group=6, n_widespread=11, layout="patches",
                                 seed=1)
    return structured_tissue(n_spots=HD_BINS, n_groups=6, types_per_group=5, n_widespread=10, layout="patches",
                             cells_per_bin=1.5, seed=1)


def _type_ari(coloc, type_group) -> float:
    from sklearn.metrics import adjusted_rand_score

    sel = type_group.to_numpy() >= 0
    return float(adjusted_rand_score(type_group.to_numpy()[sel], coloc.to_numpy().argmax(1)[sel]))


def run_case(case: str) -> dict:
    from sklearn.metrics import adjusted_rand_score

    from spotmap.colocation import ColocationSettings, run_colocation

    t = _tissue(case)
    settings = ColocationSettings()
    if case == "hd":
        settings = settings.for_platform("visium-hd")
    rss0 = _rss_mib()
    w0, c0 = time.perf_counter(), time.process_time()
    res = run_colocation(t.abundance, t.coords, t.samples, settings=settings)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    f, r = res.factors, res.regions
    return {"case": case, "spots": t.abundance.shape[0], "types": t.abundance.shape[1],
            "factor_range": list(settings.factor_range), "region_range": list(settings.region_range),
            "n_neighbours": settings.n_neighbours, "range_fitted_spots": f.range_fitted_spots,
            "fitted_spots": f.fitted_spots, "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1), "rss_before_mib": round(rss0), "peak_rss_mib": round(_peak_mib()),
            "true_groups": int(t.type_group.max()) + 1, "n_factors": f.n_factors, "n_regions": r.n_regions,
            "type_ari": round(_type_ari(f.colocation_factors, t.type_group), 3),
            "region_ari": round(float(adjusted_rand_score(t.region, r.regions)), 3),
            "factor_reason": f.reason, "region_reason": r.reason}


def run_projection() -> list[dict]:
    """Subsample-and-project against a fit on all bins, at the true factor number (6), one restart each."""
    from sklearn.metrics import adjusted_rand_score

    from spotmap.colocation import ColocationSettings
    from spotmap.colocation.inputs import neighbourhood_mean, subsample
    from spotmap.colocation.nmf import factor_tables, fit_factors, matched_similarity, project, type_scale
    from spotmap.colocation.run import find_regions

    t = _tissue("hd")
    s = ColocationSettings(n_restarts=1).for_platform("visium-hd")
    x = neighbourhood_mean(t.abundance.to_numpy(), t.coords, t.samples, s.n_neighbours)
    scale = type_scale(x)
    k = int(t.type_group.max()) + 1
    out, ref_h = [], None
    for size in (HD_BINS, 50_000, 20_000, 5_000):
        rows = subsample(len(x), size, s.seed)
        w0, c0 = time.perf_counter(), time.process_time()
        fit = fit_factors(x[rows], k, s.seed, s, scale)
        w = fit.w_sr if len(rows) == len(x) else project(fit, x)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        coloc, fab = factor_tables(w, fit.h_rf, t.abundance.index, t.abundance.columns)
        err = np.linalg.norm(x / scale - w @ (fit.h_rf / scale)) / np.linalg.norm(x / scale)
        ref_h = fit.h_rf if ref_h is None else ref_h
        reg = find_regions(t.abundance, k, fab, settings=s)
        out.append({"fitted_bins": len(rows), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                    "rel_error_all_bins": round(float(err), 4),
                    "h_similarity_to_full_fit": round(matched_similarity(fit.h_rf, ref_h), 4),
                    "type_ari": round(_type_ari(coloc, t.type_group), 3),
                    "region_ari": round(float(adjusted_rand_score(t.region, reg.regions)), 3)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="seed,hd,hd-projection")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        result = run_projection() if args.child == "hd-projection" else run_case(args.child)
        print(json.dumps(result))
        return
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load {os.getloadavg()}", flush=True)
    for case in args.cases.split(","):
        w0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", case], capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            raise SystemExit(f"case {case} failed")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"## {case} (subprocess {time.perf_counter() - w0:.1f} s, load {os.getloadavg()[0]:.1f})")
        for row in (result if isinstance(result, list) else [result]):
            print(json.dumps(row, ensure_ascii=False))


if __name__ == "__main__":
    main()
