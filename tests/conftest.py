"""Shared fixtures: small simulated cases and one whole pipeline run (session-scoped), and the real data in
../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# torch threads that wait passively, as the spotmap command sets them (spotmap.cli.command_process): the tests
# share a loaded machine. Only effective before torch is first imported, hence here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """``$SPOTMAP_SHARED_DATA`` or ``../shared/data`` beside the checkout, if present."""
    env = os.environ.get("SPOTMAP_SHARED_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("real data not found: set SPOTMAP_SHARED_DATA or place ../shared/data beside the checkout")
    return d


@pytest.fixture(scope="session")
def sim_small(tmp_path_factory) -> Path:
    """A small simulated case: 2 samples × 150 spots, 300 genes, 6 types, 600 reference cells."""
    from spotmap.simulate import SimulationParams, simulate

    out = tmp_path_factory.mktemp("sim") / "small"
    simulate(out, SimulationParams(n_cells=600, n_spots=150, n_genes=300, n_cell_types=6, n_samples=2, seed=1))
    return out


@pytest.fixture(scope="session")
def sim_single(tmp_path_factory) -> Path:
    """One sample, old headerless positions file (Space Ranger 1.x layout)."""
    from spotmap.simulate import SimulationParams, simulate

    out = tmp_path_factory.mktemp("sim") / "single"
    simulate(out, SimulationParams(n_cells=300, n_spots=100, n_genes=200, n_cell_types=4, n_samples=1, seed=2,
                                   positions="list"))
    return out


@pytest.fixture(scope="session")
def sim_run(tmp_path_factory) -> Path:
    """The simulated case of the shared pipeline run: 2 samples × 120 spots, 250 genes, 6 types, 300 cells;
    a samplesheet ``samplesheet_batch.csv`` gives sample1 the batch label run1 and leaves sample2's empty."""
    import pandas as pd

    from spotmap.simulate import SimulationParams, simulate

    sim = simulate(tmp_path_factory.mktemp("run") / "sim",
                   SimulationParams(n_cells=300, n_spots=120, n_genes=250, n_cell_types=6, n_samples=2, seed=3))
    sheet = pd.read_csv(sim / "samplesheet.csv")
    sheet["batch"] = ["run1", ""]
    sheet.to_csv(sim / "samplesheet_batch.csv", index=False)
    return sim


#: the shared run's settings that differ from the defaults (the report's workflow summary lists them)
PIPELINE_RUN_ARGS = ["--batch-key", "batch", "--restarts", "2", "--signatures-max-epochs", "25",
                     "--map-max-epochs", "60", "--qc-min-genes", "50", "--qc-min-counts", "100",
                     "--detection-alpha", "200"]


@pytest.fixture(scope="session")
def pipeline_run(sim_run) -> dict:
    """One ``spotmap run`` of the whole pipeline (QC → signatures → 2 restarts → consensus → report) on
    :func:`sim_run`, shared by the pipeline, report and Nextflow contract tests. Few epochs: the plumbing and
    the report are tested here, the fit elsewhere. Returns ``{"sim", "results", "report"}``."""
    from click.testing import CliRunner

    from spotmap.cli import cli

    out = sim_run.parent / "results"
    r = CliRunner().invoke(cli, ["run", "--samplesheet", str(sim_run / "samplesheet_batch.csv"),
                                 "--reference", str(sim_run / "reference.h5ad"), "--outdir", str(out),
                                 "--device", "cpu", *PIPELINE_RUN_ARGS], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return {"sim": sim_run, "results": out, "report": out / "multiqc" / "multiqc_report.html"}


@pytest.fixture
def fake_steps(monkeypatch, tmp_path) -> list:
    """Every ``spotmap.steps.*.run`` replaced by a recorder: the list of ``(step, kwargs)`` calls, in order
    (each fake returns ``OUTDIR/<sample or step>.h5ad``), for tests of what ``spotmap run`` asks of its steps."""
    from spotmap import steps

    calls: list = []

    def fake(name):
        def run(**kwargs):
            calls.append((name, kwargs))
            return Path(kwargs.get("outdir", tmp_path)) / f"{kwargs.get('sample', name)}.h5ad"
        return run

    for name in ("qc", "qc_batch", "signatures", "map", "aggregate", "colocation", "report"):
        monkeypatch.setattr(getattr(steps, name), "run", fake(name))
    return calls
