"""Count checks and the non-10x readers: ``.h5ad`` files, plain count tables, single-cell references.

Every reader returns barcodes/cells × genes AnnData with raw integer counts in a sparse
float32 CSR ``X`` and refuses data that are not counts (negative, non-integer, log-normalised,
all zero) with one line naming the file, the field and a value.
"""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from spotmap.errors import input_error
from spotmap.utils import log

COUNTS_LAYERS = ("auto", "X", "counts", "raw")
ORIENTATIONS = ("auto", "genes_x_spots", "spots_x_genes")
# Log-normalised data (log1p of CP10k and the like) rarely exceed this; raw non-integer data do.
_LOG_MAX = 20.0
_CHUNK = 1 << 24  # values per slice when checking large matrices


# ---------------------------------------------------------------------------- count checks
def _values(X) -> np.ndarray:
    """The stored values of ``X`` without densifying a sparse matrix."""
    if sp.issparse(X):
        return np.asarray(X.data)
    return np.asarray(X).ravel()


def count_problem(X) -> str | None:
    """Return why ``X`` is not a raw count matrix, or ``None`` when it is one."""
    v = _values(X)
    if v.size == 0 or not np.any(v):
        return "the count matrix is all zero"
    if not np.issubdtype(v.dtype, np.number):
        return f"counts are not numeric (dtype {v.dtype})"
    if v.size > _CHUNK:  # Visium HD: check slice by slice (no full-size temporaries); the same answers
        if np.issubdtype(v.dtype, np.integer):
            vmin = min(v[i:i + _CHUNK].min() for i in range(0, v.size, _CHUNK))
            return f"counts are negative (min {vmin:g}); pass raw counts" if vmin < 0 else None
        for i in range(0, v.size, _CHUNK):
            c = v[i:i + _CHUNK]
            if not np.all(np.isfinite(c)) or c.min() < 0 or (c != np.round(c)).any():
                break
        else:
            return None
    if not np.all(np.isfinite(v)):
        return f"counts contain NaN or infinite values (first: {v[~np.isfinite(v)][0]})"
    vmin = v.min()
    if vmin < 0:
        return f"counts are negative (min {vmin:g}); pass raw counts"
    if np.issubdtype(v.dtype, np.integer):
        return None
    frac = v != np.round(v)
    if frac.any():
        example = float(v[frac][0])
        # log1p of normalised counts: small, and almost every stored value fractional
        if v.max() <= _LOG_MAX and frac.mean() > 0.5:
            return (f"values look log-normalised (non-integer, max {v.max():.3g}, e.g. {example:.4g}); "
                    "pass raw counts (for .h5ad, pick the layer that holds them with --counts-layer counts|raw)")
        return f"counts are not integers (e.g. {example:.4g}); pass raw counts"
    return None


def check_counts(X, path: str | Path | None, field: str = "X") -> sp.csr_matrix:
    """Return ``X`` as float32 CSR after checking it holds raw counts; else raise :class:`SpotmapError`."""
    problem = count_problem(X)
    if problem:
        raise input_error(path, problem, field=field)
    return sp.csr_matrix(X, dtype=np.float32)


def check_unique(names: pd.Index, path: str | Path | None, what: str = "barcode") -> None:
    """Refuse duplicated barcodes / cell or sample ids (they would silently merge spots)."""
    dup = pd.Index(names)[pd.Index(names).duplicated()]
    if len(dup):
        raise input_error(path, f"{len(dup)} duplicate {what}(s)", field=what, value=str(dup[0]))


# ---------------------------------------------------------------------------- h5ad
def _read_h5ad(path: Path) -> ad.AnnData:
    if not path.exists():
        raise input_error(path, "file not found")
    try:
        return ad.read_h5ad(path)
    except Exception as exc:  # h5py/anndata raise many types for corrupt files; the message is what matters
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise input_error(path, f"cannot be read as .h5ad (corrupt or truncated?): {first}") from None


