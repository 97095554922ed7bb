"""One exception type for problems with the user's input or settings.

The CLI turns a :class:`SpotmapError` into one line on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from os import PathLike


class SpotmapError(ValueError):
    """A problem with input or settings, described in one line.

    Build messages with :func:`input_error` so they always name the file, the field
    and the offending value.
    """


def input_error(path: str | PathLike | None, problem: str, field: str | None = None,
                value: object = None) -> SpotmapError:
    """Return a :class:`SpotmapError` naming file, field and value on one line."""
    parts = []
    if path is not None:
        parts.append(f"{path}")
    if field is not None:
        parts.append(f"field '{field}'")
    head = ": ".join(parts)
    msg = problem if value is None else f"{problem} (got {value!r})"
    msg = " ".join(msg.split())  # always one line
    return SpotmapError(f"{head}: {msg}" if head else msg)
