"""``spotmap signatures``: estimate cell-type signatures from a labelled reference and write the folder."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import pandas as pd

from spotmap.reference.filtering import CELL_COUNT_CUTOFF, CELL_PERCENTAGE_CUTOFF2, NONZ_MEAN_CUTOFF
from spotmap.reference.settings import SignatureSettings
from spotmap.report import sections
from spotmap.utils import log, write_h5ad, write_table

_T = SignatureSettings()


def run(*, reference: str | os.PathLike, outdir: str | os.PathLike, labels_key: str = "cell_type",
        batch_key: str | None = None, covariate_keys: tuple[str, ...] = (), cell_types: str | os.PathLike | None = None,
        method: str = "regression", max_epochs: int | None = None, batch_size: int | None = _T.batch_size,
        lr: float = _T.lr, seed: int = _T.seed, device: str = "auto", threads: int | None = _T.threads,
        cell_count_cutoff: float = CELL_COUNT_CUTOFF, cell_percentage_cutoff2: float = CELL_PERCENTAGE_CUTOFF2,
        nonz_mean_cutoff: float = NONZ_MEAN_CUTOFF, gene_filter: bool = True, umap: bool = True,
        progress: bool = True) -> Path:
    """Estimate signatures from ``reference`` (:func:`spotmap.reference.estimate_signatures`) and write ``outdir``
    (:func:`write_signature_outputs`); return ``<outdir>/signatures.csv``.

    ``batch_size`` None: every cell in each step; ``threads`` None: torch's default.
    """
    from spotmap.reference import estimate_signatures, load_reference
    from spotmap.utils import resolve_device, seed_everything

    resolve_device(device)  # fail on --device cuda without a GPU before reading anything
    adata = load_reference(reference, labels_key=labels_key, cell_types=cell_types)
    seed_everything(seed)
    ref, sig, history = estimate_signatures(
        adata, labels_key, batch_key, method=method, covariate_keys=covariate_keys, gene_filter=gene_filter,
        # numbers as the CLI's options give them (the gene filter's summary records them)
        cell_count_cutoff=float(cell_count_cutoff), cell_percentage_cutoff2=float(cell_percentage_cutoff2),
        nonz_mean_cutoff=float(nonz_mean_cutoff), max_epochs=max_epochs, batch_size=batch_size, lr=float(lr), seed=seed,
        device=device, source=str(reference), progress=progress, threads=threads)
    paths = write_signature_outputs(outdir, ref, sig, history, labels_key, batch_key, umap=umap, seed=seed)
    log.info("wrote %s (%d genes × %d cell types)", paths["signatures.csv"], sig.shape[0], sig.shape[1])
    return paths["signatures.csv"]


def write_signature_outputs(outdir: str | os.PathLike, reference: ad.AnnData, signatures: pd.DataFrame,
                            history: pd.DataFrame, labels_key: str, batch_key: str | None = None,
                            umap: bool = True, seed: int = 0, layer: str | None = None) -> dict[str, Path]:
    """Write every output of ``spotmap signatures`` into ``outdir`` (each file atomically).

    ``signatures.csv`` is written last, so its presence means the step finished.
    """
    from spotmap import pl
    from spotmap.reference.signatures import cluster_averages, compute_umap
    from spotmap.report.mqc import save_mqc_figure, write_mqc_linegraph, write_mqc_table

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {name: outdir / name for name in (
        "signatures.csv", "reference.h5ad", "training_history.tsv", "signatures_training_mqc.yaml",
        "signatures_gene_filter_mqc.tsv", "signatures_vs_average_mqc.png", "signatures_umap_mqc.png",
        "signatures_history_mqc.png")}
    if umap:
        log.info("UMAP of %d reference cells", reference.n_obs)
        reference.obsm["X_umap"] = compute_umap(reference, seed=seed, layer=layer)
    # tables and MultiQC content
    write_table(history, paths["training_history.tsv"], index=False)
    series = {"-ELBO": dict(zip(history["epoch"].astype(float), history["elbo"].astype(float)))} if len(history) else {}
    write_mqc_linegraph(paths["signatures_training_mqc.yaml"], sections.SIGNATURES_HISTORY, series,
                        xlab="epoch", ylab="-ELBO (nats)", title="Reference regression: training history")
    gf = dict(reference.uns.get("gene_filter", {}))
    table = pd.DataFrame([{k: ("none" if v is None else v) for k, v in gf.items()}], index=pd.Index(["reference"],
                                                                                                    name="Sample"))
    write_mqc_table(table, paths["signatures_gene_filter_mqc.tsv"], sections.GENE_FILTER)
    # plots
    save_mqc_figure(pl.signatures_history(history), paths["signatures_history_mqc.png"])
    save_mqc_figure(pl.signatures_vs_average(signatures, cluster_averages(reference, labels_key, layer)),
                    paths["signatures_vs_average_mqc.png"])
    if "X_umap" in reference.obsm:
        save_mqc_figure(pl.reference_umap(reference, labels_key, batch_key), paths["signatures_umap_mqc.png"])
    else:
        paths.pop("signatures_umap_mqc.png")
    write_h5ad(reference, paths["reference.h5ad"])
    write_table(signatures.rename_axis("gene"), paths["signatures.csv"])
    return paths
