"""The batch-effect view of the cell2location tutorial: all samples' spots in one UMAP."""

from __future__ import annotations

from typing import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from spotmap.errors import SpotmapError

BATCH_UMAP_MAX_SPOTS = 20_000  #: spots per sample in the batch-effect UMAP (Visium HD: a random subset)


def _named(adatas: Sequence[ad.AnnData] | dict[str, ad.AnnData]) -> list[tuple[str, ad.AnnData]]:
    items = list(adatas.items()) if isinstance(adatas, dict) else [
        (str(a.obs["sample"].iloc[0]) if "sample" in a.obs and a.n_obs else f"sample{i + 1}", a)
        for i, a in enumerate(adatas)]
    if not items:
        raise SpotmapError("qc-batch needs at least one sample")
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise SpotmapError(f"duplicate sample id across the inputs (got {dup!r})")
    return items


def batch_embedding(adatas: Sequence[ad.AnnData] | dict[str, ad.AnnData], n_top_genes: int = 2000, seed: int = 0,
                    max_spots_per_sample: int = BATCH_UMAP_MAX_SPOTS) -> ad.AnnData:
    """The spots of every sample in one AnnData with their UMAP (``obsm['X_umap']``, spots × 2).

    On a copy: counts normalised per spot and log1p-transformed, highly variable genes chosen per
    sample (``batch_key='sample'``), PCA, neighbour graph, UMAP. Inputs keep their raw counts.
    Samples are named by ``obs['sample']`` (or the dict keys, in order: ``obs['sample']`` is categorical);
    only genes shared by all are used. A sample with more than ``max_spots_per_sample`` spots (Visium HD
    bins) is represented by a random subset of that many (drawn with ``seed``), which keeps the UMAP
    short; Visium samples (≤ 4,992 spots) are used whole. ``uns['n_spots']``: each sample's spots before
    that subset.
    """
    from spotmap.embedding import log_normalised_umap

    items = _named(adatas)
    names = [n for n, _ in items]
    parts, n_total, sub_rng = [], {}, np.random.default_rng(seed)
    for name, a in items:
        n_total[name] = a.n_obs
        if max_spots_per_sample and a.n_obs > max_spots_per_sample:
            a = a[np.sort(sub_rng.choice(a.n_obs, size=max_spots_per_sample, replace=False))]
        b = ad.AnnData(X=sp.csr_matrix(a.X, dtype=np.float32), obs=pd.DataFrame(index=a.obs_names.astype(str)),
                       var=pd.DataFrame(index=a.var_names.astype(str)))
        b.obs["sample"] = name
        parts.append(b)
    comb = ad.concat(parts, join="inner", index_unique=None)
    comb.obs_names_make_unique()
    if comb.n_vars < 3:
        raise SpotmapError(f"samples share only {comb.n_vars} gene(s); cannot compare them")
    if comb.n_obs < 4:
        raise SpotmapError(f"only {comb.n_obs} spots in all; a UMAP needs more")
    comb.obs["sample"] = pd.Categorical(comb.obs["sample"], categories=names)
    comb.obsm["X_umap"] = log_normalised_umap(comb, seed=seed, n_top_genes=n_top_genes,
                                              batch_key="sample" if len(names) > 1 else None)
    comb.uns["n_spots"] = n_total
    return comb
