"""``spotmap run``: the whole pipeline on one machine (same steps and files as the Nextflow pipeline)."""

from __future__ import annotations

from pathlib import Path

import click

from spotmap.colocation.settings import QUANTITIES
from spotmap.mapping.priors import HD_CELLS_PER_8UM_BIN, MappingPriors
from spotmap.qc.thresholds import HD_8UM, VISIUM
from spotmap.workflow import MAPPING_MODES, RunParams

_R = RunParams()

@click.command("run")
@click.option("--samplesheet", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="CSV with columns sample and spaceranger_dir or h5ad (optional: batch, n_cells_per_location, "
                   "coordinates, bin_size).")
@click.option("--reference", type=click.Path(path_type=Path),
              help="Labelled single-cell reference (.h5ad, or a count table) for the signatures step.")
@click.option("--signatures", type=click.Path(dir_okay=False, path_type=Path),
              help="Signatures computed elsewhere (genes × cell types CSV/TSV, or a cell2location reference "
                   ".h5ad); skips the signatures step.")
@click.option("--outdir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Results folder.")
@click.option("--labels-key", default=_R.labels_key, show_default=True, help="Reference column with cell-type labels.")
@click.option("--cell-types", type=click.Path(dir_okay=False, path_type=Path),
              help="For a count-table reference: a table of cell barcode → cell-type label.")
@click.option("--batch-key", default=None, help="Reference column with batches (e.g. batch).  [default: none]")
@click.option("--qc-min-counts", type=float, default=None,
              help=f"QC: minimum total counts per spot.  [default: auto: {VISIUM.min_counts:g} for Visium, "
                   f"{HD_8UM.min_counts:g} for Visium HD 8 µm bins]")
@click.option("--qc-min-genes", type=int, default=None,
              help=f"QC: minimum genes detected per spot.  [default: auto: {VISIUM.min_genes} for Visium, "
                   f"{HD_8UM.min_genes} for Visium HD 8 µm bins]")
@click.option("--qc-max-mt-fraction", type=float, default=None,
              help=f"QC: maximum fraction of mitochondrial counts per spot (0–1).  [default: auto: "
                   f"{VISIUM.max_mt_fraction:g}]")
@click.option("--restarts", default=_R.restarts, show_default=True,
              help="Independent mapping restarts (seeds seed … seed+n-1).")
@click.option("--seed", default=_R.seed, show_default=True, help="First restart's seed (also the signatures' seed).")
@click.option("--mapping-mode", type=click.Choice(MAPPING_MODES), default=_R.mapping_mode, show_default=True,
              help="joint: all samples in one model (as cell2location); per_sample: one model per sample; "
                   "auto: per_sample when any samplesheet row is Visium HD (it has a bin_size, or its input is a "
                   "Space Ranger HD folder; an .h5ad needs a bin_size), joint otherwise.")
@click.option("--n-cells-per-location", default=None, type=float,
              help="Expected cells per spot (N); count nuclei in a few spots of your images to set it. A "
                   f"samplesheet value wins in per-sample mapping. [default: {MappingPriors.N_cells_per_location:g}; "
                   f"Visium HD: {HD_CELLS_PER_8UM_BIN:g} per 8 µm bin, scaled with the bin's area]")
@click.option("--detection-alpha", default=_R.detection_alpha, show_default=True,
              help="Within-slide detection variability prior: 20 for high, 200 for low technical variability.")
@click.option("--signatures-max-epochs", type=int, default=None, help="Override the signatures step's epochs.")
@click.option("--map-max-epochs", type=int, default=None, help="Override the mapping step's epochs.")
@click.option("--keep-flagged", is_flag=True, default=_R.keep_flagged,
              help="Pool flagged restarts into the consensus too (by default they are left out; see spotmap aggregate).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=_R.device, show_default=True,
              help="Where to train.")
@click.option("--threads", type=click.IntRange(min=0), default=None,
              help="CPU threads of every computing step (qc-batch, signatures, map, colocation; 0: all cores). "
                   "[default: each step's own: all cores; signatures 1]")
@click.option("--skip-colocation", is_flag=True, default=_R.skip_colocation,
              help="Do not run the co-location step (factors and tissue regions) on the consensus.")
@click.option("--colocation-n-factors", type=click.IntRange(min=1), default=None,
              help="Co-location: fit this many factors.  [default: chosen from --colocation-n-factors-range]")
@click.option("--colocation-n-factors-range", default=_R.colocation_n_factors_range, show_default=True,
              metavar="LO-HI", help="Co-location: the numbers of factors to fit and choose from.")
@click.option("--colocation-n-regions", type=click.IntRange(min=1), default=None,
              help="Co-location: number of tissue regions.  [default: chosen by silhouette]")
@click.option("--colocation-quantity", type=click.Choice(QUANTITIES), default=_R.colocation_quantity,
              show_default=True, help="Co-location: posterior summary of the cell abundance to analyse.")
def command(samplesheet: Path, reference: Path | None, signatures: Path | None, outdir: Path, labels_key: str,
            cell_types: Path | None, batch_key: str | None, qc_min_counts: float | None, qc_min_genes: int | None,
            qc_max_mt_fraction: float | None, restarts: int, seed: int, mapping_mode: str, n_cells_per_location: float | None,
            detection_alpha: float, signatures_max_epochs: int | None, map_max_epochs: int | None,
            keep_flagged: bool, device: str, threads: int | None, skip_colocation: bool, colocation_n_factors: int | None,
            colocation_n_factors_range: str, colocation_n_regions: int | None, colocation_quantity: str) -> None:
    """Run QC → signatures → map (one per restart) → aggregate → co-location → report into OUTDIR.

    Writes OUTDIR/qc/, OUTDIR/signatures/, OUTDIR/mapping/restart_<seed>/, OUTDIR/mapping/consensus/,
    OUTDIR/mapping/colocation/ (per-sample mapping: OUTDIR/mapping/<sample>/restart_<seed>/, .../consensus/
    and .../colocation/), OUTDIR/multiqc/multiqc_report.html and OUTDIR/pipeline_info/params.json.
    """
    from spotmap.workflow import run_pipeline

    run_pipeline(RunParams(
        samplesheet=str(samplesheet), reference=str(reference) if reference else None,
        signatures=str(signatures) if signatures else None, outdir=str(outdir), labels_key=labels_key,
        cell_types=str(cell_types) if cell_types else None, batch_key=batch_key, qc_min_counts=qc_min_counts, qc_min_genes=qc_min_genes,
        qc_max_mt_fraction=qc_max_mt_fraction, restarts=restarts, seed=seed, mapping_mode=mapping_mode,
        n_cells_per_location=n_cells_per_location, detection_alpha=detection_alpha,
        signatures_max_epochs=signatures_max_epochs, map_max_epochs=map_max_epochs, keep_flagged=keep_flagged,
        device=device, threads=threads, skip_colocation=skip_colocation, colocation_n_factors=colocation_n_factors,
        colocation_n_factors_range=colocation_n_factors_range, colocation_n_regions=colocation_n_regions,
        colocation_quantity=colocation_quantity))
