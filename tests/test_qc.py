"""spotmap qc / qc-batch: metrics, filtering against the simulator's truth, output contract, MultiQC parsing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from spotmap.cli import cli
from spotmap.io import read_spatial
from spotmap.pl import batch_umap
from spotmap.qc import compute_qc_metrics, filter_spots, remove_mt_genes, run_qc

OUT_FILES = ["{s}.h5ad", "{s}_qc_metrics.tsv", "{s}_qc_summary_mqc.tsv", "{s}_qc_histograms_mqc.png",
             "{s}_qc_spatial_mqc.png"]


def _qc(args: list[str]) -> None:
    r = CliRunner().invoke(cli, ["qc", *args])
    assert r.exit_code == 0, r.output


def test_metrics_by_hand():
    # explicit zeros in the sparse matrix must not count as detected genes
    X = sp.csr_matrix((np.array([3.0, 0.0, 1.0, 6.0, 2.0]), np.array([0, 1, 2, 0, 3]), np.array([0, 3, 5])),
                      shape=(2, 4))
    a = ad.AnnData(X=X, obs=pd.DataFrame(index=["s1", "s2"]),
                   var=pd.DataFrame({"gene_ids": ["E0", "E1", "E2", "E3"]}, index=["MT-CO1", "A", "B", "mt-Nd1"]))
    m = compute_qc_metrics(a, copy=True)
    assert m.obs["total_counts"].tolist() == [4.0, 8.0]
    assert m.obs["n_genes_by_counts"].tolist() == [2, 2]
    np.testing.assert_allclose(m.obs["mt_frac"], [3 / 4, 8 / 8])
    assert m.var["mt"].tolist() == [True, False, False, True]
    assert "total_counts" not in a.obs  # copy=True: the input is left alone
    inplace = a.copy()
    assert compute_qc_metrics(inplace) is None  # as scanpy: annotated in place, nothing returned
    pd.testing.assert_frame_equal(inplace.obs, m.obs)
    assert inplace.var["mt"].tolist() == m.var["mt"].tolist()
    by_id = compute_qc_metrics(a, mt_genes=["E2"], copy=True)  # a list given by option, matched on ids
    np.testing.assert_allclose(by_id.obs["mt_frac"], [1 / 4, 0.0])
    kept = filter_spots(m, min_counts=0, min_genes=0, max_mt_fraction=0.9)
    assert kept.obs_names.tolist() == ["s1"] and m.obs["pass_qc"].tolist() == [True, False]
    no_mt = remove_mt_genes(m)
    assert no_mt.var_names.tolist() == ["A", "B"] and no_mt.obsm["mt"].to_numpy().tolist() == [[3, 0], [6, 2]]


def test_run_qc_removes_the_simulated_bad_spots(sim_small):
    truth = pd.read_csv(sim_small / "truth" / "spots.csv", index_col=0, keep_default_na=False)
    genes = pd.read_csv(sim_small / "truth" / "genes.csv", index_col=0)
    a = read_spatial(sim_small / "samples" / "sample1" / "outs", sample="sample1")
    raw = a.X.copy()
    # 300 simulated genes: gene thresholds scaled down from spatialvi's 250 of ~20k genes
    filtered, summary = run_qc(a, "sample1", min_counts=500, min_genes=100, max_mt_fraction=0.2)
    bad = truth.index[(truth["sample"] == "sample1") & (truth["qc_fail"] != "")]
    assert len(bad) >= 4
    assert not set(bad) & set(filtered.obs_names)  # every damaged or empty spot is gone
    assert set(a.obs_names[a.obs["pass_qc"]]) == set(filtered.obs_names)
    # the only other spots removed hold no cell at all (ambient RNA only)
    removed = a.obs_names[~a.obs["pass_qc"].to_numpy()]
    assert (truth.loc[removed.difference(bad), "n_cells"] == 0).all()
    assert summary["spots_before"] == 150 and summary["mt_genes"] == int(genes["is_mt"].sum()) == 13
    assert not filtered.var_names.str.startswith("mt-").any() and summary["genes_after"] == 300 - 13
    # raw counts untouched; mitochondrial counts kept in obsm
    keep_rows = np.flatnonzero(a.obs["pass_qc"].to_numpy())
    np.testing.assert_array_equal(filtered.X.toarray(), raw[keep_rows][:, ~a.var["mt"].to_numpy()].toarray())
    np.testing.assert_allclose(filtered.obsm["mt"].sum(1), filtered.obs["mt_counts"])
    assert summary["median_mt_frac"] < 0.1 and summary["median_counts"] == filtered.obs["total_counts"].median()


@pytest.fixture(scope="module")
def qc_out(sim_small, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qc")
    for s, batch in (("sample1", []), ("sample2", ["--batch", "run1"])):
        _qc(["--sample", s, "--input", str(sim_small / "samples" / s / "outs"), "--outdir", str(out),
             "--min-genes", "100", "--reference", str(sim_small / "reference.h5ad"), *batch])
    return out


def test_qc_cli_outputs(qc_out, sim_small):
    for s in ("sample1", "sample2"):
        for f in OUT_FILES:
            assert (qc_out / f.format(s=s)).stat().st_size > 0
    assert not [p for p in qc_out.iterdir() if p.name.startswith(".")]
    a = ad.read_h5ad(qc_out / "sample1.h5ad")
    assert sp.issparse(a.X) and np.all(a.X.data == np.round(a.X.data))
    assert a.obs_names[0] == f"sample1_{a.obs['barcode'].iloc[0]}" and (a.obs["sample"] == "sample1").all()
    # --batch (the samplesheet's batch column) labels every spot; without it there is no batch column
    b = ad.read_h5ad(qc_out / "sample2.h5ad", backed="r")
    assert "batch" not in a.obs and set(b.obs["batch"]) == {"run1"} and b.uns["qc"]["batch"] == "run1"
    for c in ("total_counts", "n_genes_by_counts", "mt_frac"):
        assert c in a.obs
    assert isinstance(a.obsm["mt"], pd.DataFrame) and a.obsm["mt"].shape == (a.n_obs, 13)
    assert a.obsm["spatial"].shape == (a.n_obs, 2)
    assert {"images", "scalefactors"} <= set(a.uns["spatial"]["sample1"]) and "hires" in a.uns["spatial"]["sample1"]["images"]
    assert a.var["gene_ids"].str.startswith("ENSSIMG").all()
    m = pd.read_csv(qc_out / "sample1_qc_metrics.tsv", sep="\t", index_col=0)
    assert len(m) == 150 and m["pass_qc"].sum() == a.n_obs
    assert set(m.index[m["pass_qc"]]) == set(a.obs_names)
    assert ((m["total_counts"] < 500) | (m["n_genes_by_counts"] < 100) | (m["mt_frac"] > 0.2)).eq(~m["pass_qc"]).all()
    s = pd.read_csv(qc_out / "sample1_qc_summary_mqc.tsv", sep="\t", comment="#", index_col=0)
    assert s.loc["sample1", "spots_after"] == a.n_obs and s.loc["sample1", "genes_after"] == a.n_vars
    assert s.loc["sample1", "genes_shared_with_reference"] == a.n_vars and s.loc["sample1", "genes_matched_by"] == "id"
    head = [ln for ln in (qc_out / "sample1_qc_summary_mqc.tsv").read_text().splitlines() if ln.startswith("#")]
    assert "# id: spotmap_qc" in head and "# section_name: QC summary per sample" in head
    assert "# parent_name: Samples and QC" in head  # the registry's section, under the report's QC part


def test_multiqc_parses_qc_outputs(qc_out, tmp_path):
    r = subprocess.run([sys.executable, "-m", "multiqc", str(qc_out), "-o", str(tmp_path / "mqc"), "--no-ansi",
                        "-f"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    table = pd.read_csv(tmp_path / "mqc" / "multiqc_data" / "multiqc_spotmap_qc_table.txt", sep="\t", index_col=0)
    assert sorted(table.index) == ["sample1", "sample2"]  # one table, both samples merged
    for s in ("sample1", "sample2"):
        mine = pd.read_csv(qc_out / f"{s}_qc_summary_mqc.tsv", sep="\t", comment="#", index_col=0)
        assert table.loc[s, "spots_after"] == mine.loc[s, "spots_after"]
    html = (tmp_path / "mqc" / "multiqc_report.html").read_text()
    assert "Samples and QC" in html and "sample1_qc_spatial" in html and "sample2_qc_histograms" in html


def test_qc_batch_umap(qc_out, tmp_path):
    r = CliRunner().invoke(cli, ["qc-batch", "--spatial", str(qc_out / "sample1.h5ad"), "--spatial",
                                 str(qc_out / "sample2.h5ad"), "--outdir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    png = tmp_path / "qc_batch_umap_mqc.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # the inputs still hold raw counts afterwards
    a = ad.read_h5ad(qc_out / "sample1.h5ad")
    assert np.all(a.X.data == np.round(a.X.data))


def test_batch_umap_refuses_disjoint_genes():
    from spotmap.errors import SpotmapError

    def mk(g):
        return ad.AnnData(X=sp.csr_matrix(np.ones((5, 3), dtype=np.float32)), var=pd.DataFrame(index=g),
                          obs=pd.DataFrame(index=[f"{g[0]}{i}" for i in range(5)]))

    with pytest.raises(SpotmapError, match="share only 0 gene"):
        batch_umap({"a": mk(["x", "y", "z"]), "b": mk(["p", "q", "r"])})


@pytest.mark.shared_data
@pytest.mark.parametrize("folder,sample,n_spots", [
    ("visium_spaceranger_scanpy_tests/1.0.0", "scanpy_v1", 100),
    ("visium_spaceranger_seurat_tests", "seurat_noattrs", 2695),
    ("visium_spaceranger_spatialexperiment_mtx/section1", "se_section1", 22),
    ("visium_spaceranger_spatialexperiment_mtx/section2/outs", "se_section2", 22),
])
def test_qc_on_real_spaceranger_fixtures(shared_data, tmp_path, folder, sample, n_spots):
    # these fixtures are heavily subset (50-100 genes): thresholds in spatialvi's test profile range
    _qc(["--sample", sample, "--input", str(shared_data / folder), "--outdir", str(tmp_path), "--min-counts", "1",
         "--min-genes", "1"])
    for f in OUT_FILES:
        assert (tmp_path / f.format(s=sample)).exists()
    m = pd.read_csv(tmp_path / f"{sample}_qc_metrics.tsv", sep="\t", index_col=0)
    a = ad.read_h5ad(tmp_path / f"{sample}.h5ad")
    assert len(m) == n_spots and a.n_obs == int(m["pass_qc"].sum()) == int((m["total_counts"] >= 1).sum())
    assert sample in a.uns["spatial"] and a.obs_names.str.startswith(f"{sample}_").all()


@pytest.mark.shared_data
def test_qc_on_real_count_table(shared_data, tmp_path):
    d = shared_data / "spacexr_visium_hippocampus" / "spatial"
    _qc(["--sample", "hippo", "--input", str(d / "counts.csv"), "--coordinates", str(d / "coords.csv"),
         "--outdir", str(tmp_path), "--min-genes", "50"])
    s = pd.read_csv(tmp_path / "hippo_qc_summary_mqc.tsv", sep="\t", comment="#", index_col=0)
    assert s.loc["hippo", "spots_before"] == 313 and 300 <= s.loc["hippo", "spots_after"] <= 313
