#!/usr/bin/env python
"""Sparse against dense likelihood on a Visium HD subset, full batch and minibatches (issue 20, item 3).

Input: a sample simulated by ``spotmap simulate --platform visium-hd`` and QC'd by ``spotmap qc``; a random
subset of ``--bins`` bins is mapped four times with the same seed and settings — ``--likelihood dense`` and
``--likelihood sparse`` (``--sparse-u-max`` as given), each in full batch and with ``--batch-size`` —
every ``spotmap map`` in a child process with one thread. Each pair (sparse vs dense, same regime) is
compared on:

* per-type Pearson r across bins between the two fits' q05 abundances (and means): median, minimum —
  target ≥ 0.995;
* total abundance (sum of the posterior means over bins and types), sparse / dense — target within 2 %;
* median overdispersion alpha_eg over genes, sparse / dense — target within 5 %; also per band of the genes'
  mean count per bin (``alpha_by_mean_count``: where counts are rarest the data hardly determine alpha);
* seconds per epoch (median over epochs, ``training_history.tsv``; with ``--cpu-per-epoch`` also CPU seconds per
  epoch, steadier on a shared machine), the sparse likelihood's exact genes per step
  (mean, most) and its error report (``uns['mod']['sparse_likelihood']``);
* for context, each fit's accuracy against the true cell numbers (median per-type r of q05, RMSE of proportions).

``--before-src DIR`` adds a sparse run per regime with another source tree (e.g. the code before the bound,
``git archive <commit> src | tar -x -C DIR``), compared with the same dense fit. Results go to
``<outdir>/results.json`` (updated in place) and are printed as Markdown.

Usage::

    spotmap simulate --platform visium-hd --n-bins 14000 --n-genes 18000 --n-cell-types 40 --n-samples 1 --outdir SIM
    spotmap qc --sample sample1 --input SIM/samples/sample1/outs --outdir QC
    python benchmarks/bench_sparse_bound.py --qc QC/sample1.h5ad --sim SIM --outdir OUT --bins 5000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hd_scale import REPO, SPOTMAP, history, log, run_measured, score, subset_h5ad  # noqa: E402


def map_cmd(spatial: Path, sig: Path, out: Path, a, likelihood: str, batch_size: int | None, epochs: int) -> list:
    cmd = [*SPOTMAP, "map", "--spatial", spatial, "--signatures", sig, "--outdir", out,
           "--n-cells-per-location", a.n_cells, "--likelihood", likelihood, "--checkpoint-every", 0,
           "--max-epochs", epochs, "--min-epochs", epochs, "--seed", a.seed]
    if batch_size:
        cmd += ["--batch-size", batch_size]
    return cmd


def fit_summary(out: Path) -> dict:
    import anndata as ad

    r = ad.read_h5ad(out / "sp.h5ad")
    mod = r.uns["mod"]
    g = mod["globals"]
    return {"q05": np.asarray(r.obsm["q05_cell_abundance_w_sf"]), "means": np.asarray(r.obsm["means_cell_abundance_w_sf"]),
            "obs": list(r.obs_names), "alpha_median": float(np.median(np.asarray(r.varm["alpha_eg"]))),
            "alpha_g": np.median(np.asarray(r.varm["alpha_eg"]), axis=1), "var": list(r.var_names),
            "mean_g": np.asarray(r.X.mean(0)).ravel(),
            "y_e": g["y_e"], "m_g_median": g["m_g"]["q50"], "elbo": float(mod["elbo"]),
            "sparse": {k: v for k, v in dict(mod.get("sparse_likelihood", {})).items()}}


def per_type_r(a: np.ndarray, b: np.ndarray) -> list[float]:
    keep = (a.std(0) > 0) & (b.std(0) > 0)
    return [float(np.corrcoef(a[:, f], b[:, f])[0, 1]) for f in np.flatnonzero(keep)]


#: bands of a gene's mean count per bin for the overdispersion figures: alpha is hardly determined by the data
#: where counts are this rare (the NB's variance term mu²/alpha is tiny), so its median is given per band too
MEAN_BANDS = (0.0, 0.01, 0.05, 0.2, np.inf)


def alpha_by_band(sparse: dict, dense: dict, mean_g: np.ndarray) -> list[dict]:
    """Median alpha_g of both fits, and the median of their per-gene ratio, per band of mean count per bin."""
    out = []
    for lo, hi in zip(MEAN_BANDS[:-1], MEAN_BANDS[1:]):
        k = (mean_g >= lo) & (mean_g < hi)
        if k.any():
            a_s, a_d = sparse["alpha_g"][k], dense["alpha_g"][k]
            out.append({"mean_count": f"[{lo}, {hi})", "genes": int(k.sum()), "dense": round(float(np.median(a_d)), 3),
                        "sparse": round(float(np.median(a_s)), 3), "ratio_of_medians": round(float(np.median(a_s) / np.median(a_d)), 4),
                        "median_ratio": round(float(np.median(a_s / a_d)), 4)})
    return out


def compare(sparse: dict, dense: dict) -> dict:
    assert sparse["obs"] == dense["obs"] and sparse["var"] == dense["var"]
    r05, rm = per_type_r(sparse["q05"], dense["q05"]), per_type_r(sparse["means"], dense["means"])
    total = sparse["means"].sum() / dense["means"].sum()
    alpha = sparse["alpha_median"] / dense["alpha_median"]
    return {"q05_r_median": round(float(np.median(r05)), 5), "q05_r_min": round(min(r05), 5),
            "q05_types_below_0.995": int(sum(x < 0.995 for x in r05)),
            "means_r_median": round(float(np.median(rm)), 5), "means_r_min": round(min(rm), 5),
            "total_ratio": round(float(total), 5), "total_q05_ratio": round(float(sparse["q05"].sum() / dense["q05"].sum()), 5),
            "alpha_median_ratio": round(float(alpha), 5), "alpha_by_mean_count": alpha_by_band(sparse, dense, dense["mean_g"]),
            "targets_met": bool(min(r05) >= 0.995 and abs(total - 1) <= 0.02 and abs(alpha - 1) <= 0.05)}


def setup_cost(sub: Path, sig: Path, a, name: str, src: Path | None, regime: str, bs: int | None) -> dict:
    """The same command for 1 epoch: the CPU seconds of everything but training (reading, start, export)."""
    out = a.outdir / f"{regime}_{name}_setup"
    if src is not None:
        os.environ["PYTHONPATH"] = str(src)
    try:
        m = run_measured(map_cmd(sub, sig, out, a, name.split("_")[0], bs, 1), a.outdir / f"{out.name}.log", a.threads)
    finally:
        os.environ["PYTHONPATH"] = str(REPO / "src")
    return m


def cpu_per_epoch(results: dict, regime: str, name: str) -> float:
    """CPU seconds per epoch of training, ``(cpu_s - cpu_s of the 1-epoch run) / (epochs - 1)``: steadier than
    wall time on a shared machine (the child runs one thread, so CPU time is what it spent, not what it waited)."""
    fit, setup = results[f"{regime}_{name}"], results[f"{regime}_{name}_setup"]
    return (fit["cpu_s"] - setup["cpu_s"]) / max(fit["epochs"] - 1, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qc", required=True, type=Path, help="QC'd HD sample (.h5ad from spotmap qc)")
    ap.add_argument("--sim", required=True, type=Path, help="simulation folder (truth/, signatures)")
    ap.add_argument("--outdir", required=True, type=Path)
    ap.add_argument("--bins", type=int, default=5000, help="random bins of the QC'd sample to map")
    ap.add_argument("--n-cells", type=float, default=1.5, help="--n-cells-per-location for 8 µm bins")
    ap.add_argument("--full-epochs", type=int, default=500, help="epochs of the full-batch fits (all of them)")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--mini-epochs", type=int, default=150, help="epochs of the minibatch fits")
    ap.add_argument("--regimes", default="full,mini")
    ap.add_argument("--before-src", type=Path, default=None, help="another source tree for an extra sparse run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse", action="store_true", help="keep fits whose folder already holds sp.h5ad (delete one to redo it)")
    ap.add_argument("--cpu-per-epoch", action="store_true",
                    help="also run each fit for 1 epoch and report CPU seconds per training epoch (cpu_per_epoch)")
    a = ap.parse_args(argv)

    import pandas as pd

    a.outdir.mkdir(parents=True, exist_ok=True)
    sig = a.sim / "truth" / "signatures.csv"
    truth = pd.read_parquet(a.sim / "truth" / "cell_abundance.parquet")
    sub = subset_h5ad(a.qc, a.bins, a.seed, a.outdir / f"subset_{a.bins}.h5ad")
    results_path = a.outdir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["machine"] = {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                          "threads": a.threads, "commit": subprocess.run(
                              ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()}

    def save(key, value):
        value["date"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        value["load_avg"] = [round(x, 2) for x in os.getloadavg()]
        results[key] = value
        tmp = results_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=1, default=str))
        tmp.replace(results_path)
        print(f"## {key}\n```\n{json.dumps(value, indent=1, default=str)}\n```", flush=True)

    runs = [("dense", None), ("sparse", None)] + ([("sparse_before", a.before_src)] if a.before_src else [])
    for regime in [r.strip() for r in a.regimes.split(",") if r.strip()]:
        bs, epochs = (None, a.full_epochs) if regime == "full" else (a.batch_size, a.mini_epochs)
        fits = {}
        for name, src in runs:
            out = a.outdir / f"{regime}_{name}"
            if a.reuse and (out / "sp.h5ad").exists() and f"{regime}_{name}" in results:
                log(f"reusing {out}")
                fits[name] = fit_summary(out)
                continue
            if src is not None:
                os.environ["PYTHONPATH"] = str(src)
            try:
                m = run_measured(map_cmd(sub, sig, out, a, name.split("_")[0], bs, epochs), a.outdir / f"{regime}_{name}.log",
                                 a.threads)
            finally:
                os.environ["PYTHONPATH"] = str(REPO / "src")
            m.update(history(out))
            acc = score(out, truth)
            m["accuracy_q05"] = {k: acc["q05"][k] for k in ("median_pearson", "rmse_proportions") if k in acc["q05"]}
            fits[name] = fit_summary(out)
            f = fits[name]
            m.update({"alpha_median": round(f["alpha_median"], 4), "y_e": f["y_e"], "m_g_median": round(f["m_g_median"], 4),
                      "elbo_last": f["elbo"], "sparse_likelihood": f["sparse"], "batch_size": bs, "command_epochs": epochs})
            save(f"{regime}_{name}", m)
        if a.cpu_per_epoch:
            for name, src in runs:
                if f"{regime}_{name}_setup" not in results:
                    save(f"{regime}_{name}_setup", setup_cost(sub, sig, a, name, src, regime, bs))
        for name, _ in runs[1:]:
            c = compare(fits[name], fits["dense"])
            c["s_per_epoch_ratio"] = round(results[f"{regime}_{name}"]["s_per_epoch"] / results[f"{regime}_dense"]["s_per_epoch"], 3)
            if a.cpu_per_epoch:
                per = {n: cpu_per_epoch(results, regime, n) for n, _ in runs}
                c["cpu_s_per_epoch"] = {n: round(v, 3) for n, v in per.items()}
                c["cpu_per_epoch_ratio"] = round(per[name] / per["dense"], 3)
            save(f"{regime}_{name}_vs_dense", c)
    return 0


if __name__ == "__main__":
    sys.exit(main())
