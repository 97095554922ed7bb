"""Median overdispersion per band of mean count during a fit, every 25 steps (dense or sparse likelihood).

An experiment (issue 20, item 3), kept to reproduce BENCHMARKS.md "Sparse likelihood: bound during training":
do the alphas of the rarest genes settle within a full-batch fit? Reads the guide's alpha_eg_inv_loc
(alpha at the posterior median of its inverse, ``exp(-2 loc)``) before every 25th evaluation of the -ELBO.
Written against the code of commit cede3cd; not maintained with the package.

Usage: PYTHONPATH=src python benchmarks/experiments/exp_alpha_trajectory.py SUBSET.h5ad SIGNATURES.csv BINS EPOCHS
dense|sparse [BATCH_SIZE]   (prints one JSON line: genes per band and [step, median alpha per band] rows)
"""
import json
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pyro
import scipy.sparse as sp
import torch

from spotmap.io.genes import match_genes
from spotmap.mapping.model import SpatialMapper, validate_signatures
from spotmap.mapping.module import MappingModule
from spotmap.mapping.priors import MappingPriors
from spotmap.mapping.settings import MappingSettings

torch.set_num_threads(1)
adata, sig = ad.read_h5ad(sys.argv[1]), validate_signatures(pd.read_csv(sys.argv[2], index_col=0))
n, epochs, likelihood = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
batch_size = int(sys.argv[6]) if len(sys.argv) > 6 else None
adata = adata[np.sort(np.random.default_rng(0).choice(adata.n_obs, n, replace=False))].copy()
adata, sig = match_genes(adata, sig)
mean_g = np.asarray(sp.csr_matrix(adata.X).mean(0)).ravel()
bands = [(0, 0.01), (0.01, 0.05), (0.05, np.inf)]
rows, calls = [], [0]
elbo_loss = MappingModule.elbo_loss


def recording_loss(self, *args, **kw):
    store = pyro.get_param_store()
    if calls[0] % 25 == 0 and "alpha_eg_inv_loc" in store:
        alpha = torch.exp(-2 * store["alpha_eg_inv_loc"].detach()).reshape(-1).numpy()
        rows.append([calls[0]] + [round(float(np.median(alpha[(mean_g >= lo) & (mean_g < hi)])), 3) for lo, hi in bands])
    calls[0] += 1
    return elbo_loss(self, *args, **kw)


MappingModule.elbo_loss = recording_loss
SpatialMapper(adata, sig, MappingPriors(N_cells_per_location=1.5),
              MappingSettings(likelihood=likelihood, progress=False, max_epochs=epochs, min_epochs=epochs,
                              batch_size=batch_size)).train()
print(json.dumps({"likelihood": likelihood, "bins": n, "batch_size": batch_size, "bands": [str(b) for b in bands],
                  "genes": [int(((mean_g >= lo) & (mean_g < hi)).sum()) for lo, hi in bands], "steps": rows}))
