"""cell2location 0.1.5's reference signatures (``RegressionModel``), for its own virtual environment.

Called by ``benchmarks/agreement_c2l.py`` as
``<c2l-venv>/bin/python benchmarks/c2l_signatures_runner.py --reference ref.h5ad --labels-key cell_type
[--batch-key batch] [--filter-genes] --out DIR``. It imports nothing from spotmap.

Settings are cell2location's documented ones: ``RegressionModel.setup_anndata(labels_key, batch_key)``,
``train()`` at its defaults (``max_epochs=None``: scvi's heuristic, capped at 1,000 epochs in the code that
runs; batch_size 2,500, lr 0.002), ``export_posterior(sample_kwargs={'num_samples': 1000, 'batch_size': 2500})``
as in the tutorial; the signatures are ``varm['means_per_cluster_mu_fg']`` with the tutorial's renaming.
``--filter-genes`` first applies the tutorial's ``filter_genes(cell_count_cutoff=5,
cell_percentage_cutoff2=0.03, nonz_mean_cutoff=1.12)``.

Writes ``signatures.csv`` (genes × types), ``history.csv`` and ``timing.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", required=True, help="cells × genes h5ad, raw counts in X")
    ap.add_argument("--labels-key", default="cell_type")
    ap.add_argument("--batch-key", default=None)
    ap.add_argument("--filter-genes", action="store_true")
    ap.add_argument("--max-epochs", type=int, default=None, help="default: cell2location's (None)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    import anndata as ad
    import numpy as np
    import torch

    torch.set_num_threads(a.threads)
    import cell2location
    import scvi
    from cell2location.models import RegressionModel
    from cell2location.utils.filtering import filter_genes

    scvi.settings.seed = a.seed
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ref = ad.read_h5ad(a.reference)
    n_genes_in = ref.n_vars
    if a.filter_genes:
        keep = filter_genes(ref, cell_count_cutoff=5, cell_percentage_cutoff2=0.03, nonz_mean_cutoff=1.12)
        ref = ref[:, keep].copy()
    RegressionModel.setup_anndata(adata=ref, batch_key=a.batch_key, labels_key=a.labels_key)
    mod = RegressionModel(ref)
    t = time.perf_counter()
    mod.train(max_epochs=a.max_epochs, accelerator="cpu")
    t_train = time.perf_counter() - t
    ref = mod.export_posterior(ref, sample_kwargs={"num_samples": 1000, "batch_size": 2500})
    names = list(ref.uns["mod"]["factor_names"])
    sig = ref.varm["means_per_cluster_mu_fg"][[f"means_per_cluster_mu_fg_{n}" for n in names]].copy()
    sig.columns = names
    sig.index.name = "gene"
    sig.to_csv(out / "signatures.csv")
    hist = mod.history_["elbo_train"]
    hist.to_csv(out / "history.csv")
    timing = {"epochs": int(len(hist)), "train_seconds": t_train, "n_cells": int(ref.n_obs),
              "n_genes_in": int(n_genes_in), "n_genes": int(ref.n_vars), "filter_genes": a.filter_genes,
              "labels_key": a.labels_key, "batch_key": a.batch_key, "final_elbo": float(np.asarray(hist).ravel()[-1]),
              "versions": {"cell2location": getattr(cell2location, "__version__", "?"), "scvi-tools": scvi.__version__,
                           "torch": torch.__version__}}
    (out / "timing.json").write_text(json.dumps(timing, indent=2))
    print(json.dumps(timing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
