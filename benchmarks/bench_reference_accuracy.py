"""Accuracy of ``spotmap signatures`` against known signatures (issue 4, "Measured").

Simulates a labelled reference with spotmap.simulate's generative model (signatures g_fg, batch
depth y_b, per-gene technology effect t_bg, ambient s_bg, NB noise), then makes the cell-type
composition differ between batches (each type keeps the cells of each batch with a probability
drawn from a Dirichlet), as in real atlases where one technology sampled some types more. Then
compares the NB regression with plain cluster averages:

* median over cell types of the Pearson correlation of log(1 + signature) with log(1 + truth);
* median over cell types of the median relative error |est / k − truth| / truth over genes, where
  one global factor k (median ratio) removes the overall scale, which the reference cannot
  identify (it is the average detection efficiency);
* between-type contrasts: the same Pearson after removing each gene's mean log over types (a
  per-gene factor common to all types is not identifiable from the reference, where the truth is
  in batch 1's technology, and the spatial model's m_g absorbs it anyway);
* cell size error: median absolute deviation over types of log(total estimated / total true) —
  what depth differences between batches distort when types are sampled unevenly.

Usage::

    python benchmarks/bench_reference_accuracy.py [--n-cells 5000 --n-genes 2000 --n-types 12 ...]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd


def confounded_reference(n_cells: int, n_genes: int, n_types: int, n_batches: int = 3, seed: int = 0,
                         depth_ratio: float = 0.3, tech_sd: float = 0.5, dirichlet: float | None = 0.5):
    """(reference AnnData, truth signatures genes × types) with batch-confounded composition."""
    from spotmap.simulate import SimulationParams, _gene_names, simulate_reference, simulate_signatures

    p = SimulationParams(n_cells=int(n_cells * 2), n_genes=n_genes, n_cell_types=n_types, n_batches=n_batches,
                         batch_depth_ratio=depth_ratio, tech_effect_sd=tech_sd, seed=seed)
    rng = np.random.default_rng(seed)
    symbols, ids = _gene_names(p.n_genes, p.n_mt_genes)
    sig = simulate_signatures(p, rng, symbols)
    alpha_g = rng.lognormal(np.log(p.overdispersion), 0.5, size=p.n_genes)
    ref = simulate_reference(p, rng, sig, ids, alpha_g)
    # composition differs between batches: keep cell (type f, batch b) with probability w_fb / max_b w_fb
    if dirichlet is not None:  # None: the composition of spotmap simulate (same in every batch)
        w = rng.dirichlet(np.full(n_batches, dirichlet), size=n_types)
        w = w / w.max(1, keepdims=True)
        f = ref.obs["cell_type"].cat.codes.to_numpy()
        b = ref.obs["batch"].cat.codes.to_numpy()
        keep = rng.random(ref.n_obs) < w[f, b]
        ref = ref[keep].copy()
    if ref.n_obs > n_cells:
        ref = ref[np.sort(rng.choice(ref.n_obs, n_cells, replace=False))].copy()
    return ref, sig


def score(est: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """Median over types of log-scale Pearson r and of median relative error (after one global scale)."""
    t = truth.loc[est.index, est.columns].to_numpy()
    e = est.to_numpy()
    r = [np.corrcoef(np.log1p(e[:, j]), np.log1p(t[:, j]))[0, 1] for j in range(e.shape[1])]
    k = np.median(e / t)
    rel = np.median(np.abs(e / k - t) / t, axis=0)
    # between-type contrasts: remove each gene's geometric mean over types (a per-gene factor that
    # the spatial model's m_g absorbs anyway), then correlate
    le, lt = np.log(e + 1e-3), np.log(t + 1e-3)
    le, lt = le - le.mean(1, keepdims=True), lt - lt.mean(1, keepdims=True)
    rc = [np.corrcoef(le[:, j], lt[:, j])[0, 1] for j in range(e.shape[1])]
    # cell size: spread over types of log(total estimated / total true counts per cell) around its median
    size = np.log(e.sum(0) / t.sum(0))
    return {"median_log_pearson": float(np.median(r)), "median_rel_error": float(np.median(rel)),
            "median_contrast_pearson": float(np.median(rc)),
            "size_error": float(np.median(np.abs(size - np.median(size))))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-cells", type=int, default=5000)
    ap.add_argument("--n-genes", type=int, default=2000)
    ap.add_argument("--n-types", type=int, default=12)
    ap.add_argument("--n-batches", type=int, default=3)
    ap.add_argument("--max-epochs", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--composition", nargs="+", choices=["confounded", "balanced"],
                    default=["confounded", "balanced"],
                    help="balanced = spotmap simulate's composition (types alike in all batches)")
    args = ap.parse_args()

    from spotmap.reference import estimate_signatures

    rows = []
    for seed, composition in [(s, c) for c in args.composition for s in args.seeds]:
        ref, truth = confounded_reference(args.n_cells, args.n_genes, args.n_types, args.n_batches, seed=seed,
                                          dirichlet=0.5 if composition == "confounded" else None)
        for method, cov in (("average", []), ("regression", []), ("regression", ["batch"])):
            t0 = time.perf_counter()
            kw = {} if args.lr is None else {"lr": args.lr}
            _, sig, hist = estimate_signatures(ref.copy(), "cell_type", "batch", method=method, covariate_keys=cov,
                                               max_epochs=args.max_epochs, seed=seed, progress=False, **kw)
            name = method + (" + batch covariate" if cov else "")
            rows.append({"composition": composition, "seed": seed, "method": name, "cells": ref.n_obs,
                         "genes": sig.shape[0],
                         "epochs": len(hist), "seconds": round(time.perf_counter() - t0, 1), **score(sig, truth)})
            print(json.dumps(rows[-1]), flush=True)
    df = pd.DataFrame(rows)
    print(df.groupby(["composition", "method"])[["median_log_pearson", "median_rel_error", "median_contrast_pearson",
                                  "size_error", "seconds"]].median().to_string())


if __name__ == "__main__":
    main()
