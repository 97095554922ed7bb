#!/usr/bin/env python
"""spotmap against cell2location and NNLS on the same simulated data (issue 5, "Measured").

For each simulator setting this script

1. simulates a case with :func:`spotmap.simulate.simulate`, reads its Space Ranger folders, drops the
   spots the simulator marks for QC failure (empty / damaged) and the mitochondrial genes, and
   names spots ``'<sample>_<barcode>'`` like ``truth/cell_abundance.csv``;
2. runs **cell2location 0.1.5** in its own virtual environment (``--c2l-python``, default
   ``/work/c2l-venv/bin/python``) through ``benchmarks/c2l_runner.py``, with its documented settings
   (lr 0.002, full batch, ``N_cells_per_location=8``, ``detection_alpha=20``), exported with
   ``use_quantiles=True`` (exact q05 of its guide; ``--c2l-export samples`` draws 1,000 samples instead);
3. runs **spotmap** ``map_cell_types`` with its defaults (only the signatures are passed);
4. runs **NNLS** of counts on the signatures (:func:`spotmap.metrics.nnls_abundance`);
5. optionally (``--curve``) runs spotmap with several ``max_epochs`` to measure accuracy against
   wall time, and reports the first point that reaches cell2location's median Pearson r.

Every method gets the same counts and the **true** signatures (``truth/signatures.csv``), so only
the mapping differs. Metrics (:mod:`spotmap.metrics`) use the q05 posterior abundance (as spotless,
whose proportions are row-normalised q05) and also the posterior mean: median per-type Pearson r
against the true cell numbers, RMSE of proportions, AUPR of presence (scored on proportions), and the absolute
scale: RMSE of cell counts per spot and estimated / true total cells (:func:`spotmap.metrics.rmse_counts`,
:func:`spotmap.metrics.total_ratio`).

Wall times are for fitting (model setup + training + posterior export), without the Python imports;
cell2location's import time and total subprocess time are reported as well. Torch uses
``--threads`` threads for both methods, and methods run one after another, never side by side.

Usage::

    python benchmarks/compare_cell2location.py --settings default --c2l-epochs 3000 --curve 50,100,200,400
    python benchmarks/compare_cell2location.py --settings all --skip-c2l

Writes ``<outdir>/<setting>/results.json`` and ``<outdir>/summary.{json,md}``, plus
``<outdir>/accuracy_vs_time.png`` with ``--curve``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().parent / "c2l_runner.py"

# Base case of issue 5: 500 spots × 2,000 genes × 12 types, one sample.
BASE = dict(n_spots=500, n_genes=2000, n_cell_types=12, n_samples=1, n_cells=1200, seed=0)

# Each setting: simulator overrides, plus post-simulation steps ("thin": {sample: fraction} keeps that
# binomial fraction of a sample's counts, i.e. scales its detection efficiency).
SETTINGS: dict[str, dict] = {
    "default": {"sim": {}},
    # half of the types are rare (one zone, 0.5–1.5 cells per spot there)
    "rare": {"sim": {"frac_rare_types": 0.5}},
    # two samples whose depth differs 3× (sample2 thinned to 30 %), variable detection within a slide
    # (detection_alpha 5 instead of 20) and a strong reference-vs-spatial gene sensitivity effect
    # (log-sd of m_g 0.8 instead of 0.4)
    "batch": {"sim": {"n_samples": 2, "detection_alpha": 5.0, "gene_sensitivity_sd": 0.8},
              "thin": {"sample2": 0.3}},
    # low depth: mean detection efficiency 0.1 instead of 0.4
    "lowdepth": {"sim": {"detection_mean": 0.1}},
    # few genes: 300 (287 after removing 13 mitochondrial genes)
    "fewgenes": {"sim": {"n_genes": 300}},
}


def log(msg: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_case(setting: str, workdir: Path, seed: int):
    """Simulate (or reuse) one setting; return ``(adata, signatures, truth, params)``."""
    from spotmap.simulate import SimulationParams, simulate

    spec = SETTINGS[setting]
    params = SimulationParams(**{**BASE, "seed": seed, **spec["sim"]})
    sim = workdir / "sim"
    pfile = sim / "truth" / "params.json"
    if not (pfile.exists() and json.loads(pfile.read_text()) == json.loads(json.dumps(dataclasses.asdict(params)))):
        log(f"{setting}: simulating {params.n_samples} sample(s) × {params.n_spots} spots × {params.n_genes} genes "
            f"× {params.n_cell_types} types")
        simulate(sim, params)
    adata, sig, truth = read_sim(sim, spec.get("thin", {}), seed)
    return adata, sig, truth, dataclasses.asdict(params)


def read_sim(sim: Path, thin: dict | None = None, seed: int = 0):
    """A simulation folder as every method gets it: its samples' Space Ranger outputs (``thin``: sample → the
    fraction of counts kept, binomially), the spots that pass QC, no mitochondrial genes; returns
    ``(adata, signatures, truth)`` with the true signatures and cell numbers in the same order."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    from spotmap.io.spaceranger import read_spaceranger

    parts = []
    for sample in sorted(p.name for p in (sim / "samples").iterdir()):
        a = read_spaceranger(sim / "samples" / sample / "outs", sample=sample)
        a.obs_names = [f"{sample}_{b}" for b in a.obs_names]
        frac = (thin or {}).get(sample)
        if frac is not None:  # binomial thinning: the same tissue seen with frac × the detection
            rng = np.random.default_rng(seed + 1000)
            X = sp.csr_matrix(a.X)
            X.data = rng.binomial(X.data.astype(np.int64), frac).astype(np.float32)
            X.eliminate_zeros()
            a.X = X
        parts.append(a)
    adata = ad.concat(parts, merge="same") if len(parts) > 1 else parts[0]
    adata.obs["sample"] = pd.Categorical(adata.obs["sample"].astype(str))
    spots = pd.read_csv(sim / "truth" / "spots.csv", index_col=0, keep_default_na=False)
    keep = spots.index[spots["qc_fail"].astype(str) == ""]
    adata = adata[adata.obs_names.isin(keep)].copy()
    adata = adata[:, ~adata.var_names.str.startswith("mt-")].copy()
    for k in list(adata.uns):
        adata.uns.pop(k)
    adata.obsm.clear()
    sig = pd.read_csv(sim / "truth" / "signatures.csv", index_col=0)
    sig = sig.loc[adata.var_names]
    truth = pd.read_csv(sim / "truth" / "cell_abundance.csv", index_col=0).loc[adata.obs_names, list(sig.columns)]
    return adata, sig, truth


