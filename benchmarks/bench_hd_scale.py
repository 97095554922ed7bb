#!/usr/bin/env python
"""Visium HD at scale (issue 10): time, peak memory and accuracy of ``spotmap map`` on a whole 8 µm sample.

Input: a sample simulated by ``spotmap simulate --platform visium-hd`` (e.g. 400,000 bins × 18,000 genes ×
40 types) and QC'd by ``spotmap qc`` (its ``<sample>.h5ad``). Every measured step runs the real CLI in a child
process; wall time and that child's peak RSS come from ``os.wait4``. Parts (``--part``, several allowed):

* ``full``   — ``spotmap map`` on every bin (``--likelihood auto``: the sparse likelihood), then accuracy against
  ``truth/cell_abundance.parquet`` on all bins and on the ``--subset`` bins;
* ``nnls``   — NNLS of counts on the same signatures (:func:`spotmap.metrics.nnls_abundance`) on the subset;
* ``subset`` — ``spotmap map --likelihood dense`` and ``--likelihood sparse`` on the subset (same settings):
  accuracy of each, and their agreement (per-type Pearson between the two abundance estimates);
* ``score``  — re-score an existing ``full`` result folder (metrics only);
* ``scale``  — ``spotmap map`` for ``--scale-epochs`` epochs on random subsets of ``--scale-sizes`` bins:
  seconds per epoch (from ``training_history.tsv``) and peak RSS, i.e. how the cost grows.

Metrics (:mod:`spotmap.metrics`): median over types of the Pearson r across bins between the posterior
abundance (``means`` and ``q05``) and the true cell numbers; RMSE of proportions; AUPR of presence.
Results go to ``<outdir>/results.json`` (one entry per part, updated in place) and are printed as Markdown.

Usage::

    spotmap simulate --platform visium-hd --n-bins 400000 --n-genes 18000 --n-cell-types 40 --outdir SIM
    spotmap qc --sample sample1 --input SIM/samples/sample1/outs --outdir QC
    python benchmarks/bench_hd_scale.py --qc QC/sample1.h5ad --sim SIM --outdir OUT --part full,nnls,subset,scale
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SPOTMAP = [sys.executable, "-m", "spotmap"]


def log(msg: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_measured(cmd: list[str], logfile: Path, threads: int) -> dict:
    """Run ``cmd``; return wall seconds, the child's peak RSS (GB) and the exit code."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log(" ".join(map(str, cmd)))
    t0 = time.perf_counter()
    with open(logfile, "w") as fh:
        proc = subprocess.Popen([str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise SystemExit(f"command failed ({rc}); see {logfile}")
    return {"wall_s": round(wall, 1), "peak_rss_gb": round(usage.ru_maxrss / 1024**2, 2),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1)}


def map_cmd(spatial: Path, sig: Path, out: Path, a, likelihood: str, max_epochs: int | None = None) -> list:
    cmd = [*SPOTMAP, "map", "--spatial", spatial, "--signatures", sig, "--outdir", out,
           "--n-cells-per-location", a.n_cells, "--likelihood", likelihood, "--checkpoint-every", 0,
           "--max-epochs", max_epochs or a.max_epochs, "--seed", a.seed]
    if a.batch_size:
        cmd += ["--batch-size", a.batch_size]
    return cmd + a.map_args.split()


def history(out: Path) -> dict:
    import pandas as pd

    h = pd.read_csv(out / "training_history.tsv", sep="\t")
    per_epoch = float(np.median(np.diff(h["seconds"].to_numpy()))) if len(h) > 2 else float("nan")
    return {"epochs": int(h["epoch"].iloc[-1]), "s_per_epoch": round(per_epoch, 3),
            "train_s": round(float(h["seconds"].iloc[-1]), 1)}


def score(out: Path, truth, rows=None) -> dict:
    """Metrics of a result folder (means and q05) against the truth, optionally on ``rows`` only."""
    import anndata as ad
    import pandas as pd
    from spotmap.metrics import evaluate

    res = ad.read_h5ad(out / "sp.h5ad", backed="r")
    names = list(res.uns["mod"]["factor_names"])
    out_d = {}
    for summary in ("means", "q05"):
        est = pd.DataFrame(np.asarray(res.obsm[f"{summary}_cell_abundance_w_sf"]), index=res.obs_names, columns=names)
        if rows is not None:
            est = est.loc[est.index.intersection(rows)]
        m = evaluate(est, truth.loc[est.index])  # bins removed by QC are not scored
        m.pop("per_type_pearson")
        out_d[summary] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}
    out_d["sparse_likelihood"] = dict(res.uns["mod"].get("sparse_likelihood", {}))
    out_d["likelihood"] = str(res.uns["mod"].get("likelihood", ""))
    res.file.close()
    return out_d


