"""``spotmap simulate``: write a simulated case with known answers."""

from __future__ import annotations

from pathlib import Path

import click

D = "  [default: {}]"


@click.command("simulate")
@click.option("--outdir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to create (replaced atomically if it exists).")
@click.option("--n-cells", default=2000, show_default=True, help="Reference cells.")
@click.option("--n-spots", default=400, show_default=True, help="In-tissue spots per sample (Visium: ≤ 4,992).")
@click.option("--n-genes", default=1000, show_default=True, help="Genes, 13 mitochondrial ones (mt-) included.")
@click.option("--n-cell-types", default=10, show_default=True, help="Cell types.")
@click.option("--n-samples", default=2, show_default=True, help="Spatial samples (Space Ranger folders).")
@click.option("--n-batches", default=2, show_default=True, help="Reference batches (differ in depth and technology).")
@click.option("--cells-per-spot", default=8.0, show_default=True, help="Mean true cells per spot.")
@click.option("--detection-alpha", default=20.0, show_default=True,
              help="Shape of the per-spot detection efficiency around its sample mean (smaller = more variable).")
@click.option("--positions", type=click.Choice(["csv", "list"]), default="csv", show_default=True,
              help="tissue_positions.csv (Space Ranger ≥2.0, header) or tissue_positions_list.csv (1.x).")
@click.option("--missing-type", "missing_types", multiple=True,
              help="A cell type present in the tissue but left out of the reference (repeatable), e.g. type_C.")
@click.option("--seed", default=0, show_default=True, help="Random seed: the same seed writes the same files.")
def command(outdir: Path, n_cells: int, n_spots: int, n_genes: int, n_cell_types: int, n_samples: int,
            n_batches: int, cells_per_spot: float, detection_alpha: float, positions: str,
            missing_types: tuple[str, ...], seed: int) -> None:
    """Simulate a labelled reference and Visium samples with known cell abundances.

    Writes OUTDIR/reference.h5ad, OUTDIR/samples/<sample>/outs/ (Space Ranger layout),
    OUTDIR/samplesheet.csv and OUTDIR/truth/ (cell_abundance.csv, signatures.csv, spots.csv,
    genes.csv, params.json).
    """
    from spotmap.simulate import SimulationParams, simulate

    simulate(outdir, SimulationParams(
        n_cells=n_cells, n_spots=n_spots, n_genes=n_genes, n_cell_types=n_cell_types, n_samples=n_samples,
        n_batches=n_batches, cells_per_spot=cells_per_spot, detection_alpha=detection_alpha,
        positions=positions, missing_types_in_reference=list(missing_types), seed=seed))
