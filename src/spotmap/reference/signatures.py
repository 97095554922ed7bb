"""Reference signatures: estimate them (regression or cluster averages) or read ones made elsewhere."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from spotmap.errors import SpotmapError, input_error
from spotmap.reference._module import RegressionPriors
from spotmap.reference.filtering import (CELL_COUNT_CUTOFF, CELL_PERCENTAGE_CUTOFF2, NONZ_MEAN_CUTOFF,
                                         filter_genes, gene_filter_summary)
from spotmap.reference.model import SUMMARIES, RegressionModel, counts_matrix
from spotmap.reference.settings import SignatureSettings
from spotmap.utils import log

VARM_PREFIX = "means_per_cluster_mu_fg"
METHODS = ("regression", "average")


def load_reference(path: str | os.PathLike, labels_key: str = "cell_type",
                   cell_types: str | os.PathLike | None = None) -> ad.AnnData:
    """Read a labelled reference (``.h5ad``, or a count table + ``cell_types`` table) via :func:`spotmap.io.read_reference`."""
    from spotmap.io import read_reference

    return read_reference(path, labels_key=labels_key, cell_types=cell_types)


def cluster_averages(adata: ad.AnnData, labels_key: str, layer: str | None = None) -> pd.DataFrame:
    """Mean counts per cell of each cell type (genes × types), as cell2location's ``compute_cluster_averages``."""
    if labels_key not in adata.obs.columns:
        raise input_error(None, "cell type column not found in obs", labels_key)
    labels = pd.Categorical(adata.obs[labels_key].astype(str))
    X = adata.X if layer is None else adata.layers[layer]
    X = sp.csr_matrix(X) if sp.issparse(X) else np.asarray(X)
    onehot = sp.csr_matrix((np.ones(adata.n_obs), (labels.codes, np.arange(adata.n_obs))),
                           shape=(len(labels.categories), adata.n_obs))
    sums = np.asarray((onehot @ X).todense() if sp.issparse(X) else onehot @ X, dtype=np.float64)
    avg = sums / np.bincount(labels.codes, minlength=len(labels.categories))[:, None]
    return pd.DataFrame(avg.T, index=adata.var_names.copy(), columns=[str(c) for c in labels.categories])


def compute_umap(adata: ad.AnnData, seed: int = 0, n_top_genes: int = 2000, layer: str | None = None) -> np.ndarray:
    """UMAP of the reference cells (cells × 2) as in the cell2location tutorial.

    Normalise to 10,000 counts per cell, log1p, highly variable genes, PCA, exact 15-NN graph, UMAP;
    on a copy, so the counts in ``adata`` stay raw.
    """
    from spotmap.embedding import log_normalised_umap

    src = adata if layer is None else ad.AnnData(X=adata.layers[layer], obs=adata.obs[[]], var=adata.var[[]])
    return log_normalised_umap(src, seed=seed, n_top_genes=n_top_genes)


def _average_summaries(adata: ad.AnnData, labels_key: str, layer: str | None) -> dict[str, pd.DataFrame]:
    """Cluster means with standard errors and normal 90% intervals (clipped at 0) for ``--method average``."""
    means = cluster_averages(adata, labels_key, layer)
    X = adata.X if layer is None else adata.layers[layer]
    X = sp.csr_matrix(X, dtype=np.float64) if sp.issparse(X) else sp.csr_matrix(np.asarray(X, dtype=np.float64))
    sq = cluster_averages(ad.AnnData(X=X.multiply(X).tocsr(), obs=adata.obs[[labels_key]], var=adata.var[[]]),
                          labels_key)
    n = pd.Series(adata.obs[labels_key].astype(str)).value_counts().reindex(means.columns).to_numpy()
    se = np.sqrt(np.clip(sq - means ** 2, 0, None) / n)
    return {"means": means, "stds": se, "q05": (means - 1.645 * se).clip(lower=0), "q95": means + 1.645 * se}


def _check_keys(adata: ad.AnnData, keys: Sequence[str], source: str | None) -> None:
    for key in keys:
        if key not in adata.obs.columns:
            columns = ", ".join(map(str, adata.obs.columns[:20]))
            raise input_error(source, f"column not found in obs (columns: {columns})", key)


