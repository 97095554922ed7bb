"""Accuracy of a mapping against a known answer, and the NNLS baseline.

All functions take spots × cell-types DataFrames (index = spot id, e.g. ``'<sample>_<barcode>'``
as in the simulator's ``truth/cell_abundance.csv``; columns = cell-type names) and align them by
label, never by position. Both tables must hold the same spots and the same types (order may
differ); anything else raises :class:`~spotmap.errors.SpotmapError` naming what is missing.

Metrics (as in the spotless benchmark, Sang-aram et al. 2024, where it applies):

* :func:`per_type_pearson` — for each type, Pearson r across spots between estimate and truth
  (cell2location's "correlation with the true abundances"); :func:`median_pearson` is its median.
* :func:`rmse_proportions` — both tables row-normalised to proportions, then the mean over spots
  of each spot's RMSE over types (spotless ``metrics.R``: ``mean(sqrt(rowSums((p - q)^2) / n_types))``).
* :func:`aupr_presence` — area under the precision-recall curve for "type present in spot"
  (truth > 0) with the estimate as score, over all spot × type pairs, computed as average precision.
* :func:`nnls_abundance` — per-spot non-negative least squares of counts on the signatures.
* :func:`evaluate` — all of the above in one dict.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.optimize import nnls

from spotmap.errors import SpotmapError

__all__ = ["align", "per_type_pearson", "median_pearson", "rmse_proportions", "aupr_presence",
           "average_precision", "proportions", "nnls_abundance", "evaluate"]


def _preview(labels) -> str:
    labels = list(labels)
    shown = ", ".join(repr(x) for x in labels[:5])
    return shown + (f", … ({len(labels)} in all)" if len(labels) > 5 else "")


def align(est: pd.DataFrame, truth: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return ``(est, truth)`` as float DataFrames in truth's spot and type order.

    Raises
    ------
    SpotmapError
        Not DataFrames, duplicated labels, spots or types present in one table only, or
        non-finite values.
    """
    for name, df in (("estimate", est), ("truth", truth)):
        if not isinstance(df, pd.DataFrame):
            raise SpotmapError(f"{name} must be a pandas DataFrame (spots × cell types), got {type(df).__name__}")
        if df.index.has_duplicates:
            raise SpotmapError(f"{name}: duplicated spot ids: {_preview(df.index[df.index.duplicated()].unique())}")
        if df.columns.has_duplicates:
            raise SpotmapError(f"{name}: duplicated cell types: "
                               f"{_preview(df.columns[df.columns.duplicated()].unique())}")
        if df.shape[0] == 0 or df.shape[1] == 0:
            raise SpotmapError(f"{name} is empty ({df.shape[0]} spots × {df.shape[1]} types)")
    problems = []
    for what, a, b in (("cell types", est.columns, truth.columns), ("spots", est.index, truth.index)):
        only_est, only_truth = a.difference(b), b.difference(a)
        if len(only_est):
            problems.append(f"{len(only_est)} {what} only in the estimate: {_preview(only_est)}")
        if len(only_truth):
            problems.append(f"{len(only_truth)} {what} only in the truth: {_preview(only_truth)}")
    if problems:
        raise SpotmapError("estimate and truth do not match: " + "; ".join(problems))
    e = est.loc[truth.index, truth.columns].astype(np.float64)
    t = truth.astype(np.float64)
    for name, df in (("estimate", e), ("truth", t)):
        bad = ~np.isfinite(df.to_numpy())
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise SpotmapError(f"{name}: {int(bad.sum())} non-finite value(s), first at spot {df.index[i]!r}, "
                               f"type {df.columns[j]!r}")
    return e, t


