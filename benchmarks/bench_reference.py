"""Speed and memory of ``spotmap signatures`` at 50,000 cells × 10,000 genes × 40 types (issue 4).

1. Simulates a reference with spotmap.simulate's generative model (signatures from
   ``simulate_signatures``; cell c of type f in batch b ~ NB((g_fg + s_bg) · y_b · l_c · t_bg, alpha_g / 2)),
   in chunks of cells so the dense matrix never exists, and writes it as ``reference.h5ad``.
2. Runs the whole step, ``spotmap signatures --reference ... --batch-key batch``, as a child process
   and measures its wall time, CPU time (user + system) and peak RSS (``getrusage(RUSAGE_CHILDREN)``).
3. Reads time per epoch from ``training_history.tsv``.

Usage::

    python benchmarks/bench_reference.py                       # 50,000 × 10,000 × 40
    python benchmarks/bench_reference.py --n-cells 5000 --n-genes 2000 --n-types 10   # quick check

Prints one JSON line with the figures (record them in benchmarks/RESULTS_reference.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def simulate_large_reference(path: Path, n_cells: int, n_genes: int, n_types: int, n_batches: int = 3,
                             seed: int = 0, chunk: int = 2000) -> dict:
    """Write a simulated reference .h5ad without ever holding the dense matrix; return its shape and nnz."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from spotmap.simulate import SimulationParams, _gene_names, simulate_signatures

    p = SimulationParams(n_cells=n_cells, n_genes=n_genes, n_cell_types=n_types, n_batches=n_batches, seed=seed)
    rng = np.random.default_rng(seed)
    symbols, ids = _gene_names(n_genes, p.n_mt_genes)
    g = simulate_signatures(p, rng, symbols)
    gfg = g.to_numpy().T.astype(np.float64)  # F × G
    alpha_g = rng.lognormal(np.log(p.overdispersion), 0.5, size=n_genes) * 0.5
    labels = rng.integers(0, n_types, size=n_cells)
    batch = rng.integers(0, n_batches, size=n_cells)
    depth = np.linspace(1.0, p.batch_depth_ratio, n_batches)
    tech = rng.lognormal(0.0, p.tech_effect_sd, size=(n_batches, n_genes))
    tech[0] = 1.0
    ambient = 0.01 * gfg.mean(0)[None, :] * rng.lognormal(0, 0.5, size=(n_batches, n_genes))
    size = rng.lognormal(0.0, 0.2, size=n_cells)
    blocks = []
    for i in range(0, n_cells, chunk):
        sl = slice(i, min(i + chunk, n_cells))
        mean = (gfg[labels[sl]] + ambient[batch[sl]]) * (depth[batch[sl]] * size[sl])[:, None] * tech[batch[sl]]
        x = rng.poisson(rng.gamma(alpha_g, mean / alpha_g))
        blocks.append(sp.csr_matrix(x.astype(np.float32)))
    X = sp.vstack(blocks, format="csr")
    types = list(g.columns)
    obs = pd.DataFrame({"cell_type": pd.Categorical([types[f] for f in labels], categories=types),
                        "batch": pd.Categorical([f"batch{b + 1}" for b in batch])},
                       index=[f"cell{i:06d}" for i in range(n_cells)])
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame({"gene_ids": ids}, index=symbols))
    adata.write_h5ad(path)
    g.rename_axis("gene").to_csv(path.with_name("truth_signatures.csv"))
    return {"cells": n_cells, "genes": n_genes, "types": n_types, "batches": n_batches, "nnz": int(X.nnz),
            "density": round(X.nnz / (n_cells * n_genes), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-cells", type=int, default=50_000)
    ap.add_argument("--n-genes", type=int, default=10_000)
    ap.add_argument("--n-types", type=int, default=40)
    ap.add_argument("--max-epochs", type=int, default=None, help="default: spotmap's (cell2location's) heuristic")
    ap.add_argument("--extra", default="", help="further options for spotmap signatures, e.g. '--no-umap'")
    ap.add_argument("--workdir", type=Path, default=None, help="keep inputs and outputs here")
    ap.add_argument("--reuse", action="store_true", help="reuse WORKDIR/reference.h5ad from an earlier run")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_reference_"))
    work.mkdir(parents=True, exist_ok=True)
    ref = work / "reference.h5ad"
    t0 = time.perf_counter()
    if args.reuse and ref.exists():
        import anndata as ad

        a = ad.read_h5ad(ref, backed="r")
        info = {"cells": a.n_obs, "genes": a.n_vars, "types": int(a.obs["cell_type"].nunique()),
                "batches": int(a.obs["batch"].nunique()), "reused": str(ref)}
        a.file.close()
    else:
        info = simulate_large_reference(ref, args.n_cells, args.n_genes, args.n_types)
        info["simulate_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps({"simulated": info}), file=sys.stderr, flush=True)

    cmd = [sys.executable, "-m", "spotmap.cli", "signatures", "--reference", str(ref), "--batch-key", "batch",
           "--outdir", str(work / "out"), "--device", "cpu", "--no-progress"]
    if args.max_epochs:
        cmd += ["--max-epochs", str(args.max_epochs)]
    cmd += args.extra.split()
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_gib = usage.ru_maxrss / 1024 ** 2  # KiB on Linux
    cpu_s = usage.ru_utime + usage.ru_stime  # a busy machine inflates wall time, not CPU time

    import pandas as pd

    hist = pd.read_csv(work / "out" / "training_history.tsv", sep="\t")
    sig = pd.read_csv(work / "out" / "signatures.csv", index_col=0)
    truth = pd.read_csv(work / "truth_signatures.csv", index_col=0).loc[sig.index, sig.columns]
    r = [np.corrcoef(np.log1p(sig[c]), np.log1p(truth[c]))[0, 1] for c in sig.columns]
    result = {**info, "genes_after_filter": int(sig.shape[0]), "epochs": int(len(hist)),
              "train_s": round(float(hist["seconds"].iloc[-1]), 1),
              "s_per_epoch": round(float(hist["seconds"].iloc[-1]) / max(len(hist), 1), 3),
              "whole_step_s": round(wall, 1), "whole_step_cpu_s": round(cpu_s, 1), "peak_rss_gib": round(peak_gib, 2),
              "median_log_pearson_vs_truth": round(float(np.median(r)), 4),
              "cpu_count": os.cpu_count(), "loadavg_at_end": [round(x, 1) for x in os.getloadavg()],
              "command": " ".join(cmd[1:])}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
