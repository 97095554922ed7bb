"""One source for every rule and default: the copies that must exist elsewhere are checked equal here.

* Visium HD detection and the samplesheet's batch default: the Python rules against the tables in
  ``tests/data/`` (the Groovy versions are checked on the same tables in test_nextflow_groovy.py);
* defaults: ``nextflow.config``'s params and ``nextflow_schema.json``'s defaults equal the dataclasses'
  (:class:`~spotmap.workflow.RunParams`, :class:`~spotmap.mapping.MappingPriors`, ...), and every CLI option
  whose default a dataclass holds takes it from there.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import fields
from pathlib import Path

import click
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nextflow_helpers as nfh  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"


def _cases(name: str) -> list[dict]:
    return json.loads((DATA / name).read_text())["cases"]


# ------------------------------------------------------------------------------------------------ Visium HD
@pytest.mark.parametrize("case", _cases("hd_detection_cases.json"), ids=lambda c: c["why"])
def test_visium_hd_rows(case, tmp_path):
    from spotmap.io.platform import is_visium_hd_input

    for d in case.get("dirs", []):
        (tmp_path / d).mkdir(parents=True)
    path = case["path"].replace("{tmp}", str(tmp_path))
    assert is_visium_hd_input(path, case["bin_size"]) is case["expected"]


def test_visium_hd_rows_through_the_samplesheet(tmp_path):
    """The samplesheet's rows carry the rule: a bin_size, or a Space Ranger HD folder; an h5ad needs bin_size."""
    from spotmap.io.samplesheet import read_samplesheet, sample_rows

    (tmp_path / "hd" / "outs" / "binned_outputs" / "square_008um").mkdir(parents=True)
    (tmp_path / "vis" / "outs" / "spatial").mkdir(parents=True)
    for name in ("a.h5ad", "b.h5ad"):
        (tmp_path / name).write_bytes(b"")
    sheet = tmp_path / "s.csv"
    sheet.write_text("sample,spaceranger_dir,h5ad,bin_size\n"
                     f"hd,{tmp_path}/hd/outs,,\nvis,{tmp_path}/vis/outs,,\na,,{tmp_path}/a.h5ad,\nb,,{tmp_path}/b.h5ad,8\n")
    got = {r.sample: r.is_visium_hd for r in sample_rows(read_samplesheet(sheet))}
    assert got == {"hd": True, "vis": False, "a": False, "b": True}


def test_auto_mapping_mode_follows_the_samplesheet_not_the_h5ad(tmp_path):
    """An HD .h5ad without bin_size is mapped jointly by `spotmap run`, as by Nextflow (the row decides)."""
    import anndata as ad
    import numpy as np

    from spotmap.io.platform import platform_of
    from spotmap.io.samplesheet import read_samplesheet, sample_rows
    from spotmap.workflow import resolve_mapping_mode

    a = ad.AnnData(np.ones((3, 2), dtype=np.float32))
    a.uns["spotmap"] = {"platform": "visium-hd", "bin_size_um": 8}
    a.write_h5ad(tmp_path / "hd.h5ad")
    assert platform_of(tmp_path / "hd.h5ad").is_hd  # the file says HD ...

    sheet = tmp_path / "s.csv"
    sheet.write_text(f"sample,h5ad\nhd,{tmp_path}/hd.h5ad\n")
    rows = sample_rows(read_samplesheet(sheet))
    assert resolve_mapping_mode("auto", [r.sample for r in rows if r.is_visium_hd]) == "joint"  # ... the row does not


@pytest.mark.parametrize("case", _cases("batch_default_cases.json"), ids=str)
def test_samplesheet_batch_default(case):
    from spotmap.io.samplesheet import sample_rows

    sheet = pd.DataFrame([{"h5ad": "/x/a.h5ad", **r} for r in case["rows"]])
    sheet = sheet.fillna("") if "batch" in sheet else sheet
    assert [r.batch for r in sample_rows(sheet)] == case["expected"]


# ------------------------------------------------------------------------------------------------ defaults
CONFIG = nfh.config_params(REPO / "nextflow.config")
SCHEMA = nfh.schema_params(json.loads((REPO / "nextflow_schema.json").read_text()))


