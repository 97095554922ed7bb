"""Space Ranger ``outs/`` folders: spot positions, scale factors and tissue images.

Layout read and written (Space Ranger 1.x and ≥2.0)::

    outs/filtered_feature_bc_matrix.h5            (or filtered_feature_bc_matrix/ mtx folder; the
                                                  raw_feature_bc_matrix h5/folder when no filtered one)
    outs/spatial/tissue_positions.csv             (≥2.0, with header)
    outs/spatial/tissue_positions_list.csv        (1.x, no header)
    outs/spatial/scalefactors_json.json
    outs/spatial/tissue_hires_image.png, tissue_lowres_image.png
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from spotmap.errors import input_error
from spotmap.utils import atomic_path

POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


def write_positions(path: str | Path, positions: pd.DataFrame, header: bool = True) -> Path:
    """Write spot positions (columns :data:`POSITION_COLUMNS`) as Space Ranger does."""
    with atomic_path(path) as tmp:
        positions[POSITION_COLUMNS].to_csv(tmp, index=False, header=header)
    return Path(path)


def write_scalefactors(path: str | Path, scalefactors: dict) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(scalefactors, indent=2))
    return Path(path)


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write an RGB(A) float [0, 1] or uint8 image as PNG."""
    from PIL import Image

    arr = image
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG", optimize=True)
    return Path(path)


def find_spatial_dir(outs: Path) -> Path:
    for cand in (outs / "spatial", outs):
        if (cand / "scalefactors_json.json").exists() or any(
            (cand / n).exists() for n in ("tissue_positions.csv", "tissue_positions_list.csv", "tissue_positions.parquet")
        ):
            return cand
    raise input_error(outs, "no spatial/ folder with tissue_positions and scalefactors_json.json")


def read_positions(spatial_dir: Path) -> pd.DataFrame:
    """Read tissue positions (header or headerless CSV, or parquet); index = barcode."""
    new, old, pq = (spatial_dir / "tissue_positions.csv", spatial_dir / "tissue_positions_list.csv",
                    spatial_dir / "tissue_positions.parquet")
    if pq.exists():
        df = pd.read_parquet(pq)
        path = pq
    elif new.exists():
        df = pd.read_csv(new)
        path = new
    elif old.exists():
        df = pd.read_csv(old, header=None)
        path = old
        if df.shape[1] != 6:
            raise input_error(path, "expected 6 columns (barcode,in_tissue,array_row,array_col,pxl_row,pxl_col)",
                              value=df.shape[1])
        df.columns = POSITION_COLUMNS
        if str(df.iloc[0, 0]) == "barcode":  # a header where none was expected
            df = df.iloc[1:].reset_index(drop=True)
    else:
        raise input_error(spatial_dir, "no tissue_positions.csv, tissue_positions_list.csv or tissue_positions.parquet")
    missing = [c for c in POSITION_COLUMNS if c not in df.columns]
    if missing:
        raise input_error(path, "missing column(s) " + ", ".join(missing), field=missing[0])
    df["barcode"] = df["barcode"].astype(str)
    if df["barcode"].duplicated().any():
        dup = df.loc[df["barcode"].duplicated(), "barcode"].iloc[0]
        raise input_error(path, "duplicate barcode", field="barcode", value=dup)
    df = df.set_index("barcode")
    for c in POSITION_COLUMNS[1:]:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df.attrs["path"] = str(path)
    return df


def read_images(spatial_dir: Path) -> dict[str, np.ndarray]:
    import matplotlib.image as mpimg

    images = {}
    for key in ("hires", "lowres"):
        p = spatial_dir / f"tissue_{key}_image.png"
        if p.exists():
            images[key] = mpimg.imread(p)
    return images


def attach_spatial(adata: ad.AnnData, spatial_dir: Path, library_id: str,
                   drop_unpositioned: bool = False) -> ad.AnnData:
    """Keep in-tissue spots, add ``obsm['spatial']`` and ``uns['spatial'][library_id]`` (scanpy layout).

    A barcode of the matrix without a position is an error, unless ``drop_unpositioned`` (a raw
    matrix holds every barcode; one without a position cannot be under the tissue).
    """
    pos = read_positions(spatial_dir)
    missing = adata.obs_names.difference(pos.index)
    if len(missing) and drop_unpositioned:
        from spotmap.utils import log

        log.warning("%s: %d barcode(s) of the raw matrix have no position; dropped", pos.attrs["path"], len(missing))
        adata = adata[adata.obs_names.isin(pos.index)].copy()
    elif len(missing):
        raise input_error(pos.attrs["path"], f"{len(missing)} barcode(s) of the matrix have no position",
                          field="barcode", value=missing[0])
    pos = pos.loc[adata.obs_names]
    if pos[["pxl_row_in_fullres", "pxl_col_in_fullres"]].isna().any().any():
        bad = pos.index[pos[["pxl_row_in_fullres", "pxl_col_in_fullres"]].isna().any(axis=1)][0]
        raise input_error(pos.attrs["path"], "missing or non-numeric coordinates", field="pxl_row_in_fullres", value=bad)
    keep = (pos["in_tissue"] == 1).to_numpy()
    adata = adata[keep].copy()
    pos = pos.loc[adata.obs_names]
    for c in ("in_tissue", "array_row", "array_col"):
        adata.obs[c] = pos[c].astype(int).to_numpy()
    adata.obsm["spatial"] = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=float)
    sf_path = spatial_dir / "scalefactors_json.json"
    scalefactors = {}
    if sf_path.exists():
        try:
            scalefactors = json.loads(sf_path.read_text())
        except json.JSONDecodeError as exc:
            raise input_error(sf_path, f"invalid JSON: {exc}") from None
    adata.uns["spatial"] = {library_id: {"images": read_images(spatial_dir), "scalefactors": scalefactors,
                                         "metadata": {"source": str(spatial_dir)}}}
    return adata


def read_spaceranger(path: str | Path, sample: str | None = None) -> ad.AnnData:
    """Read a Space Ranger ``outs/`` folder into AnnData (in-tissue spots only).

    Parameters
    ----------
    path
        The ``outs/`` folder (or its parent holding ``outs/``).
    sample
        Library id used as key in ``uns['spatial']`` and ``obs['sample']``; defaults to the folder name.
    """
    from spotmap.io.tenx import read_10x_h5

    path = Path(path)
    if not path.exists():
        raise input_error(path, "Space Ranger folder not found")
    outs = path / "outs" if (path / "outs").is_dir() else path
    sample = sample or (outs.parent.name if outs.name == "outs" else outs.name)
    from spotmap.io.mtx import read_10x_mtx

    # The filtered matrix first; the raw one (all spots) works too, attach_spatial keeps in-tissue spots.
    for kind in ("filtered", "raw"):
        h5, mtx_dir = outs / f"{kind}_feature_bc_matrix.h5", outs / f"{kind}_feature_bc_matrix"
        if h5.exists():
            adata = read_10x_h5(h5)
            break
        if mtx_dir.is_dir():
            adata = read_10x_mtx(mtx_dir)
            break
    else:
        raise input_error(outs, "no filtered_feature_bc_matrix.h5, filtered_feature_bc_matrix/ folder "
                          "or raw_feature_bc_matrix(.h5)")
    adata = attach_spatial(adata, find_spatial_dir(outs), sample, drop_unpositioned=kind == "raw")
    adata.obs["sample"] = sample
    return adata
