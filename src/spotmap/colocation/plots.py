"""Figures of the co-location analysis; each function returns a :class:`matplotlib.figure.Figure`.

Figures are built without pyplot (``Figure()``), so importing or calling these never selects a
backend or keeps figures alive; save them with ``fig.savefig(path)``. Spatial panels draw spots as dots
and, above ``max_points`` spots (Visium HD bins), a raster of at most ``max_px`` pixels a side: the mean
value (or, for regions, the most frequent region) of the spots in each pixel.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

MAX_POINTS = 50_000   #: above this many spots a spatial panel is a raster
MAX_PX = 400          #: largest side of a raster, in pixels
REGION_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                  "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
                  "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5")


def _type_order(shares: pd.DataFrame) -> list:
    """Types grouped by their largest factor (factors in column order), largest share first."""
    values = shares.fillna(0.0).to_numpy()
    top = values.argmax(1)
    order = np.lexsort((-values[np.arange(len(values)), top], top))
    return list(shares.index[order])


def dotplot_factors(colocation_factors: pd.DataFrame, title: str = "Co-location factors") -> Figure:
    """Cell types × factors: dot area and colour = share of the type's cells in the factor.

    Types are grouped by the factor holding most of their cells, so co-located types sit together.
    """
    shares = colocation_factors.loc[_type_order(colocation_factors)]
    n_types, n_fact = shares.shape
    fig = Figure(figsize=(2.5 + 0.32 * n_fact, 1.5 + 0.22 * n_types))
    ax = fig.subplots()
    yy, xx = np.mgrid[0:n_types, 0:n_fact]
    v = shares.fillna(0.0).to_numpy()
    sc = ax.scatter(xx.ravel(), yy.ravel(), s=v.ravel() * 120, c=v.ravel(), cmap="RdPu", vmin=0, vmax=1,
                    edgecolors="0.5", linewidths=0.3)
    ax.set_xticks(range(n_fact), [str(c) for c in shares.columns], rotation=90, fontsize=7)
    ax.set_yticks(range(n_types), [str(t) for t in shares.index], fontsize=7)
    ax.set_xlim(-0.7, n_fact - 0.3)
    ax.set_ylim(n_types - 0.3, -0.7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(sc, ax=ax, shrink=0.5).set_label("share of the type's cells", fontsize=8)
    fig.tight_layout()
    return fig


def _samples(n: int, samples) -> tuple[np.ndarray, list[str]]:
    lab = np.full(n, "", dtype=object) if samples is None else np.asarray(samples).astype(str)
    return lab, list(pd.unique(lab))


def _spacing(xy: np.ndarray) -> float:
    """Median distance from a spot to its nearest neighbour (on up to 2,000 spots)."""
    from scipy.spatial import cKDTree

    take = np.linspace(0, len(xy) - 1, min(len(xy), 2000)).astype(np.int64)
    d, _ = cKDTree(xy).query(xy[take], k=2)
    return float(np.median(d[:, 1]))


def _raster(xy: np.ndarray, max_px: int) -> tuple[np.ndarray, tuple[int, int], list[float]]:
    """Pixel index of each point, image shape (rows, cols) and imshow extent, square pixels.

    A pixel is at least one spot spacing wide, so a regular grid of bins leaves no empty pixels.
    """
    lo, hi = xy.min(0), xy.max(0)
    size = max(float((hi - lo).max()) / max_px, _spacing(xy), 1e-12)
    ij = np.floor((xy - lo) / size).astype(np.int64)
    w, h = int(ij[:, 0].max()) + 1, int(ij[:, 1].max()) + 1
    extent = [lo[0], lo[0] + w * size, lo[1] + h * size, lo[1]]   # y grows downwards, as image pixels do
    return ij[:, 1] * w + ij[:, 0], (h, w), extent


def _draw_values(ax, xy: np.ndarray, values: np.ndarray, vmax: float, max_points: int, max_px: int):
    if len(values) > max_points:
        pix, shape, extent = _raster(xy, max_px)
        total = np.bincount(pix, weights=values, minlength=shape[0] * shape[1])
        count = np.bincount(pix, minlength=shape[0] * shape[1])
        img = np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0).reshape(shape)
        return ax.imshow(np.ma.masked_invalid(img), cmap="magma", vmin=0, vmax=vmax, extent=extent,
                         interpolation="nearest")
    size = max(0.5, min(30.0, 2.0e4 / max(len(values), 1)))
    return ax.scatter(xy[:, 0], xy[:, 1], c=values, s=size, cmap="magma", vmin=0, vmax=vmax, linewidths=0,
                      rasterized=True)


def _image_of(images, name: str, n_names: int):
    """``(image, scale)`` of sample ``name`` in ``images`` (the only one when there is one sample and one image)."""
    if not images:
        return None
    if name in images:
        return images[name]
    return next(iter(images.values())) if n_names == 1 and len(images) == 1 else None


def _tissue(ax, image: np.ndarray, xy: np.ndarray, max_px: int = 2 * MAX_PX, pad: float = 0.05) -> None:
    """The tissue image in grey under the spots at display coordinates ``xy`` (image pixels): cropped to the
    spots and strided to at most ``max_px`` pixels a side; the axes' limits are set to the spots."""
    img = np.asarray(image)
    margin = pad * max(float(np.ptp(xy[:, 0])), float(np.ptp(xy[:, 1])), 1.0)
    lo, hi = xy.min(0) - margin, xy.max(0) + margin
    x0, y0 = max(int(lo[0]), 0), max(int(lo[1]), 0)
    x1, y1 = min(int(np.ceil(hi[0])), img.shape[1]), min(int(np.ceil(hi[1])), img.shape[0])
    if x1 > x0 and y1 > y0:
        step = max(1, int(np.ceil(max(x1 - x0, y1 - y0) / max_px)))
        crop = img[y0:y1:step, x0:x1:step].astype(np.float64)
        grey = crop[..., :3].mean(-1) if crop.ndim == 3 else crop
        h, w = grey.shape
        ax.imshow(grey, cmap="gray", alpha=0.55, vmin=0, vmax=max(float(grey.max()), 1e-12), interpolation="nearest",
                  extent=(x0 - 0.5, x0 + w * step - 0.5, y0 + h * step - 0.5, y0 - 0.5))
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(hi[1], lo[1])  # y grows downwards, as in the image


