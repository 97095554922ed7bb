"""``spotmap signatures``: placeholder until its step lands (see the issue tracker)."""

from __future__ import annotations

import click

from spotmap.errors import SpotmapError


@click.command("signatures", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def command() -> None:
    """Not implemented yet."""
    raise SpotmapError("'spotmap signatures' is not implemented yet")
