"""``samplesheet.csv``: one row per spatial sample, validated against ``assets/schema_input.json``.

The schema is the nf-core one (JSON Schema draft 2020-12, read by Nextflow's nf-schema plugin);
here it is checked with :mod:`jsonschema`, plus the nf-schema keywords jsonschema does not know:
``exists: true`` on ``file-path``/``directory-path`` columns and ``uniqueEntries`` on the array.
Every problem is collected and reported in ONE error line, each with its row and column.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd

from spotmap.errors import input_error
from spotmap.io.platform import is_visium_hd_input

# Row numbers in messages: row 1 is the first row under the header (line 2 of the file).
_SCHEMA_NAME = "schema_input.json"


def schema_path() -> Path:
    """Where ``schema_input.json`` lives: ``assets/`` of the checkout, else inside the package."""
    here = Path(__file__).resolve()
    for cand in (here.parents[3] / "assets" / _SCHEMA_NAME, here.parents[1] / "assets" / _SCHEMA_NAME):
        if cand.exists():
            return cand
    raise FileNotFoundError(f"{_SCHEMA_NAME} not found beside the spotmap package")  # a packaging bug, not input


@lru_cache(maxsize=4)
def load_schema(path: str | None = None) -> dict:
    """The samplesheet JSON schema (``assets/schema_input.json`` unless ``path`` is given)."""
    return json.loads(Path(path or schema_path()).read_text())


def _typed(value: str, spec: dict):
    """Cast a CSV cell to the schema's type, as nf-schema does; leave it a string if it does not cast."""
    types = spec.get("type")
    types = types if isinstance(types, list) else [types]
    try:
        if "integer" in types and float(value) == int(float(value)):
            return int(float(value))
        if "number" in types:
            return float(value)
        if "boolean" in types and value.lower() in ("true", "false"):
            return value.lower() == "true"
    except ValueError:
        pass
    return value


def _message(err, spec: dict | None) -> str:
    if spec and isinstance(spec.get("errorMessage"), str):
        return spec["errorMessage"]
    return err.message


def _row(rec: dict, props: dict, base: Path) -> dict:
    """A CSV row as nf-schema reads it: empty cells absent, paths absolute, values cast to the schema's types."""
    row = {}
    for col, val in rec.items():
        val = str(val).strip()
        if val == "":
            continue  # nf-schema: an empty cell is an absent value
        spec = props.get(col, {})
        if spec.get("format") in ("file-path", "directory-path", "path"):
            p = Path(val).expanduser()
            val = str(p if p.is_absolute() else (base / p))
        row[col] = _typed(val, spec) if spec else val
    return row


def _row_problems(i: int, row: dict, validator, props: dict) -> list[str]:
    """Every problem of row ``i``: the schema's, and nf-schema's ``exists: true``."""
    problems = []
    for err in sorted(validator.iter_errors(row), key=lambda e: list(e.path)):
        col = err.path[0] if err.path else None
        spec = props.get(col) if col else None
        if col is None and err.validator == "oneOf":
            given = [c for c in ("spaceranger_dir", "h5ad", "counts") if c in row]
            msg = ("needs exactly one input: spaceranger_dir, h5ad, or counts together with coordinates"
                   + (f" (has {', '.join(given)})" if given else " (none given)"))
            problems.append(f"row {i}: {msg}")
        elif col is None:
            problems.append(f"row {i}: {err.message}")
        else:
            problems.append(f"row {i}, column '{col}': {_message(err, spec)} (got {row.get(col)!r})")
    for col, spec in props.items():  # nf-schema's `exists: true`
        if col not in row or not spec.get("exists"):
            continue
        p, fmt = Path(str(row[col])), spec.get("format")
        ok = p.is_dir() if fmt == "directory-path" else p.is_file() if fmt == "file-path" else p.exists()
        if not ok:
            kind = "folder" if fmt == "directory-path" else "file"
            problems.append(f"row {i}, column '{col}': {kind} does not exist (got {row[col]!r})")
    return problems