def select_counts(adata: ad.AnnData, counts_layer: str = "auto", path: str | Path | None = None) -> ad.AnnData:
    """Return a new AnnData whose ``X`` holds the raw counts of ``adata``.

    ``counts_layer``: ``X``, ``counts`` (``layers['counts']``), ``raw`` (``.raw.X`` with ``.raw.var``) or
    ``auto`` — the first of ``layers['counts']``, ``X``, ``.raw`` that holds raw counts.
    obs, obsm and uns are kept; other layers are dropped (they are not needed for mapping).
    """
    if counts_layer not in COUNTS_LAYERS:
        raise input_error(path, "unknown counts layer; use auto, X, counts or raw", field="--counts-layer",
                          value=counts_layer)
    candidates: list[tuple[str, object, pd.DataFrame]] = []
    if counts_layer in ("auto", "counts"):
        if "counts" in adata.layers:
            candidates.append(("layers['counts']", adata.layers["counts"], adata.var))
        elif counts_layer == "counts":
            raise input_error(path, f"no layers['counts'] (layers: {list(adata.layers) or 'none'})",
                              field="--counts-layer", value="counts")
    if counts_layer in ("auto", "X"):
        candidates.append(("X", adata.X, adata.var))
    if counts_layer in ("auto", "raw"):
        if adata.raw is not None:
            candidates.append(("raw.X", adata.raw.X, adata.raw.var))
        elif counts_layer == "raw":
            raise input_error(path, "no .raw in this file", field="--counts-layer", value="raw")
    first_problem = None
    for name, X, var in candidates:
        if X is None:
            continue
        problem = count_problem(X)
        if problem is None:
            if counts_layer == "auto":
                log.info("%s: counts taken from %s", path or "AnnData", name)
            out = ad.AnnData(X=sp.csr_matrix(X, dtype=np.float32), obs=adata.obs.copy(), var=var.copy(),
                             obsm=dict(adata.obsm), uns=dict(adata.uns))
            return out
        first_problem = first_problem or (name, problem)
    if first_problem is None:
        raise input_error(path, "holds no count matrix", field="X")
    name, problem = first_problem
    if counts_layer == "auto" and len(candidates) > 1:
        problem += f" (also checked: {', '.join(c[0] for c in candidates)})"
    raise input_error(path, problem, field=name)


def read_h5ad_counts(path: str | Path, counts_layer: str = "auto") -> ad.AnnData:
    """Read an ``.h5ad`` file and return it with raw counts in sparse ``X`` (see :func:`select_counts`)."""
    path = Path(path)
    adata = _read_h5ad(path)
    out = select_counts(adata, counts_layer, path)
    check_unique(out.obs_names, path, "barcode")
    out.var_names_make_unique()
    return out


# ---------------------------------------------------------------------------- tables
def _sep(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return "\t" if suffixes and suffixes[-1] in (".tsv", ".txt", ".tab") else ","


def _open_text(path: Path):
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path, newline="")


def _header(path: Path, sep: str) -> list[str]:
    try:
        with _open_text(path) as fh:
            return next(csv.reader(fh, delimiter=sep), [])
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise input_error(path, f"cannot be read as a text table: {exc}") from None


def _read_table(path: Path, what: str) -> pd.DataFrame:
    """Read a CSV/TSV with the first column as index; names stay strings."""
    if not path.exists():
        raise input_error(path, f"{what} not found")
    sep = _sep(path)
    header = _header(path, sep)
    dup = pd.Index(header[1:])[pd.Index(header[1:]).duplicated()]
    if len(dup):  # pandas would rename them '.1', silently
        raise input_error(path, f"{len(dup)} duplicate column name(s) in the header", field="header",
                          value=str(dup[0]))
    try:
        df = pd.read_csv(path, sep=sep, index_col=0, dtype={0: str} if header else None)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as exc:
        raise input_error(path, f"cannot be parsed as a {'TSV' if sep == chr(9) else 'CSV'} table: "
                          f"{str(exc).splitlines()[0]}") from None
    df.index = df.index.astype(str)
    df.columns = df.columns.astype(str)
    return df


def _numeric(df: pd.DataFrame, path: Path) -> np.ndarray:
    try:
        M = df.to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        num = df.apply(pd.to_numeric, errors="coerce")
        bad = num.isna() & df.notna()
        r, c = np.argwhere(bad.to_numpy())[0]
        raise input_error(path, f"non-numeric count at row {df.index[r]!r}, column {df.columns[c]!r}",
                          value=df.iat[r, c]) from None
    if np.isnan(M).any():
        r, c = np.argwhere(np.isnan(M))[0]
        raise input_error(path, f"missing count at row {df.index[r]!r}, column {df.columns[c]!r}")
    return M


def _orientation(df: pd.DataFrame, ids: pd.Index | None, orientation: str, path: Path, what: str) -> str:
    """Decide whether barcodes/cells are the columns (genes × spots) or the rows (spots × genes)."""
    if orientation not in ORIENTATIONS:
        raise input_error(path, "orientation must be auto, genes_x_spots or spots_x_genes", value=orientation)
    if orientation != "auto":
        return orientation
    if ids is not None:
        in_cols, in_rows = len(df.columns.intersection(ids)), len(df.index.intersection(ids))
        if max(in_cols, in_rows) == 0:
            raise input_error(path, f"no {what} of the table appears in its rows or columns "
                              f"(first {what}: {ids[0]!r}; first row {df.index[0]!r}, first column {df.columns[0]!r})")
        return "genes_x_spots" if in_cols >= in_rows else "spots_x_genes"
    # No ids to match: genes usually outnumber spots or cells in such tables.
    return "genes_x_spots" if df.shape[0] >= df.shape[1] else "spots_x_genes"


