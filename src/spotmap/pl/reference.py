"""Figures of the reference signatures (cell2location's RegressionModel plot_history and plot_QC, and the
reference UMAP)."""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm


def signatures_history(history: pd.DataFrame, title: str = "Reference regression: training history"):
    """−ELBO per epoch: all epochs, and without the first 10% (as cell2location's plot_history(20))."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if len(history) == 0:
        for ax in axes:
            ax.text(0.5, 0.5, "no training (--method average)", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
    else:
        start = int(len(history) * 0.1)
        panels = ((axes[0], history, "all epochs"), (axes[1], history.iloc[start:], f"from epoch {start + 1}"))
        for ax, part, sub in panels:
            ax.plot(part["epoch"], part["elbo"], lw=0.8, color="0.6", label="per epoch")
            ax.plot(part["epoch"], part["elbo_smoothed"], lw=1.5, color="C0", label="smoothed")
            ax.set_xlabel("epoch")
            ax.set_ylabel("−ELBO (nats, whole reference)")
            ax.set_title(sub, fontsize=10)
            ax.legend(frameon=False, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def signatures_vs_average(signatures: pd.DataFrame, averages: pd.DataFrame):
    """2-D histogram of estimated signatures against raw cluster averages (cell2location's RegressionModel.plot_QC)."""
    a = averages.loc[signatures.index, signatures.columns].to_numpy().ravel()
    s = signatures.to_numpy().ravel()
    eps = 1e-3
    x, y = np.log10(a + eps), np.log10(s + eps)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    h = ax.hist2d(x, y, bins=100, cmin=1, cmap="viridis", norm=LogNorm())
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    ax.plot([lo, hi], [lo, hi], color="red", lw=0.8, ls="--", label="y = x")
    ax.set_xlabel("cluster average (log10 counts per cell + 0.001)")
    ax.set_ylabel("estimated signature (log10 counts per cell + 0.001)")
    ax.set_title("Estimated signatures vs raw cluster averages")
    ax.legend(loc="upper left", frameon=False)
    fig.colorbar(h[3], ax=ax, label="genes × cell types")
    fig.tight_layout()
    return fig


def reference_umap(adata: ad.AnnData, labels_key: str, batch_key: str | None):
    """UMAP of the reference cells coloured by cell type and by batch."""
    xy = adata.obsm["X_umap"]
    keys = [(labels_key, "cell type")] + ([(batch_key, "batch")] if batch_key else [])
    fig, axes = plt.subplots(1, len(keys), figsize=(6.4 * len(keys), 5.2), squeeze=False)
    size = float(np.clip(20000 / max(adata.n_obs, 1), 0.5, 12))
    rng = np.random.default_rng(0)
    order = rng.permutation(adata.n_obs)  # no category drawn on top of all others
    for ax, (key, what) in zip(axes[0], keys):
        cats = pd.Categorical(adata.obs[key].astype(str))
        palette = (plt.get_cmap("tab10")(np.arange(10)) if len(cats.categories) <= 10 else
                   np.vstack([plt.get_cmap(name)(np.arange(20)) for name in ("tab20", "tab20b", "tab20c")]))
        colours = palette[np.arange(len(cats.categories)) % len(palette)]  # 60 distinct colours, then repeats
        codes = cats.codes[order]
        ax.scatter(xy[order, 0], xy[order, 1], c=colours[codes], s=size, linewidths=0, rasterized=True)
        for i, c in enumerate(cats.categories):
            ax.scatter([], [], color=colours[i], label=c, s=20)
        ax.set_title(f"Reference cells by {what} ({key})")
        ax.set_xlabel("UMAP 1")
        ax.set_ylabel("UMAP 2")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=7,
                  ncol=1 if len(cats.categories) <= 20 else 2, markerscale=1.0)
    fig.tight_layout()
    return fig
