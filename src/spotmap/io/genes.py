"""Matching genes between the reference signatures and the spatial data."""

from __future__ import annotations

import anndata as ad
import pandas as pd

from spotmap.errors import SpotmapError
from spotmap.utils import log

MIN_SHARED_GENES = 100
WARN_SHARED_GENES = 5000


def match_genes(adata: ad.AnnData, signatures: pd.DataFrame, min_genes: int = MIN_SHARED_GENES,
                signature_ids: pd.Series | None = None, source: str = "signatures") -> tuple[ad.AnnData, pd.DataFrame]:
    """Subset spatial data and signatures to their shared genes, in the same order.

    Genes are matched by id (``adata.var['gene_ids']`` against ``signature_ids``) when both are
    known, falling back to symbols (``var_names`` against the signatures' index).

    Returns
    -------
    ``(adata_subset, signatures_subset)`` with ``adata_subset.var_names == signatures_subset.index``.

    Raises
    ------
    SpotmapError
        Fewer than ``min_genes`` shared genes.
    """
    by = "symbol"
    sig = signatures
    if signature_ids is not None and "gene_ids" in adata.var:
        ids = pd.Index(adata.var["gene_ids"].astype(str))
        shared_ids = pd.Index(signature_ids.astype(str)).intersection(ids)
        if len(shared_ids) >= max(min_genes, 1):
            by = "id"
            sig = signatures.set_axis(pd.Index(signature_ids.astype(str)), axis=0)
            sp_idx = pd.Series(adata.var_names, index=ids)
            sp_sub = adata[:, sp_idx.loc[shared_ids].to_numpy()].copy()
            sig_sub = sig.loc[shared_ids].set_axis(sp_sub.var_names, axis=0)
            _report(len(shared_ids), by, adata.n_vars, len(signatures), min_genes, source)
            return sp_sub, sig_sub
    shared = adata.var_names.intersection(sig.index)
    _report(len(shared), by, adata.n_vars, len(signatures), min_genes, source)
    return adata[:, shared].copy(), sig.loc[shared].copy()


def _report(n: int, by: str, n_sp: int, n_sig: int, min_genes: int, source: str) -> None:
    if n < min_genes:
        raise SpotmapError(f"{source}: only {n} genes shared with the spatial data (matched by {by}; "
                           f"{n_sp} spatial, {n_sig} in the signatures); at least {min_genes} are needed")
    log.info("%d genes shared between spatial data (%d) and %s (%d), matched by %s", n, n_sp, source, n_sig, by)
    if n < WARN_SHARED_GENES:
        log.warning("only %d shared genes (< %d): mapping works but is less precise", n, WARN_SHARED_GENES)


def shared_genes(spatial: ad.AnnData, reference: ad.AnnData, min_genes: int = MIN_SHARED_GENES,
                 source: str = "reference") -> tuple[pd.DataFrame, str]:
    """Pair the genes of the spatial data with those of the reference, by id, falling back to symbol.

    Ids (``var['gene_ids']``) are used when both sides have them and they share at least
    ``max(min_genes, 1)`` genes; otherwise symbols (``var_names``).

    Returns
    -------
    ``(pairs, by)``: ``pairs`` has one row per shared gene with columns ``spatial`` and ``reference``
    (the ``var_names`` on each side, spatial order); ``by`` is ``"id"`` or ``"symbol"``.

    Raises
    ------
    SpotmapError
        Fewer than ``min_genes`` shared genes (the message names both sides' first genes); a
        warning is logged under 5,000.
    """
    if "gene_ids" in spatial.var and "gene_ids" in reference.var:
        sp_ids = pd.Series(spatial.var_names, index=spatial.var["gene_ids"].astype(str))
        ref_ids = pd.Series(reference.var_names, index=reference.var["gene_ids"].astype(str))
        sp_ids = sp_ids[~sp_ids.index.duplicated()]
        ref_ids = ref_ids[~ref_ids.index.duplicated()]
        common = sp_ids.index[sp_ids.index.isin(ref_ids.index)]
        if len(common) >= max(min_genes, 1):
            pairs = pd.DataFrame({"spatial": sp_ids.loc[common].to_numpy(), "reference": ref_ids.loc[common].to_numpy()},
                                 index=pd.Index(common, name="gene_id"))
            _report_shared(len(pairs), "id", spatial, reference, min_genes, source)
            return pairs, "id"
    common = spatial.var_names[spatial.var_names.isin(reference.var_names)]
    pairs = pd.DataFrame({"spatial": common, "reference": common}, index=pd.Index(common, name="gene"))
    _report_shared(len(pairs), "symbol", spatial, reference, min_genes, source)
    return pairs, "symbol"


def _report_shared(n: int, by: str, spatial: ad.AnnData, reference: ad.AnnData, min_genes: int, source: str) -> None:
    if n < min_genes:
        raise SpotmapError(
            f"{source}: only {n} genes shared with the spatial data (matched by id, then symbol; "
            f"{spatial.n_vars} spatial genes, e.g. {spatial.var_names[0]!r}; {reference.n_vars} reference genes, "
            f"e.g. {reference.var_names[0]!r}); at least {min_genes} are needed — check both use the same "
            "species and gene naming")
    log.info("%d genes shared between the spatial data (%d) and %s (%d), matched by %s", n, spatial.n_vars,
             source, reference.n_vars, by)
    if n < WARN_SHARED_GENES:
        log.warning("only %d shared genes (< %d): mapping works but is less precise", n, WARN_SHARED_GENES)