def _panel_axes(fig: Figure, n_rows: int, n_cols: int):
    axes = np.atleast_2d(fig.subplots(n_rows, n_cols, squeeze=False))
    for ax in axes.ravel():
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    return axes


def spatial_factors(factor_abundance: pd.DataFrame, coords, samples=None, factors=None, quantile: float = 0.992,
                    max_points: int = MAX_POINTS, max_px: int = MAX_PX, images: dict | None = None,
                    ncols: int | None = None) -> Figure:
    """Cells per spot of each factor over the tissue: a panel per sample and factor.

    ``coords``: spots × 2 (``obsm['spatial']``; y grows downwards, as in the image); ``factors``: the
    columns to draw (default all). Colour scale per factor: 0 to its ``quantile`` over all spots.
    ``images``: ``{sample: (image, scale)}`` — the tissue image (H × W or H × W × 3/4) drawn in grey under
    the spots, which sit at ``coords × scale`` (``uns['spatial'][library]['images']['hires']`` and its
    ``tissue_hires_scalef``); samples without one are drawn on their coordinates. ``ncols``: panels per
    row (default: a row per sample, a column per factor).
    """
    xy = np.asarray(coords, dtype=np.float64)[:, :2]
    cols = list(factor_abundance.columns if factors is None else factors)
    lab, names = _samples(len(xy), samples)
    panels = [(name, col) for name in names for col in cols]
    ncols = len(cols) if ncols is None else max(1, min(int(ncols), len(panels)))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(2.4 * ncols + 0.6, 2.4 * nrows + 0.4))
    axes = _panel_axes(fig, nrows, ncols).ravel()
    vmax = {col: max(float(np.quantile(factor_abundance[col].to_numpy(dtype=np.float64), quantile)), 1e-12)
            for col in cols}
    for ax, (name, col) in zip(axes, panels):
        sel = lab == name
        v = factor_abundance[col].to_numpy(dtype=np.float64)[sel]
        image = _image_of(images, name, len(names))
        p = xy[sel] * (image[1] if image is not None else 1.0)
        if image is not None:
            _tissue(ax, image[0], p)
        art = _draw_values(ax, p, v, vmax[col], max_points, max_px)
        ax.set_title(f"{col}" + (f" — {name}" if name else ""), fontsize=8)
        if not ax.yaxis_inverted():
            ax.invert_yaxis()
        fig.colorbar(art, ax=ax, shrink=0.7).ax.tick_params(labelsize=6)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def _colours(k: int) -> list[str]:
    return [REGION_COLOURS[i % len(REGION_COLOURS)] for i in range(k)]