#: RunParams fields that are not the pipeline's defaults, and why
NOT_DEFAULTS = {"outdir": "required by both commands; RunParams' 'results' is the Python API's convenience"}


def _dataclass_defaults() -> dict:
    """{param: default} of every pipeline param a dataclass holds (RunParams names them as nextflow.config)."""
    from spotmap.workflow import RunParams

    return {f.name: getattr(RunParams(), f.name) for f in fields(RunParams) if f.name not in NOT_DEFAULTS}


@pytest.mark.parametrize("name", sorted(set(CONFIG) & set(_dataclass_defaults())))
def test_nextflow_params_equal_the_dataclasses(name):
    ours = _dataclass_defaults()[name]
    assert CONFIG[name] == ours, f"nextflow.config params.{name} = {CONFIG[name]!r}, RunParams.{name} = {ours!r}"
    if ours is None:
        assert "default" not in SCHEMA[name], name
    else:
        assert SCHEMA[name].get("default") == ours, f"nextflow_schema.json {name} != RunParams.{name} = {ours!r}"


def test_the_shared_params_are_compared():
    """The params the test above must cover are there (a renamed field would silently drop out)."""
    assert {"detection_alpha", "restarts", "seed", "labels_key", "mapping_mode", "qc_min_counts", "skip_colocation",
            "colocation_n_factors_range", "colocation_quantity", "colocation_n_factors"} <= (
        set(CONFIG) & set(_dataclass_defaults()))


def test_run_params_take_the_model_defaults():
    from spotmap.colocation import ColocationSettings
    from spotmap.mapping import MappingPriors, MappingSettings
    from spotmap.workflow import RunParams

    assert RunParams().detection_alpha == MappingPriors().detection_alpha
    assert RunParams().seed == MappingSettings().seed and RunParams().device == MappingSettings().device
    lo, hi = ColocationSettings().factor_range
    assert RunParams().colocation_n_factors_range == f"{lo}-{hi}" == CONFIG["colocation_n_factors_range"]
    assert RunParams().colocation_quantity == ColocationSettings().quantity == SCHEMA["colocation_quantity"]["default"]
    # the pipeline's seed seeds the co-location too (spotmap run and conf/modules.config): the same default
    assert ColocationSettings().seed == RunParams().seed


def _option_defaults(command: str) -> dict:
    from spotmap.cli import cli

    return {p.name: p.default for p in cli.commands[command].params if isinstance(p, click.Option)}


def test_cli_defaults_come_from_the_dataclasses():
    from spotmap.mapping import MappingPriors, MappingSettings
    from spotmap.reference.settings import SignatureSettings
    from spotmap.simulate import SimulationParams
    from spotmap.workflow import RunParams

    from spotmap.colocation import ColocationSettings
    from spotmap.colocation.settings import range_text

    P, S, T, R, Sim = MappingPriors(), MappingSettings(), SignatureSettings(), RunParams(), SimulationParams()
    C = ColocationSettings()
    expected = {
        "map": {"detection_alpha": P.detection_alpha, "n_groups": P.n_groups, "max_epochs": S.max_epochs,
                "lr": S.lr, "seed": S.seed, "batch_key": S.batch_key, "min_epochs": S.min_epochs, "tol": S.tol,
                "window": S.window, "likelihood": S.likelihood, "sparse_mu_max": S.sparse_mu_max,
                "sparse_u_max": S.sparse_u_max, "init_iterations": S.init_iterations},
        "run": {"detection_alpha": R.detection_alpha, "restarts": R.restarts, "seed": R.seed,
                "labels_key": R.labels_key, "mapping_mode": R.mapping_mode, "device": R.device,
                "keep_flagged": R.keep_flagged,
                "skip_colocation": R.skip_colocation, "colocation_n_factors_range": range_text(C.factor_range),
                "colocation_quantity": C.quantity},
        "colocation": {"quantity": C.quantity, "seed": C.seed},
        "signatures": {"batch_size": T.batch_size, "lr": T.lr, "seed": T.seed},
        "simulate": {f: getattr(Sim, f) for f in ("n_cells", "n_spots", "n_bins", "n_genes", "n_cell_types",
                                                   "n_samples", "n_batches", "cells_per_spot", "cells_per_bin",
                                                   "detection_alpha", "seed", "platform", "positions")},
    }
    for command, want in expected.items():
        got = _option_defaults(command)
        wrong = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
        assert not wrong, f"spotmap {command}: option default != dataclass default: {wrong}"


