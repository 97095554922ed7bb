"""QC figures of a mapping run (cell2location's plot_history, plot_QC and plot_spatial_QC_across_batches)."""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm

from spotmap.pl.spatial import spatial_layout, spatial_scatter

SKIP_FRACTION = 0.2  #: share of the first epochs left out of the training-history plot


def history_tail(history: pd.DataFrame, skip_fraction: float = SKIP_FRACTION) -> pd.DataFrame:
    """The history without its first ``skip_fraction`` of epochs (at least one row kept)."""
    n = len(history)
    start = min(int(np.floor(n * skip_fraction)), max(n - 1, 0))
    return history.iloc[start:]


def mapping_history(history: pd.DataFrame, name: str = "", skip_fraction: float = SKIP_FRACTION) -> plt.Figure:
    """-ELBO per epoch (and its smoothed value) without the first ``skip_fraction`` of epochs."""
    tail = history_tail(history, skip_fraction)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(tail["epoch"], tail["elbo"], lw=0.6, color="0.55", label="-ELBO")
    ax.plot(tail["epoch"], tail["elbo_smoothed"], lw=1.5, color="C0", label="smoothed")
    ax.set_xlabel("epoch")
    ax.set_ylabel("-ELBO (without the constant Σ log d!)")
    ax.set_title(f"Training history{' — ' + name if name else ''} (first {int(skip_fraction * 100)} % of epochs "
                 "not shown)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def reconstruction(observed: np.ndarray, expected: np.ndarray, name: str = "") -> plt.Figure:
    """Reconstruction accuracy: 2-D histogram of observed counts against posterior expected counts."""
    obs = np.log10(np.asarray(observed, dtype=np.float64).ravel() + 1)
    exp_ = np.log10(np.asarray(expected, dtype=np.float64).ravel() + 1)
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    hi = max(float(obs.max(initial=0)), float(exp_.max(initial=0)), 0.5)
    h = ax.hist2d(exp_, obs, bins=80, range=[[0, hi], [0, hi]], norm=LogNorm(), cmap="viridis")
    ax.plot([0, hi], [0, hi], lw=0.8, color="red", ls="--")
    ax.set_xlabel("expected count μ_sg (log10(x + 1))")
    ax.set_ylabel("observed count D_sg (log10(x + 1))")
    r = np.corrcoef(obs, exp_)[0, 1] if obs.size > 1 and obs.std() > 0 and exp_.std() > 0 else float("nan")
    ax.set_title(f"Reconstruction accuracy{' — ' + name if name else ''}\nPearson r (log scale) = {r:.3f}", fontsize=9)
    cb = fig.colorbar(h[3], ax=ax)
    cb.set_label("spot × gene entries", fontsize=8)
    fig.tight_layout()
    return fig


def spatial_qc(adata: ad.AnnData, sample_key: str = "sample", name: str = "",
                    max_grid_px: int = 400) -> plt.Figure:
    """A row per sample: total counts, total cell abundance (Σ_f mean w_sf) and detection y_s over the tissue.

    Spots are drawn as dots; the bins of a square grid (Visium HD) as one image per panel, block-averaged
    to at most ``max_grid_px`` pixels a side, so the figure stays small and fast for 100,000s of bins.
    """
    samples = [str(s) for s in pd.Categorical(adata.obs[sample_key].astype(str)).categories]
    panels = [("total_counts", "Total counts", "UMI counts per spot"),
              ("total_cell_abundance", "Total cell abundance", "cells per spot (Σ_f mean w_sf)"),
              ("detection_y_s", "Detection efficiency y_s", "y_s (posterior mean)")]
    fig, axes = plt.subplots(len(samples), 3, figsize=(12, 3.6 * len(samples)), squeeze=False)
    for i, sample in enumerate(samples):
        sub = adata[(adata.obs[sample_key].astype(str) == sample).to_numpy()]
        lib = sample if sample in sub.uns.get("spatial", {}) else None
        # Visium HD bins (a square grid): one image per panel (~ the panel's pixels), not 100,000s of dots
        layout = spatial_layout(sub, lib, img_key="lowres", max_px=max_grid_px)
        has_xy = "spatial" in sub.obsm or layout is not None
        for j, (key, title, unit) in enumerate(panels):
            ax = axes[i, j]
            values = np.asarray(sub.obs[key], dtype=float)
            if layout is not None:
                unit = unit.replace("per spot", "per bin")
            if has_xy:
                spatial_scatter(sub, values, ax, f"{sample}: {title}", unit, library_id=lib, img_key="lowres",
                                layout=layout)
            else:  # no coordinates: show the distribution instead
                ax.hist(values, bins=40, color="C0")
                ax.set_title(f"{sample}: {title} (no spatial coordinates)", fontsize=9)
                ax.set_xlabel(unit, fontsize=8)
                ax.set_ylabel("spots", fontsize=8)
    fig.suptitle(f"Spatial QC{' — ' + name if name else ''}", fontsize=11)
    fig.tight_layout()
    return fig
