"""``spotmap qc-batch``: placeholder until its step lands."""

from __future__ import annotations

import click

from spotmap.errors import SpotmapError


@click.command("qc-batch", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def command() -> None:
    """Not implemented yet."""
    raise SpotmapError("'spotmap qc-batch' is not implemented yet")
