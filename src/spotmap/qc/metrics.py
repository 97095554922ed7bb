"""Spot QC of one sample: per-spot metrics, the spot filter and mitochondrial genes out of the counts.

Follows the cell2location tutorial: mitochondrial genes are removed from the counts used for
mapping (their counts kept in ``obsm['mt']``) and raw counts are never normalised in place. The
thresholds and their defaults by platform are in :mod:`spotmap.qc.thresholds`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from spotmap.errors import SpotmapError, input_error
from spotmap.io.platform import VISIUM_HD, platform_of
from spotmap.qc.thresholds import VISIUM, resolve_thresholds
from spotmap.utils import log

MT_PREFIXES = ("mt-", "MT-")
QC_COLUMNS = ["total_counts", "n_genes_by_counts", "mt_counts", "mt_frac"]


def read_mt_genes(path: str | Path) -> list[str]:
    """Read a mitochondrial gene list: one symbol or id per line (``#`` comments, blank lines ignored)."""
    path = Path(path)
    if not path.exists():
        raise input_error(path, "mitochondrial gene list not found")
    genes = [ln.split(",")[0].split("\t")[0].strip() for ln in path.read_text().splitlines()]
    genes = [g for g in genes if g and not g.startswith("#")]
    if not genes:
        raise input_error(path, "mitochondrial gene list is empty")
    return genes


def mt_gene_mask(adata: ad.AnnData, mt_genes: Iterable[str] | None = None) -> np.ndarray:
    """Boolean mask over ``var``: genes named ``mt-``/``MT-``, or those in ``mt_genes`` (symbols or ids).

    Raises :class:`SpotmapError` when an explicit list matches no gene (a wrong list, not a clean sample).
    """
    names = adata.var_names.astype(str)
    if mt_genes is None:
        return np.asarray(names.str.startswith(MT_PREFIXES))
    wanted = set(map(str, mt_genes))
    mask = names.isin(wanted)
    if "gene_ids" in adata.var:
        mask |= adata.var["gene_ids"].astype(str).isin(wanted).to_numpy()
    mask = np.asarray(mask)
    if not mask.any():
        raise SpotmapError(f"none of the {len(wanted)} mitochondrial genes given (e.g. {sorted(wanted)[0]!r}) "
                           f"is among the {adata.n_vars} genes of the data (e.g. {names[0]!r})")
    return mask


def compute_qc_metrics(adata: ad.AnnData, mt_genes: Iterable[str] | None = None, *,
                       copy: bool = False) -> ad.AnnData | None:
    """Per-spot QC columns in ``adata.obs`` and ``var['mt']``, as scanpy's ``calculate_qc_metrics``.

    obs: ``total_counts`` (UMI per spot, all genes), ``n_genes_by_counts`` (genes with ≥1 count),
    ``mt_counts`` and ``mt_frac`` (mitochondrial share of ``total_counts``, 0–1). Written into ``adata``
    (returns None), or with ``copy=True`` into a copy that is returned (its ``X`` shared with ``adata``,
    not copied).
    """
    X = sp.csr_matrix(adata.X)
    mask = mt_gene_mask(adata, mt_genes)
    out = adata if not copy else ad.AnnData(X=adata.X, obs=adata.obs.copy(), var=adata.var.copy(),
                                            obsm=dict(adata.obsm), uns=dict(adata.uns))
    total = np.asarray(X.sum(axis=1)).ravel()
    mt = np.asarray(X[:, mask].sum(axis=1)).ravel() if mask.any() else np.zeros(adata.n_obs)
    out.obs["total_counts"] = total
    if X.nnz == 0 or X.data.min() > 0:  # no explicit zeros: stored entries per row (no copy of X)
        out.obs["n_genes_by_counts"] = np.diff(X.indptr).astype(np.int64)
    else:
        out.obs["n_genes_by_counts"] = np.asarray((X > 0).sum(axis=1)).ravel()  # explicit zeros do not count
    out.obs["mt_counts"] = mt
    out.obs["mt_frac"] = np.divide(mt, total, out=np.zeros_like(total, dtype=float), where=total > 0)
    out.var["mt"] = mask
    if not mask.any():
        log.warning("no mitochondrial genes found (prefix mt-/MT- or --mt-genes); mt_frac is 0 for every spot")
    return out if copy else None


def qc_pass(adata: ad.AnnData, min_counts: float = VISIUM.min_counts, min_genes: int = VISIUM.min_genes,
            max_mt_fraction: float = VISIUM.max_mt_fraction) -> pd.DataFrame:
    """Per-spot reasons for failing QC (columns ``low_counts``, ``low_genes``, ``high_mt``, ``pass_qc``)."""
    for name, value in (("--min-counts", min_counts), ("--min-genes", min_genes)):
        if value < 0:
            raise SpotmapError(f"{name} must be ≥ 0 (got {value})")
    if not 0 < max_mt_fraction <= 1:
        raise SpotmapError(f"--max-mt-fraction must be in (0, 1] (got {max_mt_fraction})")
    o = adata.obs
    df = pd.DataFrame({"low_counts": o["total_counts"] < min_counts, "low_genes": o["n_genes_by_counts"] < min_genes,
                       "high_mt": o["mt_frac"] > max_mt_fraction}, index=adata.obs_names)
    df["pass_qc"] = ~df.any(axis=1)
    return df


def filter_spots(adata: ad.AnnData, min_counts: float = VISIUM.min_counts, min_genes: int = VISIUM.min_genes,
                 max_mt_fraction: float = VISIUM.max_mt_fraction) -> ad.AnnData:
    """Mark ``adata.obs['pass_qc']`` (in place) and return a copy with the passing spots only.

    ``adata`` needs the columns of :func:`compute_qc_metrics`.
    """
    flags = qc_pass(adata, min_counts, min_genes, max_mt_fraction)
    adata.obs["pass_qc"] = flags["pass_qc"].to_numpy()
    return adata[flags["pass_qc"].to_numpy()].copy()


def remove_mt_genes(adata: ad.AnnData) -> ad.AnnData:
    """Drop ``var['mt']`` genes from ``X``; keep their counts as a DataFrame in ``obsm['mt']`` (spots × mt genes)."""
    mask = adata.var["mt"].to_numpy(dtype=bool)
    mt_counts = sp.csr_matrix(adata.X)[:, mask].toarray()  # a handful of genes: dense is small
    out = adata[:, ~mask].copy()
    out.obsm["mt"] = pd.DataFrame(mt_counts, index=adata.obs_names, columns=adata.var_names[mask].astype(str))
    return out


def _select_csr(X, rows: np.ndarray, cols: np.ndarray, chunk: int = 10_000) -> sp.csr_matrix:
    """``X[rows][:, cols]`` for boolean masks, in chunks of rows written into one preallocated array:
    memory is the result plus one small chunk, whatever the size of ``X`` (Visium HD)."""
    X = sp.csr_matrix(X)
    lengths = np.diff(X.indptr)
    bound = int(lengths[rows].sum())
    idx_dtype = np.int32 if max(bound, X.shape[1]) < 2**31 - 1 else np.int64
    data, indices = np.empty(bound, dtype=X.dtype), np.empty(bound, dtype=idx_dtype)
    indptr, pos = [np.zeros(1, dtype=np.int64)], 0
    for start in range(0, X.shape[0], chunk):
        r = rows[start:start + chunk]
        if not r.any():
            continue
        part = X[start:start + chunk][r][:, cols]
        n = part.nnz
        data[pos:pos + n], indices[pos:pos + n] = part.data, part.indices
        indptr.append(part.indptr[1:].astype(np.int64) + pos)
        pos += n
    return sp.csr_matrix((data[:pos], indices[:pos], np.concatenate(indptr)),
                         shape=(int(rows.sum()), int(cols.sum())))


def _kept_without_mt(adata: ad.AnnData, rows: np.ndarray) -> ad.AnnData:
    """``remove_mt_genes(adata[rows].copy())`` without the intermediate copy of the counts."""
    mask = adata.var["mt"].to_numpy(dtype=bool)
    X = sp.csr_matrix(adata.X)
    mt_counts = X[:, mask][rows].toarray()  # a handful of genes: dense is small
    shell = ad.AnnData(obs=adata.obs, var=adata.var, obsm=dict(adata.obsm), uns=dict(adata.uns))
    out = shell[rows][:, ~mask].copy()
    out.X = _select_csr(X, rows, ~mask)
    out.obsm["mt"] = pd.DataFrame(mt_counts, index=out.obs_names, columns=adata.var_names[mask].astype(str))
    return out


def run_qc(adata: ad.AnnData, sample: str, min_counts: float | str | None = None,
           min_genes: int | str | None = None, max_mt_fraction: float | str | None = None,
           mt_genes: Iterable[str] | None = None, min_spots: int = 1,
           batch: str | None = None) -> tuple[ad.AnnData, dict]:
    """QC one sample: metrics, spot filter, mitochondrial genes out of the counts.

    ``adata.obs`` gets the QC columns and ``pass_qc`` in place (every spot, for the metrics table).
    A threshold left out (``None``) or given as ``'auto'`` takes the platform's default
    (:func:`~spotmap.qc.thresholds.default_thresholds`: :class:`~spotmap.qc.thresholds.QCThresholds` for Visium
    and other inputs; Visium HD bins, recorded by the reader in ``uns['spotmap']``, get lower count thresholds). ``batch``, where given, is
    written to every spot as ``obs['batch']`` (the samplesheet's batch label: samples sharing one share the
    mapping model's batch-level parameters when mapped with ``--batch-key batch``).

    Returns
    -------
    ``(filtered, summary)``: the passing spots without mitochondrial genes (raw counts untouched,
    ``obsm['mt']`` holds the removed counts) and one summary row as a dict.

    Raises
    ------
    SpotmapError
        Fewer than ``min_spots`` spots pass (the message gives the medians to choose thresholds by).
    """
    t = resolve_thresholds(adata, min_counts, min_genes, max_mt_fraction)
    min_counts, min_genes, max_mt_fraction = t["min_counts"], t["min_genes"], t["max_mt_fraction"]
    platform, bin_um = platform_of(adata)
    with_metrics = compute_qc_metrics(adata, mt_genes, copy=True)
    for c in QC_COLUMNS:
        adata.obs[c] = with_metrics.obs[c].to_numpy()
    adata.var["mt"] = with_metrics.var["mt"].to_numpy()
    flags = qc_pass(with_metrics, min_counts, min_genes, max_mt_fraction)
    adata.obs["pass_qc"] = flags["pass_qc"].to_numpy()
    kept = with_metrics[flags["pass_qc"].to_numpy()]  # a view (no copy of the counts)
    o = adata.obs
    if kept.n_obs < max(min_spots, 1):
        raise SpotmapError(
            f"sample {sample}: only {kept.n_obs} of {adata.n_obs} spots pass QC (min_counts={min_counts:g}, "
            f"min_genes={min_genes}, max_mt_fraction={max_mt_fraction:g}; medians: counts "
            f"{o['total_counts'].median():g}, genes {o['n_genes_by_counts'].median():g}, mt_frac "
            f"{o['mt_frac'].median():.3f}); lower --min-counts/--min-genes or raise --max-mt-fraction")
    filtered = _kept_without_mt(with_metrics, flags["pass_qc"].to_numpy())
    filtered.obs["sample"] = sample
    if batch is not None:
        filtered.obs["batch"] = str(batch)
    filtered.obs["pass_qc"] = True
    summary = _summary(adata, filtered, flags, sample)
    filtered.uns["qc"] = {"min_counts": float(min_counts), "min_genes": int(min_genes),
                          "max_mt_fraction": float(max_mt_fraction), **{k: v for k, v in summary.items()}}
    if platform == VISIUM_HD:
        filtered.uns["qc"] |= {"platform": platform, "bin_size_um": int(bin_um)}
    if batch is not None:
        filtered.uns["qc"]["batch"] = str(batch)
    log.info("sample %s: %d of %d spots pass QC; %d mitochondrial genes moved to obsm['mt']", sample,
             summary["spots_after"], summary["spots_before"], summary["mt_genes"])
    return filtered, summary


def _summary(adata: ad.AnnData, filtered: ad.AnnData, flags: pd.DataFrame, sample: str) -> dict:
    """The sample's row of the QC summary table."""
    return {
        "sample": sample,
        "spots_before": int(adata.n_obs),
        "spots_after": int(filtered.n_obs),
        "spots_low_counts": int(flags["low_counts"].sum()),
        "spots_low_genes": int(flags["low_genes"].sum()),
        "spots_high_mt": int(flags["high_mt"].sum()),
        "median_counts": float(filtered.obs["total_counts"].median()),
        "median_genes": float(filtered.obs["n_genes_by_counts"].median()),
        "median_mt_frac": float(filtered.obs["mt_frac"].median()),
        "genes_before": int(adata.n_vars),
        "genes_after": int(filtered.n_vars),
        "mt_genes": int(adata.var["mt"].sum()),
    }


def qc_metrics_table(adata: ad.AnnData) -> pd.DataFrame:
    """Every spot with its barcode, coordinates, QC metrics and ``pass_qc`` (index ``spot_id``)."""
    cols = [c for c in ["sample", "barcode", "in_tissue", "array_row", "array_col"] if c in adata.obs]
    df = adata.obs[cols + QC_COLUMNS + ["pass_qc"]].copy()
    xy = np.asarray(adata.obsm["spatial"], dtype=float)
    df.insert(len(cols), "x", xy[:, 0])
    df.insert(len(cols) + 1, "y", xy[:, 1])
    df.index.name = "spot_id"
    return df


def shared_gene_report(spatial: ad.AnnData, reference: ad.AnnData, min_genes: int | None = None,
                       source: str = "reference") -> dict:
    """Match reference and spatial genes (id first, then symbol; see :func:`spotmap.io.genes.shared_genes`).

    ``source`` names the reference (its file) in messages. Returns the summary columns
    ``genes_shared_with_reference`` and ``genes_matched_by``.
    """
    from spotmap.io.genes import MIN_SHARED_GENES, shared_genes

    pairs, by = shared_genes(spatial, reference, min_genes=MIN_SHARED_GENES if min_genes is None else min_genes,
                             source=source)
    return {"genes_shared_with_reference": int(len(pairs)), "genes_matched_by": by}
