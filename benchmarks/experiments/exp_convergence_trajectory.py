"""Where does spotmap go after its convergence rule stops it? One fit traced every 50 epochs (issues 20, 21).

One ``map_cell_types`` fit with its defaults, trained to ``EPOCHS`` (no stopping), recording every 50 epochs
the guide's posterior mean and q05 of w_sf. Printed per record (JSON lines): the epoch's -ELBO, the median
per-type Pearson r of the q05 with a reference table across spots (a simulation's true cell numbers, or
cell2location's 30,000-epoch q05 for a real set of ``benchmarks/agreement_c2l.py``), the mean total cells per
spot, and on simulations the RMSE of cell counts (mean over spots of the root mean square over types of posterior
mean − truth). The per-epoch history goes to ``hist_<case>_<EPOCHS>[_N…][_lr…][_drop…][_polish…]<TAG>.csv``
in the working directory (the switches below that were set); the epoch at which the default rule would have
stopped is read from its ``rel_change`` column.

``--agree-inputs``: a simulated case of ``benchmarks/agreement_c2l.py`` mapped on its inputs (cell2location's
signatures, ``<agree>/<case>/input``) and scored against its ``truth.csv`` — the same signatures as the
agreement table's converged cell2location.

At the end a summary line: E, the epoch where the default rule (tol 5e-3 of the decrease since epoch 1 over
100-epoch windows) stops, and for the records nearest E, 2E, 1,000, 1,500, 2,000 and 3,000 the share of the
−ELBO's decrease since epoch 1 still to go to the run's last 100-epoch window ("left"; 0 at the last record
by construction).

Where the counts go, per record: ``ambient_per_spot`` (s_eg summed over genes), ``cells_mrna_per_spot`` (Σ_f w_sf
Σ_g m̃_g g_fg), ``sd_log_y`` and ``mean_y_rel`` (spread and arithmetic mean of the relative detection ỹ_s, whose
geometric mean is 1), ``corr_y_cells`` (correlation over spots of log ỹ_s and log cells' mRNA) and ``mrna_x_y``
(mean of ỹ_s × cells' mRNA): does the drift of the totals after the stop trade detection for cells?

``LR_DROP_AT=E LR_FACTOR=f`` multiplies every parameter's learning rate by f from epoch E on (does the drift
after the stop follow the gradient's noise or the objective?). ``LR_SITE=y_s LR_SITE_FACTOR=f`` multiplies the
learning rates of one site's loc and scale by f from epoch 1 on. ``POLISH_AT=E`` (``POLISH_PARTICLES``,
``POLISH_ITERS``) maximises the ELBO along every spot's detection-vs-cells direction once, at epoch E
(:func:`polish_spot_ridge`). ``--n-cells N`` maps with that N instead of the case's.

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
ap.add_argument("--n-cells", type=float, default=None, help="N (n_cells_per_location) instead of the case's")
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
    if site_lr and epoch == 1:  # optimisers exist after the first step
        store = pyro.get_param_store()
        for param, opt in svi.optim.optim_objs.items():
            if store.param_name(param) in (f"{site_lr[0]}_loc", f"{site_lr[0]}_scale"):
                for group in opt.param_groups:
                    group["lr"] *= site_lr[1]
    if polish_at and epoch == polish_at:
        polish_spot_ridge(svi, batch_kwargs(None))
    value = _epoch_loss(svi, batch_kwargs, config, n_obs, full, epoch)
    if (epoch + 1) % 50 == 0:
        store = pyro.get_param_store()
        loc, sd = store["w_sf_loc"].detach().double().numpy(), store["w_sf_scale"].detach().double().numpy()
        lognormal_mean = {k: np.exp(store[f"{k}_loc"].detach().double().numpy()
                                    + store[f"{k}_scale"].detach().double().numpy() ** 2 / 2)
                          for k in ("m_g", "s_eg", "y_s")}
        records.append((epoch + 1, value, np.exp(loc + sd**2 / 2), np.exp(loc - 1.6449 * sd), lognormal_mean))
    return value


def polish_spot_ridge(svi, kwargs, particles=int(os.environ.get("POLISH_PARTICLES", "2")),
                      iters=int(os.environ.get("POLISH_ITERS", "10"))):
    """Maximise the ELBO along each spot's detection-vs-cells direction (experiment; single-batch cases).

    Shifts log y_s of spot s by −u_s and log w_sf, log n_s, log z_sr by +(u_s − ū) (the guide's locs; ū the mean
    over spots, because ỹ_s divides out the geometric mean of y, so that μ_sg stays as it was except for the
    ambient term), u (S, 1) found by L-BFGS on the -ELBO averaged over ``particles`` fixed draws; every other
    parameter held. Prints the -ELBO before and after on those draws and on as many fresh ones.
    """
    import torch
    mod = svi.loss.__self__
    orig = mod._params
    sign = {"w_sf": 1.0, "n_s_cells_per_location": 1.0, "z_sr": 1.0, "y_s": -1.0}
    u = torch.zeros((mod.dims.S, 1), requires_grad=True)

    def shift(site):
        return -u if site == "y_s" else u - u.mean()

    def shifted(site):
        loc, scale = orig(site)
        loc = loc.detach() + shift(site) if site in sign else loc.detach()
        return loc, scale.detach()

    idx = kwargs["idx"]
    shapes = {site: (orig(site)[0][idx] if site in LOCAL else orig(site)[0]).shape for site in GLOBAL + LOCAL}
    gen = torch.Generator().manual_seed(12345)
    draws, fresh = ([{k: torch.randn(v, generator=gen) for k, v in shapes.items()} for _ in range(particles)]
                    for _ in range(2))

    def loss_on(eps_list):
        return sum(mod.elbo_loss(None, None, **kwargs, eps=e) for e in eps_list) / len(eps_list)

    mod._params = shifted
    try:
        with torch.no_grad():
            before, before_fresh = float(loss_on(draws)), float(loss_on(fresh))
        opt = torch.optim.LBFGS([u], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = loss_on(draws)
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            after, after_fresh = float(loss_on(draws)), float(loss_on(fresh))
    finally:
        del mod._params
    store = pyro.get_param_store()
    with torch.no_grad():
        for site in sign:
            store.get_param(f"{site}_loc").data.add_(shift(site))
    print(json.dumps({"polish_epoch": polish_at, "neg_elbo_before": round(before, 1), "after": round(after, 1),
                      "fresh_draws_before": round(before_fresh, 1), "fresh_after": round(after_fresh, 1),
                      "u_mean": round(float(u.mean()), 4), "u_sd": round(float(u.std()), 4)}), flush=True)


from spotmap.mapping.module import GLOBAL_SITES as GLOBAL, LOCAL_SITES as LOCAL  # noqa: E402
polish_at = int(os.environ.get("POLISH_AT", "0"))
site_lr = (os.environ["LR_SITE"], float(os.environ["LR_SITE_FACTOR"])) if os.environ.get("LR_SITE") else None
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
if a.n_cells is not None:
    kw["n_cells_per_location"] = a.n_cells
res, hist, mapper = map_cell_types(adata.copy(), sig, seed=0, progress=False, device="cpu", return_mapper=True,
                                   min_epochs=a.epochs, max_epochs=a.epochs, **kw)
ref = ref.loc[list(res.obs_names), list(mapper.factor_names)].to_numpy()
g_fg, gbar = (mapper.module().g_fg.double().numpy(), mapper.module().gbar.double().numpy())
spot_batch = (res.obs["sample"].astype(str).to_numpy() if "sample" in res.obs
              else np.zeros(res.n_obs, dtype=str))
for epoch, value, mean, q05, other in records:
    rs = [np.corrcoef(q05[:, f], ref[:, f])[0, 1] for f in range(ref.shape[1]) if ref[:, f].std() > 0]
    row = {"epoch": epoch, "elbo": round(value, 1), "median_r": round(float(np.median(rs)), 4),
           "total": round(float(mean.sum(1).mean()), 4)}
    # where the counts go: ambient s_eg (summed over genes, mean over batches) against cells' expected mRNA
    # Σ_g m̃_g g_fg (weighted by each type's share of cells): does the drift after the stop trade one for the other?
    m_rel = other["m_g"].ravel() / (other["m_g"].ravel() * gbar).sum()
    content = g_fg @ m_rel                                                                  # (F,) per cell
    row["ambient_per_spot"] = round(float(other["s_eg"].sum(1).mean()), 3)
    row["cells_mrna_per_spot"] = round(float((mean @ content).mean()), 3)
    # relative detection ỹ_s has geometric mean 1 per batch (as the model normalises it): its arithmetic mean
    # grows with its spread, and what it loses the cells must make up
    log_y = np.log(other["y_s"].ravel())
    for e in np.unique(spot_batch):
        log_y[spot_batch == e] -= log_y[spot_batch == e].mean()
    row["sd_log_y"] = round(float(log_y.std()), 4)
    row["mean_y_rel"] = round(float(np.exp(log_y).mean()), 4)
    cells_mrna = mean @ content                                                             # (S,)
    row["corr_y_cells"] = round(float(np.corrcoef(log_y, np.log(cells_mrna))[0, 1]), 4)
    row["mrna_x_y"] = round(float((np.exp(log_y) * cells_mrna).mean()), 2)
    if not real:
        row["rmse"] = round(float(np.sqrt(((mean - ref) ** 2).mean(1)).mean()), 4)
    print(json.dumps(row), flush=True)
switches = "".join(f"_{k}{v}" for k, v in (("N", a.n_cells), ("lr", site_lr and f"{site_lr[0]}x{site_lr[1]}"),
                                           ("drop", drop_at), ("polish", polish_at)) if v)
hist.to_csv(f"hist_{a.case}_{a.epochs}{switches}{os.environ.get('TAG', '')}.csv")
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