def read_samplesheet(path: str | Path, schema: str | Path | None = None) -> pd.DataFrame:
    """Read and validate ``samplesheet.csv``; return one row per sample with absolute paths.

    Columns: ``sample`` (required, unique) and exactly one of ``spaceranger_dir``, ``h5ad`` or
    ``counts`` (+ ``coordinates``); optional ``batch``, ``n_cells_per_location``, ``bin_size``.
    Relative paths are resolved against the samplesheet's folder. Empty cells are absent values.

    Raises
    ------
    SpotmapError
        One line listing every problem as ``row N, column 'C': message (got 'value')``.
    """
    import jsonschema

    path = Path(path)
    if not path.exists():
        raise input_error(path, "samplesheet not found")
    sch = load_schema(str(schema) if schema else None)
    props: dict = sch["items"]["properties"]
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise input_error(path, f"cannot be parsed as CSV: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    df.columns = [c.strip() for c in df.columns]
    if "sample" not in df.columns:
        raise input_error(path, f"no 'sample' column in the header (columns: {', '.join(df.columns)})",
                          field="sample")
    if df.empty:
        raise input_error(path, "samplesheet has a header but no rows")
    dup_cols = [c for c in df.columns if c.split(".")[0] in df.columns and c != c.split(".")[0]]
    if dup_cols:
        raise input_error(path, "duplicate column in the header", field=dup_cols[0].split(".")[0])

    base = path.resolve().parent
    rows = [_row(rec, props, base) for rec in df.to_dict("records")]
    validator = jsonschema.Draft202012Validator(sch["items"])
    problems = [msg for i, row in enumerate(rows, start=1) for msg in _row_problems(i, row, validator, props)]
    for key in sch.get("uniqueEntries", []):  # nf-schema's uniqueEntries
        seen: dict = {}
        for i, row in enumerate(rows, start=1):
            if key in row:
                if row[key] in seen:
                    problems.append(f"row {i}, column '{key}': duplicate of row {seen[row[key]]} "
                                    f"(got {row[key]!r})")
                else:
                    seen[row[key]] = i
    if problems:
        problems.sort(key=lambda t: int(t.split()[1].rstrip(":,")))  # by row, stable within a row
        raise input_error(path, f"{len(problems)} problem(s): " + "; ".join(problems))
    out = pd.DataFrame(rows)
    return out.set_index("sample", drop=False).rename_axis(None)


# ------------------------------------------------------------------------------------------------ rows
@dataclass(frozen=True)
class SampleRow:
    """One samplesheet row as the pipeline uses it (``workflows/spotmap.nf`` and ``main.nf`` read it alike).

    ``batch``: the row's batch label when any row of the sheet gives one, its sample id where it is empty
    (its own batch); None when no row gives one (every sample its own batch). ``input``: the one of
    ``spaceranger_dir``, ``h5ad`` or ``counts`` that is set.
    """

    sample: str
    input: str
    coordinates: str | None = None
    bin_size: int | None = None
    batch: str | None = None
    n_cells_per_location: float | None = None

    @property
    def is_visium_hd(self) -> bool:
        """Whether ``--mapping-mode auto`` maps this sample on its own (:func:`spotmap.io.platform.is_visium_hd_input`)."""
        return is_visium_hd_input(self.input, self.bin_size)


def _value(row, column: str):
    """The row's value of ``column``, None when the column is absent or the cell empty (NaN after a concat)."""
    value = row.get(column) if column in row else None
    if value is None or (isinstance(value, float) and pd.isna(value)) or value == "":
        return None
    return value


def sample_rows(sheet: pd.DataFrame) -> list[SampleRow]:
    """The rows of a samplesheet read by :func:`read_samplesheet`, in order."""
    any_batch = "batch" in sheet and any(isinstance(v, str) and v for v in sheet["batch"])
    rows = []
    for _, row in sheet.iterrows():
        sample = str(row["sample"])
        path = next((_value(row, c) for c in ("spaceranger_dir", "h5ad", "counts") if _value(row, c)), None)
        bin_size, cells, batch = _value(row, "bin_size"), _value(row, "n_cells_per_location"), _value(row, "batch")
        rows.append(SampleRow(
            sample=sample, input=str(path), coordinates=_value(row, "coordinates"),
            bin_size=int(bin_size) if bin_size is not None else None,
            batch=(str(batch) if isinstance(batch, str) else sample) if any_batch else None,
            n_cells_per_location=float(cells) if cells is not None else None))
    return rows
