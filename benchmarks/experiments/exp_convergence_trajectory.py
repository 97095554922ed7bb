"""Where does spotmap go after its convergence rule stops it? One fit traced every 50 epochs (issues 20, 21).

One ``map_cell_types`` fit with its defaults, trained to ``EPOCHS`` (no stopping), recording every 50 epochs
the guide's posterior mean and q05 of w_sf. Printed per record (JSON lines): the epoch's -ELBO, the median
per-type Pearson r of the q05 with a reference table across spots (a simulation's true cell numbers, or
cell2location's 30,000-epoch q05 for a real set of ``benchmarks/agreement_c2l.py``), the mean total cells per
spot, and on simulations the RMSE of cell counts (mean over spots of the root mean square over types of posterior
mean − truth). The per-epoch history goes to ``hist_<case>_<EPOCHS><TAG>.csv`` in the working directory; the
epoch at which the default rule would have stopped is read from its ``rel_change`` column.

``--agree-inputs``: a simulated case of ``benchmarks/agreement_c2l.py`` mapped on its inputs (cell2location's
signatures, ``<agree>/<case>/input``) and scored against its ``truth.csv`` — the same signatures as the
agreement table's converged cell2location.

At the end a summary line: E, the epoch where the default rule (tol 5e-3 of the decrease since epoch 1 over
100-epoch windows) stops, and for the records nearest E, 2E, 1,000, 1,500, 2,000 and 3,000 the share of the
−ELBO's decrease since epoch 1 still to go to the run's last 100-epoch window ("left"; 0 at the last record
by construction).

``LR_DROP_AT=E LR_FACTOR=f`` multiplies every parameter's learning rate by f from epoch E on (does the drift
after the stop follow the gradient's noise or the objective?).

Usage (from the repository root; simulations are those of ``compare_cell2location.py``)::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/experiments/exp_convergence_trajectory.py default 3000
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/experiments/exp_convergence_trajectory.py hippocampus 1500 \\
        --agree /work/bench/agree
    LR_DROP_AT=600 LR_FACTOR=0.1 TAG=_drop600 OMP_NUM_THREADS=1 PYTHONPATH=src python \\
        benchmarks/experiments/exp_convergence_trajectory.py default 1500
"""
import argparse
import json
import os
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pyro

import spotmap.training as T
from spotmap.mapping import map_cell_types

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ap = argparse.ArgumentParser()
ap.add_argument("case", help="a compare_cell2location setting, or hippocampus / cerebellum")
ap.add_argument("epochs", type=int)
ap.add_argument("--agree", type=Path, default=Path("/work/bench/agree"), help="agreement_c2l.py workdir (real sets)")
ap.add_argument("--agree-inputs", action="store_true", help="simulated case: agreement_c2l.py inputs + truth")
ap.add_argument("--simdir", type=Path, default=Path("/tmp/exp_convergence"), help="where simulations are written")
a = ap.parse_args()
drop_at, factor = int(os.environ.get("LR_DROP_AT", "0")), float(os.environ.get("LR_FACTOR", "1"))
records = []
_epoch_loss = T._epoch_loss


def traced_epoch_loss(svi, batch_kwargs, config, n_obs, full, epoch):
    if drop_at and epoch == drop_at:
        for opt in svi.optim.optim_objs.values():
            for group in opt.param_groups:
                group["lr"] *= factor
    value = _epoch_loss(svi, batch_kwargs, config, n_obs, full, epoch)
    if (epoch + 1) % 50 == 0:
        store = pyro.get_param_store()
        loc, sd = store["w_sf_loc"].detach().double().numpy(), store["w_sf_scale"].detach().double().numpy()
        records.append((epoch + 1, value, np.exp(loc + sd**2 / 2), np.exp(loc - 1.6449 * sd)))
    return value


T._epoch_loss = traced_epoch_loss
real = a.case in ("hippocampus", "cerebellum")
if real:
    d = a.agree / a.case
    adata, sig = ad.read_h5ad(d / "input" / "sp.h5ad"), pd.read_csv(d / "input" / "signatures.csv", index_col=0)
    ref = pd.read_csv(d / "c2l_30000" / "q05.csv", index_col=0)
    meta = json.loads((d / "case.json").read_text())
    kw = {"n_cells_per_location": meta["n_cells"], "detection_alpha": meta["detection_alpha"]}
elif a.agree_inputs:
    d = a.agree / a.case
    adata, sig = ad.read_h5ad(d / "input" / "sp.h5ad"), pd.read_csv(d / "input" / "signatures.csv", index_col=0)
    ref = pd.read_csv(d / "truth.csv", index_col=0)
    kw = {}
else:
    from compare_cell2location import load_case
    adata, sig, ref, _ = load_case(a.case, a.simdir / a.case, 0)
    kw = {}
res, hist, mapper = map_cell_types(adata.copy(), sig, seed=0, progress=False, device="cpu", return_mapper=True,
                                   min_epochs=a.epochs, max_epochs=a.epochs, **kw)
ref = ref.loc[list(res.obs_names), list(mapper.factor_names)].to_numpy()
for epoch, value, mean, q05 in records:
    rs = [np.corrcoef(q05[:, f], ref[:, f])[0, 1] for f in range(ref.shape[1]) if ref[:, f].std() > 0]
    row = {"epoch": epoch, "elbo": round(value, 1), "median_r": round(float(np.median(rs)), 4),
           "total": round(float(mean.sum(1).mean()), 4)}
    if not real:
        row["rmse"] = round(float(np.sqrt(((mean - ref) ** 2).mean(1)).mean()), 4)
    print(json.dumps(row), flush=True)
hist.to_csv(f"hist_{a.case}_{a.epochs}{os.environ.get('TAG', '')}.csv")
window = hist["elbo"].rolling(100).mean().to_numpy()                      # 100-epoch means, index epoch - 1
decrease = hist["elbo"].iloc[0] - window[-1]
stop = int(np.argmax(hist["rel_change"].to_numpy()[199:] < 5e-3)) + 200
by_epoch = {r[0]: r for r in records}
left = {}
for e in (stop, 2 * stop, 1000, 1500, 2000, 3000):
    nearest = min(by_epoch, key=lambda k: abs(k - e))
    if abs(nearest - e) <= 25:
        left[nearest] = round(float((window[nearest - 1] - window[-1]) / decrease), 5)
print(json.dumps({"stop_epoch": stop, "left_at_record": left}))
