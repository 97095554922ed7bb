"""How precise is d(log-likelihood)/d(alpha_eg) in float32, dense kernel and sparse likelihood, against float64?

An experiment (issue 20, item 3), kept to reproduce BENCHMARKS.md "Sparse likelihood: bound during training":
the full-batch sparse and dense fits of an HD subset agree in abundances (r 1.0) but not in the median
overdispersion of the rarest genes. Here both likelihoods' gradients in alpha (the mu-dependent terms plus the
count histogram's lgamma terms) are taken at the same values — the guide's start, alpha set to ALPHA if given —
and compared with the same sum in float64 (scipy's digamma at the non-zeros), per band of the genes' mean count
per bin. Written against the code of commit cede3cd; not maintained with the package.

Usage: PYTHONPATH=src python benchmarks/experiments/exp_alpha_gradient_precision.py SUBSET.h5ad SIGNATURES.csv [ALPHA]
(SUBSET: e.g. the ``subset_5000.h5ad`` that ``benchmarks/bench_sparse_bound.py`` writes.)
"""
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pyro
import scipy.sparse as sp
import torch
from scipy.special import digamma

from spotmap.io.genes import match_genes
from spotmap.mapping.likelihood import SpotCounts, nb_mean_loglik
from spotmap.mapping.model import SpatialMapper, validate_signatures
from spotmap.mapping.priors import MappingPriors
from spotmap.mapping.settings import MappingSettings

torch.set_num_threads(1)
adata, sig = match_genes(ad.read_h5ad(sys.argv[1]), validate_signatures(pd.read_csv(sys.argv[2], index_col=0)))
mapper = SpatialMapper(adata, sig, MappingPriors(N_cells_per_location=1.5),
                       MappingSettings(likelihood="sparse", progress=False))
mod = mapper.module()
kw = mod.batch_kwargs(None)
pyro.clear_param_store()
mod.guide(**kw)                                                   # creates the guide's parameters at their start
P, idx = pyro.get_param_store(), kw["idx"]
w = torch.exp(P["w_sf_loc"].detach())[idx]                                                  # (S, F)
y = mod.absolute_detection(torch.exp(P["y_s_loc"].detach())[idx], mod.counts.batch[idx])  # (S, 1)
mg = mod.relative_sensitivity(torch.exp(P["m_g_loc"].detach())) * mod.g_fg                  # (F, G)
s = torch.exp(P["s_eg_loc"].detach())                                                       # (E, G)
alpha = torch.exp(-2 * P["alpha_eg_inv_loc"].detach())                                      # (E, G)
if len(sys.argv) > 3:
    alpha = torch.full_like(alpha, float(sys.argv[3]))
X = sp.csr_matrix(mapper.X)[idx.numpy()]
batch = mapper.batch_codes[idx.numpy()]
mean_g = np.asarray(X.mean(0)).ravel()


def grad_alpha(loglik) -> np.ndarray:
    a = alpha.clone().requires_grad_()
    g, = torch.autograd.grad(loglik(a) + mod.hist.loglik(a), a)
    return g.reshape(-1).double().numpy()


dense = SpotCounts(sp.csr_matrix(mapper.X), mapper.batch_codes, torch.device("cpu"))
g_dense = grad_alpha(lambda a: nb_mean_loglik(w, mg, s, y, a, dense.full()))
g_sparse = grad_alpha(lambda a: mod.counts.loglik(w, mg, s, y, a, mod.counts.full()))
w64, y64, mg64, s64, a64 = (t.double().numpy() for t in (w, y, mg, s, alpha))
g_ref = np.zeros(X.shape[1])
for r in range(0, X.shape[0], 250):                               # float64, by rows
    mu = (w64[r:r + 250] @ mg64 + s64[batch[r:r + 250]]) * y64[r:r + 250]
    A, d = a64[batch[r:r + 250]], X[r:r + 250].toarray().astype(np.float64)
    g_ref += (-np.log1p(mu / A) + mu / (A + mu) - d / (A + mu)
              + np.where(d > 0, digamma(d + A) - digamma(A), 0.0)).sum(0)
print(f"alpha median {float(alpha.median()):.3g}; {X.shape[0]} spots × {X.shape[1]} genes")
print("| mean count per bin | genes | median abs(float64 gradient) | dense float32: median abs(error) / abs(gradient) "
      "| sparse float32: the same |\n|---|---|---|---|---|")
for lo, hi in [(0, 0.01), (0.01, 0.05), (0.05, 0.2), (0.2, np.inf)]:
    k = (mean_g >= lo) & (mean_g < hi)
    ref = np.abs(g_ref[k])
    e_d, e_s = np.abs(g_dense[k] - g_ref[k]) / ref, np.abs(g_sparse[k] - g_ref[k]) / ref
    print(f"| [{lo}, {hi}) | {k.sum()} | {np.median(ref):.3g} | {np.median(e_d):.3g} | {np.median(e_s):.3g} |")