def estimate_signatures(adata: ad.AnnData, labels_key: str, batch_key: str | None = None,
                        method: str = "regression", covariate_keys: Sequence[str] = (),
                        gene_filter: bool = True, cell_count_cutoff: float = CELL_COUNT_CUTOFF,
                        cell_percentage_cutoff2: float = CELL_PERCENTAGE_CUTOFF2,
                        nonz_mean_cutoff: float = NONZ_MEAN_CUTOFF, max_epochs: int | None = None,
                        batch_size: int | None = SignatureSettings.batch_size, lr: float = SignatureSettings.lr,
                        seed: int = SignatureSettings.seed, device: str = "auto",
                        priors: RegressionPriors | None = None, layer: str | None = None,
                        source: str | None = None, progress: bool = True,
                        **train_config) -> tuple[ad.AnnData, pd.DataFrame, pd.DataFrame]:
    """Estimate cell-type signatures from a labelled reference.

    Filters genes (:func:`filter_genes`, unless ``gene_filter=False``), then either fits the
    :class:`RegressionModel` (``method="regression"``) or takes cluster means (``"average"``, no
    training). Returns ``(reference, signatures, history)``:

    * ``reference`` — the gene-filtered copy with ``varm['{means,stds,q05,q95}_per_cluster_mu_fg']``,
      ``uns['mod']`` and ``uns['gene_filter']`` (numbers for the report);
    * ``signatures`` — genes × types, expected counts per cell (regression: at average detection);
    * ``history`` — one row per epoch (empty for ``average``).
    """
    if method not in METHODS:
        raise SpotmapError(f"--method must be one of {', '.join(METHODS)} (got {method!r})")
    _check_keys(adata, [labels_key] + ([batch_key] if batch_key else []) + list(covariate_keys), source)
    counts_matrix(adata, layer, source)  # fail on normalised values before any work
    n_before = adata.n_vars
    if gene_filter:
        keep = filter_genes(adata, cell_count_cutoff, cell_percentage_cutoff2, nonz_mean_cutoff, layer)
        summary = gene_filter_summary(n_before, len(keep), adata.n_obs, cell_count_cutoff, cell_percentage_cutoff2,
                                      nonz_mean_cutoff)
        if len(keep) == 0:
            raise input_error(source, "no gene passes the gene filter; lower the cutoffs or use --no-gene-filter",
                              "var", f"{n_before} genes")
        ref = adata[:, keep].copy()
    else:
        summary = gene_filter_summary(n_before, n_before, adata.n_obs, None, None, None)
        ref = adata.copy()
    log.info("gene filter: %d of %d genes kept", ref.n_vars, n_before)
    if not ref.var_names.is_unique:
        dup = ref.var_names[ref.var_names.duplicated()][0]
        raise input_error(source, "gene names must be unique", "var_names", dup)
    ref.uns["gene_filter"] = summary

    if method == "average":
        labels = ref.obs[labels_key]
        if labels.isna().any() or labels.astype(str).nunique() < 2:
            raise input_error(source, "the reference needs at least 2 cell types and no missing labels", labels_key,
                              list(pd.unique(labels.astype(str)))[:5])
        summaries = _average_summaries(ref, labels_key, layer)
        for k in SUMMARIES:
            df = summaries[k].copy()
            df.columns = [f"{k}_per_cluster_mu_fg_{c}" for c in df.columns]
            ref.varm[f"{k}_per_cluster_mu_fg"] = df
        ref.uns["mod"] = {"model_name": "cluster averages (spotmap --method average)",
                          "factor_names": list(summaries["means"].columns), "labels_key": labels_key}
        history = pd.DataFrame(columns=["epoch", "elbo", "elbo_smoothed", "rel_change", "seconds"])
        return ref, summaries["means"], history

    model = RegressionModel(ref, labels_key, batch_key, covariate_keys, priors, layer=layer, source=source)
    history = model.train(max_epochs=max_epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                          progress=progress, **train_config)
    model.export_posterior(ref)
    sig = ref.varm[f"{VARM_PREFIX}"].copy()
    sig.columns = list(model.factor_names)
    return ref, sig, history


