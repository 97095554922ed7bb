"""``spotmap signatures``: estimate cell-type signatures from a labelled single-cell reference."""

from __future__ import annotations

from pathlib import Path

import click

from spotmap.reference.filtering import CELL_COUNT_CUTOFF, CELL_PERCENTAGE_CUTOFF2, NONZ_MEAN_CUTOFF
from spotmap.reference.settings import SignatureSettings

_T = SignatureSettings()


@click.command("signatures")
@click.option("--reference", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Labelled single-cell reference: .h5ad with raw counts (or a count table with --cell-types).")
@click.option("--labels-key", default="cell_type", show_default=True, help="obs column with the cell type.")
@click.option("--batch-key", default=None, help="obs column with the batch / sample (detection and ambient per batch).")
@click.option("--covariate-keys", "covariate_keys", multiple=True,
              help="Categorical technology covariate in obs (repeatable), e.g. chemistry or platform: "
                   "a multiplicative per-gene effect per level.")
@click.option("--cell-types", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Cell type table for a count-table reference (read by spotmap.io.read_reference).")
@click.option("--outdir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--method", type=click.Choice(["regression", "average"]), default="regression", show_default=True,
              help="regression = cell2location's NB regression; average = cluster means, no training (fast).")
@click.option("--max-epochs", type=click.IntRange(min=1), default=None,
              help="Passes over the cells [default: min(400, 20000/cells·400), as cell2location].")
@click.option("--batch-size", type=click.IntRange(min=0), default=_T.batch_size, show_default=True,
              help="Cells per training step; 0 = all cells per step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=_T.lr, show_default=True,
              help="Adam learning rate (gradients clipped at ±10).")
@click.option("--seed", type=int, default=_T.seed, show_default=True,
              help="Random seed: the same seed on CPU gives bit-identical results.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=0), default=_T.threads, show_default=True,
              help="CPU threads for training, torch and BLAS (0: all cores; 1 is fastest for this model).")
@click.option("--cell-count-cutoff", type=float, default=CELL_COUNT_CUTOFF, show_default=True,
              help="Gene filter: keep genes detected in more than this many cells (with --nonz-mean-cutoff).")
@click.option("--cell-percentage-cutoff2", type=click.FloatRange(0, 1), default=CELL_PERCENTAGE_CUTOFF2,
              show_default=True, help="Gene filter: always keep genes detected in more than this fraction of cells.")
@click.option("--nonz-mean-cutoff", type=float, default=NONZ_MEAN_CUTOFF, show_default=True,
              help="Gene filter: minimum mean count over the cells that detect the gene.")
@click.option("--no-gene-filter", is_flag=True, help="Keep all genes.")
@click.option("--umap/--no-umap", default=True, show_default=True,
              help="Compute the reference UMAP (obsm['X_umap'] and signatures_umap_mqc.png).")
@click.option("--no-progress", is_flag=True, help="No progress bar (log lines instead).")
def command(reference: Path, labels_key: str, batch_key: str | None, covariate_keys: tuple[str, ...],
            cell_types: Path | None, outdir: Path, method: str, max_epochs: int | None, batch_size: int, lr: float,
            seed: int, device: str, threads: int, cell_count_cutoff: float, cell_percentage_cutoff2: float,
            nonz_mean_cutoff: float, no_gene_filter: bool, umap: bool, no_progress: bool) -> None:
    """Estimate cell-type expression signatures (genes × types) from a labelled reference.

    Writes OUTDIR/signatures.csv (expected counts per cell), OUTDIR/reference.h5ad (with
    varm['means_per_cluster_mu_fg'] and q05/q95/stds), training_history.tsv, MultiQC content
    (signatures_*_mqc.*) and QC plots. See docs/signatures.md.
    """
    from spotmap.steps import signatures
    from spotmap.utils import set_threads

    threads = set_threads(threads)
    signatures.run(reference=reference, outdir=outdir, labels_key=labels_key, batch_key=batch_key,
                   covariate_keys=covariate_keys, cell_types=cell_types, method=method, max_epochs=max_epochs,
                   batch_size=batch_size or None, lr=lr, seed=seed, device=device, threads=threads,
                   cell_count_cutoff=cell_count_cutoff, cell_percentage_cutoff2=cell_percentage_cutoff2,
                   nonz_mean_cutoff=nonz_mean_cutoff, gene_filter=not no_gene_filter, umap=umap,
                   progress=not no_progress)