def _table_to_adata(df: pd.DataFrame, orientation: str, path: Path, what: str) -> ad.AnnData:
    M = _numeric(df, path)
    if orientation == "genes_x_spots":
        M, barcodes, genes = M.T, df.columns, df.index
    else:
        barcodes, genes = df.index, df.columns
    check_unique(pd.Index(barcodes), path, what)
    X = check_counts(sp.csr_matrix(M), path, field="counts")
    adata = ad.AnnData(X=X, obs=pd.DataFrame(index=pd.Index(barcodes, dtype=str)),
                       var=pd.DataFrame(index=pd.Index(genes, dtype=str)))
    if adata.var_names.duplicated().any():
        log.warning("%s: %d duplicated gene name(s) made unique", path, int(adata.var_names.duplicated().sum()))
        adata.var_names_make_unique()
    return adata


_XY = [("x", "y"), ("xcoord", "ycoord"), ("imagecol", "imagerow"), ("pxl_col_in_fullres", "pxl_row_in_fullres"),
       ("X", "Y"), ("x_centroid", "y_centroid")]


def read_coordinates(path: str | Path) -> pd.DataFrame:
    """Read spot coordinates: index = barcode, columns ``x``, ``y`` (and ``in_tissue`` when given).

    Accepts a Space Ranger positions file (with or without header), or any CSV/TSV whose first
    column (or a ``barcode``/``barcodes`` column) names the spots and with x/y columns named
    x,y | xcoord,ycoord | imagecol,imagerow | pxl_col_in_fullres,pxl_row_in_fullres.
    """
    from spotmap.io.spaceranger import POSITION_COLUMNS

    path = Path(path)
    if not path.exists():
        raise input_error(path, "coordinates file not found")
    sep = _sep(path)
    header = _header(path, sep)
    if len(header) == 6 and header[0] != "barcode" and _is_number(header[1]):  # tissue_positions_list.csv
        df = pd.read_csv(path, sep=sep, header=None, names=POSITION_COLUMNS, dtype={"barcode": str})
    else:
        df = pd.read_csv(path, sep=sep, dtype=str)
    bc_col = next((c for c in ("barcode", "barcodes", "spot", "cell") if c in df.columns), df.columns[0])
    df = df.set_index(bc_col)
    df.index = df.index.astype(str)
    pair = next(((x, y) for x, y in _XY if x in df.columns and y in df.columns), None)
    if pair is None:
        raise input_error(path, "no x/y columns (expected x,y | xcoord,ycoord | imagecol,imagerow | "
                          "pxl_col_in_fullres,pxl_row_in_fullres)", field="header", value=list(df.columns))
    out = pd.DataFrame({"x": pd.to_numeric(df[pair[0]], errors="coerce"),
                        "y": pd.to_numeric(df[pair[1]], errors="coerce")}, index=df.index)
    if "in_tissue" in df.columns:
        out["in_tissue"] = pd.to_numeric(df["in_tissue"], errors="coerce").fillna(0).astype(int)
    check_unique(out.index, path, "barcode")
    out.attrs["path"] = str(path)
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def attach_coordinates(adata: ad.AnnData, coords: pd.DataFrame) -> ad.AnnData:
    """Put ``coords`` (from :func:`read_coordinates`) into ``obsm['spatial']`` (x, y); refuse missing spots.

    Spots marked ``in_tissue == 0`` are dropped, like Space Ranger's filtered matrix does.
    """
    path = coords.attrs.get("path")
    missing = adata.obs_names.difference(coords.index)
    if len(missing):
        raise input_error(path, f"coordinates missing for {len(missing)} of {adata.n_obs} spot(s)", field="barcode",
                          value=str(missing[0]))
    c = coords.loc[adata.obs_names]
    bad = c[["x", "y"]].isna().any(axis=1)
    if bad.any():
        raise input_error(path, f"missing or non-numeric coordinates for {int(bad.sum())} spot(s)", field="x/y",
                          value=str(c.index[bad.to_numpy()][0]))
    if "in_tissue" in c.columns:
        keep = (c["in_tissue"] == 1).to_numpy()
        adata = adata[keep].copy()
        c = c.loc[keep]
        adata.obs["in_tissue"] = 1
    adata.obsm["spatial"] = c[["x", "y"]].to_numpy(dtype=float)
    return adata


