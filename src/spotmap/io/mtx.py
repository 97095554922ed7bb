"""10x matrix-market folders (``matrix.mtx``, ``features.tsv``/``genes.tsv``, ``barcodes.tsv``; gzipped or not)."""

from __future__ import annotations

import gzip
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from spotmap.errors import input_error


def _find(folder: Path, names: list[str]) -> Path | None:
    for n in names:
        for cand in (folder / n, folder / f"{n}.gz"):
            if cand.exists():
                return cand
    return None


def _open(path: Path):
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path)


def read_10x_mtx(folder: str | Path) -> ad.AnnData:
    """Read a 10x mtx folder (v2 ``genes.tsv`` or v3 ``features.tsv``) into barcodes × genes AnnData."""
    folder = Path(folder)
    mtx = _find(folder, ["matrix.mtx"])
    feats = _find(folder, ["features.tsv", "genes.tsv"])
    bcs = _find(folder, ["barcodes.tsv"])
    for name, p in (("matrix.mtx", mtx), ("features.tsv/genes.tsv", feats), ("barcodes.tsv", bcs)):
        if p is None:
            raise input_error(folder, f"missing {name}")
    try:
        with _open(mtx) as fh:
            M = scipy.io.mmread(fh)
    except (ValueError, OSError, EOFError) as exc:
        raise input_error(mtx, f"cannot be read as Matrix Market: {exc}".split("\n")[0]) from None
    with _open(feats) as fh:
        f = pd.read_csv(fh, sep="\t", header=None, dtype=str)
    with _open(bcs) as fh:
        b = pd.read_csv(fh, sep="\t", header=None, dtype=str)[0].to_numpy()
    X = sp.csr_matrix(M).T.tocsr()  # genes × barcodes on disk
    if X.shape != (len(b), len(f)):
        raise input_error(mtx, f"matrix shape {M.shape} does not match {len(f)} features × {len(b)} barcodes")
    ids = f[0].to_numpy()
    names = f[1].to_numpy() if f.shape[1] > 1 else ids
    var = pd.DataFrame({"gene_ids": ids}, index=pd.Index(names))
    if f.shape[1] > 2:
        var["feature_types"] = f[2].to_numpy()
    dup = pd.Index(b)[pd.Index(b).duplicated()]
    if len(dup):  # duplicated barcodes would silently merge two spots' positions
        raise input_error(bcs, f"{len(dup)} duplicate barcode(s)", field="barcodes", value=str(dup[0]))
    adata = ad.AnnData(X=X.astype(np.float32), obs=pd.DataFrame(index=pd.Index(b)), var=var)
    if "feature_types" in adata.var:
        adata = adata[:, adata.var["feature_types"] == "Gene Expression"].copy()
    adata.var_names_make_unique()
    return adata