def test_keep_flagged_has_one_default_everywhere():
    """Flagged restarts are left out of the consensus by default in `spotmap aggregate`, its step and core
    functions, `spotmap run` (RunParams) and the pipeline (nextflow.config, the schema: checked above)."""
    import inspect

    from spotmap.aggregate import aggregate, aggregate_restarts
    from spotmap.steps import aggregate as aggregate_step
    from spotmap.workflow import RunParams

    want = RunParams().keep_flagged
    assert want is False and CONFIG["keep_flagged"] is False and SCHEMA["keep_flagged"]["type"] == "boolean"
    for fn in (aggregate, aggregate_restarts, aggregate_step.run):
        assert inspect.signature(fn).parameters["keep_flagged"].default is want, fn
    assert _option_defaults("aggregate")["keep_flagged"] is want and _option_defaults("run")["keep_flagged"] is want


def test_detection_alpha_is_written_once_in_src():
    """The default 20 of detection_alpha is written in MappingPriors only (and the simulator's own knob, which
    is the simulated truth, not a model default)."""
    hits = set()
    for f in sorted((REPO / "src" / "spotmap").rglob("*.py")):
        for line in f.read_text().splitlines():
            if "detection_alpha" in line and re.search(r"(?<![\w.])20(\.0)?(?![\w.])", line.split("#")[0]):
                hits.add(str(f.relative_to(REPO)))
    assert hits == {"src/spotmap/mapping/priors.py", "src/spotmap/simulate/params.py"}, hits


# ------------------------------------------------------------------------------------------------ report sections
def test_multiqc_config_follows_the_report_registry():
    """assets/multiqc_config.yml (for a plain `multiqc` run) repeats only what files cannot carry, and that
    equals the registry of src/spotmap/report/sections.py: the parents' order, the summary.txt section."""
    import yaml

    from spotmap.report import sections

    cfg = yaml.safe_load((REPO / "assets" / "multiqc_config.yml").read_text())
    parents = [p.id for p in sections.PARENTS.values()]
    assert cfg["custom_content"]["order"] == parents + [sections.METHODS_ID, sections.SUMMARY_ID]
    orders = [cfg["report_section_order"][pid]["order"] for pid in parents]
    assert orders == sorted(orders, reverse=True), "parents in the registry's order"
    for cid, entry in cfg["custom_data"].items():
        if "section_name" not in entry:
            continue  # the file's own header (from the registry) names it
        sec = sections.BY_ID[cid]
        parent = sections.PARENTS[sec.parent]
        assert (entry["section_name"], entry["parent_id"], entry["parent_name"], entry["parent_description"]) == (
            sec.title, parent.id, parent.title, parent.description), cid


def test_the_random_start_is_described_with_the_code_s_shapes():
    """The methods text and the docs copy the random start's Gamma shapes (spotmap.mapping.start): the same numbers."""
    from spotmap.mapping.start import START_SPOT_SHAPE, START_TYPE_SHAPE

    spot, kind = f"Gamma({START_SPOT_SHAPE:g}, {START_SPOT_SHAPE:g})", f"Gamma({START_TYPE_SHAPE:g}, {START_TYPE_SHAPE:g})"
    for rel in ("assets/methods_description_template.yml", "docs/mapping.md", "docs/aggregate.md"):
        text = " ".join((REPO / rel).read_text().replace("`", "").split())
        found = re.findall(r"Gamma\(\d+(?:\.\d+)?, \d+(?:\.\d+)?\) (?:\(one )?per (?:spot|type|cell type)", text)
        assert found, rel
        for phrase in found:
            expected = spot if "spot" in phrase else kind
            assert phrase.startswith(expected), (rel, phrase, expected)
