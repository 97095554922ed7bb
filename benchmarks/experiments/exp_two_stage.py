"""Experiment (issue 10, not a feature): can a whole Visium HD sample be fitted in two stages — the global
parameters on a random subset A in full batch, then every other bin's own parameters with those globals held
fixed — faster than the joint fit converges? Prints q05 / means median per-type r and RMSE of proportions
against the simulated truth every 50 epochs (benchmarks/RESULTS_hd.md, "Two stages").

The loop is spotmap's full-batch training written out (Adam, gradients clipped at ±10, one reparameterised
draw per step, MappingModule.elbo_loss); in ``frozen`` mode the global sites' (loc, scale) come from A's fit
and only the spot-level parameters are optimised, with the learning rate constant for the first half and
falling geometrically to ``lr × DECAY`` over the second.

Environment: CLIP (default 10) is the elementwise gradient clip; CLIP=0 turns it off.

usage (1 torch thread each; SUB.h5ad: a QC'd subset of a `spotmap simulate --platform visium-hd` sample):
  python exp_two_stage.py ref    SUB.h5ad SIG TRUTH OUT.pt EPOCHS                 # all params; saves them
  python exp_two_stage.py frozen SUB.h5ad SIG TRUTH GLOBALS.pt EPOCHS LR DECAY    # globals from GLOBALS.pt
"""
import os
import sys
import time

import anndata as ad
import numpy as np
import pandas as pd
import pyro
import torch

from spotmap.io.genes import match_genes
from spotmap.mapping.model import SpatialMapper, validate_signatures
from spotmap.mapping.module import GLOBAL_SITES, MappingModule
from spotmap.mapping.priors import MappingPriors
from spotmap.mapping.settings import MappingSettings
from spotmap.metrics import evaluate
from spotmap.reference.signatures import read_signatures

torch.set_num_threads(1)
CLIP = float(os.environ.get("CLIP", "10"))
mode, sub, sig_path, truth_path = sys.argv[1:5]
adata = ad.read_h5ad(sub)
sig = validate_signatures(read_signatures(sig_path))
truth = pd.read_parquet(truth_path)
sp_sub, sig_sub = match_genes(adata, sig, min_genes=100)
priors = MappingPriors(N_cells_per_location=1.5)
mapper = SpatialMapper(sp_sub, sig_sub, priors, MappingSettings(likelihood="sparse", progress=False))
mod = mapper.module()
names = mapper.factor_names


def score(tag, t0):
    store = pyro.get_param_store()
    loc = store["w_sf_loc"].detach().double().numpy()
    scale = store["w_sf_scale"].detach().double().numpy()
    out = {}
    for k, v in (("q05", np.exp(loc - 1.6448536 * scale)), ("means", np.exp(loc + 0.5 * scale ** 2))):
        est = pd.DataFrame(v, index=sp_sub.obs_names, columns=names)
        m = evaluate(est, truth.loc[est.index])
        out[k] = (round(m["median_pearson"], 4), round(m["rmse_proportions"], 5))
    print(f"{tag} t={time.perf_counter() - t0:.0f}s q05 r/rmse {out['q05']} means {out['means']}", flush=True)


if mode == "frozen":
    glob = torch.load(sys.argv[5])
    fixed = {}
    for site in GLOBAL_SITES:
        fixed[site] = (glob[f"{site}_loc"], glob[f"{site}_scale"])

    class Frozen(MappingModule):
        def _params(self, site):
            if site in fixed:
                return fixed[site]
            return super()._params(site)
    mod.__class__ = Frozen
    epochs, lr, decay = int(sys.argv[6]), float(sys.argv[7]), float(sys.argv[8])
else:
    epochs, lr, decay = int(sys.argv[6]), 0.02, 1.0

pyro.clear_param_store()
pyro.set_rng_seed(0)
kw = mod.batch_kwargs(None)
with torch.no_grad():
    mod.guide(**kw)
params = [p for _, p in pyro.get_param_store().named_parameters()]
opt = torch.optim.Adam(params, lr=lr)
# lr: constant for the first half, then geometric decay to lr * decay at the end
t0 = time.perf_counter()
for ep in range(1, epochs + 1):
    frac = max(0.0, (ep - epochs / 2) / (epochs / 2))
    for g in opt.param_groups:
        g["lr"] = lr * decay ** frac
    opt.zero_grad()
    loss = mod.elbo_loss(None, None, **kw)
    loss.backward()
    if CLIP:
        for p in params:
            p.grad.clamp_(-CLIP, CLIP)
    opt.step()
    if ep % 50 == 0 or ep == epochs:
        print(f"epoch {ep} -elbo {loss.item():.6g}", flush=True)
        score(f"epoch {ep}", t0)
store = pyro.get_param_store()
alpha = 1.0 / torch.exp(2 * store["alpha_eg_inv_loc"].detach()) if "alpha_eg_inv_loc" in store else None
if alpha is not None:
    print("alpha_eg quantiles 5/50/95 %:", [round(float(alpha.quantile(q)), 2) for q in (0.05, 0.5, 0.95)])
if mode == "ref":
    torch.save({k: store[k].detach().clone() for k in store.keys()}, sys.argv[5])
