"""The ``spotmap`` command: a click group whose subcommands are the pipeline steps.

Each subcommand lives in its own file here and only turns options into one ``run`` call of its
step (:mod:`spotmap.steps`). Logging goes to stderr, results to files. A
:class:`~spotmap.errors.SpotmapError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys

import click

from spotmap import __version__
from spotmap.errors import SpotmapError
from spotmap.utils import reuse_freed_memory, setup_logging


class SpotmapGroup(click.Group):
    """A group that turns input errors into one clean line and a non-zero exit."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SpotmapError as exc:
            click.echo(f"spotmap: error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("spotmap: interrupted (rerun the same command to resume from the last checkpoint)", err=True)
            sys.exit(130)


@click.group(cls=SpotmapGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="spotmap")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging on stderr.")
def cli(verbose: bool) -> None:
    """spotmap: map cell types onto spatial transcriptomics with the cell2location model.

    Steps: qc → signatures → map (one per restart seed) → aggregate → colocation → report;
    `run` does them all on one machine, `demo` on simulated data.
    """
    command_process()
    setup_logging(verbose)
    reuse_freed_memory()


def command_process() -> None:
    """Settings for a process that runs one ``spotmap`` command (not for a library user's process), made
    before torch or matplotlib is first imported:

    * torch threads wait passively: on a CPU shared with other jobs OpenMP's default spin-waiting made two
      threads many times slower than one (docs/mapping.md); passive waiting costs little on an idle machine.
      It only takes effect before torch is first imported.
    * figures are drawn off-screen (matplotlib's Agg backend): the command only writes files.

    Values already set in the environment are kept.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("MPLBACKEND", "Agg")


def _register() -> None:
    from spotmap.cli import (aggregate, colocation, demo, map, qc, qc_batch, report, run, signatures,  # noqa: A004
                             simulate, versions)

    for mod in (simulate, qc, qc_batch, signatures, map, aggregate, colocation, report, run, demo, versions):
        cli.add_command(mod.command)


_register()


def main() -> None:
    """Console entry point (``spotmap`` and ``bin/spotmap``)."""
    command_process()
    cli(prog_name="spotmap")