def score(est, truth) -> dict:
    from spotmap.metrics import evaluate

    m = evaluate(est, truth)
    keys = ("median_pearson", "mean_pearson", "min_pearson", "rmse_proportions", "aupr", "rmse_counts", "total_ratio")
    return {k: m[k] for k in keys} | {
        "per_type_pearson": m["per_type_pearson"]}


def run_nnls(adata, sig, truth) -> dict:
    from spotmap.metrics import nnls_abundance

    t = time.perf_counter()
    est = nnls_abundance(adata, sig)
    wall = time.perf_counter() - t
    return {"method": "NNLS", "summary": "point", "epochs": None, "wall_s": wall, "s_per_epoch": None,
            **score(est, truth)}


def run_spotmap(adata, sig, truth, settings: dict | None = None) -> tuple[list[dict], object]:
    from spotmap.mapping import map_cell_types
    from spotmap.results import table

    settings = settings or {}
    t = time.perf_counter()
    res, hist = map_cell_types(adata.copy(), sig, **settings)
    wall = time.perf_counter() - t
    epochs = int(len(hist))
    train_s = float(hist["seconds"].iloc[-1]) if "seconds" in hist and epochs else None
    rows = []
    for summary in ("q05", "means"):
        est = table(res, summary)  # index = result obs_names = spot ids
        rows.append({"method": "spotmap", "summary": summary, "epochs": epochs, "wall_s": wall,
                     "train_s": train_s, "s_per_epoch": (train_s / epochs) if train_s and epochs else None,
                     "settings": settings, **score(est, truth)})
    return rows, hist


def run_c2l(adata, sig, truth, workdir: Path, epochs: int, python: str, threads: int, seed: int,
            checkpoints: str = "", export: str = "samples") -> list[dict]:
    import pandas as pd

    inp = workdir / "c2l_input"
    inp.mkdir(parents=True, exist_ok=True)
    a = adata.copy()
    a.write_h5ad(inp / "sp.h5ad")
    sig.to_csv(inp / "signatures.csv")
    out = workdir / f"c2l_{epochs}"
    cmd = [python, str(RUNNER), "--adata", str(inp / "sp.h5ad"), "--signatures", str(inp / "signatures.csv"),
           "--epochs", str(epochs), "--out", str(out), "--threads", str(threads), "--seed", str(seed),
           "--export", export]
    if checkpoints:
        cmd += ["--checkpoints", checkpoints]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    log(f"cell2location: {' '.join(cmd)}")
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    total = time.perf_counter() - t
    (workdir / f"c2l_{epochs}.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    rows = []
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        log(f"cell2location runner failed or was stopped (exit {proc.returncode}); log {workdir}/c2l_{epochs}.log:\n{tail}")
        done = json.loads((out / "checkpoints.json").read_text())["checkpoints"] if (out / "checkpoints.json").exists() else []
        for leg in done:  # checkpoints it reached before stopping
            est = pd.read_csv(out / f"q05_{leg['epochs']}.csv", index_col=0)
            rows.append({"method": "cell2location", "summary": "q05", "epochs": leg["epochs"], "wall_s": None,
                         "train_s": leg["train_seconds_cumulative"],
                         "s_per_epoch": leg["train_seconds_cumulative"] / leg["epochs"], "checkpoint": True,
                         "incomplete_run": True, **score(est, truth)})
        return rows
    timing = json.loads((out / "timing.json").read_text())
    fit = timing["setup_seconds"] + timing["train_seconds"] + timing["export_seconds"]
    for summary in ("q05", "means", "q50"):
        if not (out / f"{summary}.csv").exists():
            continue
        est = pd.read_csv(out / f"{summary}.csv", index_col=0)
        rows.append({"method": "cell2location", "summary": summary, "epochs": epochs, "wall_s": fit,
                     "train_s": timing["train_seconds"], "s_per_epoch": timing["seconds_per_epoch"],
                     "import_s": timing["import_seconds"], "subprocess_s": total,
                     "versions": timing["versions"], **score(est, truth)})
    for leg in timing.get("checkpoints", [])[:-1]:
        for summary in ("q05", "means"):
            est = pd.read_csv(out / f"{summary}_{leg['epochs']}.csv", index_col=0)
            rows.append({"method": "cell2location", "summary": summary, "epochs": leg["epochs"],
                         "wall_s": None, "train_s": leg["train_seconds_cumulative"],
                         "s_per_epoch": leg["train_seconds_cumulative"] / leg["epochs"], "checkpoint": True,
                         **score(est, truth)})
    return rows


def fmt(x, spec=".3f") -> str:
    return "—" if x is None else format(x, spec)


def table_md(rows: list[dict]) -> str:
    head = ("| setting | method | summary | epochs | fit wall (s) | train (s) | s/epoch | median r | "
            "RMSE prop. | AUPR | RMSE counts | est./true total |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['method']}{' (curve)' if r.get('curve') else ''}"
                     f"{' (checkpoint)' if r.get('checkpoint') else ''} | {r['summary']} | {fmt(r['epochs'], 'd')} | "
                     f"{fmt(r['wall_s'], '.1f')} | {fmt(r.get('train_s'), '.1f')} | {fmt(r['s_per_epoch'], '.4f')} | "
                     f"{r['median_pearson']:.3f} | {r['rmse_proportions']:.4f} | {r['aupr']:.3f} | "
                     f"{fmt(r.get('rmse_counts'))} | {fmt(r.get('total_ratio'))} |")
    return "\n".join(lines)


def plot_curve(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({r["setting"] for r in rows})
    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 4), squeeze=False)
    for ax, s in zip(axes[0], settings):
        rs = [r for r in rows if r["setting"] == s and r["summary"] == "q05"]
        curve = sorted([r for r in rs if r["method"] == "spotmap"], key=lambda r: r["wall_s"])
        if curve:
            ax.plot([r["wall_s"] for r in curve], [r["median_pearson"] for r in curve], "o-", label="spotmap (q05)")
            for r in curve:
                ax.annotate(str(r["epochs"]), (r["wall_s"], r["median_pearson"]), fontsize=7)
        c2l = [r for r in rs if r["method"] == "cell2location"]
        for r in c2l:
            x = r["wall_s"] if r["wall_s"] is not None else r["train_s"]
            ax.plot([x], [r["median_pearson"]], "s", color="C3")
            ax.annotate(f"c2l {r['epochs']}", (x, r["median_pearson"]), fontsize=7)
        nn = [r for r in rows if r["setting"] == s and r["method"] == "NNLS"]
        if nn:
            ax.axhline(nn[0]["median_pearson"], color="grey", ls="--", label="NNLS")
        ax.set_xscale("log")
        ax.set_xlabel("wall time (s, log)")
        ax.set_ylabel("median per-type Pearson r")
        ax.set_title(s)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default="default",
                    help=f"comma-separated, or 'all': {', '.join(SETTINGS)}")
    ap.add_argument("--c2l-epochs", type=int, default=3000)
    ap.add_argument("--c2l-checkpoints", default="", help="also export cell2location at these epochs (e.g. 1000)")
    ap.add_argument("--c2l-settings", default="",
                    help="settings to run cell2location on (default: all selected); others skip it")
    ap.add_argument("--c2l-export", choices=("samples", "quantiles"), default="quantiles",
                    help="cell2location's final export: use_quantiles=True (default: exact q05/q50, fast) or 1,000 samples")
    ap.add_argument("--skip-c2l", action="store_true", help="do not run cell2location")
    ap.add_argument("--c2l-python", default=os.environ.get("C2L_PYTHON", "/work/c2l-venv/bin/python"))
    ap.add_argument("--curve", default="", help="comma-separated max_epochs for spotmap's accuracy-vs-time curve")
    ap.add_argument("--spotmap-settings", default="{}", help="JSON of extra map_cell_types settings (default: none)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-spotmap", action="store_true", help="do not run spotmap (checks the other methods)")
    ap.add_argument("--outdir", default=str(Path(tempfile.gettempdir()) / "spotmap-compare-c2l"),
                    help="work and result folder (simulations are reused when their settings match)")
    a = ap.parse_args(argv)

    names = list(SETTINGS) if a.settings == "all" else [s.strip() for s in a.settings.split(",") if s.strip()]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown:
        ap.error(f"unknown setting(s) {unknown}; choose from {list(SETTINGS)}")
    c2l_on = set(names) if not a.c2l_settings else {s.strip() for s in a.c2l_settings.split(",")}
    use_c2l = not a.skip_c2l
    if use_c2l and not Path(a.c2l_python).exists():
        log(f"cell2location python {a.c2l_python} not found: running without cell2location (see --c2l-python)")
        use_c2l = False
    extra = json.loads(a.spotmap_settings)

    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch

    torch.set_num_threads(a.threads)
    outdir = Path(a.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    load1 = os.getloadavg()[0]
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""

    meta = {"started": dt.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
            "git_head": git("rev-parse", "--short", "HEAD"),
            "src_uncommitted": git("status", "--short", "--", "src/spotmap").splitlines(),
            "cpus": os.cpu_count(), "threads": a.threads, "loadavg_1min_at_start": load1,
            "python": sys.version.split()[0], "torch": torch.__version__, "argv": sys.argv[1:]}
    all_rows: list[dict] = []
    for s in names:
        wd = outdir / s
        wd.mkdir(parents=True, exist_ok=True)
        adata, sig, truth, params = load_case(s, wd, a.seed)
        log(f"{s}: {adata.n_obs} spots × {adata.n_vars} genes × {sig.shape[1]} types "
            f"(load {os.getloadavg()[0]:.2f})")
        rows = [run_nnls(adata, sig, truth)]
        log(f"{s}: NNLS median r {rows[-1]['median_pearson']:.3f}")
        if not a.skip_spotmap:
            sm_rows, hist = run_spotmap(adata, sig, truth, extra)
            rows += sm_rows
            hist.to_csv(wd / "spotmap_history.csv", index=False)
            log(f"{s}: spotmap defaults: {sm_rows[0]['epochs']} epochs, {sm_rows[0]['wall_s']:.1f} s, "
                f"median r (q05) {sm_rows[0]['median_pearson']:.3f}")
        if use_c2l and s in c2l_on:
            c2l_rows = run_c2l(adata, sig, truth, wd, a.c2l_epochs, a.c2l_python, a.threads, a.seed,
                               a.c2l_checkpoints, a.c2l_export)
            rows += c2l_rows
            if c2l_rows:  # the first row is the final model's q05 (checkpoint rows follow)
                log(f"{s}: cell2location {c2l_rows[0]['epochs']} epochs: median r (q05) "
                    f"{c2l_rows[0]['median_pearson']:.3f}")
        for n in [] if a.skip_spotmap else [int(x) for x in a.curve.split(",") if x.strip()]:
            cr, _ = run_spotmap(adata, sig, truth, {**extra, "max_epochs": n})
            for r in cr:
                r["curve"] = True
                r["max_epochs"] = n
            rows += cr
            log(f"{s}: spotmap max_epochs={n}: {cr[0]['epochs']} epochs, {cr[0]['wall_s']:.1f} s, "
                f"median r (q05) {cr[0]['median_pearson']:.3f}")
        for r in rows:
            r["setting"] = s
        # Time for spotmap to reach each cell2location accuracy (final run and checkpoints): the fastest
        # spotmap run (defaults or curve) whose q05 median r is at least as high. Ratio = cell2location's
        # training seconds (no import, setup or export: conservative) / spotmap's whole call.
        sm = sorted([r for r in rows if r["method"] == "spotmap" and r["summary"] == "q05"], key=lambda r: r["wall_s"])
        reach = []
        for c in sorted([r for r in rows if r["method"] == "cell2location" and r["summary"] == "q05"],
                        key=lambda r: r["epochs"]):
            hit = next((r for r in sm if r["median_pearson"] >= c["median_pearson"]), None)
            reach.append({"c2l_epochs": c["epochs"], "c2l_median_r": c["median_pearson"], "c2l_train_s": c["train_s"],
                          "spotmap_epochs": hit and hit["epochs"], "spotmap_median_r": hit and hit["median_pearson"],
                          "spotmap_wall_s": hit and hit["wall_s"],
                          "ratio": (c["train_s"] / hit["wall_s"]) if hit else None})
        for x in reach:
            log(f"{s}: reach cell2location@{x['c2l_epochs']} (r {x['c2l_median_r']:.3f}, train {x['c2l_train_s']:.0f} s): "
                + (f"spotmap {x['spotmap_epochs']} epochs, {x['spotmap_wall_s']:.1f} s, ratio {x['ratio']:.1f}×"
                   if x["spotmap_wall_s"] else "not reached by any spotmap run"))
        (wd / "results.json").write_text(json.dumps({"setting": s, "params": params, "spec": SETTINGS[s],
                                                     "rows": rows, "reach_c2l": reach, "meta": meta},
                                                    indent=2, default=str))
        all_rows += rows
        print(table_md(rows), flush=True)
    meta["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    meta["loadavg_1min_at_end"] = os.getloadavg()[0]
    (outdir / "summary.json").write_text(json.dumps({"meta": meta, "rows": all_rows}, indent=2, default=str))
    md = table_md(all_rows)
    (outdir / "summary.md").write_text(f"{json.dumps(meta)}\n\n{md}\n")
    if a.curve:
        plot_curve(all_rows, outdir / "accuracy_vs_time.png")
    print("\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
