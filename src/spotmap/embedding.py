"""The UMAP views of QC (spots coloured by sample) and of the reference (cells by type and batch)."""

from __future__ import annotations

import anndata as ad
import numpy as np


def log_normalised_umap(adata: ad.AnnData, seed: int = 0, n_top_genes: int = 2000,
                        batch_key: str | None = None, n_neighbors: int = 15) -> np.ndarray:
    """UMAP coordinates (n_obs × 2) as in the cell2location tutorial, computed on a copy.

    Normalise to 10,000 counts per observation, log1p, drop all-zero genes, highly variable genes
    (per ``batch_key`` when given, so a gene variable in one batch only still counts), PCA, an exact
    k-nearest-neighbour graph, UMAP. The raw counts in ``adata`` are untouched.
    """
    import scanpy as sc
    from sklearn.neighbors import KNeighborsTransformer

    tmp = ad.AnnData(X=adata.X.copy(), obs=adata.obs[[batch_key]].copy() if batch_key else adata.obs[[]].copy())
    tmp.var_names = adata.var_names
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    tmp = tmp[:, np.asarray(tmp.X.sum(axis=0)).ravel() > 0].copy()
    if tmp.n_vars > n_top_genes:
        sc.pp.highly_variable_genes(tmp, n_top_genes=n_top_genes, batch_key=batch_key, subset=True)
    sc.pp.pca(tmp, n_comps=int(max(2, min(50, tmp.n_obs - 1, tmp.n_vars - 1))), random_state=seed)
    # exact neighbours via scikit-learn: scanpy 1.11's default (pynndescent, > 4,096 observations) fails
    # with scipy ≥ 1.15 sparse arrays ('csr_array' object has no attribute 'getnnz')
    k = int(min(n_neighbors, tmp.n_obs - 1))
    sc.pp.neighbors(tmp, n_neighbors=k, random_state=seed, transformer=KNeighborsTransformer(n_neighbors=k, mode="distance"))
    sc.tl.umap(tmp, random_state=seed)
    return np.asarray(tmp.obsm["X_umap"], dtype=np.float32)
