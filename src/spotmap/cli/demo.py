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
@click.option("--platform", type=click.Choice(["visium", "visium-hd"]), default="visium", show_default=True,
              help="visium: 2 samples of 300 spots; visium-hd: 2 samples of 3,000 bins of 8 µm (mapped per "
                   "sample, 2 cells per bin expected).")
def command(outdir: Path, restarts: int, seed: int, device: str, platform: str) -> None:
    """Simulate 2 Visium (or Visium HD) samples and a labelled reference, then run the whole pipeline with
    default settings.

    Takes a few minutes on 2 CPU cores (Visium HD: about 10). Open OUTDIR/multiqc/multiqc_report.html afterwards; the true
    abundances are in OUTDIR/simulated/truth/cell_abundance.csv (.parquet for Visium HD).
    """
    from spotmap.workflow import RunParams, run_pipeline
    from spotmap.simulate import SimulationParams, simulate

    hd = platform == "visium-hd"
    sim = simulate(Path(outdir) / "simulated", SimulationParams(
        n_cells=1500, n_spots=300, n_genes=800, n_cell_types=8, n_samples=2, seed=seed,
        **({"platform": "visium-hd", "n_bins": 3000} if hd else {})))
    report = run_pipeline(RunParams(
        samplesheet=str(sim / "samplesheet.csv"), reference=str(sim / "reference.h5ad"), outdir=str(outdir),
        labels_key="cell_type", batch_key="batch", restarts=restarts, seed=seed, device=device,
        n_cells_per_location=2.0 if hd else 8.0))
    click.echo(f"report: {report}")
