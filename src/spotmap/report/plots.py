"""Plots shared by several steps: values over the tissue image.

Spots of a Visium slide (a hexagonal lattice of a few thousand spots) are drawn as dots. Bins of a
square grid (Visium HD: 100,000–400,000 8 µm bins, ``obs['array_row']``/``obs['array_col']``) are
drawn as one image on the bin grid instead (:class:`GridLayout`), NaN outside the tissue and
downsampled by block means to at most ``max_px`` pixels a side: fast, and a PNG whose size does not
grow with the number of bins.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

#: largest side, in pixels, of a rasterised bin grid (larger grids are block-averaged)
MAX_GRID_PX = 1000


def platform(adata: ad.AnnData) -> str | None:
    """``uns['spotmap']['platform']`` (e.g. ``'visium-hd'``), or None when the reader did not record one."""
    meta = adata.uns.get("spotmap", {})
    value = meta.get("platform") if isinstance(meta, dict) else None
    return str(value) if value is not None else None


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
    plat = platform(adata)
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


# --------------------------------------------------------------------------------------------
# Report-time maps of cell abundance (one grid per sample, and a multi-type overlay)
# --------------------------------------------------------------------------------------------

#: Distinct colours for the overlay (cell2location's plot_spatial uses a similar set): yellow,
#: cyan, magenta, lime, orange, blue, red — bright on the dark background.
OVERLAY_COLOURS = ["#ffd700", "#00e5ff", "#ff3df5", "#7CFC00", "#ff8c00", "#4d7cff", "#ff2a2a"]


def _wrap(name, width: int) -> str:
    """A cell-type name on at most two lines (long names would run into the next panel)."""
    import textwrap

    text = str(name)
    if len(text) <= width:
        return text
    # break after underscores too (cell-type names rarely have spaces)
    lines = [ln.replace("_ ", "_") for ln in textwrap.wrap(text.replace("_", "_ "), width)] or [text]
    if len(lines) > 2:
        lines = [lines[0], (" ".join(lines[1:]))[: width - 1] + "…"]
    return "\n".join(lines)


def _library_id(adata: ad.AnnData, sample: str | None) -> str | None:
    spatial = adata.uns.get("spatial", {})
    if sample is not None and sample in spatial:
        return sample
    if len(spatial) == 1:
        return next(iter(spatial))
    return None


def light_spatial(adata: ad.AnnData, library_id: str | None, max_px: int = 900, img_key: str = "hires",
                  pad: float = 0.05) -> ad.AnnData:
    """Spots, coordinates and the tissue image cropped to the spots and downsampled to ``max_px``.

    Drawing a full-resolution image into every small panel is slow and adds nothing at report
    resolution; the result draws the same with :func:`spatial_scatter`.
    """
    keep = [c for c in ("array_row", "array_col") if c in adata.obs]  # the bin grid (Visium HD)
    if "spatial" not in adata.obsm:
        out = ad.AnnData(obs=adata.obs[keep].copy())
        if "spotmap" in adata.uns:
            out.uns["spotmap"] = adata.uns["spotmap"]
        return out
    xy = np.asarray(adata.obsm["spatial"], dtype=float)
    out = ad.AnnData(obs=adata.obs[keep].copy(), obsm={"spatial": xy.copy()})
    if "spotmap" in adata.uns:
        out.uns["spotmap"] = adata.uns["spotmap"]
    spatial = adata.uns.get("spatial", {})
    if library_id not in spatial or not len(xy):
        return out
    lib = spatial[library_id]
    images = lib.get("images", {})
    key = img_key if img_key in images else next(iter(images), None)
    if key is None:
        return out
    img = np.asarray(images[key])
    scale = float(lib.get("scalefactors", {}).get(f"tissue_{key}_scalef", 1.0))
    p = xy * scale
    margin = pad * max(np.ptp(p[:, 0]), np.ptp(p[:, 1]), 1.0) + 2
    x0, y0 = max(int(p[:, 0].min() - margin), 0), max(int(p[:, 1].min() - margin), 0)
    x1, y1 = min(int(np.ceil(p[:, 0].max() + margin)), img.shape[1]), min(int(np.ceil(p[:, 1].max() + margin)),
                                                                         img.shape[0])
    if x1 <= x0 or y1 <= y0:
        return out
    step = max(1, int(np.ceil(max(x1 - x0, y1 - y0) / max_px)))
    small = img[y0:y1:step, x0:x1:step]
    out.obsm["spatial"] = xy - np.array([x0, y0]) / scale
    out.uns["spatial"] = {library_id: {"images": {key: small},
                                       "scalefactors": {f"tissue_{key}_scalef": scale / step}}}
    return out


def fill_spot_size(xy: np.ndarray, ax_width_in: float, ax_height_in: float, fill: float = 0.85,
                   pad: float = 0.05) -> float:
    """Marker area (points²) that makes neighbouring spots nearly touch in an axes of that size."""
    if len(xy) < 2:
        return 40.0
    from scipy.spatial import cKDTree

    d, _ = cKDTree(xy).query(xy, k=2)
    nn = float(np.median(d[:, 1]))
    margin = pad * max(np.ptp(xy[:, 0]), np.ptp(xy[:, 1]), 1.0)
    xspan, yspan = np.ptp(xy[:, 0]) + 2 * margin, np.ptp(xy[:, 1]) + 2 * margin
    pts_per_unit = 72.0 * min(ax_width_in / max(xspan, 1e-9), ax_height_in / max(yspan, 1e-9))
    return float(np.clip((fill * nn * pts_per_unit) ** 2, 0.2, 600.0))


def _display_xy(adata: ad.AnnData, library_id: str | None, img_key: str = "hires") -> np.ndarray:
    xy = np.asarray(adata.obsm["spatial"], dtype=float)
    lib = adata.uns.get("spatial", {}).get(library_id, {})
    images = lib.get("images", {})
    key = img_key if img_key in images else next(iter(images), None)
    scale = float(lib.get("scalefactors", {}).get(f"tissue_{key}_scalef", 1.0)) if key else 1.0
    return xy * scale


def _sample_subsets(adata: ad.AnnData, samples=None) -> list[tuple[str, ad.AnnData]]:
    """``[(sample, view)]``: one per value of ``obs['sample']`` (or the whole object)."""
    if "sample" in adata.obs:
        col = adata.obs["sample"].astype(str)
        names = list(dict.fromkeys(col))
    else:
        col, names = None, [_library_id(adata, None) or "sample"]
    if samples is not None:
        names = [s for s in names if s in set(samples)]
    out = []
    for name in names:
        sub = adata if col is None else adata[(col == name).to_numpy()]
        out.append((name, sub))
    return out


def abundance_grid(adata: ad.AnnData, sample: str, abundance, ncols: int = 4, panel_inches: float = 3.1,
                   summary_label: str = "q05", cmap: str = "magma") -> plt.Figure:
    """One panel per cell type: ``abundance`` (spots × types DataFrame) over the tissue image of ``sample``."""
    types = list(abundance.columns)
    n = max(len(types), 1)
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_inches * ncols + 0.4, panel_inches * nrows + 0.7),
                             squeeze=False)
    lib = _library_id(adata, sample)
    adata = light_spatial(adata, lib, max_px=int(panel_inches * 130))  # ~1.4 image px per output px
    # a bin grid (Visium HD) is drawn as an image of about the panel's size (~100 px per inch); spots as dots
    layout = spatial_layout(adata, lib, max_px=int(panel_inches * 100))
    size = None if layout is not None else fill_spot_size(_display_xy(adata, lib), panel_inches * 0.78,
                                                          panel_inches * 0.78)
    unit = "cells per bin" if layout is not None else "cells per spot"
    for i, t in enumerate(types):
        ax = axes[i // ncols][i % ncols]
        spatial_scatter(adata, np.asarray(abundance[t], dtype=float), ax, title=_wrap(t, 32),
                        cbar_label=f"{unit} ({summary_label})", library_id=lib, cmap=cmap,
                        spot_size=size, layout=layout)
        ax.title.set_fontsize(10)
    for j in range(len(types), nrows * ncols):
        axes[j // ncols][j % ncols].set_axis_off()
    fig.suptitle(f"Sample {sample}: estimated cell abundance of each cell type "
                 f"({summary_label}: 5% posterior quantile, 'at least this many cells')", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig


def top_types(abundance, n: int = 6) -> list[str]:
    """The ``n`` cell types with the largest total abundance (descending)."""
    tot = np.asarray(abundance.sum(0), dtype=float)
    order = np.argsort(-tot, kind="stable")[:n]
    return [abundance.columns[i] for i in order]


def abundance_overlay(adata: ad.AnnData, sample: str, abundance, types: list[str] | None = None, n_types: int = 6,
                      vmax_quantile: float = 0.992, summary_label: str = "q05", img_key: str = "hires",
                      spot_size: float | None = None, max_grid_px: int = 600) -> plt.Figure:
    """Several cell types in one map, one colour each (as cell2location's ``plot_spatial``).

    Each type's abundance is scaled to [0, 1] by its own ``vmax_quantile``; a spot's colour is the
    mix of the type colours weighted by the cube of the scaled abundances (so the locally dominant
    type sets the hue) and its opacity the largest scaled abundance, so spots where none of the
    types is abundant fade into the (darkened) tissue image. Bins of a square grid (Visium HD) are
    drawn as an image of at most ``max_grid_px`` pixels a side (block means of the abundances).
    """
    from matplotlib.colors import LinearSegmentedColormap, Normalize, to_rgb

    types = list(types) if types is not None else top_types(abundance, min(n_types, len(OVERLAY_COLOURS)))
    types = types[: len(OVERLAY_COLOURS)]
    cols = np.array([to_rgb(c) for c in OVERLAY_COLOURS[: len(types)]])
    vals = np.asarray(abundance[types], dtype=float)
    vmax = np.maximum(np.quantile(vals, vmax_quantile, axis=0), 1e-12) if len(vals) else np.ones(len(types))
    scaled = np.clip(vals / vmax[None, :], 0, 1)
    sharp = scaled ** 3  # the locally dominant type sets the hue; co-dominant types mix
    weight = sharp / np.maximum(sharp.sum(1, keepdims=True), 1e-12)
    rgb = weight @ cols
    alpha = scaled.max(1) if len(scaled) else np.zeros(0)
    rgba = np.concatenate([rgb, alpha[:, None]], axis=1) if len(rgb) else np.zeros((0, 4))

    lib = _library_id(adata, sample)
    adata = light_spatial(adata, lib, max_px=1200)
    img, scale = None, 1.0
    if lib is not None:
        entry = adata.uns["spatial"][lib]
        images = entry.get("images", {})
        key = img_key if img_key in images else next(iter(images), None)
        if key is not None:
            img = np.asarray(images[key])
            scale = float(entry.get("scalefactors", {}).get(f"tissue_{key}_scalef", 1.0))
    has_xy = "spatial" in adata.obsm
    xy = np.asarray(adata.obsm["spatial"], dtype=float) * scale if has_xy else None
    fig = plt.figure(figsize=(8.6, 6.4), facecolor="black")
    ax = fig.add_axes((0.02, 0.04, 0.68, 0.86))
    ax.set_facecolor("black")
    if img is not None:
        grey = img[..., :3].mean(-1) if img.ndim == 3 else img
        ax.imshow(grey, cmap="gray", alpha=0.45, vmin=0, vmax=max(float(np.max(grey)), 1e-12))
    layout = grid_layout(adata, xy, max_px=max_grid_px)
    if layout is not None:
        # a bin grid (Visium HD): the colours of block means of each type's scaled abundance, as an image
        px = np.clip(layout.raster(vals) / vmax[None, None, :], 0, 1)
        inside = np.isfinite(px).all(-1)
        px = np.nan_to_num(px)
        sharp_px = px ** 3
        rgb_px = (sharp_px / np.maximum(sharp_px.sum(-1, keepdims=True), 1e-12)) @ cols
        alpha_px = np.where(inside, px.max(-1), 0.0)
        ax.imshow(np.concatenate([rgb_px, alpha_px[..., None]], axis=-1), extent=layout.extent, origin="upper",
                  interpolation="antialiased")
        ax.set_xlim(*layout.xlim)
        ax.set_ylim(*layout.ylim)
    else:
        if spot_size is None:
            spot_size = fill_spot_size(xy, 8.6 * 0.68, 6.4 * 0.86)
        order = np.argsort(alpha)  # the most abundant spots on top
        ax.scatter(xy[order, 0], xy[order, 1], c=rgba[order], s=spot_size, linewidths=0, rasterized=True)
        if len(xy):
            pad = 0.05 * max(np.ptp(xy[:, 0]), np.ptp(xy[:, 1]), 1.0)
            ax.set_xlim(xy[:, 0].min() - pad, xy[:, 0].max() + pad)
            ax.set_ylim(xy[:, 1].max() + pad, xy[:, 1].min() - pad)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    unit = "cells per bin" if layout is not None else "cells per spot"
    fig.suptitle(f"Sample {sample}: the {len(types)} most abundant cell types ({summary_label}, {unit})",
                 color="white", fontsize=11, y=0.97)
    # one colour bar per type, stacked on the right
    h = min(0.12, 0.8 / max(len(types), 1))
    for i, (t, c) in enumerate(zip(types, cols)):
        cax = fig.add_axes((0.76, 0.86 - (i + 1) * h + 0.035, 0.17, h * 0.28))
        cm = LinearSegmentedColormap.from_list(f"c{i}", [(0, 0, 0), tuple(c)])
        cb = fig.colorbar(plt.cm.ScalarMappable(norm=Normalize(0, float(vmax[i])), cmap=cm), cax=cax,
                          orientation="horizontal")
        cb.ax.set_title(_wrap(t, 26), color="white", fontsize=9, loc="left", pad=2)
        cb.ax.tick_params(colors="white", labelsize=7)
        cb.outline.set_edgecolor("white")
        cb.locator = matplotlib.ticker.MaxNLocator(3)
        cb.update_ticks()
    fig.text(0.76, 0.03, f"colour scale: {unit};\nsaturated at the 99.2% quantile", color="white",
             fontsize=7)
    return fig
