"""``spotmap versions``: software versions as YAML, for Nextflow's ``versions.yml``."""

from __future__ import annotations

import click


@click.command("versions")
@click.option("--process", default="SPOTMAP", show_default=True, help="Process name heading the YAML block.")
def command(process: str) -> None:
    """Print spotmap, torch, pyro, scanpy (and CUDA when present) versions as nf-core versions.yml."""
    from spotmap.utils import software_versions

    click.echo(f'"{process}":')
    for tool, version in software_versions().items():
        click.echo(f'    {tool}: "{version}"')
