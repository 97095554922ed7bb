"""``spotmap report``: one MultiQC report of a results folder."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
@click.option("--results", "results", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Results folder of `spotmap run` or the Nextflow pipeline (or a folder of staged *_mqc.* files).")
@click.option("--outdir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where to write multiqc_report.html, multiqc_data/ and report_content/.")
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="MultiQC config.  [default: the pipeline's assets/multiqc_config.yml]")
@click.option("--title", default=None, help="Report title.  [default: the config's]")
@click.option("--dpi", default=90, show_default=True, help="Resolution of the cell abundance maps.")
def command(results: Path, outdir: Path, config: Path | None, title: str | None, dpi: int) -> None:
    """Build the MultiQC report: QC, signatures, mapping, restart stability, cell abundance maps,
    methods, software versions and workflow summary.

    Collects every step's *_mqc.* file under RESULTS, draws the cell abundance maps from the
    consensus (or best restart) sp.h5ad, and runs MultiQC on OUTDIR/report_content/.
    """
    from spotmap.steps import report

    click.echo(str(report.run(results=results, outdir=outdir, config=config, title=title, dpi=dpi)))
