"""Maps of cell abundance over the tissue: one panel per cell type, and the most abundant types in one
overlay (as cell2location's ``plot_spatial``); :func:`abundance_maps` draws both for every sample of a result."""

from __future__ import annotations

import anndata as ad
import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from spotmap.pl.spatial import grid_layout, spatial_layout, spatial_scatter

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


def sample_subsets(adata: ad.AnnData, samples=None) -> list[tuple[str, ad.AnnData]]:
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
    from matplotlib.colors import to_rgb

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
    _overlay_colour_bars(fig, types, cols, vmax, unit)
    return fig


def _overlay_colour_bars(fig: plt.Figure, types: list[str], cols: np.ndarray, vmax: np.ndarray, unit: str) -> None:
    """One colour bar per type of the overlay, stacked on the right."""
    from matplotlib.colors import LinearSegmentedColormap, Normalize

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


def abundance_maps(adata: ad.AnnData, summary: str = "q05", samples=None, n_overlay: int = 6,
                   ncols: int = 4) -> list[plt.Figure]:
    """Figures of cell abundance over the tissue: per sample a grid (one panel per type) and an overlay.

    ``adata``: a mapping result (``obsm['{summary}_cell_abundance_w_sf']``). Returns
    ``[grid_sample1, overlay_sample1, grid_sample2, ...]`` (matplotlib Figures).
    """
    from spotmap.results import table

    figs = []
    ab = table(adata, summary)
    for sample, sub in sample_subsets(adata, samples):
        sub_ab = ab.loc[sub.obs_names]
        figs.append(abundance_grid(sub, sample, sub_ab, ncols=ncols if ab.shape[1] <= 16 else ncols + 1,
                                   summary_label=summary))
        figs.append(abundance_overlay(sub, sample, sub_ab, n_types=n_overlay, summary_label=summary))
    return figs
