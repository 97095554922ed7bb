"""`spotmap run` end to end on a tiny simulated case: every step's files land in the published layout."""

from __future__ import annotations

import json

import anndata as ad
import pandas as pd
import pytest
from click.testing import CliRunner

from spotmap.cli import cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from spotmap.simulate import SimulationParams, simulate

    base = tmp_path_factory.mktemp("run")
    sim = simulate(base / "sim", SimulationParams(n_cells=300, n_spots=60, n_genes=200, n_cell_types=4,
                                                  n_samples=2, seed=3))
    # a batch label in one row only: sample1 in batch run1, sample2 its own batch (named after it)
    sheet = pd.read_csv(sim / "samplesheet.csv")
    sheet["batch"] = ["run1", ""]
    sheet.to_csv(sim / "samplesheet_batch.csv", index=False)
    out = base / "results"
    r = CliRunner().invoke(cli, ["run", "--samplesheet", str(sim / "samplesheet_batch.csv"),
                                 "--reference", str(sim / "reference.h5ad"), "--batch-key", "batch",
                                 "--outdir", str(out), "--restarts", "2", "--signatures-max-epochs", "30",
                                 "--map-max-epochs", "150", "--qc-min-genes", "50", "--qc-min-counts", "100"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out, sim


def test_published_layout(run_dir):
    out, _ = run_dir
    for rel in ["qc/sample1/sample1.h5ad", "qc/sample2/sample2_qc_summary_mqc.tsv", "signatures/signatures.csv",
                "mapping/restart_0/sp.h5ad", "mapping/restart_1/W_cell_density_q05.csv",
                "mapping/consensus/sp.h5ad", "mapping/consensus/stability.tsv", "mapping/consensus/restarts.tsv",
                "multiqc/multiqc_report.html", "pipeline_info/params.json"]:
        assert (out / rel).is_file(), rel


def test_consensus_covers_every_spot_and_type(run_dir):
    out, sim = run_dir
    w = pd.read_csv(out / "mapping/consensus/W_cell_density.csv", index_col=0)
    truth = pd.read_csv(sim / "truth/cell_abundance.csv", index_col=0)
    assert set(w.columns) == set(truth.columns)
    assert set(w.index) <= set(truth.index) and len(w) >= 0.9 * len(truth)
    assert (w.to_numpy() >= 0).all()


def test_samplesheet_batches_name_the_joint_models_batches(run_dir):
    out, _ = run_dir
    for sample, batch in (("sample1", "run1"), ("sample2", "sample2")):
        obs = ad.read_h5ad(out / "qc" / sample / f"{sample}.h5ad", backed="r").obs
        assert set(obs["batch"]) == {batch}
    mod = ad.read_h5ad(out / "mapping/restart_0/sp.h5ad", backed="r").uns["mod"]
    assert mod["batch_key"] == "batch" and list(mod["batch_names"]) == ["run1", "sample2"]


def test_params_record_non_defaults(run_dir):
    out, _ = run_dir
    doc = json.loads((out / "pipeline_info/params.json").read_text())
    assert doc["params"]["restarts"] == 2 and doc["defaults"]["restarts"] == 3


def test_run_needs_reference_or_signatures(tmp_path):
    sheet = tmp_path / "s.csv"
    sheet.write_text("sample,h5ad\n")
    r = CliRunner().invoke(cli, ["run", "--samplesheet", str(sheet), "--outdir", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--reference" in r.output