# ---------------------------------------------------------------------------- reading tables made elsewhere
def _validate_signatures(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    if df.shape[0] == 0:
        raise input_error(path, "the signatures table has no genes")
    if df.shape[1] < 2:
        raise input_error(path, "signatures need at least 2 cell types (columns)", None, list(map(str, df.columns)))
    df.index = df.index.map(str)
    df.columns = [str(c) for c in df.columns]
    if not df.index.is_unique:
        raise input_error(path, "gene names must be unique", "index", df.index[df.index.duplicated()][0])
    if not df.columns.is_unique:
        raise input_error(path, "cell type names must be unique", "columns",
                          df.columns[df.columns.duplicated()][0])
    for col in df.columns:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() & df[col].notna()
        if bad.any():
            raise input_error(path, f"non-numeric value for gene {df.index[bad.to_numpy()][0]!r}", col,
                              df[col][bad].iloc[0])
        if values.isna().any():
            raise input_error(path, f"missing (NaN) value for gene {df.index[values.isna().to_numpy()][0]!r}", col)
        if not np.isfinite(values).all():
            raise input_error(path, f"infinite value for gene {df.index[~np.isfinite(values).to_numpy()][0]!r}", col)
        if (values < 0).any():
            raise input_error(path, f"negative value for gene {df.index[(values < 0).to_numpy()][0]!r}", col,
                              float(values[values < 0].iloc[0]))
        df[col] = values.astype(np.float64)
    return df


def _read_signatures_h5ad(path: Path) -> pd.DataFrame:
    try:
        adata = ad.read_h5ad(path, backed="r")
    except Exception as exc:
        raise input_error(path, f"cannot be read as AnnData ({type(exc).__name__})") from None
    try:
        prefix = f"{VARM_PREFIX}_"
        if VARM_PREFIX in adata.varm:
            raw = adata.varm[VARM_PREFIX]
            if isinstance(raw, pd.DataFrame):
                df = raw.copy()
            else:
                names = adata.uns.get("mod", {}).get("factor_names")
                if names is None or len(names) != np.shape(raw)[1]:
                    raise input_error(path, "varm array has no cell type names (uns['mod']['factor_names'])",
                                      f"varm/{VARM_PREFIX}")
                df = pd.DataFrame(np.asarray(raw), columns=[str(n) for n in names])
            df.index = adata.var_names.copy()
        else:
            cols = [c for c in adata.var.columns if str(c).startswith(prefix)]
            if not cols:
                raise input_error(path, f"no reference signatures: neither varm['{VARM_PREFIX}'] nor var columns "
                                  f"'{prefix}<type>' (export them with cell2location's export_posterior)")
            df = adata.var[cols].copy()
        df.columns = [str(c)[len(prefix):] if str(c).startswith(prefix) else str(c) for c in df.columns]
        return df
    finally:
        if adata.isbacked:
            adata.file.close()


def read_signatures(path: str | os.PathLike) -> pd.DataFrame:
    """Read reference signatures made elsewhere (genes × cell types, expected counts per cell).

    Accepts a CSV / TSV table (first column = genes, header = cell types, ``#`` comment lines
    allowed at the top; ``.gz`` fine) or a cell2location-exported reference ``.h5ad`` with
    ``varm['means_per_cluster_mu_fg']`` or ``var`` columns ``means_per_cluster_mu_fg_<type>``
    (the prefix is stripped). Values must be numeric, finite, non-negative; genes unique; ≥ 2 types.
    """
    path = Path(path)
    if not path.exists():
        raise input_error(path, "signatures file not found")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".h5ad":
        df = _read_signatures_h5ad(path)
    else:
        core = suffixes[-2] if suffixes and suffixes[-1] == ".gz" and len(suffixes) > 1 else (suffixes or [""])[-1]
        sep = "\t" if core in {".tsv", ".txt", ".tab"} else ","
        try:
            import gzip

            opener = gzip.open if suffixes and suffixes[-1] == ".gz" else open
            with opener(path, "rt") as fh:
                skip = 0
                for line in fh:
                    if not line.startswith("#"):
                        break
                    skip += 1
            df = pd.read_csv(path, sep=sep, index_col=0, skiprows=skip)
        except (UnicodeDecodeError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise input_error(path, f"cannot be read as a {'TSV' if sep == chr(9) else 'CSV'} table "
                                    f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    return _validate_signatures(df, path)
