"""Data preparation of the mapping step: raw counts as CSR, checked signatures, the device's memory."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from spotmap.errors import input_error
from spotmap.utils import log

if TYPE_CHECKING:
    import anndata as ad


def _counts_matrix(adata: ad.AnnData, source: str, block: int = 1 << 24) -> sp.csr_matrix:
    """``adata.X`` as float32 CSR with sorted indices, checked to hold raw counts (shares memory when possible)."""
    X = adata.X
    if not sp.issparse(X):
        X = sp.csr_matrix(np.asarray(X, dtype=np.float32))
    else:
        X = X.tocsr(copy=False)
        if X.dtype != np.float32:
            X = X.astype(np.float32)
    data = X.data
    for i in range(0, data.size, block):  # in blocks: no nnz-sized temporaries
        part = data[i:i + block]
        if not np.all(np.isfinite(part)):
            raise input_error(source, "counts must be finite", field="X", value=float(part[~np.isfinite(part)][0]))
        if part.min() < 0:
            raise input_error(source, "counts must be non-negative raw counts", field="X", value=float(part.min()))
        frac = np.abs(part - np.rint(part))
        if frac.max() > 1e-3:
            raise input_error(source, "counts must be raw integer counts (not normalised or log-transformed)",
                              field="X", value=float(part[np.argmax(frac)]))
        if frac.max() > 0:
            part[:] = np.rint(part)
    if data.size and (data == 0).any():
        X = X.copy()
        X.eliminate_zeros()
    if not X.has_sorted_indices:
        X = X.copy()
        X.sort_indices()
    return X


def validate_signatures(sig: pd.DataFrame, source: str = "signatures") -> pd.DataFrame:
    """Numeric, finite, non-negative genes × types table; genes zero in every type are dropped (warning)."""
    if sig.shape[1] < 1 or sig.shape[0] < 1:
        raise input_error(source, "signatures table is empty", value=sig.shape)
    if sig.columns.duplicated().any():
        raise input_error(source, "duplicated cell-type name", field="columns", value=sig.columns[sig.columns.duplicated()][0])
    if sig.index.duplicated().any():
        raise input_error(source, "duplicated gene", field="index", value=sig.index[sig.index.duplicated()][0])
    try:
        values = sig.to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        bad = [c for c in sig.columns if not pd.api.types.is_numeric_dtype(sig[c])]
        raise input_error(source, "signatures must be numeric", field=bad[0] if bad else None) from None
    if not np.isfinite(values).all():
        r, c = np.argwhere(~np.isfinite(values))[0]
        raise input_error(source, "signatures must be finite", field=f"{sig.index[r]}/{sig.columns[c]}", value=values[r, c])
    if (values < 0).any():
        r, c = np.argwhere(values < 0)[0]
        raise input_error(source, "signatures must be non-negative", field=f"{sig.index[r]}/{sig.columns[c]}", value=values[r, c])
    zero = values.sum(1) <= 0
    if zero.any():
        log.warning("%s: %d gene(s) have a zero signature in every cell type and are left out (e.g. %s)", source,
                    int(zero.sum()), sig.index[zero][0])
        sig = sig.loc[~zero]
    if (sig.sum(0) <= 0).any():
        raise input_error(source, "a cell type has an all-zero signature", field=str(sig.columns[(sig.sum(0) <= 0).to_numpy()][0]))
    return sig.astype(np.float64)


def gpu_memory_bytes(device: torch.device) -> int:
    """Total memory of ``device`` if it is a CUDA GPU, else 0."""
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 0
