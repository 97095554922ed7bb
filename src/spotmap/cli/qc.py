"""``spotmap qc``: placeholder until its step lands (see the issue tracker)."""

from __future__ import annotations

import click

from spotmap.errors import SpotmapError


@click.command("qc", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def command() -> None:
    """Not implemented yet."""
    raise SpotmapError("'spotmap qc' is not implemented yet")
