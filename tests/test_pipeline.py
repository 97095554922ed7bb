"""`spotmap run` end to end (the shared :func:`pipeline_run`): every step's files land in the published layout."""

from __future__ import annotations

import json

import anndata as ad
import pandas as pd
from click.testing import CliRunner

from spotmap.cli import cli


def test_published_layout(pipeline_run):
    out = pipeline_run["results"]
    for rel in ["qc/sample1/sample1.h5ad", "qc/sample2/sample2_qc_summary_mqc.tsv", "qc/qc_batch/qc_batch_umap_mqc.png",
                "signatures/signatures.csv", "mapping/restart_0/sp.h5ad", "mapping/restart_1/W_cell_density_q05.csv",
                "mapping/consensus/sp.h5ad", "mapping/consensus/stability.tsv", "mapping/consensus/restarts.tsv",
                "multiqc/multiqc_report.html", "pipeline_info/params.json"]:
        assert (out / rel).is_file(), rel


def test_consensus_covers_every_spot_and_type(pipeline_run):
    out, sim = pipeline_run["results"], pipeline_run["sim"]
    w = pd.read_csv(out / "mapping/consensus/W_cell_density.csv", index_col=0)
    truth = pd.read_csv(sim / "truth/cell_abundance.csv", index_col=0)
    assert set(w.columns) == set(truth.columns)
    assert set(w.index) <= set(truth.index) and len(w) >= 0.9 * len(truth)
    assert (w.to_numpy() >= 0).all()


def test_samplesheet_batches_name_the_joint_models_batches(pipeline_run):
    out = pipeline_run["results"]
    for sample, batch in (("sample1", "run1"), ("sample2", "sample2")):
        obs = ad.read_h5ad(out / "qc" / sample / f"{sample}.h5ad", backed="r").obs
        assert set(obs["batch"]) == {batch}
    mod = ad.read_h5ad(out / "mapping/restart_0/sp.h5ad", backed="r").uns["mod"]
    assert mod["batch_key"] == "batch" and list(mod["batch_names"]) == ["run1", "sample2"]
    assert mod["priors"]["detection_alpha"] == 200.0


def test_params_record_non_defaults(pipeline_run):
    doc = json.loads((pipeline_run["results"] / "pipeline_info/params.json").read_text())
    assert doc["params"]["restarts"] == 2 and doc["defaults"]["restarts"] == 3


def test_run_needs_reference_or_signatures(tmp_path):
    sheet = tmp_path / "s.csv"
    sheet.write_text("sample,h5ad\n")
    r = CliRunner().invoke(cli, ["run", "--samplesheet", str(sheet), "--outdir", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--reference" in r.output


def test_deprecated_pipeline_module_still_imports():
    from spotmap import workflow
    from spotmap.pipeline import RunParams, run_pipeline

    assert RunParams is workflow.RunParams and run_pipeline is workflow.run_pipeline
