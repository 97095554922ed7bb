"""10x Genomics HDF5 feature-barcode matrices (Cell Ranger / Space Ranger layout).

The file holds a CSC matrix of shape (features, barcodes) under ``/matrix`` with the
feature table under ``/matrix/features``. Space Ranger writes root attributes
(``library_ids``, ``software_version`` ...); some tools omit them, so the reader never
relies on them.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from spotmap.errors import input_error
from spotmap.utils import atomic_path

_SLICE = 1 << 24  # entries per write/read slice of the large arrays


def write_10x_h5(path: str | Path, counts: sp.spmatrix | np.ndarray, barcodes, gene_ids, gene_names,
                 library_id: str = "spotmap", software_version: str = "spaceranger-2.1.0",
                 genome: str = "simulated", root_attrs: bool = True, chemistry: str = "Spatial 3' v1") -> Path:
    """Write ``counts`` (barcodes × genes, integer) as a Space Ranger ``filtered_feature_bc_matrix.h5``.

    With ``root_attrs=False`` the root attributes are left out, as some converters do. Large matrices
    are written in slices, without an int64 copy of the whole index array.
    """
    X = counts if sp.isspmatrix_csr(counts) or isinstance(counts, sp.csr_array) else sp.csr_matrix(counts)
    if not X.has_sorted_indices:
        X = X.copy()
        X.sort_indices()  # barcodes × genes == CSC of genes × barcodes
    n_bc, n_genes = X.shape

    def _s(values):
        return np.array([str(v).encode() for v in values], dtype=f"S{max(1, max((len(str(v)) for v in values), default=1))}")

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            if root_attrs:
                f.attrs["chemistry_description"] = np.bytes_(chemistry)
                f.attrs["filetype"] = np.bytes_("matrix")
                f.attrs["library_ids"] = np.array([library_id.encode()], dtype="S")
                f.attrs["original_gem_groups"] = np.array([1], dtype=np.int64)
                f.attrs["software_version"] = np.bytes_(software_version)
                f.attrs["version"] = np.int64(2)
            m = f.create_group("matrix")
            m.create_dataset("barcodes", data=_s(barcodes))
            for name, arr, dtype in (("data", X.data, np.int32), ("indices", X.indices, np.int64)):
                if arr.size <= _SLICE:
                    m.create_dataset(name, data=arr.astype(dtype), compression="gzip")
                    continue
                dset = m.create_dataset(name, shape=arr.shape, dtype=dtype, compression="gzip")
                for start in range(0, arr.size, _SLICE):
                    dset[start:start + _SLICE] = arr[start:start + _SLICE].astype(dtype)
            m.create_dataset("indptr", data=X.indptr.astype(np.int64))
            m.create_dataset("shape", data=np.array([n_genes, n_bc], dtype=np.int32))
            feats = m.create_group("features")
            feats.create_dataset("_all_tag_keys", data=np.array([b"genome"], dtype="S"))
            feats.create_dataset("feature_type", data=_s(["Gene Expression"] * n_genes))
            feats.create_dataset("genome", data=_s([genome] * n_genes))
            feats.create_dataset("id", data=_s(gene_ids))
            feats.create_dataset("name", data=_s(gene_names))
    return Path(path)


def _decode(arr) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in arr], dtype=object)


def read_10x_h5(path: str | Path, gene_expression_only: bool = True) -> ad.AnnData:
    """Read a 10x HDF5 matrix (v3 ``features`` or legacy v2 ``genes`` layout) into AnnData.

    Result: barcodes × genes, integer counts in sparse ``X`` (float32 CSR), ``var_names`` are
    gene symbols made unique, ``var['gene_ids']`` the feature ids.
    """
    path = Path(path)
    if not path.exists():
        raise input_error(path, "file not found")
    try:
        with h5py.File(path, "r") as f:
            if "matrix" in f:
                g = f["matrix"]
                if "features" in g:
                    ids = _decode(g["features/id"][:])
                    names = _decode(g["features/name"][:])
                    ftype = _decode(g["features/feature_type"][:]) if "feature_type" in g["features"] else None
                else:
                    ids, names, ftype = _decode(g["genes"][:]), _decode(g["gene_names"][:]), None
            else:  # Cell Ranger v2: one group per genome
                keys = list(f.keys())
                if not keys:
                    raise input_error(path, "10x HDF5 file holds no matrix group")
                g = f[keys[0]]
                ids, names, ftype = _decode(g["genes"][:]), _decode(g["gene_names"][:]), None
            barcodes = _decode(g["barcodes"][:])
            shape = tuple(int(x) for x in g["shape"][:])
            # Read straight into the dtypes of the result (float32 values, int32 indices when they fit):
            # no int64 copy of a Visium HD matrix's hundred million entries.
            small = g["indices"].shape[0] < 2**31 - 1 and max(shape, default=0) < 2**31 - 1
            idx_dtype = np.int32 if small else np.int64
            data = g["data"].astype(np.float32)[:] if g["data"].dtype.kind in "iuf" else g["data"][:]
            indices, indptr = g["indices"].astype(idx_dtype)[:], g["indptr"].astype(idx_dtype)[:]
    except OSError as exc:  # truncated or not HDF5 at all
        raise input_error(path, f"cannot be read as 10x HDF5 (corrupt or truncated?): {exc}".split("\n")[0]) from None
    except KeyError as exc:
        raise input_error(path, f"is not a 10x HDF5 matrix: missing {exc}") from None
    try:
        X = sp.csc_matrix((data, indices, indptr), shape=shape).T.tocsr()
    except ValueError as exc:
        raise input_error(path, f"inconsistent sparse matrix ({exc})", field="matrix") from None
    var = pd.DataFrame({"gene_ids": ids}, index=pd.Index(names, name=None))
    if ftype is not None:
        var["feature_types"] = ftype
    dup = pd.Index(barcodes)[pd.Index(barcodes).duplicated()]
    if len(dup):  # duplicated barcodes would silently merge two spots' positions
        raise input_error(path, f"{len(dup)} duplicate barcode(s)", field="barcodes", value=str(dup[0]))
    X = X if X.dtype == np.float32 else X.astype(np.float32)
    adata = ad.AnnData(X=X, obs=pd.DataFrame(index=pd.Index(barcodes)), var=var)
    if ftype is not None and gene_expression_only and not (ftype == "Gene Expression").all():
        adata = adata[:, adata.var["feature_types"] == "Gene Expression"].copy()
    adata.var_names_make_unique()
    return adata
