"""``spotmap simulate``: write a simulated case with known answers."""

from __future__ import annotations

from pathlib import Path

import click

from spotmap.simulate.params import PLATFORMS, SimulationParams

_P = SimulationParams()


@click.command("simulate")
@click.option("--outdir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to create (replaced atomically if it exists).")
@click.option("--platform", type=click.Choice(PLATFORMS), default=_P.platform, show_default=True,
              help="visium: 55 µm spots (Space Ranger outs/). visium-hd: square 8 µm bins (Space Ranger HD "
              "outs/binned_outputs/square_008um/ and square_016um/, 2 × 2 sums).")
@click.option("--n-cells", default=_P.n_cells, show_default=True, help="Reference cells.")
@click.option("--n-spots", default=_P.n_spots, show_default=True, help="Visium: in-tissue spots per sample (≤ 4,992).")
@click.option("--n-bins", default=_P.n_bins, show_default=True,
              help="Visium HD: in-tissue 8 µm bins per sample (the square grid holds ~40 % more, off the tissue).")
@click.option("--n-genes", default=_P.n_genes, show_default=True, help="Genes, 13 mitochondrial ones (mt-) included.")
@click.option("--n-cell-types", default=_P.n_cell_types, show_default=True, help="Cell types.")
@click.option("--n-samples", default=_P.n_samples, show_default=True, help="Spatial samples (Space Ranger folders).")
@click.option("--n-batches", default=_P.n_batches, show_default=True, help="Reference batches (differ in depth and technology).")
@click.option("--cells-per-spot", default=_P.cells_per_spot, show_default=True, help="Visium: mean true cells per spot.")
@click.option("--cells-per-bin", default=_P.cells_per_bin, show_default=True,
              help="Visium HD: mean true cells per 8 µm bin before the cap of 3 cells per bin.")
@click.option("--detection-alpha", default=_P.detection_alpha, show_default=True,
              help="Shape of the per-spot detection efficiency around its sample mean (smaller = more variable).")
@click.option("--positions", type=click.Choice(["csv", "list"]), default=_P.positions, show_default=True,
              help="Visium: tissue_positions.csv (Space Ranger ≥2.0, header) or tissue_positions_list.csv (1.x). "
              "Visium HD always writes tissue_positions.parquet.")
@click.option("--missing-type", "missing_types", multiple=True,
              help="A cell type present in the tissue but left out of the reference (repeatable), e.g. type_C.")
@click.option("--seed", default=_P.seed, show_default=True, help="Random seed: the same seed writes the same files.")
def command(outdir: Path, platform: str, n_cells: int, n_spots: int, n_bins: int, n_genes: int, n_cell_types: int,
            n_samples: int, n_batches: int, cells_per_spot: float, cells_per_bin: float, detection_alpha: float,
            positions: str, missing_types: tuple[str, ...], seed: int) -> None:
    """Simulate a labelled reference and Visium (or Visium HD) samples with known cell abundances.

    Writes OUTDIR/reference.h5ad, OUTDIR/samples/<sample>/outs/ (Space Ranger layout),
    OUTDIR/samplesheet.csv and OUTDIR/truth/ (cell_abundance.csv, signatures.csv, spots.csv,
    genes.csv, params.json). With --platform visium-hd the truth tables are parquet
    (cell_abundance.parquet per 8 µm bin, cell_abundance_016um.parquet, spots.parquet) and the
    samplesheet has a bin_size column (8).

    Visium HD at full scale, e.g. --n-bins 400000 --n-genes 18000 --n-cell-types 40: counts are drawn
    sparse (time and memory grow with the number of UMIs, never bins × genes); see docs/inputs_and_qc.md
    for measured time and memory.
    """
    from spotmap.simulate import SimulationParams, simulate

    simulate(outdir, SimulationParams(
        n_cells=n_cells, n_spots=n_spots, n_genes=n_genes, n_cell_types=n_cell_types, n_samples=n_samples,
        n_batches=n_batches, cells_per_spot=cells_per_spot, detection_alpha=detection_alpha,
        positions=positions, missing_types_in_reference=list(missing_types), seed=seed,
        platform=platform, n_bins=n_bins, cells_per_bin=cells_per_bin))
