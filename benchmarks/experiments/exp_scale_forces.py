"""Which ELBO terms push the global scale: d(term)/d(log c) under w,n,z,s_eg,s_e_mean -> /c ; y_s,y_e -> *c.

An experiment (issue 20), kept to reproduce benchmarks/RESULTS_mapping_accuracy.md section 5: written against the
model of commit c872d0d (cell2location's parametrisation, MappingPriors.detection_mean_alpha), on the cases that
`benchmarks/agreement_c2l.py prepare --workdir /work/bench/agree` writes; not maintained with the package.
"""
import json, sys, math
from pathlib import Path
import numpy as np, pandas as pd, anndata as ad, torch, pyro, contextlib
torch.set_num_threads(1)
from spotmap.mapping import map_cell_types, MappingPriors
from spotmap.mapping.module import GLOBAL_SITES, LOCAL_SITES

case, tag, E = sys.argv[1], sys.argv[2], int(sys.argv[3])
over = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
wd = Path("/work/bench/agree") / case
sp = ad.read_h5ad(wd / "sp.h5ad"); sig = pd.read_csv(wd / "sim/truth/signatures.csv", index_col=0)
priors = MappingPriors(N_cells_per_location=8.0, detection_alpha=20.0, **over)
out = Path(f"/work/bench/exp/{case}_truth_{tag}")
res, hist, mapper = map_cell_types(sp.copy(), sig, priors=priors, max_epochs=E, min_epochs=10**9, tol=0.0, progress=False,
                                   checkpoint_every=100, checkpoint_path=str(out / "ckpt.pt"), return_mapper=True)
mod = mapper.module()
store = pyro.get_param_store()
DOWN = {"w_sf", "n_s_cells_per_location", "z_sr", "s_eg", "s_e_mean"}
UP = {"y_s", "y_e"}
kw = mod.batch_kwargs(None); idx, batch = kw["idx"], kw["batch"]
torch.manual_seed(0)
draws = [{s: torch.randn(mod.dims.shape(s) if s in GLOBAL_SITES else (mod.dims.S, mod.dims.shape(s)[1])) for s in GLOBAL_SITES + LOCAL_SITES} for _ in range(16)]

def terms(logc):
    acc = {}
    with torch.no_grad():
        for eps in draws:
            values = {}
            for site in GLOBAL_SITES + LOCAL_SITES:
                loc = store[f"{site}_loc"]; scale = store[f"{site}_scale"]
                if site in LOCAL_SITES: loc, scale = loc[idx], scale[idx]
                shift = -logc if site in DOWN else (logc if site in UP else 0.0)
                loc = loc + shift
                values[site] = torch.exp(loc + scale * eps[site][:loc.shape[0]] if site in LOCAL_SITES else loc + scale * eps[site])
                acc["H:" + site] = acc.get("H:" + site, 0) + float((loc + torch.log(scale)).sum()) / len(draws)
            def site(name, fn, local):
                acc["P:" + name] = acc.get("P:" + name, 0) + float(fn.log_prob(values[name]).sum()) / len(draws)
                return values[name]
            def factor(name, v):
                acc["L"] = acc.get("L", 0) + float(v) / len(draws)
            mod._generative(idx, batch, site, contextlib.nullcontext(), factor)
    return acc
h = 0.01
a, b = terms(-h), terms(h)
d = {k: (b[k] - a[k]) / (2 * h) for k in a}
net = {}
for k, v in d.items():
    s = k.split(":")[-1]
    net[s] = net.get(s, 0) + v
print("d ELBO / d log c (positive = favours fewer cells); per site, prior+entropy:")
for s, v in sorted(net.items(), key=lambda kv: -abs(kv[1])):
    print(f"  {s:28s} {v:12.2f}   (prior {d.get('P:'+s, 0):12.2f})")
print("total", sum(net.values()))
