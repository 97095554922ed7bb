"""``spotmap qc-batch``: the across-sample batch-effect view (UMAP of spots coloured by sample)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("qc-batch")
@click.option("--spatial", "spatial", multiple=True, required=True, type=click.Path(path_type=Path),
              help="QC'd sample .h5ad from `spotmap qc` (repeat for each sample).")
@click.option("--outdir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder for qc_batch_umap_mqc.png.")
@click.option("--n-top-genes", default=2000, show_default=True, help="Highly variable genes (chosen per sample).")
@click.option("--seed", default=0, show_default=True, help="Random seed of PCA/UMAP.")
@click.option("--threads", type=click.IntRange(min=0), default=None,
              help="CPU threads for BLAS and numba (0: all cores); a pipeline task passes its CPUs. "
                   "[default: all cores]")
def command(spatial: tuple[Path, ...], outdir: Path, n_top_genes: int, seed: int, threads: int | None) -> None:
    """Write OUTDIR/qc_batch_umap_mqc.png: UMAP of log-normalised spots of all samples, coloured by sample.

    Samples that form separate islands show a batch effect worth a per-sample batch in mapping.
    """
    from spotmap.utils import set_threads

    set_threads(threads, torch_threads=False)  # before scanpy / numba start their thread pools
    from spotmap.steps import qc_batch

    qc_batch.run(spatial=list(spatial), outdir=outdir, n_top_genes=n_top_genes, seed=seed)