def read_count_table(counts: str | Path, coordinates: str | Path | pd.DataFrame | None = None,
                     orientation: str = "auto") -> ad.AnnData:
    """Read a plain count table (CSV/TSV, optionally gzipped) into spots × genes AnnData.

    Parameters
    ----------
    counts
        Genes × spots (first column = gene) or spots × genes (first column = barcode) integer counts.
    coordinates
        Spot coordinates (see :func:`read_coordinates`), in pixels or µm; go to ``obsm['spatial']`` (x, y).
        With ``orientation='auto'`` the side of the table that holds these barcodes holds the spots.
    orientation
        ``auto``, ``genes_x_spots`` or ``spots_x_genes``. Without coordinates, ``auto`` takes the longer
        side as genes.
    """
    path = Path(counts)
    df = _read_table(path, "count table")
    coords = read_coordinates(coordinates) if isinstance(coordinates, (str, Path)) else coordinates
    orient = _orientation(df, coords.index if coords is not None else None, orientation, path, "barcode")
    adata = _table_to_adata(df, orient, path, "barcode")
    if coords is not None:
        adata = attach_coordinates(adata, coords)
    log.info("%s: %d spots × %d genes (%s)", path, adata.n_obs, adata.n_vars, orient.replace("_x_", " × "))
    return adata


# ---------------------------------------------------------------------------- reference
def _read_labels(path: Path, labels_key: str) -> pd.Series:
    df = _read_table(path, "cell-type table")
    if labels_key not in df.columns:
        raise input_error(path, f"no column '{labels_key}' (columns: {', '.join(map(repr, df.columns))}); "
                          "set the label column with --labels-key", field=labels_key)
    check_unique(df.index, path, "cell id")
    return df[labels_key]


def read_reference(path: str | Path, labels_key: str = "cell_type", cell_types: str | Path | None = None,
                   counts_layer: str = "auto", orientation: str = "auto", min_cells_per_type: int = 1) -> ad.AnnData:
    """Read the single-cell reference: cells × genes raw counts with a cell-type label per cell.

    Parameters
    ----------
    path
        ``.h5ad`` (labels in ``obs[labels_key]``) or a count table (genes × cells or cells × genes).
    labels_key
        Label column, in ``obs`` or in ``cell_types``. The result always has ``obs[labels_key]`` (categorical).
    cell_types
        CSV/TSV, first column = cell id, with a ``labels_key`` column; required for count tables,
        and overrides ``obs`` for ``.h5ad``. Cells without a label are dropped (logged).
    counts_layer
        For ``.h5ad``: see :func:`select_counts`.

    Raises
    ------
    SpotmapError
        Missing label column, fewer than two cell types, or anything :func:`check_counts` refuses.
    """
    path = Path(path)
    if not path.exists():
        raise input_error(path, "reference not found")
    labels_path = Path(cell_types) if cell_types is not None else None
    labels = _read_labels(labels_path, labels_key) if labels_path is not None else None
    if path.suffix == ".h5ad":
        adata = read_h5ad_counts(path, counts_layer)
        if labels is None:
            if labels_key not in adata.obs.columns:
                raise input_error(path, f"no obs column '{labels_key}' (obs columns: "
                                  f"{', '.join(map(repr, adata.obs.columns)) or 'none'}); set it with --labels-key",
                                  field=labels_key)
            labels = adata.obs[labels_key]
            labels_path = path
    else:
        if labels is None:
            raise input_error(path, "a count-table reference needs a cell-type table (--cell-types)")
        df = _read_table(path, "reference count table")
        orient = _orientation(df, labels.index, orientation, path, "cell id")
        adata = _table_to_adata(df, orient, path, "cell id")
    labels = labels.reindex(adata.obs_names)
    unlabelled = labels.isna().to_numpy() | (labels.astype(str).str.strip() == "").to_numpy()
    if unlabelled.all():
        raise input_error(labels_path, f"no cell of {path.name} has a label in column '{labels_key}'",
                          field=labels_key, value=str(adata.obs_names[0]))
    if unlabelled.any():
        log.warning("%s: %d of %d cells have no '%s' label and are dropped", labels_path, int(unlabelled.sum()),
                    adata.n_obs, labels_key)
        adata = adata[~unlabelled].copy()
        labels = labels[~unlabelled]
    adata.obs[labels_key] = pd.Categorical(labels.astype(str).to_numpy())
    counts = adata.obs[labels_key].value_counts()
    if len(counts) < 2:
        raise input_error(labels_path, "a reference needs at least two cell types; column has a single class",
                          field=labels_key, value=str(counts.index[0]))
    small = counts[counts < min_cells_per_type]
    if len(small):
        raise input_error(labels_path, f"{len(small)} cell type(s) with fewer than {min_cells_per_type} cells",
                          field=labels_key, value=f"{small.index[0]}: {int(small.iloc[0])}")
    log.info("reference %s: %d cells × %d genes, %d cell types", path, adata.n_obs, adata.n_vars, len(counts))
    return adata
