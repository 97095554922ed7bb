"""Spot QC: per-spot metrics, filtering, mitochondrial genes, MultiQC outputs, the batch-effect view.

Follows the cell2location tutorial: mitochondrial genes are removed from the counts used for
mapping (their counts kept in ``obsm['mt']``), raw counts are never normalised in place, and the
across-sample view is a UMAP of a log-normalised copy. Default thresholds are nf-core/spatialvi's
(``qc_min_counts=500``, ``qc_min_genes=250``, ``qc_mito_threshold=20`` %) for Visium spots; Visium HD
bins hold a few hundred UMIs, so their defaults are platform-aware (:func:`default_thresholds`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from spotmap.errors import SpotmapError, input_error
from spotmap.utils import log

DEFAULT_MIN_COUNTS = 500
DEFAULT_MIN_GENES = 250
DEFAULT_MAX_MT_FRACTION = 0.20
MT_PREFIXES = ("mt-", "MT-")
# Visium HD, 8 µm bins (median ~300 genes, ~380 UMIs; a bin with no cell holds ~10-30 ambient UMIs).
# Other bin sizes scale the count thresholds with the bin's area: (bin / 8)².
HD_MIN_COUNTS_8UM = 50
HD_MIN_GENES_8UM = 30
HD_MAX_MT_FRACTION = 0.20
QC_PLOT_MAX_PX = 300  #: Visium HD spatial QC plot: at most this many pixels a side (block means beyond)
QC_COLUMNS = ["total_counts", "n_genes_by_counts", "mt_counts", "mt_frac"]
MQC_SUMMARY_ID = "spotmap_qc"
MQC_SECTION = "Samples and QC"


# ---------------------------------------------------------------------------- thresholds
def platform_of(adata: ad.AnnData) -> tuple[str, int | None]:
    """``(platform, bin_size_um)`` as the reader recorded them in ``uns['spotmap']`` (Visium HD), else
    ``('visium', None)`` (Visium and every other input)."""
    meta = adata.uns.get("spotmap", {}) if hasattr(adata, "uns") else {}
    return _platform(meta if isinstance(meta, dict) else {})


def platform_of_file(h5ad: str | Path) -> tuple[str, int | None]:
    """:func:`platform_of` of an ``.h5ad`` file (e.g. a ``spotmap qc`` output), read without its counts."""
    import h5py

    meta = {}
    try:
        with h5py.File(h5ad, "r") as f:
            for key in ("platform", "bin_size_um"):
                node = f.get(f"uns/spotmap/{key}")
                if node is not None:
                    value = node[()]
                    meta[key] = value.decode() if isinstance(value, bytes) else value
    except OSError:
        pass
    return _platform(meta)


def _platform(meta: dict) -> tuple[str, int | None]:
    if meta.get("platform") == "visium-hd":
        b = meta.get("bin_size_um")
        return "visium-hd", int(b) if b is not None else 8
    return "visium", None


def default_thresholds(platform: str = "visium", bin_size_um: float | None = None) -> dict:
    """Default QC thresholds of a platform: ``min_counts``, ``min_genes``, ``max_mt_fraction``.

    * ``visium`` (and any non-HD input): 500 UMIs, 250 genes, 0.2 (nf-core/spatialvi).
    * ``visium-hd``: at 8 µm, 50 UMIs, 30 genes, 0.2. Bins of another size scale the count thresholds
      with their area, ``(bin_size / 8)²``, rounded and at least 1: 16 µm → 200 UMIs, 120 genes;
      2 µm → 3 UMIs, 2 genes.
    """
    if platform != "visium-hd":
        return {"min_counts": float(DEFAULT_MIN_COUNTS), "min_genes": int(DEFAULT_MIN_GENES),
                "max_mt_fraction": float(DEFAULT_MAX_MT_FRACTION)}
    area = (float(bin_size_um or 8) / 8.0) ** 2
    return {"min_counts": float(max(1, round(HD_MIN_COUNTS_8UM * area))),
            "min_genes": int(max(1, round(HD_MIN_GENES_8UM * area))),
            "max_mt_fraction": float(HD_MAX_MT_FRACTION)}


def resolve_thresholds(adata: ad.AnnData, min_counts=None, min_genes=None, max_mt_fraction=None) -> dict:
    """The thresholds to use for ``adata``: each ``None`` or ``'auto'`` replaced by the platform's default."""
    defaults = default_thresholds(*platform_of(adata))
    given = {"min_counts": min_counts, "min_genes": min_genes, "max_mt_fraction": max_mt_fraction}
    out = {}
    for key, value in given.items():
        if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
            out[key] = defaults[key]
        else:
            out[key] = int(value) if key == "min_genes" else float(value)
    return out


