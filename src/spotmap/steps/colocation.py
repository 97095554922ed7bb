"""``spotmap colocation``: co-located cell types and tissue regions of one mapping result.

Reads a mapping folder's ``sp.h5ad`` (a restart or a consensus), runs :func:`spotmap.colocation.run_colocation`
on its spots × types abundance (q05 by default) and writes, all or nothing, the folder::

    colocation_factors.csv      cell types × factors: share of each type's cells in each factor (rows sum to 1)
    factor_abundance.csv        spots × factors: cells per spot in each factor
    regions.csv                 spot,region
    region_composition.csv      regions × cell types: mean cells per spot
    factor_fits.csv             one row per factor number tried, the chosen one marked
    region_fits.csv             one row per number of regions tried, the chosen one marked
    colocation_summary.json     the numbers chosen and why, the input, the samples, the settings
    *_mqc.*                     the report's "Co-location" section (spotmap.report.sections)
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from spotmap.colocation.settings import OUTPUT_FILES, QUANTITIES, ColocationSettings, range_text
from spotmap.errors import SpotmapError, input_error
from spotmap.report import sections
from spotmap.utils import atomic_dir, atomic_path, log, write_matrix_csv, write_table

_C = ColocationSettings()
SUMMARY_FILE = "colocation_summary.json"
#: every file of a co-location folder besides the MultiQC content
COLOCATION_FILES = (*OUTPUT_FILES, SUMMARY_FILE)


def run(*, mapping: str | os.PathLike, outdir: str | os.PathLike, n_factors: int | None = None,
        n_factors_range: str | tuple[int, int] | None = None, n_regions: int | str | None = None,
        quantity: str = _C.quantity, seed: int = _C.seed, settings: ColocationSettings | None = None,
        dpi: int = 90) -> Path:
    """Co-location factors and tissue regions of the mapping folder ``mapping``; write ``outdir``; return it.

    ``n_factors``: one number of factors; ``n_factors_range``: ``'LO-HI'`` or ``(lo, hi)``, each fitted and one
    chosen (:func:`spotmap.colocation.nmf.choose_n_factors`); neither: ``settings.factor_range``. Both: an
    error. ``n_regions``: a number, ``'LO-HI'`` or None (``settings.region_range``, chosen by silhouette).
    ``quantity``: the posterior summary of w_sf read (``obsm['{quantity}_cell_abundance_w_sf']``). ``settings``:
    any other field of :class:`~spotmap.colocation.ColocationSettings` (``quantity`` and ``seed`` win).
    Unusable input raises a one-line :class:`~spotmap.errors.SpotmapError` before anything is written.
    """
    from spotmap.colocation import abundance_table, run_colocation
    from spotmap.results import obsm_key

    check_request(n_factors, n_factors_range, n_regions, quantity)
    h5ad, outdir = mapping_file(mapping), Path(outdir)
    check_outdir(outdir, h5ad.parent)
    adata = _read(h5ad, quantity)
    meta = adata.uns.get("spotmap")
    platform = meta.get("platform") if isinstance(meta, dict) else None
    s = replace(settings or _C, quantity=quantity, seed=int(seed)).for_platform(platform)
    table = abundance_table(adata, quantity, str(h5ad))
    coords = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2] if "spatial" in adata.obsm else None
    samples = adata.obs["sample"].astype(str).to_numpy() if "sample" in adata.obs else None
    asked = n_factors if n_factors is not None else n_factors_range
    with warnings.catch_warnings():  # k-means on few distinct compositions: the silhouette already says so
        warnings.filterwarnings("ignore", message="Number of distinct clusters")
        res = run_colocation(table, coords, samples, n_factors=asked, n_regions=n_regions, settings=s,
                             source=str(h5ad), field=f"obsm['{obsm_key(quantity)}']")
    summary = {**res.summary(), "source": str(h5ad), "quantity": quantity, "n_spots": int(table.shape[0]),
               "n_types": int(table.shape[1]), "samples": list(dict.fromkeys(samples)) if samples is not None else [],
               "factor_numbers_asked": _asked_text(asked, s), "platform": platform}
    with atomic_dir(outdir) as tmp:
        write_tables(res, tmp)
        with atomic_path(tmp / SUMMARY_FILE) as t:
            t.write_text(json.dumps(summary, indent=2, default=str))
        write_mqc_content(res, summary, tmp, coords, samples, _tissue_images(adata, samples), dpi)
    log.info("co-location of %s: %s", h5ad, res.factors.reason)
    log.info("regions: %s", res.regions.reason)
    log.info("co-location written to %s", outdir)
    return outdir


def check_request(n_factors=None, n_factors_range=None, n_regions=None, quantity: str = _C.quantity) -> None:
    """The requested numbers and quantity, checked before any data is read (``spotmap run`` checks them before
    mapping): a one-line :class:`~spotmap.errors.SpotmapError` for both --n-factors and --n-factors-range, a
    malformed or empty range, a number below 1 or an unknown quantity."""
    from spotmap.colocation.inputs import parse_numbers

    if n_factors is not None and n_factors_range is not None:
        raise SpotmapError(f"give --n-factors (one number) or --n-factors-range (LO-HI), not both (got {n_factors} "
                           f"and {n_factors_range})")
    if quantity not in QUANTITIES:
        raise SpotmapError(f"--quantity must be one of {', '.join(QUANTITIES)} (got {quantity!r})")
    for name, value in (("n_factors", n_factors), ("n_factors_range", n_factors_range), ("n_regions", n_regions)):
        if value is None:
            continue
        if min(parse_numbers(value, (1, 1), name, None)) < 1:
            raise SpotmapError(f"field '{name}': numbers must be at least 1 (got {value!r})")


def mapping_file(mapping: str | os.PathLike) -> Path:
    """``<mapping>/sp.h5ad`` (or ``mapping`` itself when it is an ``.h5ad`` file), or a one-line error."""
    mapping = Path(mapping)
    if mapping.is_file() and mapping.suffix == ".h5ad":
        return mapping
    if not mapping.is_dir():
        raise input_error(mapping, "mapping folder not found (give the folder of `spotmap map` or `spotmap "
                                   "aggregate` that holds sp.h5ad)")
    if not (mapping / "sp.h5ad").is_file():
        raise input_error(mapping, "holds no sp.h5ad: give a mapping result folder (a restart_<seed>/ of "
                                   "`spotmap map` or the consensus/ of `spotmap aggregate`)")
    return mapping / "sp.h5ad"


def check_outdir(outdir: Path, mapping_dir: Path) -> None:
    """Refuse an --outdir that is the mapping folder or a non-empty folder other than an earlier co-location
    result (one holding ``colocation_factors.csv``), so no input or foreign folder is ever replaced."""
    if outdir.resolve() == mapping_dir.resolve():
        raise input_error(outdir, "is the --mapping folder; choose another --outdir")
    if outdir.exists() and (not outdir.is_dir() or (any(outdir.iterdir())
                                                    and not (outdir / "colocation_factors.csv").exists())):
        raise input_error(outdir, "exists and is not a co-location result folder; refusing to replace it "
                                  "(choose a new --outdir)")


def _read(h5ad: Path, quantity: str):
    from spotmap.report.collect import read_map_data

    return read_map_data(h5ad, quantity)


def _asked_text(asked, s: ColocationSettings) -> str:
    if asked is None:
        return range_text(s.factor_range)
    return range_text(asked) if isinstance(asked, tuple) else str(asked)


def _tissue_images(adata, samples) -> dict:
    """``{sample: (image, scale)}``: the hires (else any) image of each sample's library in ``uns['spatial']``
    and its scale factor from full-resolution pixels (``obsm['spatial']``) to the image."""
    spatial = adata.uns.get("spatial")
    if not isinstance(spatial, dict) or not spatial:
        return {}
    names = list(dict.fromkeys(samples)) if samples is not None else [""]
    out = {}
    for name in names:
        lib = name if name in spatial else (next(iter(spatial)) if len(spatial) == 1 else None)
        entry = spatial.get(lib) if lib is not None else None
        images = entry.get("images", {}) if isinstance(entry, dict) else {}
        key = "hires" if "hires" in images else next(iter(images), None)
        if key is None:
            continue
        scale = float(entry.get("scalefactors", {}).get(f"tissue_{key}_scalef", 1.0))
        out[name] = (np.asarray(images[key]), scale)
    return out


def _chosen(fits: pd.DataFrame, column: str, k: int) -> pd.DataFrame:
    out = fits.set_index(column)
    out["chosen"] = out.index == k
    return out


def write_tables(res, folder: Path) -> None:
    """The output tables of ``res`` (a :class:`~spotmap.colocation.ColocationResult`) into ``folder``."""
    tables = res.tables()
    tables["factor_fits.csv"] = _chosen(res.factors.fits, "n_factors", res.factors.n_factors)
    tables["region_fits.csv"] = _chosen(res.regions.fits, "n_regions", res.regions.n_regions)
    for name, table in tables.items():
        if name == "factor_abundance.csv":  # spots × factors: 100,000s of rows for Visium HD bins
            write_matrix_csv(table, folder / name)
        else:
            write_table(table, folder / name)


def _file_label(sample: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", sample) or "sample"


def write_mqc_content(res, summary: dict, folder: Path, coords, samples, images: dict, dpi: int = 90) -> None:
    """The report's "Co-location" section: summary, dot plot, per-sample maps, composition, fit tables."""
    from spotmap.colocation import plots
    from spotmap.report.mqc import save_mqc_figure, write_mqc_html, write_mqc_table, write_mqc_yaml

    f, r = res.factors, res.regions
    write_mqc_html(folder / sections.COLOCATION_SUMMARY.file, sections.COLOCATION_SUMMARY, summary_html(res, summary))
    save_mqc_figure(plots.dotplot_factors(f.colocation_factors), folder / sections.COLOCATION_DOTPLOT.file, dpi=dpi)
    if coords is not None:
        lab = samples if samples is not None else np.full(len(coords), "", dtype=object)
        for name in dict.fromkeys(lab):
            sel = lab == name
            sub = {name: images[name]} if name in images else None
            fig = plots.spatial_factors(f.factor_abundance[sel], coords[sel], lab[sel], images=sub,
                                        ncols=min(5, f.n_factors))
            save_mqc_figure(fig, folder / f"{_file_label(name)}{sections.COLOCATION_FACTOR_MAPS.file}", dpi=dpi)
            fig = plots.spatial_regions(r.regions[sel], coords[sel], lab[sel], images=sub)
            save_mqc_figure(fig, folder / f"{_file_label(name)}{sections.COLOCATION_REGION_MAP.file}", dpi=dpi)
    else:
        log.warning("no obsm['spatial'] in the mapping: the factor and region maps are not drawn")
    comp = r.composition.rename(index=lambda i: f"region {i}")
    write_mqc_yaml(folder / sections.COLOCATION_COMPOSITION.file, sections.COLOCATION_COMPOSITION, "bargraph",
                   {reg: {t: round(float(v), 4) for t, v in row.items() if np.isfinite(v)} for reg, row in comp.iterrows()},
                   pconfig={"id": "spotmap_colocation_composition_plot", "title": "spotmap: composition of each region",
                            "ylab": "mean cells per spot", "cpswitch_c_active": True, "sort_samples": False})
    for sec, fits, col in ((sections.COLOCATION_FACTOR_FITS, f.fits, "n_factors"),
                           (sections.COLOCATION_REGION_FITS, r.fits, "n_regions")):
        k = f.n_factors if col == "n_factors" else r.n_regions
        table = _chosen(fits, col, k)
        table["chosen"] = np.where(table["chosen"], "chosen", "")
        table.index = [f"{i} {col.split('_')[1]}" for i in table.index]
        write_mqc_table(table.rename_axis(col.replace("_", " ").capitalize()), folder / sec.file, sec,
                        headers={c: h for c, h in _FIT_HEADERS.items() if c in table}, reason=f.reason if col == "n_factors" else r.reason)


