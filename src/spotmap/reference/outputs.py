"""Files written by ``spotmap signatures``: tables, the annotated reference, MultiQC content and QC plots."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from spotmap.reference.signatures import cluster_averages
from spotmap.report.mqc import save_mqc_figure, write_mqc_linegraph, write_mqc_table
from spotmap.utils import log, write_h5ad, write_table

HISTORY_ID = "spotmap_signatures_history"
FILTER_ID = "spotmap_gene_filter"


def compute_umap(adata: ad.AnnData, seed: int = 0, n_top_genes: int = 2000, layer: str | None = None) -> np.ndarray:
    """UMAP of the reference cells (cells × 2) as in the cell2location tutorial.

    Normalise to 10,000 counts per cell, log1p, highly variable genes, PCA, exact 15-NN graph, UMAP;
    on a copy, so the counts in ``adata`` stay raw.
    """
    from spotmap.embedding import log_normalised_umap

    src = adata if layer is None else ad.AnnData(X=adata.layers[layer], obs=adata.obs[[]], var=adata.var[[]])
    return log_normalised_umap(src, seed=seed, n_top_genes=n_top_genes)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: pd.DataFrame, title: str = "Reference regression: training history"):
    """−ELBO per epoch: all epochs, and without the first 10% (as cell2location's plot_history(20))."""
    plt = _plt()
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


def plot_vs_average(signatures: pd.DataFrame, averages: pd.DataFrame):
    """2-D histogram of estimated signatures against raw cluster averages (cell2location's RegressionModel.plot_QC)."""
    plt = _plt()
    a = averages.loc[signatures.index, signatures.columns].to_numpy().ravel()
    s = signatures.to_numpy().ravel()
    eps = 1e-3
    x, y = np.log10(a + eps), np.log10(s + eps)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    h = ax.hist2d(x, y, bins=100, cmin=1, cmap="viridis", norm=_lognorm())
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    ax.plot([lo, hi], [lo, hi], color="red", lw=0.8, ls="--", label="y = x")
    ax.set_xlabel("cluster average (log10 counts per cell + 0.001)")
    ax.set_ylabel("estimated signature (log10 counts per cell + 0.001)")
    ax.set_title("Estimated signatures vs raw cluster averages")
    ax.legend(loc="upper left", frameon=False)
    fig.colorbar(h[3], ax=ax, label="genes × cell types")
    fig.tight_layout()
    return fig


def _lognorm():
    from matplotlib.colors import LogNorm

    return LogNorm()


def plot_umap(adata: ad.AnnData, labels_key: str, batch_key: str | None):
    """UMAP of the reference cells coloured by cell type and by batch."""
    plt = _plt()
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


def write_signature_outputs(outdir: str | os.PathLike, reference: ad.AnnData, signatures: pd.DataFrame,
                            history: pd.DataFrame, labels_key: str, batch_key: str | None = None,
                            umap: bool = True, seed: int = 0, layer: str | None = None) -> dict[str, Path]:
    """Write every output of ``spotmap signatures`` into ``outdir`` (each file atomically).

    ``signatures.csv`` is written last, so its presence means the step finished.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {name: outdir / name for name in (
        "signatures.csv", "reference.h5ad", "training_history.tsv", "signatures_training_mqc.yaml",
        "signatures_gene_filter_mqc.tsv", "signatures_vs_average_mqc.png", "signatures_umap_mqc.png",
        "signatures_history_mqc.png")}
    if umap:
        log.info("UMAP of %d reference cells", reference.n_obs)
        reference.obsm["X_umap"] = compute_umap(reference, seed=seed, layer=layer)
    # tables and MultiQC content
    write_table(history, paths["training_history.tsv"], index=False)
    series = {"-ELBO": dict(zip(history["epoch"].astype(float), history["elbo"].astype(float)))} if len(history) else {}
    write_mqc_linegraph(paths["signatures_training_mqc.yaml"], HISTORY_ID, "Reference signatures: training", series,
                        description="Negative ELBO of the reference regression per epoch (whole reference); "
                                    "it should fall and level off.",
                        xlab="epoch", ylab="-ELBO (nats)", title="Reference regression: training history")
    gf = dict(reference.uns.get("gene_filter", {}))
    table = pd.DataFrame([{k: ("none" if v is None else v) for k, v in gf.items()}], index=pd.Index(["reference"],
                                                                                                    name="Sample"))
    write_mqc_table(table, paths["signatures_gene_filter_mqc.tsv"], FILTER_ID, "Reference signatures: gene filter",
                    description="cell2location's gene filter: a gene is kept when detected in more than "
                                "cell_percentage_cutoff2 of cells, or in more than cell_count_cutoff cells with a "
                                "mean non-zero count above nonz_mean_cutoff.")
    # plots
    save_mqc_figure(plot_history(history), paths["signatures_history_mqc.png"])
    save_mqc_figure(plot_vs_average(signatures, cluster_averages(reference, labels_key, layer)),
                    paths["signatures_vs_average_mqc.png"])
    if "X_umap" in reference.obsm:
        save_mqc_figure(plot_umap(reference, labels_key, batch_key), paths["signatures_umap_mqc.png"])
    else:
        paths.pop("signatures_umap_mqc.png")
    write_h5ad(reference, paths["reference.h5ad"])
    write_table(signatures.rename_axis("gene"), paths["signatures.csv"])
    return paths