# ---------------------------------------------------------------------------- metrics
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


def compute_qc_metrics(adata: ad.AnnData, mt_genes: Iterable[str] | None = None) -> ad.AnnData:
    """Return ``adata`` with per-spot QC columns in ``obs`` and ``var['mt']`` (X shared, not copied).

    obs: ``total_counts`` (UMI per spot, all genes), ``n_genes_by_counts`` (genes with ≥1 count),
    ``mt_counts`` and ``mt_frac`` (mitochondrial share of ``total_counts``, 0–1).
    """
    X = sp.csr_matrix(adata.X)
    mask = mt_gene_mask(adata, mt_genes)
    out = ad.AnnData(X=adata.X, obs=adata.obs.copy(), var=adata.var.copy(), obsm=dict(adata.obsm),
                     uns=dict(adata.uns))
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
    return out


def qc_pass(adata: ad.AnnData, min_counts: float = DEFAULT_MIN_COUNTS, min_genes: int = DEFAULT_MIN_GENES,
            max_mt_fraction: float = DEFAULT_MAX_MT_FRACTION) -> pd.DataFrame:
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


def filter_spots(adata: ad.AnnData, min_counts: float = DEFAULT_MIN_COUNTS, min_genes: int = DEFAULT_MIN_GENES,
                 max_mt_fraction: float = DEFAULT_MAX_MT_FRACTION) -> ad.AnnData:
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
    (:func:`default_thresholds`: 500 / 250 / 0.2 for Visium and other inputs, as before; Visium HD bins,
    recorded by the reader in ``uns['spotmap']``, get lower count thresholds). ``batch``, where given, is
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
    with_metrics = compute_qc_metrics(adata, mt_genes)
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
    summary = {
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
    filtered.uns["qc"] = {"min_counts": float(min_counts), "min_genes": int(min_genes),
                          "max_mt_fraction": float(max_mt_fraction), **{k: v for k, v in summary.items()}}
    if platform == "visium-hd":
        filtered.uns["qc"] |= {"platform": platform, "bin_size_um": int(bin_um)}
    if batch is not None:
        filtered.uns["qc"]["batch"] = str(batch)
    log.info("sample %s: %d of %d spots pass QC; %d mitochondrial genes moved to obsm['mt']", sample,
             summary["spots_after"], summary["spots_before"], summary["mt_genes"])
    return filtered, summary


# ---------------------------------------------------------------------------- plots
def plot_qc_histograms(adata: ad.AnnData, sample: str, min_counts: float, min_genes: int,
                       max_mt_fraction: float):
    """Histograms of counts, genes and mitochondrial fraction per spot (all spots), thresholds marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    o = adata.obs
    unit = "bin" if platform_of(adata)[0] == "visium-hd" else "spot"
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    panels = [("total_counts", f"UMI counts per {unit}", min_counts, "min"),
              ("n_genes_by_counts", f"genes detected per {unit}", min_genes, "min"),
              ("mt_frac", f"mitochondrial fraction of counts per {unit}", max_mt_fraction, "max")]
    for ax, (col, label, thr, kind) in zip(axes, panels):
        v = o[col].to_numpy(dtype=float)
        ax.hist(v, bins=min(50, max(5, len(v) // 5)), color="#4c72b0", edgecolor="white", linewidth=0.3)
        ax.axvline(thr, color="#c44e52", ls="--", lw=1.2, label=f"{kind} {thr:g}")
        n_fail = int((v < thr).sum() if kind == "min" else (v > thr).sum())
        ax.set_title(f"{label}\n{n_fail} of {len(v)} {unit}s outside the threshold", fontsize=9)
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel(f"{unit}s", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle(f"{sample}: {unit} QC before filtering ({adata.n_obs} {unit}s)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_qc_spatial(adata: ad.AnnData, sample: str):
    """Counts, genes and (when there are mitochondrial genes) mt fraction per spot over the tissue image.

    Spots failing QC (``obs['pass_qc'] == False``) are circled in cyan.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spotmap.report.plots import spatial_layout, spatial_scatter

    if platform_of(adata)[0] == "visium-hd":
        layout = spatial_layout(adata, max_px=QC_PLOT_MAX_PX)
        if layout is not None:
            return _plot_qc_bins(adata, sample, layout)

    o = adata.obs
    panels = [("total_counts", "total counts per spot", "UMI counts per spot", "magma", 0.992),
              ("n_genes_by_counts", "genes detected per spot", "genes with ≥1 count", "magma", 0.992)]
    if "mt_counts" in o and o["mt_counts"].sum() > 0:
        panels.append(("mt_frac", "mitochondrial fraction", "mitochondrial fraction of counts (0–1)", "viridis", 1.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6))
    lib = sample if sample in adata.uns.get("spatial", {}) else None
    images = adata.uns["spatial"][lib].get("images", {}) if lib is not None else {}
    # ~450 px per panel in the report: the 600 px lowres image is enough and much faster to draw
    img_key = "lowres" if "lowres" in images else "hires"
    for ax, (col, title, label, cmap, q) in zip(axes, panels):
        spatial_scatter(adata, o[col].to_numpy(dtype=float), ax, f"{sample}: {title}", label, library_id=lib,
                        cmap=cmap, vmax_quantile=q, img_key=img_key)
    n_fail = int((~o["pass_qc"].astype(bool)).sum()) if "pass_qc" in o else 0
    if n_fail:
        fail = ~o["pass_qc"].to_numpy(dtype=bool)
        scale = 1.0  # the same image scaling as spatial_scatter's
        key = img_key if img_key in images else next(iter(images), None)
        if key is not None:
            scale = float(adata.uns["spatial"][lib].get("scalefactors", {}).get(f"tissue_{key}_scalef", 1.0))
        xy = np.asarray(adata.obsm["spatial"], dtype=float)[fail] * scale
        for ax in axes:
            ax.scatter(xy[:, 0], xy[:, 1], s=16, facecolors="none", edgecolors="#00e5ff", linewidths=1.0,
                       label=f"fails QC ({n_fail})")
        axes[0].legend(fontsize=7, loc="lower left", frameon=True)
    mt_note = "" if len(panels) == 3 else "; no mitochondrial counts"
    fig.suptitle(f"{sample}: spots before QC ({adata.n_obs}; {n_fail} removed{mt_note})", fontsize=10)
    fig.tight_layout()
    return fig


def _plot_qc_bins(adata: ad.AnnData, sample: str, layout):
    """The spatial QC panels for Visium HD: one raster image on the bin grid (fast and small at any
    number of bins), failing bins painted cyan on a second layer. ``layout``: the report's
    :class:`~spotmap.report.plots.GridLayout`, so the QC maps have the abundance maps' orientation."""
    import matplotlib.pyplot as plt

    o = adata.obs
    _, bin_um = platform_of(adata)
    k = layout.factor
    grid = layout.raster
    panels = [("total_counts", "total counts per bin", "UMI counts per bin", "magma", 0.992),
              ("n_genes_by_counts", "genes detected per bin", "genes with ≥1 count", "magma", 0.992)]
    if "mt_counts" in o and o["mt_counts"].sum() > 0:
        panels.append(("mt_frac", "mitochondrial fraction", "mitochondrial fraction of counts (0–1)", "viridis", 1.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6), squeeze=False)
    axes = axes[0]
    fail = ~o["pass_qc"].to_numpy(dtype=bool) if "pass_qc" in o else np.zeros(adata.n_obs, dtype=bool)
    overlay = np.zeros(layout.shape + (4,), dtype=np.float32)
    overlay[..., 1:3] = (0.9, 1.0)
    overlay[..., 3] = 0.7 * np.nan_to_num(grid(fail.astype(float)))  # the share of failing bins per pixel
    for ax, (col, title, label, cmap, q) in zip(axes, panels):
        v = o[col].to_numpy(dtype=float)
        img = grid(v)
        vmax = float(np.nanquantile(img, q)) if len(v) else 1.0
        im = ax.imshow(img, cmap=cmap, vmin=0, vmax=vmax if vmax > 0 else None, interpolation="nearest",
                       extent=layout.extent)
        if fail.any():
            ax.imshow(overlay, interpolation="nearest", extent=layout.extent)
        ax.set_xlim(*layout.xlim)
        ax.set_ylim(*layout.ylim)
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        cb.set_label(label, fontsize=8)
        cb.ax.tick_params(labelsize=7)
        ax.set_title(f"{sample}: {title}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{bin_um} µm bins" + (f"; one pixel = mean of {k} × {k} bins" if k > 1 else ""), fontsize=8)
    if fail.any():
        axes[0].scatter([], [], marker="s", color=(0.0, 0.9, 1.0), label=f"fails QC ({int(fail.sum())})")
        axes[0].legend(fontsize=7, loc="lower left", frameon=True)
    mt_note = "" if len(panels) == 3 else "; no mitochondrial counts"
    fig.suptitle(f"{sample}: {bin_um} µm bins before QC ({adata.n_obs}; {int(fail.sum())} removed{mt_note})",
                 fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- outputs
SUMMARY_HEADERS = {
    "spots_before": {"title": "Spots", "description": "In-tissue spots before QC", "format": "{:,.0f}"},
    "spots_after": {"title": "Spots kept", "description": "Spots passing QC", "format": "{:,.0f}"},
    "spots_low_counts": {"title": "Low counts", "description": "Spots under --min-counts", "format": "{:,.0f}",
                         "hidden": True},
    "spots_low_genes": {"title": "Low genes", "description": "Spots under --min-genes", "format": "{:,.0f}",
                        "hidden": True},
    "spots_high_mt": {"title": "High mt", "description": "Spots over --max-mt-fraction", "format": "{:,.0f}",
                      "hidden": True},
    "median_counts": {"title": "Median UMI", "description": "Median UMI counts per kept spot", "format": "{:,.0f}"},
    "median_genes": {"title": "Median genes", "description": "Median genes detected per kept spot",
                     "format": "{:,.0f}"},
    "median_mt_frac": {"title": "Median mt", "description": "Median mitochondrial fraction of kept spots (0-1)",
                       "format": "{:,.3f}", "min": 0, "max": 1},
    "genes_before": {"title": "Genes", "description": "Genes in the input", "format": "{:,.0f}"},
    "genes_after": {"title": "Genes kept", "description": "Genes kept for mapping (mitochondrial removed)",
                    "format": "{:,.0f}"},
    "mt_genes": {"title": "mt genes", "description": "Mitochondrial genes removed from the counts",
                 "format": "{:,.0f}"},
    "genes_shared_with_reference": {"title": "Shared genes", "description": "Kept genes also in the reference "
                                    "(with --reference)", "format": "{:,.0f}"},
    "genes_matched_by": {"title": "Matched by", "description": "Genes matched by Ensembl-style id or by symbol"},
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


def write_qc_outputs(adata: ad.AnnData, filtered: ad.AnnData, summary: dict, outdir: str | Path, sample: str,
                     min_counts: float = DEFAULT_MIN_COUNTS, min_genes: int = DEFAULT_MIN_GENES,
                     max_mt_fraction: float = DEFAULT_MAX_MT_FRACTION, plots: bool = True) -> dict[str, Path]:
    """Write the QC outputs of one sample into ``outdir``, all or none.

    Files: ``<sample>.h5ad`` (``filtered``), ``<sample>_qc_metrics.tsv`` (every spot of ``adata``),
    ``<sample>_qc_summary_mqc.tsv`` (MultiQC table ``spotmap_qc``), ``<sample>_qc_histograms_mqc.png``
    and ``<sample>_qc_spatial_mqc.png``. Everything is written to a hidden folder first and moved in
    at the end, so a failure leaves no partial output.
    """
    from spotmap.report.mqc import save_mqc_figure, write_mqc_table
    from spotmap.utils import write_h5ad, write_table

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    names = {"h5ad": f"{sample}.h5ad", "metrics": f"{sample}_qc_metrics.tsv",
             "summary": f"{sample}_qc_summary_mqc.tsv"}
    if plots:
        names |= {"histograms": f"{sample}_qc_histograms_mqc.png", "spatial": f"{sample}_qc_spatial_mqc.png"}
    stage = Path(tempfile.mkdtemp(prefix=f".{sample}.qc.", dir=outdir))
    try:
        write_h5ad(filtered, stage / names["h5ad"])
        write_table(qc_metrics_table(adata), stage / names["metrics"])
        row = pd.DataFrame([{k: v for k, v in summary.items() if k != "sample"}],
                           index=pd.Index([sample], name="Sample"))
        write_mqc_table(row, stage / names["summary"], id=MQC_SUMMARY_ID, section_name=MQC_SECTION,
                        description=(f"Spot QC per sample: spots with fewer than min_counts UMI or min_genes genes, "
                                     f"or a mitochondrial fraction above max_mt_fraction, are removed "
                                     f"(this sample: {min_counts:g} / {min_genes} / {max_mt_fraction:g}); "
                                     "mitochondrial genes are removed from the counts used for mapping."),
                        pconfig={"id": f"{MQC_SUMMARY_ID}_table", "title": "spotmap: samples and QC"},
                        headers=SUMMARY_HEADERS)
        if plots:
            save_mqc_figure(plot_qc_histograms(adata, sample, min_counts, min_genes, max_mt_fraction),
                            stage / names["histograms"])
            save_mqc_figure(plot_qc_spatial(adata, sample), stage / names["spatial"])
        out = {}
        for key, name in names.items():
            os.replace(stage / name, outdir / name)
            out[key] = outdir / name
        return out
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ---------------------------------------------------------------------------- across samples
BATCH_UMAP_MAX_SPOTS = 20_000  #: spots per sample in the batch-effect UMAP (Visium HD: a random subset)


def batch_umap(adatas: Sequence[ad.AnnData] | dict[str, ad.AnnData], n_top_genes: int = 2000, seed: int = 0,
               max_spots_per_sample: int = BATCH_UMAP_MAX_SPOTS):
    """The cell2location tutorial's batch-effect view: UMAP of spots coloured by sample.

    On a copy: counts normalised per spot and log1p-transformed, highly variable genes chosen per
    sample (``batch_key='sample'``), PCA, neighbour graph, UMAP. Inputs keep their raw counts.
    Samples are named by ``obs['sample']`` (or the dict keys); only genes shared by all are used.
    A sample with more than ``max_spots_per_sample`` spots (Visium HD bins) is represented by a random
    subset of that many (drawn with ``seed``), which keeps the UMAP to a minute; Visium samples (≤ 4,992
    spots) are used whole.

    Returns a matplotlib Figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = list(adatas.items()) if isinstance(adatas, dict) else [
        (str(a.obs["sample"].iloc[0]) if "sample" in a.obs and a.n_obs else f"sample{i + 1}", a)
        for i, a in enumerate(adatas)]
    if not items:
        raise SpotmapError("qc-batch needs at least one sample")
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise SpotmapError(f"duplicate sample id across the inputs (got {dup!r})")
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
    from spotmap.embedding import log_normalised_umap

    xy = log_normalised_umap(comb, seed=seed, n_top_genes=n_top_genes, batch_key="sample" if len(names) > 1 else None)
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    order = np.random.default_rng(seed).permutation(comb.n_obs)  # no sample hides behind another
    codes = comb.obs["sample"].cat.codes.to_numpy()[order]
    size = max(2.0, min(30.0, 3.0e4 / comb.n_obs))
    ax.scatter(xy[order, 0], xy[order, 1], c=[cmap(c % cmap.N) for c in codes], s=size, linewidths=0, rasterized=True)
    for k, name in enumerate(names):
        shown = int((comb.obs["sample"] == name).sum())
        label = f"{name} ({shown} spots)" if shown == n_total[name] else f"{name} ({shown} of {n_total[name]} spots)"
        ax.scatter([], [], color=cmap(k % cmap.N), label=label)
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5), title="sample",
              title_fontsize=8)
    ax.set_xlabel("UMAP 1", fontsize=8)
    ax.set_ylabel("UMAP 2", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"Spots of {len(names)} sample(s) before mapping: UMAP of log-normalised counts\n"
                 f"({comb.n_vars} genes; samples that separate show a batch effect)", fontsize=9)
    fig.tight_layout()
    return fig


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
