"""QC figures: distributions of the spot metrics with their thresholds, the metrics over the tissue, and
the batch-effect view (a UMAP of the spots of every sample)."""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np

from spotmap.io.platform import platform_of
from spotmap.pl.spatial import spatial_layout, spatial_scatter

QC_PLOT_MAX_PX = 300  #: Visium HD spatial QC plot: at most this many pixels a side (block means beyond)


def qc_histograms(adata: ad.AnnData, sample: str, min_counts: float, min_genes: int,
                       max_mt_fraction: float):
    """Histograms of counts, genes and mitochondrial fraction per spot (all spots), thresholds marked."""
    o = adata.obs
    unit = "bin" if platform_of(adata).is_hd else "spot"
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


def qc_spatial(adata: ad.AnnData, sample: str):
    """Counts, genes and (when there are mitochondrial genes) mt fraction per spot over the tissue image.

    Spots failing QC (``obs['pass_qc'] == False``) are circled in cyan.
    """
    if platform_of(adata).is_hd:
        layout = spatial_layout(adata, max_px=QC_PLOT_MAX_PX)
        if layout is not None:
            return _qc_bins(adata, sample, layout)

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


def _qc_bins(adata: ad.AnnData, sample: str, layout):
    """The spatial QC panels for Visium HD: one raster image on the bin grid (fast and small at any
    number of bins), failing bins painted cyan on a second layer. ``layout``: the report's
    :class:`~spotmap.pl.spatial.GridLayout`, so the QC maps have the abundance maps' orientation."""
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


def batch_umap(adatas, n_top_genes: int = 2000, seed: int = 0, max_spots_per_sample: int | None = None) -> plt.Figure:
    """The batch-effect view: UMAP of the spots of every sample, coloured by sample.

    ``adatas``: the output of :func:`spotmap.qc.batch_embedding`, or the samples themselves (a list or a dict
    ``{sample: AnnData}``, embedded here with ``n_top_genes``, ``seed`` and ``max_spots_per_sample``).
    """
    from spotmap.qc.batch import BATCH_UMAP_MAX_SPOTS, batch_embedding

    comb = adatas if isinstance(adatas, ad.AnnData) and "X_umap" in adatas.obsm else batch_embedding(
        adatas, n_top_genes=n_top_genes, seed=seed,
        max_spots_per_sample=BATCH_UMAP_MAX_SPOTS if max_spots_per_sample is None else max_spots_per_sample)
    xy, names = comb.obsm["X_umap"], list(comb.obs["sample"].cat.categories)
    n_total = dict(comb.uns.get("n_spots", {}))
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    order = np.random.default_rng(seed).permutation(comb.n_obs)  # no sample hides behind another
    codes = comb.obs["sample"].cat.codes.to_numpy()[order]
    size = max(2.0, min(30.0, 3.0e4 / comb.n_obs))
    ax.scatter(xy[order, 0], xy[order, 1], c=[cmap(c % cmap.N) for c in codes], s=size, linewidths=0, rasterized=True)
    for k, name in enumerate(names):
        shown = int((comb.obs["sample"] == name).sum())
        total = int(n_total.get(name, shown))
        label = f"{name} ({shown} spots)" if shown == total else f"{name} ({shown} of {total} spots)"
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
