"""Benchmark ``spotmap aggregate``: 10 restarts × 5,000 spots × 50 cell types (issue 6).

Measures, on synthetic restarts in the result-folder format (results.add_posterior):

1. ``aggregate()`` in memory — exact mixture summaries of w_sf and u_sf, stability, flags;
2. the whole command — ``spotmap aggregate`` in a subprocess: read 10 result folders, aggregate, write
   the consensus folder (sp.h5ad, W_*.csv, tables, MultiQC content).

Prints wall time and peak memory as Markdown table rows: for (1) the time of a plain run and the
tracemalloc peak of a second, traced run (tracing slows allocation-heavy code down); for (2) the
subprocess's wall time and its max RSS (the whole Python process, imports included).
Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_aggregate.py [--restarts 10 --spots 5000 --types 50]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from spotmap.aggregate import aggregate
from spotmap.results import add_posterior, write_results


def make_restarts(R: int, S: int, F: int, G: int = 200, seed: int = 0) -> dict[str, ad.AnnData]:
    rng = np.random.default_rng(seed)
    truth = rng.gamma(0.6, 1.5, (S, F)) + 0.01
    X = sp.random(S, G, density=0.3, format="csr", random_state=seed, dtype=np.float32)
    X.data = np.round(X.data * 20)
    obs = pd.DataFrame(index=[f"spot{i}" for i in range(S)])
    var = pd.DataFrame(index=[f"gene{i}" for i in range(G)])
    types = [f"type_{f}" for f in range(F)]
    mrna = rng.uniform(500, 3000, F)  # restarts differ by a little in their estimate of it
    out = {}
    for r in range(R):
        a = ad.AnnData(X, obs=obs.copy(), var=var.copy())
        loc = np.log(truth) + rng.normal(0, 0.1, (S, F))
        scale = rng.uniform(0.05, 0.6, (S, F))
        add_posterior(a, loc, scale, types, mrna * rng.uniform(0.97, 1.03, F))
        a.obs["detection_y_s"] = rng.uniform(0.2, 0.6, S).astype(np.float32)
        mod = dict(a.uns["mod"])
        mod.update(elbo=1e7 * (1 + rng.uniform(0, 1e-5)), elbo_initial=1.1e7, seed=r)
        a.uns["mod"] = mod
        out[f"restart_{r + 1}"] = a
    return out


def measure(fn):
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return dt, peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--restarts", type=int, default=10)
    ap.add_argument("--spots", type=int, default=5000)
    ap.add_argument("--types", type=int, default=50)
    args = ap.parse_args()
    R, S, F = args.restarts, args.spots, args.types
    ads = make_restarts(R, S, F)
    res = aggregate(ads)
    assert not res.stability["flagged"].any() and not res.restarts["flagged"].any()
    t_mem, peak_mem = measure(lambda: aggregate(ads))
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [write_results(a, Path(tmp) / name) for name, a in ads.items()]
        del ads, res
        cmd = [sys.executable, "-m", "spotmap.cli", "aggregate", *sum((["--restart", str(d)] for d in dirs), []),
               "--outdir", str(Path(tmp) / "consensus")]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        t_all = time.perf_counter() - t0
        rss_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        assert (Path(tmp) / "consensus" / "sp.h5ad").exists()
    print(f"| {R} × {S:,} × {F} | aggregate() in memory | {t_mem:.2f} s | {peak_mem:.0f} MiB (tracemalloc peak) |")
    print(f"| {R} × {S:,} × {F} | `spotmap aggregate` (read + aggregate + write folder) | {t_all:.2f} s | "
          f"{rss_child:.0f} MiB (max RSS) |")


if __name__ == "__main__":
    main()
