"""The simulator writes real formats, consistent truth, and the same files for the same seed."""

from __future__ import annotations

import json

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

from spotmap.io import read_spaceranger
from spotmap.simulate import SimulationParams, simulate


def test_layout(sim_small):
    for rel in ["reference.h5ad", "samplesheet.csv", "truth/cell_abundance.csv", "truth/signatures.csv",
                "truth/spots.csv", "truth/genes.csv", "truth/params.json",
                "samples/sample1/outs/filtered_feature_bc_matrix.h5",
                "samples/sample1/outs/spatial/tissue_positions.csv",
                "samples/sample1/outs/spatial/scalefactors_json.json",
                "samples/sample1/outs/spatial/tissue_hires_image.png",
                "samples/sample1/outs/spatial/tissue_lowres_image.png"]:
        assert (sim_small / rel).is_file(), rel
    sheet = pd.read_csv(sim_small / "samplesheet.csv")
    assert list(sheet.columns) == ["sample", "spaceranger_dir"]
    assert list(sheet["sample"]) == ["sample1", "sample2"]


def test_h5_has_space_ranger_attributes(sim_small):
    with h5py.File(sim_small / "samples/sample1/outs/filtered_feature_bc_matrix.h5") as f:
        assert f.attrs["library_ids"][0] == b"sample1"
        assert f.attrs["filetype"] == b"matrix"
        assert set(f["matrix"].keys()) >= {"barcodes", "data", "indices", "indptr", "shape", "features"}


def test_scanpy_reads_visium_folder(sim_small):
    with pytest.warns(FutureWarning):  # scanpy points to squidpy but still reads it
        a = sc.read_visium(sim_small / "samples/sample1/outs")
    assert a.shape == (150, 300)
    assert "sample1" in a.uns["spatial"]
    assert a.uns["spatial"]["sample1"]["images"]["hires"].shape[:2] == (2000, 2000)
    assert np.isfinite(a.obsm["spatial"]).all()


def test_own_reader_matches_scanpy(sim_small):
    ours = read_spaceranger(sim_small / "samples/sample2/outs")
    with pytest.warns(FutureWarning):
        theirs = sc.read_visium(sim_small / "samples/sample2/outs")
    assert list(ours.obs_names) == list(theirs.obs_names)
    assert (ours.X != theirs.X).nnz == 0
    np.testing.assert_allclose(ours.obsm["spatial"], np.asarray(theirs.obsm["spatial"], dtype=float))
    assert ours.obs["sample"].unique().tolist() == ["sample2"]


def test_old_positions_layout(sim_single):
    spatial = sim_single / "samples/sample1/outs/spatial"
    assert (spatial / "tissue_positions_list.csv").exists() and not (spatial / "tissue_positions.csv").exists()
    first = (spatial / "tissue_positions_list.csv").read_text().splitlines()[0]
    assert not first.startswith("barcode")
    a = read_spaceranger(sim_single / "samples/sample1/outs")
    assert a.n_obs == 100


def test_reference(sim_small):
    ref = ad.read_h5ad(sim_small / "reference.h5ad")
    assert ref.n_obs == 600 and ref.n_vars == 300
    assert ref.obs["batch"].nunique() >= 2
    X = ref.X.toarray()
    assert np.all(X == np.round(X)) and X.min() >= 0
    assert "gene_ids" in ref.var
    # the second batch is shallower (batch_depth_ratio 0.4)
    depth = pd.Series(X.sum(1)).groupby(ref.obs["batch"].to_numpy()).median()
    assert depth["batch2"] < 0.7 * depth["batch1"]


def test_truth_consistent_with_counts(sim_small):
    truth = pd.read_csv(sim_small / "truth/cell_abundance.csv", index_col=0)
    spots = pd.read_csv(sim_small / "truth/spots.csv", index_col=0)
    a = read_spaceranger(sim_small / "samples/sample1/outs")
    ids = "sample1_" + a.obs_names
    counts = pd.Series(np.asarray(a.X.sum(1)).ravel(), index=ids)
    ok = spots.loc[ids, "qc_fail"].isna()
    n_cells = truth.loc[ids].sum(1)
    # spots with more cells (and more detection) have more UMIs
    expected = n_cells * spots.loc[ids, "y_s"]
    r = np.corrcoef(expected[ok.to_numpy()], counts[ok.to_numpy()])[0, 1]
    assert r > 0.6, r
    assert abs(n_cells[ok.to_numpy()].mean() - 8.0) < 2.0
    sig = pd.read_csv(sim_small / "truth/signatures.csv", index_col=0)
    assert sig.shape == (300, 6) and (sig.to_numpy() > 0).all()
    genes = pd.read_csv(sim_small / "truth/genes.csv", index_col=0)
    assert genes["is_mt"].sum() == 13 and all(g.startswith("mt-") for g in genes.index[genes["is_mt"]])
    # mitochondrial share: damaged spots are flagged and do carry far more mt counts
    mt = a.var_names.str.startswith("mt-")
    frac = np.asarray(a.X[:, mt].sum(1)).ravel() / np.maximum(1, np.asarray(a.X.sum(1)).ravel())
    flag = spots.loc[ids, "qc_fail"].fillna("").to_numpy()
    assert frac[flag == "high_mt"].min() > frac[flag == ""].max() * 0.9 + 0.05 or (flag == "high_mt").sum() == 0


def test_same_seed_same_files(tmp_path):
    p = SimulationParams(n_cells=100, n_spots=30, n_genes=60, n_cell_types=3, n_samples=1, seed=7)
    a, b = simulate(tmp_path / "a", p), simulate(tmp_path / "b", p)
    for rel in ["truth/cell_abundance.csv", "truth/signatures.csv", "truth/spots.csv",
                "samples/sample1/outs/spatial/tissue_positions.csv"]:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    ra, rb = read_spaceranger(a / "samples/sample1/outs"), read_spaceranger(b / "samples/sample1/outs")
    assert (ra.X != rb.X).nnz == 0
    c = simulate(tmp_path / "c", SimulationParams(**{**p.__dict__, "seed": 8}))
    assert (a / "truth/cell_abundance.csv").read_bytes() != (c / "truth/cell_abundance.csv").read_bytes()
    assert json.loads((a / "truth/params.json").read_text())["seed"] == 7


def test_bad_sizes_rejected(tmp_path):
    from spotmap.errors import SpotmapError

    with pytest.raises(SpotmapError, match="--n-spots"):
        simulate(tmp_path / "x", SimulationParams(n_spots=100000))
    assert not (tmp_path / "x").exists()
