"""Visium HD: the simulator's Space Ranger HD layout, the reader (8 and 16 µm bins), QC defaults and bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from spotmap.cli import cli
from spotmap.errors import SpotmapError
from spotmap.io import read_spatial
from spotmap.simulate import SimulationParams, simulate

BIN8 = Path("outs/binned_outputs/square_008um")
BIN16 = Path("outs/binned_outputs/square_016um")


def _simulate_hd(tmp_path_factory, name: str, **params) -> Path:
    out = tmp_path_factory.mktemp("hd") / name
    simulate(out, SimulationParams(platform="visium-hd", **params))
    return out


@pytest.fixture(scope="module")
def hd(tmp_path_factory) -> Path:
    """2 samples × 1,500 in-tissue 8 µm bins, 2,000 genes, 8 types."""
    return _simulate_hd(tmp_path_factory, "sim", n_bins=1500, n_genes=2000, n_cell_types=8, n_samples=2,
                        n_cells=400, seed=3)


@pytest.fixture(scope="module")
def hd_tiny(tmp_path_factory) -> Path:
    """One tiny sample to copy and break."""
    return _simulate_hd(tmp_path_factory, "tiny", n_bins=300, n_genes=150, n_cell_types=3, n_samples=1,
                        n_cells=60, seed=4)


def run_cli(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def qc_error(tmp_path: Path, *args: str) -> str:
    """Run `spotmap qc`, expect exit 2, ONE error line and no output; return the line."""
    outdir = tmp_path / "qc_out"
    r = run_cli("qc", "--sample", "S1", "--outdir", outdir, *args)
    assert r.exit_code == 2, r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("spotmap: error:")]
    assert len(errors) == 1, r.output
    assert not outdir.exists() or list(outdir.rglob("*")) == []
    return errors[0]


# ---------------------------------------------------------------------------- simulator
def test_layout(hd):
    s1 = hd / "samples" / "sample1"
    for b in (BIN8, BIN16):
        for rel in ["filtered_feature_bc_matrix.h5", "spatial/tissue_positions.parquet",
                    "spatial/scalefactors_json.json", "spatial/tissue_hires_image.png",
                    "spatial/tissue_lowres_image.png"]:
            assert (s1 / b / rel).is_file(), b / rel
    for rel in ["reference.h5ad", "truth/cell_abundance.parquet", "truth/cell_abundance_016um.parquet",
                "truth/spots.parquet", "truth/signatures.csv", "truth/genes.csv", "truth/params.json"]:
        assert (hd / rel).is_file(), rel
    assert not (hd / "truth" / "cell_abundance.csv").exists()
    pos = pd.read_parquet(s1 / BIN8 / "spatial/tissue_positions.parquet")
    assert list(pos.columns) == ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
                                 "pxl_col_in_fullres"]
    assert all(re.fullmatch(r"s_008um_\d{5}_\d{5}-1", b) for b in pos["barcode"].head(50))
    assert pos["in_tissue"].sum() == 1500 and (pos["in_tissue"] == 0).sum() > 100  # bins off the tissue too
    row = pos.iloc[7]
    assert row["barcode"] == f"s_008um_{row['array_row']:05d}_{row['array_col']:05d}-1"
    sf = json.loads((s1 / BIN8 / "spatial/scalefactors_json.json").read_text())
    assert sf["bin_size_um"] == 8 and sf["spot_diameter_fullres"] == pytest.approx(8 / sf["microns_per_pixel"])
    assert {"tissue_hires_scalef", "tissue_lowres_scalef"} <= set(sf)
    assert json.loads((s1 / BIN16 / "spatial/scalefactors_json.json").read_text())["bin_size_um"] == 16
    sheet = pd.read_csv(hd / "samplesheet.csv")
    assert list(sheet.columns) == ["sample", "spaceranger_dir", "bin_size"]
    assert list(sheet["bin_size"]) == [8, 8] and sheet["spaceranger_dir"].iloc[0].endswith("sample1/outs")
    params = json.loads((hd / "truth/params.json").read_text())
    assert params["platform"] == "visium-hd" and params["n_bins"] == 1500


def test_truth_matches_counts(hd):
    ab = pd.read_parquet(hd / "truth/cell_abundance.parquet")
    spots = pd.read_parquet(hd / "truth/spots.parquet")
    assert ab.shape == (3000, 8) and ab.index.equals(spots.index)
    assert ab.index[0].startswith("sample1_s_008um_")
    n = ab.sum(1).to_numpy()
    assert n.min() == 0 and n.max() == 3 and 0.8 < n.mean() < 2.0  # 0-3 cells per 8 µm bin
    assert (ab.sum(0) > 0).all() and ab.sum(0).min() < 0.1 * ab.sum(0).max()  # every type present, some rare
    a = read_spatial(hd / "samples/sample1")
    total = np.asarray(a.X.sum(1)).ravel()
    t = spots.loc[a.obs_names]
    assert np.array_equal(total, t["total_counts"].to_numpy())
    healthy = t["qc_fail"] == ""
    empty = healthy & (t["n_cells"] == 0)
    one = healthy & (t["n_cells"] == 1)
    assert np.median(total[empty]) * 5 < np.median(total[one])  # a bin without cells holds ambient only
    # cell types are spatially structured: per-zone composition differs
    comp = ab.loc[t.index].groupby(t["zone"].to_numpy()).mean()
    assert (comp.max(0) > 3 * comp.min(0) + 0.05).sum() >= 3


def test_16um_bins_are_2x2_sums(hd):
    a8 = read_spatial(hd / "samples/sample1", bin_size=8)
    a16 = read_spatial(hd / "samples/sample1", bin_size=16)
    assert a16.uns["spotmap"] == {"platform": "visium-hd", "bin_size_um": 16}
    parent = [f"sample1_s_016um_{r // 2:05d}_{c // 2:05d}-1" for r, c in zip(a8.obs["array_row"], a8.obs["array_col"])]
    idx = a16.obs_names.get_indexer(parent)
    assert (idx >= 0).all()
    A = sp.csr_matrix((np.ones(len(idx)), (idx, np.arange(len(idx)))), shape=(a16.n_obs, a8.n_obs))
    assert abs(A @ a8.X - a16.X).sum() == 0
    t16 = pd.read_parquet(hd / "truth/cell_abundance_016um.parquet")
    t8 = pd.read_parquet(hd / "truth/cell_abundance.parquet").loc[a8.obs_names]
    np.testing.assert_array_equal(t16.loc[a16.obs_names].to_numpy(), A @ t8.to_numpy())


def test_fractional_bin_size_is_an_error_not_truncated(hd):
    with pytest.raises(SpotmapError, match=r"bin_size.*whole number.*8\.5"):
        read_spatial(hd / "samples/sample1", bin_size=8.5)


def test_sparsity_at_realistic_depth(tmp_path):
    out = simulate(tmp_path / "deep", SimulationParams(platform="visium-hd", n_bins=1000, n_genes=18000,
                                                       n_cell_types=10, n_samples=1, n_cells=200, seed=5))
    a = read_spatial(out / "samples/sample1")
    X = a.X
    sparsity = 1 - X.nnz / (X.shape[0] * X.shape[1])
    total, genes = np.asarray(X.sum(1)).ravel(), np.diff(X.indptr)
    spots = pd.read_parquet(out / "truth/spots.parquet").loc[a.obs_names]
    occupied = (spots["n_cells"] > 0).to_numpy()
    assert 0.97 < sparsity < 0.995, sparsity
    assert 200 < np.median(total[occupied]) < 700, np.median(total[occupied])  # a few hundred UMIs per bin
    assert 150 < np.median(genes[occupied]) < np.median(total[occupied])


def test_counts_are_negative_binomial():
    """The sparse sampler draws NB(mu, alpha) exactly: mean mu and variance mu (1 + mu / alpha)."""
    from spotmap.simulate import _hd_counts

    rng = np.random.default_rng(1)
    G, F, B = 30, 3, 40000
    W = rng.lognormal(0, 1, (F, G)) * 2
    s = np.full(G, 0.5)
    alpha = rng.uniform(0.5, 5, G)
    mt = np.zeros(G, bool)
    mt[:2] = True
    n_sf = np.zeros((B, F), np.int8)
    n_sf[:, 0], n_sf[:, 1] = 2, 1
    X, _ = _hd_counts(SimulationParams(), rng, n_sf, np.full(B, 0.7), np.full(B, 0.1), W, s, alpha, mt,
                      np.array([0.3, 0.7]))
    D = X.toarray()
    mu = 0.7 * (s + 2 * W[0] + W[1])
    mu[:2] = 0.1 / 0.9 * mu[2:].sum() * np.array([0.3, 0.7])
    np.testing.assert_allclose(D.mean(0), mu, rtol=0.03)
    np.testing.assert_allclose(D.var(0), mu * (1 + mu / alpha), rtol=0.12)


def test_same_seed_same_files(hd_tiny, tmp_path):
    p = SimulationParams(platform="visium-hd", n_bins=300, n_genes=150, n_cell_types=3, n_samples=1, n_cells=60,
                         seed=4)
    b = simulate(tmp_path / "b", p)
    for rel in ["truth/cell_abundance.parquet", "truth/spots.parquet", "truth/signatures.csv",
                f"samples/sample1/{BIN8}/spatial/tissue_positions.parquet",
                f"samples/sample1/{BIN16}/spatial/scalefactors_json.json"]:
        assert (hd_tiny / rel).read_bytes() == (b / rel).read_bytes(), rel
    for size in (8, 16):
        xa = read_spatial(hd_tiny / "samples/sample1", bin_size=size).X
        xb = read_spatial(b / "samples/sample1", bin_size=size).X
        assert (xa != xb).nnz == 0
    c = simulate(tmp_path / "c", SimulationParams(**{**p.__dict__, "seed": 5}))
    assert (c / "truth/spots.parquet").read_bytes() != (b / "truth/spots.parquet").read_bytes()


def test_simulate_cli(tmp_path):
    r = run_cli("simulate", "--platform", "visium-hd", "--outdir", tmp_path / "s", "--n-bins", 200, "--n-genes", 100,
                "--n-cell-types", 3, "--n-cells", 60, "--n-samples", 1)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s" / "samples/sample1" / BIN8 / "filtered_feature_bc_matrix.h5").is_file()
    r = run_cli("simulate", "--platform", "visium-hd", "--outdir", tmp_path / "bad", "--n-bins", 10)
    assert r.exit_code == 2 and "--n-bins" in r.output and not (tmp_path / "bad").exists()
    r = run_cli("simulate", "--outdir", tmp_path / "v", "--n-spots", 30, "--n-genes", 60, "--n-cell-types", 3,
                "--n-cells", 60, "--n-samples", 1)  # the default stays Visium
    assert r.exit_code == 0 and (tmp_path / "v/samples/sample1/outs/filtered_feature_bc_matrix.h5").is_file()


# ---------------------------------------------------------------------------- reader
def test_reader_conventions_and_entry_points(hd):
    s1 = hd / "samples" / "sample1"
    a = read_spatial(s1)
    assert a.n_obs == 1500 and sp.issparse(a.X) and a.X.dtype == np.float32
    assert {"array_row", "array_col", "in_tissue", "sample", "barcode"} <= set(a.obs.columns)
    assert (a.obs["in_tissue"] == 1).all() and a.obs_names[0].startswith("sample1_s_008um_")
    assert a.uns["spotmap"] == {"platform": "visium-hd", "bin_size_um": 8}
    lib = a.uns["spatial"]["sample1"]
    assert {"hires", "lowres"} <= set(lib["images"]) and lib["scalefactors"]["bin_size_um"] == 8
    assert lib["metadata"]["platform"] == "visium-hd" and lib["metadata"]["bin_size_um"] == 8
    pos = pd.read_parquet(s1 / BIN8 / "spatial/tissue_positions.parquet").set_index("barcode")
    np.testing.assert_allclose(a.obsm["spatial"],
                               pos.loc[a.obs["barcode"], ["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy())
    for entry in (s1 / "outs", s1 / "outs/binned_outputs", s1 / BIN8, s1 / BIN8 / "filtered_feature_bc_matrix.h5"):
        b = read_spatial(entry)
        assert b.obs_names.equals(a.obs_names), entry  # default sample id: the folder above outs/
        assert (b.X != a.X).nnz == 0
    assert read_spatial(s1 / BIN16).uns["spotmap"]["bin_size_um"] == 16


# ---------------------------------------------------------------------------- QC
def test_qc_cli_hd_defaults_and_bin_size(hd, tmp_path):
    r = run_cli("qc", "--sample", "sample1", "--input", hd / "samples/sample1", "--outdir", tmp_path / "q8")
    assert r.exit_code == 0, r.output
    q = ad.read_h5ad(tmp_path / "q8" / "sample1.h5ad")
    assert q.uns["qc"]["min_counts"] == 50 and q.uns["qc"]["min_genes"] == 30 and q.uns["qc"]["bin_size_um"] == 8
    assert q.uns["spotmap"]["platform"] == "visium-hd"  # the pipeline reads it back (mapping mode)
    m = pd.read_csv(tmp_path / "q8" / "sample1_qc_metrics.tsv", sep="\t", index_col=0)
    spots = pd.read_parquet(hd / "truth/spots.parquet").loc[m.index]
    assert len(m) == 1500 and 0.5 * 1500 < q.n_obs < 1500
    assert not m.loc[spots["qc_fail"] == "low_counts", "pass_qc"].any()  # the simulated empty bins go
    assert m.loc[spots["n_cells"] >= 2, "pass_qc"].mean() > 0.95  # bins with cells stay
    for name in ("sample1_qc_spatial_mqc.png", "sample1_qc_histograms_mqc.png"):
        assert (tmp_path / "q8" / name).stat().st_size < 1_500_000
    # 16 µm: other bins, thresholds scaled by the area
    r = run_cli("qc", "--sample", "sample1", "--input", hd / "samples/sample1", "--outdir", tmp_path / "q16",
                "--bin-size", 16, "--no-plots")
    assert r.exit_code == 0, r.output
    q16 = ad.read_h5ad(tmp_path / "q16" / "sample1.h5ad")
    assert q16.uns["qc"]["min_counts"] == 200 and q16.obs_names[0].startswith("sample1_s_016um_")
    # an explicit threshold still wins over auto
    r = run_cli("qc", "--sample", "sample1", "--input", hd / "samples/sample1", "--outdir", tmp_path / "qx",
                "--min-counts", 500, "--min-genes", 0, "--no-plots")
    assert r.exit_code == 0, r.output
    qx = ad.read_h5ad(tmp_path / "qx" / "sample1.h5ad")
    assert qx.uns["qc"]["min_counts"] == 500 and qx.n_obs < q.n_obs


def test_qc_auto_keeps_visium_defaults(sim_small, tmp_path):
    from spotmap.qc import default_thresholds, run_qc

    a = read_spatial(sim_small / "samples/sample1/outs")
    assert "spotmap" not in a.uns
    auto, _ = run_qc(a.copy(), "sample1", None, None, None)
    explicit, _ = run_qc(a.copy(), "sample1", 500, 250, 0.2)
    assert auto.uns["qc"] == explicit.uns["qc"] and auto.obs_names.equals(explicit.obs_names)
    assert default_thresholds("visium") == {"min_counts": 500, "min_genes": 250, "max_mt_fraction": 0.2}
    assert default_thresholds("visium-hd", 2) == {"min_counts": 3, "min_genes": 2, "max_mt_fraction": 0.2}
    r = run_cli("qc", "--sample", "sample1", "--input", sim_small / "samples/sample1/outs", "--outdir", tmp_path / "v",
                "--bin-size", 16, "--no-plots")  # ignored for Visium
    assert r.exit_code == 0, r.output
    assert ad.read_h5ad(tmp_path / "v" / "sample1.h5ad").uns["qc"]["min_counts"] == 500


def test_qc_spatial_plot_is_raster(hd):
    from spotmap.pl import qc_spatial
    from spotmap.qc import run_qc

    a = read_spatial(hd / "samples/sample1")
    run_qc(a, "sample1")
    fig = qc_spatial(a, "sample1")
    ax = fig.axes[0]
    assert len(ax.images) == 2 and not any(len(c.get_offsets()) > 10 for c in ax.collections)  # no per-bin markers
    assert ax.images[0].get_array().shape[0] < 100


def test_samplesheet_bin_size_drives_qc(hd, tmp_path):
    from spotmap.io.samplesheet import read_samplesheet, sample_rows

    sheet = tmp_path / "samplesheet.csv"
    sheet.write_text(f"sample,spaceranger_dir,bin_size\nA,{hd / 'samples/sample1/outs'},16\n"
                     f"B,{hd / 'samples/sample2/outs'},\n")
    a, b = sample_rows(read_samplesheet(sheet))
    assert a.bin_size == 16 and b.bin_size is None
    r = run_cli("qc", "--sample", a.sample, "--input", a.input, "--outdir", tmp_path / "qa", "--no-plots",
                "--bin-size", a.bin_size)
    assert r.exit_code == 0, r.output
    qa = ad.read_h5ad(tmp_path / "qa" / "A.h5ad")
    assert qa.uns["spotmap"]["bin_size_um"] == 16 and qa.obs_names[0].startswith("A_s_016um_")


# ---------------------------------------------------------------------------- bad input
def test_missing_bin_size(hd_tiny, tmp_path):
    err = qc_error(tmp_path, "--input", hd_tiny / "samples/sample1", "--bin-size", 2)
    assert "binned_outputs" in err and "square_002um" in err and "available: 8, 16" in err and "bin_size" in err


def test_square_folder_with_other_bin_size(hd_tiny, tmp_path):
    err = qc_error(tmp_path, "--input", hd_tiny / "samples/sample1" / BIN16, "--bin-size", 8)
    assert "square_016um" in err and "bin_size" in err and "8" in err


def _copy(hd_tiny: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy" / "sample1"
    shutil.copytree(hd_tiny / "samples/sample1", dst)
    return dst


def test_missing_parquet(hd_tiny, tmp_path):
    s = _copy(hd_tiny, tmp_path)
    (s / BIN8 / "spatial/tissue_positions.parquet").unlink()
    err = qc_error(tmp_path, "--input", s)
    assert "square_008um/spatial" in err and "tissue_positions.parquet" in err


def test_corrupt_parquet(hd_tiny, tmp_path):
    s = _copy(hd_tiny, tmp_path)
    p = s / BIN8 / "spatial/tissue_positions.parquet"
    p.write_bytes(p.read_bytes()[:200])
    err = qc_error(tmp_path, "--input", s)
    assert "tissue_positions.parquet" in err and "parquet" in err and "corrupt" in err


@pytest.mark.parametrize("content, words", [
    ("{\"bin_size_um\": 8, ", ["invalid JSON"]),
    ("[1, 2]", ["JSON object"]),
    ("{\"bin_size_um\": 8, \"microns_per_pixel\": -0.27}", ["microns_per_pixel", "-0.27"]),
    ("{\"bin_size_um\": 16, \"microns_per_pixel\": 0.27}", ["bin_size_um", "square_008um", "16"]),
])
def test_corrupt_scalefactors(hd_tiny, tmp_path, content, words):
    s = _copy(hd_tiny, tmp_path)
    (s / BIN8 / "spatial/scalefactors_json.json").write_text(content)
    err = qc_error(tmp_path, "--input", s)
    assert "scalefactors_json.json" in err
    for w in words:
        assert w in err, (w, err)


def test_missing_spatial_folder(hd_tiny, tmp_path):
    s = _copy(hd_tiny, tmp_path)
    shutil.rmtree(s / BIN8 / "spatial")
    err = qc_error(tmp_path, "--input", s)
    assert "square_008um" in err and "spatial" in err


def test_bad_bin_size_option(hd_tiny, tmp_path):
    r = run_cli("qc", "--sample", "S1", "--input", hd_tiny / "samples/sample1", "--outdir", tmp_path / "o",
                "--bin-size", 0)
    assert r.exit_code == 2 and "--bin-size" in r.output and not (tmp_path / "o").exists()
    r = run_cli("qc", "--sample", "S1", "--input", hd_tiny / "samples/sample1", "--outdir", tmp_path / "o",
                "--min-counts", "lots")
    assert r.exit_code == 2 and "--min-counts" in r.output and not (tmp_path / "o").exists()


def test_batch_umap_subsamples_large_samples(hd):
    from spotmap.pl import batch_umap
    from spotmap.qc import run_qc

    kept = {s: run_qc(read_spatial(hd / "samples" / s), s)[0] for s in ("sample1", "sample2")}
    assert min(a.n_obs for a in kept.values()) > 600
    fig = batch_umap(kept, n_top_genes=200, max_spots_per_sample=300)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == [f"{s} (300 of {kept[s].n_obs} spots)" for s in ("sample1", "sample2")]
    assert len(fig.axes[0].collections[0].get_offsets()) == 600


def test_run_qc_api_defaults_follow_the_platform(hd):
    from spotmap.qc import run_qc

    kept, summary = run_qc(read_spatial(hd / "samples/sample1"), "sample1")
    assert kept.uns["qc"]["min_counts"] == 50 and summary["spots_after"] > 0.5 * summary["spots_before"]


def test_qc_plot_of_a_large_grid_is_block_means():
    from spotmap.pl.qc import QC_PLOT_MAX_PX, qc_spatial as plot_qc_spatial

    rng = np.random.default_rng(0)
    n = 3000
    obs = pd.DataFrame({"array_row": rng.integers(0, 800, n), "array_col": rng.integers(0, 700, n),
                        "total_counts": rng.poisson(300, n).astype(float), "n_genes_by_counts": rng.poisson(250, n),
                        "mt_counts": rng.poisson(5, n).astype(float), "pass_qc": rng.random(n) > 0.2},
                       index=[f"b{i}" for i in range(n)])
    obs["mt_frac"] = obs["mt_counts"] / obs["total_counts"]
    a = ad.AnnData(obs=obs, uns={"spotmap": {"platform": "visium-hd", "bin_size_um": 2}})
    fig = plot_qc_spatial(a, "big")
    img = fig.axes[0].images[0].get_array()
    span = [int(obs[c].max() - obs[c].min() + 1) for c in ("array_row", "array_col")]
    assert img.shape == (-(-span[0] // 3), -(-span[1] // 3)) and max(img.shape) <= QC_PLOT_MAX_PX
    assert "mean of 3 × 3 bins" in fig.axes[0].get_xlabel()
    assert img.max() <= obs["total_counts"].max() and np.ma.getmaskarray(img).any()  # blocks without bins stay empty


def test_lean_subset_and_chunked_count_checks(monkeypatch):
    from spotmap.io import counts
    from spotmap.qc.metrics import _select_csr

    rng = np.random.default_rng(2)
    X = sp.random(500, 80, density=0.1, format="csr", random_state=3, dtype=np.float32)
    X.data = np.ceil(X.data * 5)
    rows, cols = rng.random(500) > 0.3, rng.random(80) > 0.1
    Y = _select_csr(X, rows, cols, chunk=37)
    assert Y.shape == (rows.sum(), cols.sum()) and abs(Y - X[rows][:, cols]).sum() == 0
    monkeypatch.setattr(counts, "_CHUNK", 100)  # force the slice-by-slice path
    assert counts.count_problem(X) is None
    bad = X.copy()
    bad.data[-3] = 2.5
    assert "not integers (e.g. 2.5)" in counts.count_problem(bad)
    bad.data[-3] = -1
    assert "negative (min -1)" in counts.count_problem(bad)
    assert "negative" in counts.count_problem(sp.csr_matrix(np.r_[np.ones(300), [-2]].astype(np.int64)))
