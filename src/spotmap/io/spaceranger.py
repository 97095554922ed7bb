"""Space Ranger ``outs/`` folders: spot positions, scale factors and tissue images.

Layout read and written (Space Ranger 1.x and ≥2.0)::

    outs/filtered_feature_bc_matrix.h5            (or filtered_feature_bc_matrix/ mtx folder; the
                                                  raw_feature_bc_matrix h5/folder when no filtered one)
    outs/spatial/tissue_positions.csv             (≥2.0, with header)
    outs/spatial/tissue_positions_list.csv        (1.x, no header)
    outs/spatial/scalefactors_json.json
    outs/spatial/tissue_hires_image.png, tissue_lowres_image.png

Visium HD (Space Ranger ≥ 3.0) keeps one such folder per bin size::

    outs/binned_outputs/square_008um/filtered_feature_bc_matrix.h5
    outs/binned_outputs/square_008um/spatial/tissue_positions.parquet
    outs/binned_outputs/square_008um/spatial/scalefactors_json.json   (bin_size_um, microns_per_pixel, ...)
    outs/binned_outputs/square_008um/spatial/tissue_{hires,lowres}_image.png
    outs/binned_outputs/square_002um/, square_016um/ ...

:func:`read_spaceranger` reads the ``square_{bin_size:03d}um`` folder (8 µm unless told), from the
``outs/`` folder, its parent, ``binned_outputs/`` or the ``square_XXXum`` folder itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from spotmap.errors import input_error
from spotmap.utils import atomic_path

POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
HD_DEFAULT_BIN_UM = 8
_SQUARE = re.compile(r"^square_(\d{3})um$")
_HD_POSITIVE = ("bin_size_um", "microns_per_pixel", "spot_diameter_fullres", "tissue_hires_scalef",
                "tissue_lowres_scalef")


def hd_bin_sizes(binned: Path) -> list[int]:
    """Bin sizes (µm) of the ``square_XXXum`` folders in a Visium HD ``binned_outputs/`` folder."""
    sizes = []
    if binned.is_dir():
        for d in binned.iterdir():
            m = _SQUARE.match(d.name)
            if m and d.is_dir():
                sizes.append(int(m.group(1)))
    return sorted(sizes)


def _square_size(folder: Path) -> int | None:
    m = _SQUARE.match(folder.name)
    return int(m.group(1)) if m else None


def hd_binned_dir(path: str | Path) -> Path | None:
    """The ``binned_outputs/`` folder when ``path`` is a Visium HD run (``outs/``, its parent or
    ``binned_outputs/``) or the ``square_XXXum`` folder itself when it is one; else ``None``."""
    path = Path(path)
    if _square_size(path) is not None and path.is_dir():
        return path
    for cand in (path, path / "binned_outputs", path / "outs" / "binned_outputs"):
        if cand.name == "binned_outputs" and cand.is_dir() and hd_bin_sizes(cand):
            return cand
    return None


def find_hd_bin_dir(path: str | Path, bin_size: int | None = None) -> tuple[Path, int]:
    """The ``square_{bin_size:03d}um`` folder of a Visium HD run, and its bin size.

    ``bin_size`` defaults to 8 µm. ``path`` may also be a ``square_XXXum`` folder: then its own size is
    used, and a different ``bin_size`` is an error.
    """
    if bin_size is not None:
        try:
            whole = float(bin_size) == int(float(bin_size))
        except (TypeError, ValueError, OverflowError):
            whole = False
        if not whole:  # never truncate 8.5 to 8
            raise input_error(Path(path), "bin size must be a whole number of µm", field="bin_size", value=bin_size)
    path = Path(path)
    found = hd_binned_dir(path)
    if found is None:
        raise input_error(path, "not a Visium HD folder (no binned_outputs/square_XXXum/)")
    own = _square_size(found)
    if own is not None:
        if bin_size is not None and int(bin_size) != own:
            raise input_error(found, f"is the {own} µm bin folder but bin size {bin_size} µm was asked; pass "
                              f"the outs/ folder to choose the bin size", field="bin_size", value=int(bin_size))
        return found, own
    size = HD_DEFAULT_BIN_UM if bin_size is None else int(bin_size)
    if size < 1:
        raise input_error(found, "bin size must be a whole number of µm >= 1", field="bin_size", value=size)
    folder = found / f"square_{size:03d}um"
    if not folder.is_dir():
        avail = ", ".join(str(b) for b in hd_bin_sizes(found))
        raise input_error(found, f"no square_{size:03d}um folder for bin size {size} µm (bin sizes available: "
                          f"{avail} µm)", field="bin_size", value=size)
    return folder, size


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
        path = pq
        try:
            df = pd.read_parquet(pq)
        except Exception as exc:  # pyarrow raises several types for corrupt or truncated files
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise input_error(pq, f"cannot be read as parquet (corrupt or truncated?): {first}") from None
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
    pos = pos.reindex(adata.obs_names)
    if pos[["pxl_row_in_fullres", "pxl_col_in_fullres"]].isna().any().any():
        bad = pos.index[pos[["pxl_row_in_fullres", "pxl_col_in_fullres"]].isna().any(axis=1)][0]
        raise input_error(pos.attrs["path"], "missing or non-numeric coordinates", field="pxl_row_in_fullres", value=bad)
    keep = (pos["in_tissue"] == 1).to_numpy()
    if not keep.all():  # a filtered matrix holds in-tissue spots only: no copy of a large matrix then
        adata = adata[keep].copy()
        pos = pos[keep]
    for c in ("in_tissue", "array_row", "array_col"):
        adata.obs[c] = pos[c].astype(int).to_numpy()
    adata.obsm["spatial"] = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=float)
    sf_path = spatial_dir / "scalefactors_json.json"
    scalefactors = {}
    if sf_path.exists():
        try:
            scalefactors = json.loads(sf_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise input_error(sf_path, f"invalid JSON: {exc}") from None
        if not isinstance(scalefactors, dict):
            raise input_error(sf_path, "scale factors must be a JSON object", value=type(scalefactors).__name__)
    adata.uns["spatial"] = {library_id: {"images": read_images(spatial_dir), "scalefactors": scalefactors,
                                         "metadata": {"source": str(spatial_dir)}}}
    return adata


def hd_sample_name(folder: Path) -> str:
    """Default sample id of a Visium HD bin folder: the folder above ``outs/`` (else above binned_outputs/)."""
    up = folder.parent if _square_size(folder) is not None else folder
    up = up.parent if up.name == "binned_outputs" else up
    return up.parent.name if up.name == "outs" else up.name


def _check_hd_scalefactors(adata: ad.AnnData, library_id: str, spatial_dir: Path, bin_um: int) -> None:
    sf_path = spatial_dir / "scalefactors_json.json"
    sf = adata.uns["spatial"][library_id]["scalefactors"]
    for key in _HD_POSITIVE:
        if key in sf:
            v = sf[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise input_error(sf_path, "must be a positive number", field=key, value=v)
    if "bin_size_um" in sf and abs(float(sf["bin_size_um"]) - bin_um) > 1e-6:
        raise input_error(sf_path, f"does not match the folder square_{bin_um:03d}um", field="bin_size_um",
                          value=sf["bin_size_um"])


def read_spaceranger(path: str | Path, sample: str | None = None, bin_size: int | None = None) -> ad.AnnData:
    """Read a Space Ranger ``outs/`` folder into AnnData (in-tissue spots only).

    Parameters
    ----------
    path
        The ``outs/`` folder (or its parent holding ``outs/``). For Visium HD also ``binned_outputs/`` or
        one ``square_XXXum`` folder.
    sample
        Library id used as key in ``uns['spatial']`` and ``obs['sample']``; defaults to the folder name
        (for Visium HD, the folder above ``outs/``).
    bin_size
        Visium HD only: the bin size in µm, which picks ``binned_outputs/square_{bin_size:03d}um``
        (default 8). Ignored for Visium.

    Visium HD result: as for Visium (one row per in-tissue bin, ``obs`` ``array_row``/``array_col``/
    ``in_tissue``, ``obsm['spatial']`` in full-resolution pixels, ``uns['spatial'][sample]`` images and
    scale factors) plus ``uns['spotmap'] = {'platform': 'visium-hd', 'bin_size_um': N}``, also copied into
    ``uns['spatial'][sample]['metadata']``. The count matrix is never densified.
    """
    from spotmap.io.tenx import read_10x_h5

    path = Path(path)
    if not path.exists():
        raise input_error(path, "Space Ranger folder not found")
    hd = hd_binned_dir(path)
    bin_um = None
    if hd is not None:
        outs, bin_um = find_hd_bin_dir(path, bin_size)
        sample = sample or hd_sample_name(outs)
    else:
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
    if bin_um is None:
        adata = attach_spatial(adata, find_spatial_dir(outs), sample, drop_unpositioned=kind == "raw")
    else:
        spatial_dir = outs / "spatial"
        if not spatial_dir.is_dir():
            raise input_error(outs, "Visium HD bin folder has no spatial/ folder (tissue_positions.parquet, "
                              "scalefactors_json.json)")
        adata = attach_spatial(adata, spatial_dir, sample, drop_unpositioned=kind == "raw")
        _check_hd_scalefactors(adata, sample, spatial_dir, bin_um)
        meta = {"platform": "visium-hd", "bin_size_um": int(bin_um)}
        adata.uns["spotmap"] = dict(meta)
        adata.uns["spatial"][sample]["metadata"].update(meta)
    adata.obs["sample"] = sample
    return adata
