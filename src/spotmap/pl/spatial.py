"""Values over the tissue image: the drawing every spatial plot of spotmap shares.

Spots of a Visium slide (a hexagonal lattice of a few thousand spots) are drawn as dots. Bins of a
square grid (Visium HD: 100,000–400,000 8 µm bins, ``obs['array_row']``/``obs['array_col']``) are
drawn as one image on the bin grid instead (:class:`GridLayout`), NaN outside the tissue and
downsampled by block means to at most ``max_px`` pixels a side: fast, and a PNG whose size does not
grow with the number of bins.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np

from spotmap.io.platform import recorded_platform

#: largest side, in pixels, of a rasterised bin grid (larger grids are block-averaged)
MAX_GRID_PX = 1000


@dataclass
class GridLayout:
    """Where each bin of a square grid sits in an image, and where that image goes in the plot.

    ``rows``/``cols`` index the image (after any transpose), ``factor`` bins a side make one pixel;
    ``extent`` is matplotlib's ``(left, right, bottom, top)`` in display coordinates (the same
    coordinates a scatter of ``obsm['spatial']`` × scale factor uses), so points drawn over a raster
    by other code land on their bins.
    """

    rows: np.ndarray
    cols: np.ndarray
    shape: tuple[int, int]
    factor: int
    extent: tuple[float, float, float, float]
    xlim: tuple[float, float]
    ylim: tuple[float, float]

    def raster(self, values: np.ndarray) -> np.ndarray:
        """``values`` (bins, or bins × channels) as an image (H × W or H × W × C), NaN where no bin is.

        Pixels are block means over ``factor`` × ``factor`` bins (NaN bins ignored).
        """
        v = np.asarray(values, dtype=np.float64)
        flat = v.reshape(len(v), -1)
        h, w = self.shape
        idx = self.rows * w + self.cols
        img = np.full((h * w, flat.shape[1]), np.nan)
        for j in range(flat.shape[1]):
            ok = np.isfinite(flat[:, j])
            if self.factor == 1:  # one bin per pixel
                img[idx[ok], j] = flat[ok, j]
                continue
            total = np.bincount(idx[ok], weights=flat[ok, j], minlength=h * w)
            count = np.bincount(idx[ok], minlength=h * w)
            has = count > 0
            img[has, j] = total[has] / count[has]
        img = img.reshape(h, w, flat.shape[1])
        return img[..., 0] if v.ndim == 1 else img


def _platform_is_grid(adata: ad.AnnData) -> bool | None:
    plat = recorded_platform(adata)
    if plat is None:
        return None
    return plat.lower().replace("_", "-") in {"visium-hd", "visiumhd", "hd", "grid"}


def grid_layout(adata: ad.AnnData, xy: np.ndarray | None = None, max_px: int = MAX_GRID_PX,
                pad: float = 0.05) -> GridLayout | None:
    """The raster layout of a square bin grid (Visium HD), or None for spots to draw as dots.

    A grid: ``uns['spotmap']['platform'] == 'visium-hd'``, or, when no platform was recorded,
    integer ``obs['array_row']``/``obs['array_col']`` in which neighbouring bins share rows and
    columns (Visium's hexagonal lattice keeps ``array_row + array_col`` even, so it is not one).
    ``xy``: display coordinates of the bins (default: the array coordinates themselves); the grid's
    orientation, flips and a swap of rows and columns are taken from a linear fit to them.
    """
    obs = adata.obs
    if "array_row" not in obs or "array_col" not in obs or adata.n_obs == 0:
        return None
    is_grid = _platform_is_grid(adata)
    if is_grid is False:
        return None
    try:
        r = np.asarray(obs["array_row"], dtype=np.float64)
        c = np.asarray(obs["array_col"], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if not (np.isfinite(r).all() and np.isfinite(c).all()) or (r % 1).any() or (c % 1).any():
        return None
    r, c = r.astype(np.int64), c.astype(np.int64)
    if is_grid is None:
        parity = (r + c) % 2
        if adata.n_obs < 4 or parity.all() or not parity.any():
            return None
    r0, c0 = int(r.min()), int(c.min())
    r, c = r - r0, c - c0
    if xy is None:
        xy = np.column_stack([c, r]).astype(np.float64)
    xy = np.asarray(xy, dtype=np.float64)
    # display position = a + b·col + d·row per axis (least squares on a sample of bins)
    take = np.linspace(0, len(r) - 1, min(len(r), 20_000)).astype(np.int64)
    design = np.column_stack([np.ones(len(take)), c[take], r[take]])
    (ax_, bx, dx), *_ = np.linalg.lstsq(design, xy[take, 0], rcond=None)
    (ay, by, dy), *_ = np.linalg.lstsq(design, xy[take, 1], rcond=None)
    swapped = abs(dx) > abs(bx)  # x follows the rows: the image is the transpose
    if swapped:
        rows, cols = c, r
        x0, xs, y0, ys = ax_, dx, ay, by
    else:
        rows, cols = r, c
        x0, xs, y0, ys = ax_, bx, ay, dy
    xs = xs if abs(xs) > 1e-12 else 1.0
    ys = ys if abs(ys) > 1e-12 else 1.0
    h, w = int(rows.max()) + 1, int(cols.max()) + 1
    k = max(1, int(np.ceil(max(h, w) / max(int(max_px), 1))))
    hk, wk = -(-h // k), -(-w // k)
    # pixel (i, j) covers image columns j·k … (j+1)·k - 1 (bin centres at integer positions)
    left, right = x0 + xs * (-0.5), x0 + xs * (wk * k - 0.5)
    top, bottom = y0 + ys * (-0.5), y0 + ys * (hk * k - 0.5)
    span_x = (x0 + xs * np.array([-0.5, w - 0.5]))
    span_y = (y0 + ys * np.array([-0.5, h - 0.5]))
    margin = pad * max(np.ptp(span_x), np.ptp(span_y), 1.0)
    return GridLayout(rows=rows // k, cols=cols // k, shape=(hk, wk), factor=k,
                      extent=(float(left), float(right), float(bottom), float(top)),
                      xlim=(float(span_x.min() - margin), float(span_x.max() + margin)),
                      ylim=(float(span_y.max() + margin), float(span_y.min() - margin)))


def _image_and_scale(adata: ad.AnnData, library_id: str | None, img_key: str):
    spatial = adata.uns.get("spatial", {})
    if library_id is None and len(spatial) == 1:
        library_id = next(iter(spatial))
    if library_id in spatial:
        lib = spatial[library_id]
        images = lib.get("images", {})
        key = img_key if img_key in images else next(iter(images), None)
        if key is not None:
            return images[key], float(lib.get("scalefactors", {}).get(f"tissue_{key}_scalef", 1.0))
    return None, 1.0


def spatial_layout(adata: ad.AnnData, library_id: str | None = None, img_key: str = "hires",
                   max_px: int = MAX_GRID_PX) -> GridLayout | None:
    """:func:`grid_layout` in the display coordinates :func:`spatial_scatter` uses (image pixels)."""
    if "spatial" not in adata.obsm:
        return grid_layout(adata, None, max_px)
    _, scale = _image_and_scale(adata, library_id, img_key)
    return grid_layout(adata, np.asarray(adata.obsm["spatial"], dtype=float) * scale, max_px)


def spatial_scatter(adata: ad.AnnData, values: np.ndarray, ax: plt.Axes, title: str, cbar_label: str,
                    library_id: str | None = None, cmap: str = "magma", vmax_quantile: float = 0.992,
                    img_key: str = "hires", spot_size: float | None = None, show_image: bool = True,
                    max_px: int = MAX_GRID_PX, layout: GridLayout | None = None) -> None:
    """Draw ``values`` (one per spot) over the tissue image of ``library_id`` with a colour bar.

    Spot coordinates come from ``obsm['spatial']`` (full-resolution pixels), scaled to the image with
    ``uns['spatial'][library_id]['scalefactors']``; without an image the spots are drawn alone.
    Bins of a square grid (Visium HD, see :func:`grid_layout`) are drawn as one image on the grid
    (at most ``max_px`` pixels a side) instead of dots; ``layout`` reuses one computed before.
    """
    values = np.asarray(values, dtype=float)
    img, scale = _image_and_scale(adata, library_id, img_key)
    if layout is None:
        layout = spatial_layout(adata, library_id, img_key, max_px)
    if img is not None and show_image:
        if layout is not None and np.ndim(img) == 3:
            # under a raster the tissue shows only where bins are missing (filtered, outside the tissue):
            # in grey, so it is not read as a value of the colour map
            grey = np.asarray(img)[..., :3].mean(-1)
            ax.imshow(grey, cmap="gray", alpha=0.6, vmin=0, vmax=max(float(grey.max()), 1e-12))
        else:
            ax.imshow(img, alpha=0.6)
    finite = values[np.isfinite(values)]
    vmax = float(np.quantile(finite, vmax_quantile)) if len(finite) else 1.0
    if layout is not None:
        grid = np.ma.masked_invalid(layout.raster(values))
        sc = ax.imshow(grid, cmap=cmap, vmin=0, vmax=max(vmax, 1e-12), extent=layout.extent, origin="upper",
                       interpolation="antialiased")
        ax.set_xlim(*layout.xlim)
        ax.set_ylim(*layout.ylim)
    else:
        xy = np.asarray(adata.obsm["spatial"], dtype=float) * scale
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
