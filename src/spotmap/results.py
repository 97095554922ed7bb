"""The mapping result: names, posterior summaries and the files of a result folder.

A mapping result (one restart, or the consensus of several) is a folder holding::

    sp.h5ad                    spots × genes, with every result (see below)
    W_cell_density.csv         posterior mean of w_sf, spots × cell types (cells per spot)
    W_cell_density_q05.csv     5 % quantile of w_sf ("at least this many cells")
    W_mRNA_count.csv           posterior mean of u_sf = w_sf · Σ_g m_g g_fg (mRNA counts per spot)
    W_mRNA_count_q05.csv       5 % quantile of u_sf
    training_history.tsv       epoch, elbo, elbo_smoothed, rel_change, seconds (restarts only)

``sp.h5ad`` follows cell2location's names so users can switch:

* ``obsm['{k}_cell_abundance_w_sf']`` for k in means, stds, q05, q50, q95 — DataFrames with columns
  ``'{k}cell_abundance_w_sf_{type}'`` (no underscore between k and "cell", as cell2location writes);
* ``obsm['{k}_mRNA_count_u_sf']`` likewise with columns ``'{k}mRNA_count_u_sf_{type}'``;
* ``obsm['w_sf_loc']``, ``obsm['w_sf_scale']`` — the variational posterior of w_sf per spot and type,
  ``log w_sf ~ Normal(loc, scale)`` (mean-field, as cell2location's AutoNormal guide). All summaries
  above are exact functions of these two arrays, so no posterior sampling is needed, and
  restarts can be pooled exactly (:mod:`spotmap.aggregate`);
* ``obs['detection_y_s']`` (posterior mean detection efficiency), ``obs['total_cell_abundance']``
  (Σ_f mean w_sf), ``obs['sample']``;
* ``uns['mod']`` — JSON-safe: ``factor_names``, ``mrna_per_cell`` (Σ_g m_g g_fg per type, posterior
  mean), ``elbo`` (final smoothed -ELBO), ``seed``, ``settings`` and a summary of global parameters.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy.special import ndtri

from spotmap.errors import input_error
from spotmap.utils import write_h5ad, write_matrix_csv, write_table

SITE_W = "cell_abundance_w_sf"
SITE_U = "mRNA_count_u_sf"
SUMMARIES = ("means", "stds", "q05", "q50", "q95")
QUANTILES = {"q05": 0.05, "q50": 0.50, "q95": 0.95}
RESULT_FILES = ("sp.h5ad", "W_cell_density.csv", "W_cell_density_q05.csv", "W_mRNA_count.csv",
                "W_mRNA_count_q05.csv")


def obsm_key(summary: str, site: str = SITE_W) -> str:
    """``'q05_cell_abundance_w_sf'`` etc."""
    return f"{summary}_{site}"


def column_names(summary: str, factor_names, site: str = SITE_W) -> list[str]:
    """``['q05cell_abundance_w_sf_<type>', ...]`` — cell2location's column names."""
    return [f"{summary}{site}_{f}" for f in factor_names]