def spatial_regions(regions: pd.Series, coords, samples=None, max_points: int = MAX_POINTS,
                    max_px: int = MAX_PX, images: dict | None = None) -> Figure:
    """The region of each spot over the tissue, one panel per sample (regions 0 … K-1, one colour each).

    ``images``: ``{sample: (image, scale)}``, the tissue image under the spots (as :func:`spatial_factors`).
    """
    xy = np.asarray(coords, dtype=np.float64)[:, :2]
    labels = np.asarray(regions).astype(np.int64)
    k = int(labels.max()) + 1
    cmap = ListedColormap(_colours(k))
    lab, names = _samples(len(xy), samples)
    fig = Figure(figsize=(3.6 * len(names) + 0.9, 3.6))
    axes = _panel_axes(fig, 1, len(names))
    for i, name in enumerate(names):
        sel, ax = lab == name, axes[0, i]
        image = _image_of(images, name, len(names))
        p, r = xy[sel] * (image[1] if image is not None else 1.0), labels[sel]
        if image is not None:
            _tissue(ax, image[0], p)
        if len(r) > max_points:  # the most frequent region of each pixel
            pix, shape, extent = _raster(p, max_px)
            counts = np.bincount(pix * k + r, minlength=shape[0] * shape[1] * k).reshape(-1, k)
            img = np.where(counts.sum(1) > 0, counts.argmax(1), -1).reshape(shape)
            ax.imshow(np.ma.masked_less(img, 0), cmap=cmap, vmin=-0.5, vmax=k - 0.5, extent=extent,
                      interpolation="nearest")
        else:
            size = max(0.5, min(30.0, 2.0e4 / max(len(r), 1)))
            ax.scatter(p[:, 0], p[:, 1], c=r, s=size, cmap=cmap, vmin=-0.5, vmax=k - 0.5, linewidths=0,
                       rasterized=True)
        if not ax.yaxis_inverted():
            ax.invert_yaxis()
        ax.set_title(f"Regions{' — ' + name if name else ''}", fontsize=9)
    # beside the last panel (a figure legend stays at the figure's edge, away from the equal-aspect panels)
    axes[0, -1].legend(handles=[Patch(color=c, label=str(i)) for i, c in enumerate(_colours(k))], title="region",
                       loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7, title_fontsize=8)
    fig.tight_layout()
    return fig


def composition_bars(region_composition: pd.DataFrame, min_share: float = 0.03) -> Figure:
    """Mean cells per spot of each type in each region, as stacked horizontal bars (one per region).

    Types below ``min_share`` of every region's cells are pooled as "other" so the legend stays readable.
    """
    comp = region_composition.fillna(0.0)
    share = comp.div(comp.sum(1).replace(0, np.nan), axis=0).fillna(0.0)
    keep = [t for t in comp.columns if (share[t] >= min_share).any()]
    shown = comp[keep].copy()
    rest = comp.drop(columns=keep).sum(1)
    if (rest > 0).any():
        shown["other"] = rest
    order = list(shown.drop(columns=["other"], errors="ignore").sum(0).sort_values(ascending=False).index)
    shown = shown[order + (["other"] if "other" in shown else [])]
    colours = [REGION_COLOURS[i % len(REGION_COLOURS)] for i in range(len(order))] + ["#dddddd"]
    fig = Figure(figsize=(8.0, 1.2 + 0.35 * len(comp)))
    ax = fig.subplots()
    left = np.zeros(len(comp))
    y = np.arange(len(comp))
    for t, c in zip(shown.columns, colours):
        ax.barh(y, shown[t].to_numpy(), left=left, color=c, label=str(t), height=0.8)
        left += shown[t].to_numpy()
    ax.set_yticks(y, [str(r) for r in comp.index], fontsize=8)
    ax.invert_yaxis()
    ax.set_ylabel("region")
    ax.set_xlabel("mean cells per spot")
    ax.set_title("Composition of each region", fontsize=9)
    ax.legend(fontsize=6, ncol=max(1, int(np.ceil(len(shown.columns) / 18))), loc="upper left",
              bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig
