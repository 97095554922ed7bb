#!/usr/bin/env python
"""spotmap against cell2location run to convergence, on cell2location's own signatures (issue 20).

Both tools get the **same signatures** — cell2location 0.1.5's ``RegressionModel`` on the case's reference,
exported ``means_per_cluster_mu_fg`` — the same counts, the same ``N_cells_per_location`` and
``detection_alpha``. cell2location runs at its documented defaults to convergence (30,000 epochs, lr 0.002,
full batch; its ELBO curve is kept to show it has flattened), in its own virtual environment
(``--c2l-python``); spotmap runs with its defaults.

Cases: four simulations (``default``, ``lowdepth``, ``batch``: two samples with a 3× depth difference and
variable detection, ``rare``), two with another true gene sensitivity (``sens025``/``sens05``: geometric mean
of m_g 0.25 / 0.5 instead of 1), and the real Slide-seq ``cerebellum`` and Visium ``hippocampus`` sets of
``../shared/data``. Steps, each resumable (a finished step's files are reused)::

    python benchmarks/agreement_c2l.py prepare --workdir W                 # inputs of every case
    python benchmarks/agreement_c2l.py c2l --workdir W --cases default      # signatures + 30,000 epochs
    python benchmarks/agreement_c2l.py spotmap --workdir W --tag defaults   # spotmap on the same signatures
    python benchmarks/agreement_c2l.py report --workdir W --tag defaults    # the agreement table (markdown)

Per case, ``report`` gives: per-type Pearson r between the tools' q05 and means across spots; the ratio of
total cells per spot spotmap / cell2location (median, IQR); per-sample detection y_e, median m_g and median
overdispersion of both; on simulations, both tools against the truth (per-type r, RMSE of cell counts per
spot, estimated / true total); and both fits scored under one objective, the NB log-likelihood of the counts
(log d! included) at each tool's posterior means.
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

SIM_CASES = {
    "default": {},
    "lowdepth": {"lowdepth": True},
    "batch": {"batch": True},
    "rare": {"rare": True},
    "sens025": {"sim": {"gene_sensitivity_mean": 0.25}},
    "sens05": {"sim": {"gene_sensitivity_mean": 0.5}},
}
REAL_CASES = {"cerebellum": {"n_cells": 1.5}, "hippocampus": {"n_cells": 8.0}}
ALL_CASES = [*SIM_CASES, *REAL_CASES]


def log(msg: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def shared_data() -> Path:
    env = os.environ.get("SPOTMAP_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


# ------------------------------------------------------------------------------------------------ prepare
def prepare_sim(case: str, wd: Path, seed: int) -> dict:
    """Simulate (500 spots × 2,000 genes × 12 types, as issue 20) and write sp.h5ad, ref.h5ad, truth.csv."""
    import compare_cell2location as cc

    spec = SIM_CASES[case]
    base = {"lowdepth": "lowdepth", "batch": "batch", "rare": "rare"}
    setting = next((v for k, v in base.items() if spec.get(k)), "default")
    extra = spec.get("sim", {})
    if extra:  # a setting of compare_cell2location's table with more simulator overrides
        cc.SETTINGS[case] = {"sim": {**cc.SETTINGS[setting]["sim"], **extra}}
        setting = case
    adata, _sig, truth, params = cc.load_case(setting, wd, seed)
    adata.write_h5ad(wd / "sp.h5ad")
    truth.to_csv(wd / "truth.csv")
    return {"kind": "sim", "setting": setting, "params": params, "reference": str(wd / "sim" / "reference.h5ad"),
            "labels_key": "cell_type", "batch_key": "batch", "filter_genes": True, "n_cells": 8.0,
            "detection_alpha": 20.0}


def prepare_real(case: str, wd: Path) -> dict:
    """The real set as spotmap reads it (count tables, QC thresholds 0 as examples/real_data.md), as h5ads."""
    import run_real_data as rr

    from spotmap.io import read_spatial
    from spotmap.io.counts import read_reference

    spec = rr.sets(shared_data())[case]
    sp = read_spatial(spec["counts"], sample=case, coordinates=spec["coordinates"])
    sp.obs["sample"] = case
    ref = read_reference(spec["reference"], labels_key=spec["labels_key"], cell_types=spec["cell_types"])
    genes = sorted(set(sp.var_names) & set(ref.var_names))
    sp = sp[:, genes].copy()
    sp = sp[sp.X.sum(1).A1 > 0].copy() if hasattr(sp.X, "toarray") else sp[sp.X.sum(1) > 0].copy()
    for a in (sp, ref):
        a.uns.clear()
        a.obsm.clear()
    sp.write_h5ad(wd / "sp.h5ad")
    ref.write_h5ad(wd / "ref.h5ad")
    return {"kind": "real", "reference": str(wd / "ref.h5ad"), "labels_key": spec["labels_key"], "batch_key": None,
            "filter_genes": False, "n_cells": REAL_CASES[case]["n_cells"], "detection_alpha": 20.0}


def cmd_prepare(a) -> None:
    for case in a.cases:
        wd = a.workdir / case
        wd.mkdir(parents=True, exist_ok=True)
        if (wd / "case.json").exists():
            log(f"{case}: prepared already")
            continue
        meta = prepare_sim(case, wd, a.seed) if case in SIM_CASES else prepare_real(case, wd)
        (wd / "case.json").write_text(json.dumps(meta, indent=2, default=str))
        log(f"{case}: prepared ({meta['kind']})")


# ------------------------------------------------------------------------------------------------ cell2location
def _c2l(python: str, script: str, args: list, threads: int, logfile: Path, append: bool = False) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    cmd = [python, str(HERE / script), *map(str, args), "--threads", str(threads)]
    log(" ".join(cmd))
    with open(logfile, "a" if append else "w") as fh:
        fh.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        fh.flush()
        r = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if r.returncode:
        sys.exit(f"cell2location step failed (exit {r.returncode}); see {logfile}")


def cmd_c2l(a) -> None:
    for case in a.cases:
        wd = a.workdir / case
        meta = json.loads((wd / "case.json").read_text())
        sig_dir = wd / "c2l_signatures"  # always seed 0's: another seed refits the spatial model only
        if not (sig_dir / "signatures.csv").exists():
            args = ["--reference", meta["reference"], "--labels-key", meta["labels_key"], "--out", sig_dir,
                    "--seed", a.seed]
            args += ["--batch-key", meta["batch_key"]] if meta["batch_key"] else []
            args += ["--filter-genes"] if meta["filter_genes"] else []
            sig_dir.mkdir(parents=True, exist_ok=True)
            _c2l(a.c2l_python, "c2l_signatures_runner.py", args, a.threads, wd / "c2l_signatures.log")
        if a.signatures_only:
            continue
        out = wd / (f"c2l_{a.epochs}" if a.seed == 0 else f"c2l_{a.epochs}_seed{a.seed}")  # seed 0: the comparison
        if (out / "timing.json").exists():
            log(f"{case}: cell2location {a.epochs} epochs done already")
            continue
        inp = _common_genes(wd)
        checkpoints = ",".join(str(e) for e in (3000, 10000, 20000) if e < a.epochs)
        _c2l(a.c2l_python, "c2l_runner.py",
             ["--adata", inp / "sp.h5ad", "--signatures", inp / "signatures.csv", "--epochs", a.epochs, "--out", out,
              "--seed", a.seed, "--n-cells-per-location", meta["n_cells"], "--detection-alpha",
              meta["detection_alpha"], "--export", "samples", *(["--checkpoints", checkpoints] if checkpoints else []),
              "--save-every", a.save_every, "--resume"],
             a.threads, wd / (out.name + ".log"), append=True)  # appended: a resumed run continues its log
        log(f"{case}: cell2location done ({json.loads((out / 'timing.json').read_text())['train_seconds']:.0f} s)")


def _common_genes(wd: Path) -> Path:
    """sp.h5ad and the signatures on their shared genes, in the same order (what both tools are given)."""
    import anndata as ad
    import pandas as pd

    inp = wd / "input"
    if (inp / "signatures.csv").exists():
        return inp
    inp.mkdir(exist_ok=True)
    sp = ad.read_h5ad(wd / "sp.h5ad")
    sig = pd.read_csv(wd / "c2l_signatures" / "signatures.csv", index_col=0)
    genes = [g for g in sp.var_names if g in sig.index]
    sp = sp[:, genes].copy()
    sp = sp[sp.X.sum(1).A1 > 0].copy() if hasattr(sp.X, "tocsr") else sp[sp.X.sum(1) > 0].copy()
    sp.write_h5ad(inp / "sp.h5ad")
    sig.loc[genes].to_csv(inp / "signatures.csv")
    return inp


# ------------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="step", required=True)
    for name in ("prepare", "c2l", "spotmap", "report"):
        p = sub.add_parser(name)
        p.add_argument("--workdir", type=Path, required=True)
        p.add_argument("--cases", default=",".join(ALL_CASES))
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--epochs", type=int, default=30000, help="cell2location's epochs")
        p.add_argument("--signatures-only", action="store_true", help="c2l: the reference signatures only")
        p.add_argument("--save-every", type=int, default=1000,
                       help="c2l: keep resume.pt every K epochs; a re-run continues from it (0: never)")
        p.add_argument("--c2l-python", default=os.environ.get("C2L_PYTHON", "/work/c2l_venv/bin/python"))
        p.add_argument("--tag", default="defaults", help="spotmap run name (spotmap / report)")
        p.add_argument("--settings", default="{}", help="spotmap: JSON of map_cell_types settings")
        p.add_argument("--signatures", choices=("c2l", "truth"), default="c2l",
                       help="spotmap: cell2location's signatures (the comparison) or a simulation's true ones")
    a = ap.parse_args(argv)
    a.cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    unknown = set(a.cases) - set(ALL_CASES)
    if unknown:
        ap.error(f"unknown case(s) {sorted(unknown)}; choose from {ALL_CASES}")
    a.workdir.mkdir(parents=True, exist_ok=True)
    {"prepare": cmd_prepare, "c2l": cmd_c2l}.get(a.step, lambda _a: None)(a)
    if a.step in ("spotmap", "report"):
        from agreement_score import cmd_report, cmd_spotmap

        (cmd_spotmap if a.step == "spotmap" else cmd_report)(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
