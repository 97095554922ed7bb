"""``spotmap demo``: simulate a small case and run the whole pipeline on it."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("--outdir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Results folder; the simulated inputs go to OUTDIR/simulated/.")
@click.option("--restarts", default=2, show_default=True, help="Mapping restarts.")
@click.option("--seed", default=0, show_default=True, help="Seed of the simulation and the first restart.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def command(outdir: Path, restarts: int, seed: int, device: str) -> None:
    """Simulate 2 Visium samples and a labelled reference, then run the whole pipeline with default settings.

    Takes a few minutes on 2 CPU cores. Open OUTDIR/multiqc/multiqc_report.html afterwards; the true
    abundances are in OUTDIR/simulated/truth/cell_abundance.csv.
    """
    from spotmap.pipeline import RunParams, run_pipeline
    from spotmap.simulate import SimulationParams, simulate

    sim = simulate(Path(outdir) / "simulated", SimulationParams(
        n_cells=1500, n_spots=300, n_genes=800, n_cell_types=8, n_samples=2, seed=seed))
    report = run_pipeline(RunParams(
        samplesheet=str(sim / "samplesheet.csv"), reference=str(sim / "reference.h5ad"), outdir=str(outdir),
        labels_key="cell_type", batch_key="batch", restarts=restarts, seed=seed, device=device))
    click.echo(f"report: {report}")
