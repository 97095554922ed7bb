"""samplesheet.csv: the JSON schema (nf-schema compatible) and read_samplesheet's validation."""

from __future__ import annotations

import json

import jsonschema
import pandas as pd
import pytest

from spotmap.errors import SpotmapError
from spotmap.io.samplesheet import load_schema, read_samplesheet, schema_path


def test_schema_is_nf_schema_style_draft_2020_12():
    sch = json.loads(schema_path().read_text())
    assert sch["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(sch)
    items = sch["items"]
    assert sch["type"] == "array" and items["type"] == "object" and items["required"] == ["sample"]
    assert sch["uniqueEntries"] == ["sample"]
    props = items["properties"]
    assert props["spaceranger_dir"]["format"] == "directory-path" and props["spaceranger_dir"]["exists"] is True
    for col in ("h5ad", "counts", "coordinates"):
        assert props[col]["format"] == "file-path" and props[col]["exists"] is True
    assert all(isinstance(p["errorMessage"], str) for p in props.values())
    assert {"batch", "n_cells_per_location", "bin_size"} <= set(props)
    assert schema_path().parent.name == "assets"


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "runs" / "A" / "outs").mkdir(parents=True)
    (tmp_path / "b.h5ad").write_bytes(b"")
    (tmp_path / "c_counts.csv").write_text("gene,s1\nG,1\n")
    (tmp_path / "c_coords.csv").write_text("barcode,x,y\ns1,0,0\n")
    return tmp_path


def test_valid_samplesheet_relative_paths_and_types(inputs):
    sheet = inputs / "samplesheet.csv"
    sheet.write_text("sample,spaceranger_dir,h5ad,counts,coordinates,batch,n_cells_per_location,bin_size\n"
                     "A,runs/A/outs,,,,b1,8,\n"
                     "B,,b.h5ad,,,b1,,\n"
                     " C ,,,c_counts.csv,c_coords.csv,b2,12.5,8\n")
    df = read_samplesheet(sheet)
    assert list(df["sample"]) == ["A", "B", "C"] and list(df.index) == ["A", "B", "C"]
    assert df.loc["A", "spaceranger_dir"] == str(inputs / "runs" / "A" / "outs")
    assert df.loc["B", "h5ad"] == str(inputs / "b.h5ad")
    assert df.loc["C", "coordinates"] == str(inputs / "c_coords.csv")
    assert df.loc["C", "n_cells_per_location"] == 12.5 and df.loc["A", "n_cells_per_location"] == 8.0
    assert df.loc["C", "bin_size"] == 8 and pd.isna(df.loc["A", "bin_size"])
    assert pd.isna(df.loc["A", "h5ad"])


def test_every_problem_in_one_line(inputs):
    sheet = inputs / "samplesheet.csv"
    sheet.write_text("sample,spaceranger_dir,h5ad,counts,coordinates,n_cells_per_location\n"
                     "A,runs/A/outs,,,,8\n"           # fine
                     "A,runs/missing,,,,8\n"          # duplicate id, folder does not exist
                     "bad id,,b.h5ad,,,abc\n"         # space in id, not a number
                     "D,runs/A/outs,b.h5ad,,,\n"      # two inputs
                     "E,,,c_counts.csv,,-2\n"         # counts without coordinates, negative n_cells
                     "F,,,,,\n")                      # no input
    with pytest.raises(SpotmapError) as e:
        read_samplesheet(sheet)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(sheet))
    assert "row 2, column 'sample': duplicate of row 1" in msg
    assert "row 2, column 'spaceranger_dir': folder does not exist" in msg and "runs/missing" in msg
    assert "row 3, column 'sample': Sample id must be provided" in msg and "'bad id'" in msg
    assert "row 3, column 'n_cells_per_location'" in msg and "'abc'" in msg
    assert "row 4: needs exactly one input" in msg and "(has spaceranger_dir, h5ad)" in msg
    assert "row 5: needs exactly one input" in msg and "row 5, column 'n_cells_per_location'" in msg
    assert "row 6: needs exactly one input" in msg and "(none given)" in msg
    assert "row 1:" not in msg and "row 1," not in msg
    n = int(msg.split(": ")[1].split()[0])  # "<path>: N problem(s): ..."
    assert n == msg.count("row ") - msg.count("duplicate of row ")


def test_wrong_h5ad_path(inputs):
    sheet = inputs / "s.csv"
    sheet.write_text("sample,h5ad\nA,nowhere/b.h5ad\n")
    with pytest.raises(SpotmapError, match=r"row 1, column 'h5ad': file does not exist \(got '.*nowhere/b\.h5ad'\)"):
        read_samplesheet(sheet)


@pytest.mark.parametrize("text,expected", [
    ("id,h5ad\nA,b.h5ad\n", "no 'sample' column"),
    ("sample,h5ad\n", "no rows"),
])
def test_structural_problems(inputs, text, expected):
    sheet = inputs / "s.csv"
    sheet.write_text(text)
    with pytest.raises(SpotmapError, match=expected):
        read_samplesheet(sheet)


def test_missing_samplesheet(tmp_path):
    with pytest.raises(SpotmapError, match="samplesheet not found"):
        read_samplesheet(tmp_path / "none.csv")


def test_simulated_samplesheet_validates(sim_small):
    df = read_samplesheet(sim_small / "samplesheet.csv")
    assert list(df.index) == ["sample1", "sample2"]
    assert all((sim_small / "samples" / s / "outs").samefile(df.loc[s, "spaceranger_dir"]) for s in df.index)


def test_schema_cached_and_overridable(tmp_path, inputs):
    assert load_schema() is load_schema()
    custom = json.loads(schema_path().read_text())
    custom["items"]["properties"]["sample"]["pattern"] = "^S[0-9]+$"
    p = tmp_path / "custom.json"
    p.write_text(json.dumps(custom))
    sheet = inputs / "s.csv"
    sheet.write_text("sample,h5ad\nA,b.h5ad\n")
    with pytest.raises(SpotmapError, match="column 'sample'"):
        read_samplesheet(sheet, schema=p)