def subset_h5ad(src: Path, n: int, seed: int, dest: Path) -> Path:
    import anndata as ad

    if dest.exists():
        return dest
    a = ad.read_h5ad(src)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(a.n_obs, size=min(n, a.n_obs), replace=False))
    a[idx].copy().write_h5ad(dest)
    return dest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qc", required=True, type=Path, help="QC'd HD sample (.h5ad from spotmap qc)")
    ap.add_argument("--sim", required=True, type=Path, help="simulation folder (truth/, signatures)")
    ap.add_argument("--signatures", type=Path, default=None, help="default: SIM/truth/signatures.csv")
    ap.add_argument("--outdir", required=True, type=Path)
    ap.add_argument("--part", default="full,nnls,subset,scale")
    ap.add_argument("--n-cells", type=float, default=1.5, help="--n-cells-per-location for 8 µm bins")
    ap.add_argument("--batch-size", type=int, default=20000)
    ap.add_argument("--max-epochs", type=int, default=3000)
    ap.add_argument("--subset", type=int, default=20000)
    ap.add_argument("--subset-batch-size", type=int, default=5000)
    ap.add_argument("--scale-sizes", default="10000,50000,100000")
    ap.add_argument("--scale-epochs", type=int, default=4)
    ap.add_argument("--map-args", default="", help="extra spotmap map arguments")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    import pandas as pd

    a.outdir.mkdir(parents=True, exist_ok=True)
    sig = a.signatures or a.sim / "truth" / "signatures.csv"
    truth = pd.read_parquet(a.sim / "truth" / "cell_abundance.parquet")
    results_path = a.outdir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["machine"] = {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                          "commit": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                                   capture_output=True, text=True).stdout.strip()}
    sub = subset_h5ad(a.qc, a.subset, a.seed, a.outdir / f"subset_{a.subset}.h5ad")
    import anndata as ad

    sub_rows = ad.read_h5ad(sub, backed="r").obs_names.copy()

    def save(key, value):
        value["date"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        value["load_avg"] = [round(x, 2) for x in os.getloadavg()]
        results[key] = value
        # re-read first: several parts may run as separate processes on the same outdir
        current = json.loads(results_path.read_text()) if results_path.exists() else {}
        current.update({"machine": results["machine"], key: value})
        tmp = results_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(current, indent=1, default=str))
        tmp.replace(results_path)
        print(f"## {key}\n```\n{json.dumps(value, indent=1, default=str)}\n```", flush=True)

    parts = [p.strip() for p in a.part.split(",") if p.strip()]
    if "full" in parts:
        out = a.outdir / "map_full"
        m = run_measured(map_cmd(a.qc, sig, out, a, "auto"), a.outdir / "map_full.log", a.threads)
        m.update(history(out))
        m["all_bins"] = score(out, truth)
        m["subset"] = score(out, truth, sub_rows)
        m["n_bins"] = int(ad.read_h5ad(a.qc, backed="r").n_obs)
        save("full", m)
    if "score" in parts:  # re-score an existing full run (e.g. after changing the metrics)
        out = a.outdir / "map_full"
        m = history(out)
        m["all_bins"] = score(out, truth)
        m["subset"] = score(out, truth, sub_rows)
        save("full_scores", m)
    if "nnls" in parts:
        from spotmap.metrics import evaluate, nnls_abundance
        from spotmap.reference.signatures import read_signatures

        adata = ad.read_h5ad(sub)
        t0 = time.perf_counter()
        est = nnls_abundance(adata, read_signatures(sig))
        m = evaluate(est, truth.loc[est.index])
        m.pop("per_type_pearson")
        save("nnls_subset", {"wall_s": round(time.perf_counter() - t0, 1), **m})
    if "subset" in parts:
        sb = argparse.Namespace(**{**vars(a), "batch_size": a.subset_batch_size})
        ests = {}
        for lik in ("sparse", "dense"):
            out = a.outdir / f"map_subset_{lik}"
            m = run_measured(map_cmd(sub, sig, out, sb, lik), a.outdir / f"map_subset_{lik}.log", a.threads)
            m.update(history(out))
            m.update(score(out, truth))
            r = ad.read_h5ad(out / "sp.h5ad")
            ests[lik] = pd.DataFrame(np.asarray(r.obsm["means_cell_abundance_w_sf"]), index=r.obs_names)
            save(f"subset_{lik}", m)
        d, s = ests["dense"].align(ests["sparse"], join="inner")
        r = [float(np.corrcoef(d.iloc[:, f], s.iloc[:, f])[0, 1]) for f in range(d.shape[1])]
        save("subset_sparse_vs_dense", {"median_r": round(float(np.median(r)), 4), "min_r": round(min(r), 4)})
    if "scale" in parts:
        for n in [int(x) for x in a.scale_sizes.split(",") if x]:
            path = subset_h5ad(a.qc, n, a.seed, a.outdir / f"scale_{n}.h5ad")
            out = a.outdir / f"map_scale_{n}"
            sa = argparse.Namespace(**{**vars(a), "batch_size": min(a.batch_size, n) if a.batch_size else None})
            m = run_measured(map_cmd(path, sig, out, sa, "auto", a.scale_epochs), a.outdir / f"map_scale_{n}.log",
                             a.threads)
            m.update(history(out))
            save(f"scale_{n}", m)
    return 0


if __name__ == "__main__":
    sys.exit(main())
