"""Scale experiment: spotmap snapshots over long training (resume from checkpoints), with prior overrides.

An experiment (issue 20), kept to reproduce benchmarks/RESULTS_mapping_accuracy.md section 5: written against the
model of commit c872d0d (cell2location's parametrisation, MappingPriors.detection_mean_alpha), on the cases that
`benchmarks/agreement_c2l.py prepare --workdir /work/bench/agree` writes; not maintained with the package.
"""
import json, sys, time, os
from pathlib import Path
import numpy as np, pandas as pd, anndata as ad, torch
torch.set_num_threads(1)
from spotmap.mapping import map_cell_types, MappingPriors
from spotmap.results import table
from spotmap.metrics import per_type_pearson, rmse_proportions

case, tag = sys.argv[1], sys.argv[2]
over = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
epochs = [int(x) for x in (sys.argv[4] if len(sys.argv) > 4 else "400,1000,3000").split(",")]
sigsrc = sys.argv[5] if len(sys.argv) > 5 else "truth"
wd = Path("/work/bench/agree") / case
sp = ad.read_h5ad(wd / ("input/sp.h5ad" if sigsrc == "c2l" else "sp.h5ad"))
sig = pd.read_csv(wd / ("input/signatures.csv" if sigsrc == "c2l" else "sim/truth/signatures.csv"), index_col=0)
meta = json.loads((wd / "case.json").read_text())
truth = pd.read_csv(wd / "truth.csv", index_col=0) if (wd / "truth.csv").exists() else None
settings = over.pop("settings", {})
priors = MappingPriors(**{"N_cells_per_location": meta["n_cells"], "detection_alpha": meta["detection_alpha"], **over})
out = Path(f"/work/bench/exp/{case}_{sigsrc}_{tag}"); out.mkdir(parents=True, exist_ok=True)
rows = []
for E in epochs:
    t = time.perf_counter()
    res, hist = map_cell_types(sp.copy(), sig, priors=priors, max_epochs=E, min_epochs=10**9, tol=0.0, progress=False,
                               checkpoint_every=100, checkpoint_path=str(out / "ckpt.pt"), **settings)
    g = res.uns["mod"]["globals"]
    mean = table(res, "means"); q05 = table(res, "q05")
    row = {"epochs": E, "s": round(time.perf_counter() - t, 1), "elbo": float(hist["elbo"].iloc[-50:].mean()),
           "total_mean": float(mean.sum(1).mean()), "y_e": list(g["y_e"].values()), "m_g_med": g["m_g"]["q50"],
           "alpha_med": [v["q50"] for v in g["alpha_eg"].values()]}
    if truth is not None:
        tr = truth.loc[mean.index, mean.columns]
        row.update(truth_total=float(tr.sum(1).mean()), ratio=float(mean.sum(1).mean() / tr.sum(1).mean()),
                   rmse_counts=float(np.sqrt(((mean - tr) ** 2).mean(1)).mean()),
                   r_q05=float(per_type_pearson(q05, tr).median()), r_mean=float(per_type_pearson(mean, tr).median()),
                   rmse_prop=float(rmse_proportions(q05, tr)))
    rows.append(row)
    print(json.dumps(row), flush=True)
(out / "rows.json").write_text(json.dumps(rows, indent=1))
