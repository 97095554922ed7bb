"""cell2location's permissive gene filter for single-cell references."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

#: cell2location tutorial values (its function defaults are 15 / 0.05 / 1.12)
CELL_COUNT_CUTOFF = 5
CELL_PERCENTAGE_CUTOFF2 = 0.03
NONZ_MEAN_CUTOFF = 1.12


def filter_genes(adata: ad.AnnData, cell_count_cutoff: float = CELL_COUNT_CUTOFF,
                 cell_percentage_cutoff2: float = CELL_PERCENTAGE_CUTOFF2,
                 nonz_mean_cutoff: float = NONZ_MEAN_CUTOFF, layer: str | None = None) -> pd.Index:
    """Select genes as ``cell2location.utils.filtering.filter_genes`` does; return their names.

    A gene is kept when it is detected (count > 0) in more than ``cell_percentage_cutoff2`` × cells
    cells, **or** in more than ``cell_count_cutoff`` cells with an average count over the cells that
    detect it (``nonz_mean``) above ``nonz_mean_cutoff``. So broadly expressed genes always stay,
    and rare genes stay only when they are strongly expressed where detected (markers of rare types).

    Adds ``var['n_cells']`` and ``var['nonz_mean']`` to ``adata`` (as cell2location does).
    """
    X = adata.X if layer is None else adata.layers[layer]
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        n_cells = np.asarray((X > 0).sum(0)).ravel()
        total = np.asarray(X.sum(0)).ravel()
    else:
        X = np.asarray(X)
        n_cells = (X > 0).sum(0)
        total = X.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        nonz_mean = np.where(n_cells > 0, total / np.maximum(n_cells, 1), 0.0)
    adata.var["n_cells"] = n_cells
    adata.var["nonz_mean"] = nonz_mean
    keep = (n_cells > adata.n_obs * cell_percentage_cutoff2) | (
        (n_cells > cell_count_cutoff) & (nonz_mean > nonz_mean_cutoff))
    return adata.var_names[keep]


def gene_filter_summary(n_before: int, n_after: int, n_cells: int, cell_count_cutoff: float | None,
                        cell_percentage_cutoff2: float | None, nonz_mean_cutoff: float | None) -> dict:
    """The numbers reported in ``signatures_gene_filter_mqc.tsv`` (None cutoffs = filter skipped)."""
    return {"cells": int(n_cells), "genes_before": int(n_before), "genes_after": int(n_after),
            "genes_removed": int(n_before - n_after), "filter_applied": cell_count_cutoff is not None,
            "cell_count_cutoff": cell_count_cutoff, "cell_percentage_cutoff2": cell_percentage_cutoff2,
            "nonz_mean_cutoff": nonz_mean_cutoff}
