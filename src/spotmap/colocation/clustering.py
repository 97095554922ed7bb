"""Tissue regions: spots clustered by their cell-type composition.

Each spot is described by its composition — the share of its cells in each co-location factor
(``features='factors'``, from the factor abundance) or of each cell type (``'types'``) — and the spots
are clustered by k-means (``n_init`` seeded starts). The number of regions K, unless given, is the one
with the largest mean silhouette (measured on a seeded subsample of ``silhouette_spots`` spots):
how much closer each spot is to its own region than to the next one, from -1 to 1. Regions are
numbered 0 … K-1 from the largest to the smallest.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from spotmap.colocation.inputs import subsample

FIT_COLUMNS = ("n_regions", "silhouette", "inertia")


def proportions(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (spots × parts) divided by their sums; a spot with nothing stays all zero."""
    x = np.asarray(x, dtype=np.float64)
    total = x.sum(1, keepdims=True)
    return np.divide(x, total, out=np.zeros_like(x), where=total > 0)


def _kmeans(k: int, seed: int, n_init: int) -> KMeans:
    return KMeans(n_clusters=k, n_init=n_init, random_state=seed)


def _by_size(labels: np.ndarray, k: int) -> np.ndarray:
    """Relabel so region 0 is the largest (ties: the lower original label first)."""
    sizes = np.bincount(labels, minlength=k)
    order = np.argsort(-sizes, kind="stable")
    new = np.empty(k, dtype=np.int64)
    new[order] = np.arange(k)
    return new[labels]


def region_fits(features: np.ndarray, numbers, seed: int = 0, n_init: int = 10, silhouette_spots: int = 5000,
                fit_rows: np.ndarray | None = None) -> tuple[pd.DataFrame, dict[int, KMeans]]:
    """k-means for each K in ``numbers`` on ``features[fit_rows]``; silhouette of each on a subsample.

    Returns the table (n_regions, silhouette, inertia; silhouette NaN for K = 1) and the fitted models.
    """
    f = np.asarray(features, dtype=np.float64)
    rows = np.arange(len(f)) if fit_rows is None else np.asarray(fit_rows)
    f_fit = f[rows]
    eval_rows = subsample(len(f_fit), silhouette_spots, seed + 1)
    models, table = {}, []
    for k in numbers:
        km = _kmeans(int(k), seed, n_init).fit(f_fit)
        labels = km.labels_[eval_rows]
        n_lab = len(np.unique(labels))
        sil = silhouette_score(f_fit[eval_rows], labels) if 1 < n_lab < len(eval_rows) else float("nan")
        models[int(k)] = km
        table.append({"n_regions": int(k), "silhouette": float(sil), "inertia": float(km.inertia_)})
    return pd.DataFrame(table, columns=list(FIT_COLUMNS)), models


def choose_n_regions(fits: pd.DataFrame) -> tuple[int, str]:
    """The number of regions with the largest silhouette (ties: the fewest), and why."""
    if len(fits) == 1:
        k = int(fits["n_regions"].iloc[0])
        return k, f"{k} regions, as requested"
    sil = fits["silhouette"].to_numpy(dtype=np.float64)
    if not np.isfinite(sil).any():
        k = int(fits["n_regions"].iloc[0])
        return k, f"{k} regions: no silhouette could be measured"
    i = int(np.nanargmax(sil))
    k = int(fits["n_regions"].iloc[i])
    others = fits.drop(fits.index[i])
    runner = others.loc[others["silhouette"].idxmax()] if others["silhouette"].notna().any() else None
    tail = (f"; next best {int(runner['n_regions'])} regions: {runner['silhouette']:.3f}" if runner is not None
            else "")
    return k, f"{k} regions: the largest silhouette ({sil[i]:.3f}) of the numbers tried{tail}"


def assign(model: KMeans, features: np.ndarray) -> np.ndarray:
    """Region of every spot (nearest centre of ``model``), numbered by size (0 = largest)."""
    labels = model.predict(np.asarray(features, dtype=np.float64))
    return _by_size(labels, model.n_clusters)


def region_composition(x: np.ndarray, labels: np.ndarray, types) -> pd.DataFrame:
    """Regions × types: mean cells per spot of each type over the spots of each region."""
    labels = np.asarray(labels)
    k = int(labels.max()) + 1 if len(labels) else 0
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    x = np.asarray(x, dtype=np.float64)
    sums = np.vstack([x[labels == j].sum(0) for j in range(k)]) if k else np.zeros((0, x.shape[1]))
    mean = np.divide(sums, counts[:, None], out=np.full_like(sums, np.nan), where=counts[:, None] > 0)
    return pd.DataFrame(mean, index=pd.Index(np.arange(k), name="region"), columns=list(types))
