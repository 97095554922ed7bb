"""``spotmap signatures`` end to end on tiny simulated data (seconds)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from spotmap.cli import cli

OUTPUTS = ["signatures.csv", "reference.h5ad", "training_history.tsv", "signatures_training_mqc.yaml",
           "signatures_gene_filter_mqc.tsv", "signatures_vs_average_mqc.png", "signatures_umap_mqc.png",
           "signatures_history_mqc.png"]


def _run(args: list[str]):
    return CliRunner().invoke(cli, ["signatures", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def regression_run(sim_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("sig") / "regression"
    res = _run(["--reference", str(sim_small / "reference.h5ad"), "--labels-key", "cell_type", "--batch-key", "batch",
                "--outdir", str(out), "--max-epochs", "40", "--seed", "3", "--device", "cpu", "--no-progress"])
    assert res.exit_code == 0, res.output
    return out


def test_cli_regression_writes_the_contract(regression_run, sim_small):
    out = regression_run
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*.tmp"))  # no temporary leftovers
    sig = pd.read_csv(out / "signatures.csv", index_col=0)
    truth = pd.read_csv(sim_small / "truth" / "signatures.csv", index_col=0)
    assert sig.index.name == "gene" and list(sig.columns) == list(truth.columns)
    assert (sig.to_numpy() > 0).all()
    # 40 epochs already give signatures close to the truth on a log scale
    r = [np.corrcoef(np.log1p(sig[c]), np.log1p(truth.loc[sig.index, c]))[0, 1] for c in sig.columns]
    assert np.median(r) > 0.95
    ref = ad.read_h5ad(out / "reference.h5ad")
    assert ref.n_vars == sig.shape[0] and ref.obsm["X_umap"].shape == (ref.n_obs, 2)
    for k in ("means", "stds", "q05", "q95"):
        assert list(ref.varm[f"{k}_per_cluster_mu_fg"].columns) == [f"{k}_per_cluster_mu_fg_{c}" for c in sig.columns]
    np.testing.assert_allclose(ref.varm["means_per_cluster_mu_fg"].to_numpy(), sig.to_numpy(), rtol=1e-6)
    assert list(ref.uns["mod"]["factor_names"]) == list(sig.columns)
    hist = pd.read_csv(out / "training_history.tsv", sep="\t")
    assert len(hist) == 40 and np.isfinite(hist["elbo"]).all()
    mqc = yaml.safe_load((out / "signatures_training_mqc.yaml").read_text())
    assert mqc["id"] == "spotmap_signatures_history" and mqc["section_name"] == "Reference signatures: training"
    assert len(mqc["data"]["-ELBO"]) == 40
    gf = (out / "signatures_gene_filter_mqc.tsv").read_text()
    assert "# id: spotmap_gene_filter" in gf and "genes_after" in gf


def test_cli_same_seed_same_signatures(regression_run, sim_small, tmp_path):
    res = _run(["--reference", str(sim_small / "reference.h5ad"), "--batch-key", "batch", "--outdir", str(tmp_path),
                "--max-epochs", "40", "--seed", "3", "--device", "cpu", "--no-progress", "--no-umap"])
    assert res.exit_code == 0, res.output
    a = (regression_run / "signatures.csv").read_bytes()
    assert (tmp_path / "signatures.csv").read_bytes() == a


def test_cli_average_method_and_gene_filter_options(sim_small, tmp_path):
    res = _run(["--reference", str(sim_small / "reference.h5ad"), "--outdir", str(tmp_path), "--method", "average",
                "--cell-count-cutoff", "20", "--cell-percentage-cutoff2", "0.5", "--nonz-mean-cutoff", "2",
                "--no-umap"])
    assert res.exit_code == 0, res.output
    sig = pd.read_csv(tmp_path / "signatures.csv", index_col=0)
    ref = ad.read_h5ad(sim_small / "reference.h5ad")
    X = ref[:, sig.index].X.toarray()
    mask = (ref.obs["cell_type"] == sig.columns[0]).to_numpy()
    np.testing.assert_allclose(sig.iloc[:, 0].to_numpy(), X[mask].mean(0), rtol=1e-5)
    assert 0 < sig.shape[0] < ref.n_vars  # the stricter filter removed genes
    table = pd.read_csv(tmp_path / "signatures_gene_filter_mqc.tsv", sep="\t", comment="#", index_col=0)
    assert table.loc["reference", "genes_after"] == sig.shape[0]
    assert table.loc["reference", "genes_before"] == ref.n_vars
    assert len(pd.read_csv(tmp_path / "training_history.tsv", sep="\t")) == 0


def test_cli_bad_input_one_line_error_and_no_output(sim_small, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["signatures", "--reference", str(sim_small / "reference.h5ad"), "--batch-key",
                                   "donor", "--outdir", str(out), "--no-umap"])
    assert res.exit_code == 2
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("spotmap: error:") and "reference.h5ad" in line and "donor" in line
    assert not (out / "signatures.csv").exists()
    res = CliRunner().invoke(cli, ["signatures", "--reference", str(tmp_path / "missing.h5ad"), "--outdir", str(out)])
    assert res.exit_code == 2 and "missing.h5ad" in res.output
