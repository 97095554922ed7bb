"""Readers and writers for every format spotmap users bring.

- :func:`read_spatial` — any spatial input, dispatched by what the path is (Space Ranger folder,
  ``.h5ad``, 10x ``.h5``, count table), checked and named the spotmap way
- :func:`read_spaceranger` — Space Ranger ``outs/`` folders (h5 or mtx, old and new positions)
- :func:`read_10x_h5` / :func:`write_10x_h5` — 10x HDF5 matrices
- :func:`read_10x_mtx` — 10x matrix-market folders
- :func:`read_h5ad_counts`, :func:`read_count_table`, :func:`read_coordinates` — other spatial inputs
- :func:`read_reference` — the single-cell reference (``.h5ad`` or count table + cell-type table)
- :mod:`spotmap.io.samplesheet` — ``samplesheet.csv`` validated against ``assets/schema_input.json``
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np

from spotmap.errors import input_error
from spotmap.io.counts import (
    attach_coordinates,
    check_counts,
    check_unique,
    read_coordinates,
    read_count_table,
    read_h5ad_counts,
    read_reference,
)
from spotmap.io.mtx import read_10x_mtx
from spotmap.io.spaceranger import hd_binned_dir, hd_sample_name, read_spaceranger
from spotmap.io.tenx import read_10x_h5, write_10x_h5
from spotmap.utils import log

__all__ = ["attach_coordinates", "check_counts", "read_10x_h5", "read_10x_mtx", "read_coordinates",
           "read_count_table", "read_h5ad_counts", "read_reference", "read_spaceranger", "read_spatial",
           "write_10x_h5"]

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".tab")
_MATRIX_NAMES = ("filtered_feature_bc_matrix.h5", "filtered_feature_bc_matrix", "raw_feature_bc_matrix.h5",
                 "raw_feature_bc_matrix")


def _is_table(path: Path) -> bool:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return bool(suffixes) and suffixes[-1].lower() in TABLE_SUFFIXES


def _is_spaceranger(folder: Path) -> bool:
    outs = folder / "outs" if (folder / "outs").is_dir() else folder
    return any((outs / n).exists() for n in _MATRIX_NAMES) or hd_binned_dir(folder) is not None


def _default_sample(path: Path) -> str:
    if path.is_dir() and hd_binned_dir(path) is not None:
        return hd_sample_name(hd_binned_dir(path))
    if path.is_dir():
        return path.parent.name if path.name == "outs" else path.name
    name = path.name
    for suffix in reversed(path.suffixes):
        name = name[: -len(suffix)]
    return name or path.stem


def read_spatial(path: str | Path, sample: str | None = None, counts_layer: str = "auto",
                 coordinates: str | Path | None = None, orientation: str = "auto",
                 bin_size: int | None = None) -> ad.AnnData:
    """Read one spatial sample, whatever its format, into spots × genes AnnData.

    ``path`` may be a Space Ranger ``outs/`` folder (or its parent), a Visium HD ``outs/`` (or its
    parent, ``binned_outputs/`` or one ``square_XXXum`` folder; ``bin_size`` in µm picks
    ``square_{bin_size:03d}um``, default 8, and is ignored for other inputs), a 10x mtx folder or ``.h5``
    (with ``coordinates``), an ``.h5ad`` (``counts_layer`` picks ``X``/``layers['counts']``/``.raw``)
    or a count table (``.csv``/``.tsv``, optionally ``.gz``, with ``coordinates``; ``orientation``
    as in :func:`read_count_table`).

    Result
    ------
    Raw integer counts in sparse float32 ``X`` (spots × genes); ``obs_names`` ``<sample>_<barcode>``;
    ``obs['sample']``, ``obs['barcode']``; ``obsm['spatial']`` (x, y; full-resolution pixels for
    Space Ranger); ``uns['spatial'][sample]`` (images, scale factors) when the input has them;
    ``var['gene_ids']`` when known; in-tissue spots only. Visium HD adds ``uns['spotmap']``
    (``platform`` ``'visium-hd'``, ``bin_size_um``).

    Raises
    ------
    SpotmapError
        Missing file, unreadable or corrupt input, counts that are not raw counts, duplicate
        barcodes, spots without coordinates.
    """
    path = Path(path)
    if not path.exists():
        raise input_error(path, "input not found")
    given_sample, sample = sample, sample or _default_sample(path)
    if not str(sample).strip() or any(ch.isspace() for ch in str(sample)):
        raise input_error(path, "sample id must be non-empty and without spaces", field="sample", value=sample)
    coords = read_coordinates(coordinates) if coordinates is not None else None
    if path.is_dir():
        if _is_spaceranger(path):
            adata = read_spaceranger(path, sample=sample, bin_size=bin_size)
            if coords is not None:
                log.warning("%s: --coordinates ignored, the Space Ranger positions are used", path)
                coords = None
        elif any((path / n).exists() for n in ("matrix.mtx", "matrix.mtx.gz")):
            adata = read_10x_mtx(path)
            if coords is None:
                raise input_error(path, "a 10x mtx folder needs spot coordinates (--coordinates)")
        else:
            raise input_error(path, "folder holds neither a Space Ranger outs/ nor a 10x mtx matrix")
    elif path.suffix == ".h5ad":
        adata = read_h5ad_counts(path, counts_layer)
    elif path.suffix == ".h5":
        if coords is None and _is_spaceranger(path.parent) and (path.parent / "spatial").is_dir():
            return read_spatial(path.parent, given_sample, counts_layer, None, orientation, bin_size)
        adata = read_10x_h5(path)
        if coords is None:
            raise input_error(path, "a 10x .h5 outside a Space Ranger outs/ folder needs --coordinates")
    elif _is_table(path):
        if coords is None:
            raise input_error(path, "a count table needs a coordinates table (--coordinates)")
        adata = read_count_table(path, coords, orientation)
        coords = None
    else:
        raise input_error(path, "unknown input format; expected a Space Ranger folder, .h5ad, .h5 or "
                          ".csv/.tsv count table", value=path.suffix or path.name)
    if coords is not None:
        adata = attach_coordinates(adata, coords)
    return _finish(adata, path, sample)


def _finish(adata: ad.AnnData, path: Path, sample: str) -> ad.AnnData:
    """Checks and names shared by every spatial reader."""
    if adata.n_obs == 0:
        raise input_error(path, "no in-tissue spots (every spot has in_tissue = 0 or no position)")
    adata.X = check_counts(adata.X, path)
    check_unique(adata.obs_names, path, "barcode")
    if "spatial" not in adata.obsm:
        raise input_error(path, "no spot coordinates (obsm['spatial']); pass a coordinates table with --coordinates")
    xy = np.asarray(adata.obsm["spatial"], dtype=float)
    if xy.ndim != 2 or xy.shape[1] < 2 or not np.isfinite(xy[:, :2]).all():
        bad = int((~np.isfinite(xy)).any(axis=1).sum()) if xy.ndim == 2 else adata.n_obs
        raise input_error(path, f"missing or non-finite coordinates for {bad} spot(s)", field="obsm['spatial']")
    adata.obsm["spatial"] = xy[:, :2]
    # scanpy's plotting looks images up by library id: key them by the sample id
    spatial = adata.uns.get("spatial")
    if isinstance(spatial, dict) and len(spatial) == 1 and sample not in spatial:
        adata.uns["spatial"] = {sample: next(iter(spatial.values()))}
    barcodes = adata.obs["barcode"].astype(str).to_numpy() if "barcode" in adata.obs else adata.obs_names.to_numpy()
    adata.obs["barcode"] = barcodes
    adata.obs["sample"] = sample
    adata.obs_names = [f"{sample}_{b}" for b in barcodes]
    if "gene_ids" in adata.var:
        adata.var["gene_ids"] = adata.var["gene_ids"].astype(str)
    log.info("%s: sample %s, %d spots × %d genes, %d counts", path, sample, adata.n_obs, adata.n_vars,
             int(adata.X.sum()))
    return adata
