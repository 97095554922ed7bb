"""``spotmap qc``: read one spatial sample, compute spot QC, filter, write the QC outputs."""

from __future__ import annotations

from pathlib import Path

import click

from spotmap.io.genes import MIN_SHARED_GENES
from spotmap.qc.thresholds import HD_8UM, VISIUM


class AutoNumber(click.ParamType):
    """A number, or ``auto`` (the platform's default, resolved once the input is read)."""

    name = "NUMBER|auto"

    def __init__(self, kind: type) -> None:
        self.kind = kind

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        text = str(value).strip()
        if text.lower() == "auto":
            return "auto"
        try:
            return self.kind(float(text)) if self.kind is int and float(text).is_integer() else self.kind(text)
        except ValueError:
            self.fail(f"must be a number or 'auto' (got {value!r})", param, ctx)


_AUTO = (f"auto: {VISIUM.min_counts:g} / {VISIUM.min_genes} / {VISIUM.max_mt_fraction:g} for Visium and other "
         f"inputs, {HD_8UM.min_counts:g} / {HD_8UM.min_genes} / {HD_8UM.max_mt_fraction:g} for Visium HD 8 µm bins "
         "(counts and genes scaled by (bin size / 8)² for other bin sizes)")


@click.command("qc")
@click.option("--sample", required=True, help="Sample id (no spaces); names the outputs and prefixes spot ids.")
@click.option("--input", "input_path", required=True, type=click.Path(path_type=Path),
              help="Space Ranger outs/ folder (or its parent), .h5ad, 10x .h5, or a .csv/.tsv count table.")
@click.option("--outdir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (created; files replaced atomically).")
@click.option("--coordinates", type=click.Path(path_type=Path), default=None,
              help="Spot coordinates table (barcode + x,y) for count tables, .h5 or .h5ad without obsm['spatial'].")
@click.option("--orientation", type=click.Choice(["auto", "genes_x_spots", "spots_x_genes"]), default="auto",
              show_default=True, help="Count tables: which side holds the spots (auto: the side matching the "
              "coordinates' barcodes).")
@click.option("--counts-layer", type=click.Choice(["auto", "X", "counts", "raw"]), default="auto", show_default=True,
              help=".h5ad: where the raw counts are (auto: layers['counts'], then X, then .raw).")
@click.option("--bin-size", type=click.IntRange(min=1), default=None,
              help="Visium HD: bin size in µm, picks outs/binned_outputs/square_{bin:03d}um  [default: 8]. "
              "Ignored for other inputs.")
@click.option("--batch", default=None,
              help="Batch label (no spaces) written to every spot as obs['batch'] (the samplesheet's batch column; "
              "map several samples with --batch-key batch to share batch-level parameters).  [default: none]")
@click.option("--min-counts", type=AutoNumber(float), default="auto", show_default=True,
              help="Remove spots with fewer UMI counts (nf-core/spatialvi qc_min_counts). " + _AUTO + ".")
@click.option("--min-genes", type=AutoNumber(int), default="auto", show_default=True,
              help="Remove spots with fewer genes detected (nf-core/spatialvi qc_min_genes); auto as above.")
@click.option("--max-mt-fraction", type=AutoNumber(float), default="auto", show_default=True,
              help="Remove spots whose mitochondrial share of counts is higher, 0-1 (spatialvi: 20 %); auto as "
              "above.")
@click.option("--mt-genes", type=click.Path(path_type=Path), default=None,
              help="File with mitochondrial genes (symbols or ids, one per line) instead of the mt-/MT- prefix.")
@click.option("--reference", type=click.Path(path_type=Path), default=None,
              help="Optional single-cell reference (.h5ad or count table): report the shared genes, fail early.")
@click.option("--cell-types", type=click.Path(path_type=Path), default=None,
              help="Cell-type table for a count-table --reference (first column cell id).")
@click.option("--labels-key", default="cell_type", show_default=True, help="Label column of the reference.")
@click.option("--min-shared-genes", type=int, default=MIN_SHARED_GENES, show_default=True,
              help="With --reference: stop if fewer genes are shared (a warning under 5,000).")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
def command(sample: str, input_path: Path, outdir: Path, coordinates: Path | None, orientation: str,
            counts_layer: str, bin_size: int | None, batch: str | None, min_counts, min_genes, max_mt_fraction,
            mt_genes: Path | None,
            reference: Path | None, cell_types: Path | None, labels_key: str, min_shared_genes: int,
            no_plots: bool) -> None:
    """QC one spatial sample and write OUTDIR/<SAMPLE>.h5ad (filtered spots, mitochondrial genes
    removed, raw counts), <SAMPLE>_qc_metrics.tsv (every spot, pass_qc), <SAMPLE>_qc_summary_mqc.tsv
    and the <SAMPLE>_qc_histograms_mqc.png / <SAMPLE>_qc_spatial_mqc.png plots (MultiQC custom content).
    """
    from spotmap.steps import qc

    qc.run(sample=sample, input=input_path, outdir=outdir, coordinates=coordinates, orientation=orientation,
           counts_layer=counts_layer, bin_size=bin_size, batch=batch, min_counts=min_counts, min_genes=min_genes,
           max_mt_fraction=max_mt_fraction, mt_genes=mt_genes, reference=reference, cell_types=cell_types,
           labels_key=labels_key, min_shared_genes=min_shared_genes, plots=not no_plots)
