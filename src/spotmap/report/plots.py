"""Plots shared by several steps: values over the tissue image."""

from __future__ import annotations

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def spatial_scatter(adata: ad.AnnData, values: np.ndarray, ax: plt.Axes, title: str, cbar_label: str,
                    library_id: str | None = None, cmap: str = "magma", vmax_quantile: float = 0.992,
                    img_key: str = "hires", spot_size: float | None = None, show_image: bool = True) -> None:
    """Draw ``values`` (one per spot) over the tissue image of ``library_id`` with a colour bar.

    Spot coordinates come from ``obsm['spatial']`` (full-resolution pixels), scaled to the image with
    ``uns['spatial'][library_id]['scalefactors']``; without an image the spots are drawn alone.
    """
    xy = np.asarray(adata.obsm["spatial"], dtype=float)
    scale, img = 1.0, None
    spatial = adata.uns.get("spatial", {})
    if library_id is None and len(spatial) == 1:
        library_id = next(iter(spatial))
    if library_id in spatial:
        lib = spatial[library_id]
        images = lib.get("images", {})
        key = img_key if img_key in images else next(iter(images), None)
        if key is not None:
            img = images[key]
            scale = float(lib.get("scalefactors", {}).get(f"tissue_{key}_scalef", 1.0))
    xy = xy * scale
    if img is not None and show_image:
        ax.imshow(img, alpha=0.6)
    vmax = float(np.quantile(values, vmax_quantile)) if len(values) else 1.0
    if spot_size is None:
        spot_size = max(0.5, min(40.0, 2.0e4 / max(len(values), 1)))  # fewer spots, bigger dots
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=spot_size, cmap=cmap, vmin=0, vmax=max(vmax, 1e-12),
                    linewidths=0, rasterized=True)
    if img is not None and show_image:
        pad = 0.05 * max(np.ptp(xy[:, 0]), np.ptp(xy[:, 1]), 1.0)
        ax.set_xlim(xy[:, 0].min() - pad, xy[:, 0].max() + pad)
        ax.set_ylim(xy[:, 1].max() + pad, xy[:, 1].min() - pad)
    else:
        ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    cb = plt.colorbar(sc, ax=ax, fraction=0.046, pad=0.02)
    cb.set_label(cbar_label, fontsize=8)
    cb.ax.tick_params(labelsize=7)