_FIT_HEADERS = {
    "rel_error": {"title": "Rel. error", "format": "{:,.3f}", "description": "‖X − WH‖ / ‖X‖ (types scaled)"},
    "explained_variance": {"title": "Explained", "format": "{:,.3f}", "min": 0, "max": 1, "scale": "Greens"},
    "gain_per_factor": {"title": "Gain", "format": "{:,.2f}",
                        "description": "variance one more factor explains, in cell types' worth"},
    "stability": {"title": "Stability", "format": "{:,.3f}", "min": 0, "max": 1,
                  "description": "matched cosine similarity of the random starts' factors"},
    "n_iter": {"title": "Iterations", "format": "{:,.0f}"},
    "silhouette": {"title": "Silhouette", "format": "{:,.3f}", "min": -1, "max": 1, "scale": "RdYlGn"},
    "inertia": {"title": "Inertia", "format": "{:,.3g}"},
    "chosen": {"title": "Chosen"},
}


def _top(series: pd.Series, n: int, fmt: str) -> str:
    top = series.dropna().sort_values(ascending=False).head(n)
    return ", ".join(f"{t} ({fmt.format(v)})" for t, v in top.items() if v > 0) or "—"


def summary_html(res, summary: dict) -> str:
    """The choices in words and, per factor and region, its main cell types."""
    import html

    f, r = res.factors, res.regions
    samples = ", ".join(summary["samples"]) or "—"
    lines = [f"<p>{summary['n_spots']:,} spots of {html.escape(samples)}, {summary['n_types']} cell types, "
             f"abundance <code>{summary['quantity']}</code> from <code>{html.escape(summary['source'])}</code>.</p>",
             f"<ul><li><strong>Factors</strong> ({html.escape(summary['factor_numbers_asked'])} asked): "
             f"{html.escape(f.reason)}</li><li><strong>Regions</strong>: {html.escape(r.reason)}</li></ul>"]
    cells = f.factor_abundance.sum(0)
    rows = "".join(f"<tr><td>{html.escape(str(c))}</td><td>{cells[c]:,.1f}</td>"
                   f"<td>{html.escape(_top(f.colocation_factors[c], 5, '{:.0%}'))}</td></tr>"
                   for c in f.colocation_factors.columns)
    lines.append("<p>Co-location factors (cells: over the whole tissue; types: the share of each type's cells "
                 "in the factor, largest first):</p><table class='table table-condensed'><tr><th>factor</th>"
                 f"<th>cells</th><th>main cell types</th></tr>{rows}</table>")
    sizes = r.regions.value_counts()
    rows = "".join(f"<tr><td>{i}</td><td>{int(sizes.get(i, 0)):,}</td>"
                   f"<td>{html.escape(_top(r.composition.loc[i], 5, '{:.2f}'))}</td></tr>"
                   for i in r.composition.index)
    lines.append("<p>Tissue regions (types: mean cells per spot, largest first):</p><table class='table "
                 f"table-condensed'><tr><th>region</th><th>spots</th><th>main cell types</th></tr>{rows}</table>")
    return "\n".join(lines)