def lognormal_summaries(loc: np.ndarray, scale: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, sd and quantiles of ``exp(Normal(loc, scale))``, elementwise.

    mean = exp(loc + scale²/2); sd = mean · sqrt(exp(scale²) − 1); q_p = exp(loc + scale · Φ⁻¹(p)).
    """
    loc = np.asarray(loc, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    mean = np.exp(loc + 0.5 * scale**2)
    out = {"means": mean, "stds": mean * np.sqrt(np.expm1(scale**2))}
    for k, p in QUANTILES.items():
        out[k] = np.exp(loc + scale * ndtri(p))
    return out


def set_summaries(adata: ad.AnnData, summaries: dict[str, np.ndarray], factor_names, site: str) -> None:
    """Store ``{summary: spots × types array}`` as cell2location-style obsm DataFrames."""
    for k in SUMMARIES:
        if k in summaries:
            adata.obsm[obsm_key(k, site)] = pd.DataFrame(
                np.asarray(summaries[k], dtype=np.float32), index=adata.obs_names,
                columns=column_names(k, factor_names, site))


def add_posterior(adata: ad.AnnData, w_loc: np.ndarray, w_scale: np.ndarray, factor_names,
                  mrna_per_cell: np.ndarray, chunk_size: int = 50_000) -> ad.AnnData:
    """Write the w_sf posterior and all derived summaries of w_sf and u_sf into ``adata`` (in place).

    Parameters
    ----------
    w_loc, w_scale
        spots × types parameters of ``log w_sf ~ Normal(loc, scale)``.
    factor_names
        Cell-type names (F).
    mrna_per_cell
        (F,) mRNA counts per cell of each type, Σ_g m_g g_fg; u_sf = w_sf · mrna_per_cell, so its summaries
        are those of w_sf scaled (m_g is treated at its posterior mean: a sum over thousands of genes
        is far more certain than any w_sf).
    chunk_size
        Spots summarised at a time, so memory stays bounded on large data.
    """
    factor_names = list(factor_names)
    S, F = w_loc.shape
    if w_scale.shape != (S, F) or len(factor_names) != F or np.shape(mrna_per_cell) != (F,):
        raise ValueError("w_loc, w_scale, factor_names and mrna_per_cell disagree in shape")
    adata.obsm["w_sf_loc"] = np.asarray(w_loc, dtype=np.float32)
    adata.obsm["w_sf_scale"] = np.asarray(w_scale, dtype=np.float32)
    summ = {k: np.empty((S, F), dtype=np.float32) for k in SUMMARIES}
    for i in range(0, S, chunk_size):
        part = lognormal_summaries(w_loc[i:i + chunk_size], w_scale[i:i + chunk_size])
        for k in SUMMARIES:
            summ[k][i:i + chunk_size] = part[k]
    set_summaries(adata, summ, factor_names, SITE_W)
    scale_u = np.asarray(mrna_per_cell, dtype=np.float32)[None, :]
    set_summaries(adata, {k: v * scale_u for k, v in summ.items()}, factor_names, SITE_U)
    adata.obs["total_cell_abundance"] = summ["means"].sum(1)
    mod = dict(adata.uns.get("mod", {}))
    mod["factor_names"] = factor_names
    mod["mrna_per_cell"] = [float(x) for x in np.asarray(mrna_per_cell).ravel()]
    adata.uns["mod"] = mod
    return adata


def table(adata: ad.AnnData, summary: str = "means", site: str = SITE_W) -> pd.DataFrame:
    """A spots × types table of one summary, columns = plain cell-type names."""
    df = adata.obsm[obsm_key(summary, site)]
    names = adata.uns["mod"]["factor_names"]
    return pd.DataFrame(np.asarray(df), index=adata.obs_names, columns=list(names))


def write_results(adata: ad.AnnData, outdir: str | Path, history: pd.DataFrame | None = None) -> Path:
    """Write ``sp.h5ad``, the four W_*.csv tables and (if given) ``training_history.tsv``, each atomically."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    for summary, site, name in (("means", SITE_W, "W_cell_density.csv"), ("q05", SITE_W, "W_cell_density_q05.csv"),
                                ("means", SITE_U, "W_mRNA_count.csv"), ("q05", SITE_U, "W_mRNA_count_q05.csv")):
        write_matrix_csv(table(adata, summary, site).rename_axis("spot_id"), outdir / name)
    if history is not None:
        write_table(history, outdir / "training_history.tsv", index=False)
    write_h5ad(adata, outdir / "sp.h5ad")  # last: its presence marks a complete result
    return outdir


def read_results(outdir: str | Path) -> ad.AnnData:
    """Read a result folder's ``sp.h5ad`` and check it carries the w_sf posterior."""
    path = Path(outdir) / "sp.h5ad"
    if not path.exists():
        raise input_error(path, "not found: not a spotmap mapping result folder")
    adata = ad.read_h5ad(path)
    for key in ("w_sf_loc", "w_sf_scale"):
        if key not in adata.obsm:
            raise input_error(path, "missing the w_sf posterior", field=f"obsm['{key}']")
    if "mod" not in adata.uns or "factor_names" not in adata.uns["mod"]:
        raise input_error(path, "missing cell-type names", field="uns['mod']['factor_names']")
    return adata