def per_type_pearson(est: pd.DataFrame, truth: pd.DataFrame) -> pd.Series:
    """Pearson r across spots between estimate and truth, one value per cell type (truth's order).

    A type whose true abundance is the same in every spot has no defined correlation: NaN.
    An estimate that is the same in every spot (while the truth varies) carries no
    information about where the type is: r = 0.
    """
    e, t = align(est, truth)
    E, T = e.to_numpy(), t.to_numpy()
    Ec, Tc = E - E.mean(0), T - T.mean(0)
    se, st = np.sqrt((Ec**2).sum(0)), np.sqrt((Tc**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (Ec * Tc).sum(0) / (se * st)
    r = np.where(st == 0, np.nan, np.where(se == 0, 0.0, r))
    return pd.Series(np.clip(r, -1.0, 1.0), index=t.columns, name="pearson_r")


def median_pearson(est: pd.DataFrame, truth: pd.DataFrame) -> float:
    """Median of :func:`per_type_pearson` over the types whose truth varies across spots."""
    r = per_type_pearson(est, truth).dropna()
    if r.empty:
        raise SpotmapError("no cell type varies across spots in the truth: correlation is undefined")
    return float(np.median(r.to_numpy()))


def proportions(df: pd.DataFrame) -> pd.DataFrame:
    """Row-normalise to proportions; a row that sums to 0 stays all 0 (nothing is estimated there)."""
    x = df.to_numpy(dtype=np.float64)
    if (x < 0).any():
        raise SpotmapError("proportions need non-negative abundances; found negative values")
    tot = x.sum(1, keepdims=True)
    out = np.divide(x, tot, out=np.zeros_like(x), where=tot > 0)
    return pd.DataFrame(out, index=df.index, columns=df.columns)


def rmse_proportions(est: pd.DataFrame, truth: pd.DataFrame) -> float:
    """Mean over spots of the RMSE over types between row-normalised estimate and truth.

    Spots whose true abundances are all 0 have no true proportions and are left out
    (as spotless leaves out rows of missing truth).
    """
    e, t = align(est, truth)
    keep = t.sum(1).to_numpy() > 0
    if not keep.any():
        raise SpotmapError("every spot of the truth is empty: proportions are undefined")
    p, q = proportions(e).to_numpy()[keep], proportions(t).to_numpy()[keep]
    return float(np.mean(np.sqrt(((p - q) ** 2).mean(1))))


def rmse_counts(est: pd.DataFrame, truth: pd.DataFrame) -> float:
    """Mean over spots of the RMSE over types between estimated and true cells per spot (cells; absolute
    scale, unlike the proportions)."""
    e, t = align(est, truth)
    return float(np.mean(np.sqrt(((e.to_numpy() - t.to_numpy()) ** 2).mean(1))))


def total_ratio(est: pd.DataFrame, truth: pd.DataFrame) -> float:
    """Estimated / true mean total cells per spot (1 = the right absolute number of cells)."""
    e, t = align(est, truth)
    true_total = float(t.to_numpy().sum(1).mean())
    if true_total <= 0:
        raise SpotmapError("every spot of the truth is empty: the ratio of totals is undefined")
    return float(e.to_numpy().sum(1).mean()) / true_total


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision: Σ_k (R_k − R_{k−1}) · P_k over the distinct score thresholds, high to low.

    Tied scores enter together (one threshold), so the result does not depend on the order of ties.
    """
    y = np.asarray(labels, dtype=bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise SpotmapError(f"labels and scores differ in length ({y.size} vs {s.size})")
    n_pos = int(y.sum())
    if n_pos == 0:
        raise SpotmapError("no positive labels: precision-recall is undefined")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = np.cumsum(y)[last_of_tie].astype(np.float64)
    n_called = last_of_tie + 1.0
    precision = tp / n_called
    recall = tp / n_pos
    delta = np.diff(np.r_[0.0, recall])
    return float(np.sum(delta * precision))


def aupr_presence(est: pd.DataFrame, truth: pd.DataFrame) -> float:
    """AUPR (average precision) of ``truth > 0`` ("present") scored by ``est``, over all spot × type pairs."""
    e, t = align(est, truth)
    return average_precision(t.to_numpy() > 0, e.to_numpy())


def _dense_rows(X, rows: slice) -> np.ndarray:
    part = X[rows]
    return part.toarray() if sp.issparse(part) else np.asarray(part)


def nnls_abundance(adata, signatures: pd.DataFrame, chunk: int = 2048) -> pd.DataFrame:
    """Per-spot NNLS of counts on the signatures: ``argmin_{w ≥ 0} ‖D_s − G w‖²``.

    Parameters
    ----------
    adata
        Spots × genes AnnData with raw counts in ``X``; ``var_names`` matched to ``signatures.index``.
    signatures
        Genes × types expected counts per cell (g_fg).

    Returns
    -------
    Spots × types DataFrame (index = ``adata.obs_names``). The weights absorb detection
    efficiency and gene sensitivity, so they are abundances up to a per-spot scale: fine for
    proportions and rankings, the baseline spotless also runs.
    """
    if not isinstance(signatures, pd.DataFrame):
        raise SpotmapError("signatures must be a genes × types DataFrame")
    if signatures.index.has_duplicates:
        raise SpotmapError(f"signatures: duplicated genes: {_preview(signatures.index[signatures.index.duplicated()])}")
    if adata.var_names.has_duplicates:
        raise SpotmapError("spatial data: duplicated gene names (var_names)")
    shared = adata.var_names.intersection(signatures.index, sort=False)
    n_types = signatures.shape[1]
    if len(shared) < max(n_types, 1):
        raise SpotmapError(f"only {len(shared)} genes shared between spatial data and signatures; "
                           f"NNLS needs at least one per cell type ({n_types})")
    G = signatures.loc[shared].to_numpy(dtype=np.float64)
    if not np.isfinite(G).all() or (G < 0).any():
        raise SpotmapError("signatures must be finite and non-negative")
    cols = adata.var_names.get_indexer(shared)
    X = adata.X
    X = X.tocsr() if sp.issparse(X) else X
    out = np.empty((adata.n_obs, n_types))
    for i in range(0, adata.n_obs, chunk):
        D = _dense_rows(X, slice(i, i + chunk))[:, cols].astype(np.float64)
        for k, d in enumerate(D):
            out[i + k], _ = nnls(G, d)
    return pd.DataFrame(out, index=adata.obs_names.copy(), columns=signatures.columns.copy())


def evaluate(est: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """All metrics of ``est`` against ``truth``.

    Returns ``{'median_pearson', 'mean_pearson', 'min_pearson', 'rmse_proportions', 'aupr', 'rmse_counts',
    'total_ratio', 'n_spots', 'n_types', 'per_type_pearson'}``; AUPR is scored on proportions (scale-free, as
    spotless); ``rmse_counts`` and ``total_ratio`` measure the absolute number of cells.
    """
    e, t = align(est, truth)
    r = per_type_pearson(e, t)
    rv = r.dropna()
    return {
        "median_pearson": median_pearson(e, t),
        "mean_pearson": float(rv.mean()),
        "min_pearson": float(rv.min()),
        "rmse_proportions": rmse_proportions(e, t),
        "aupr": aupr_presence(proportions(e), t),
        "rmse_counts": rmse_counts(e, t),
        "total_ratio": total_ratio(e, t),
        "n_spots": int(t.shape[0]),
        "n_types": int(t.shape[1]),
        "per_type_pearson": r.to_dict(),
    }
