"""Readers: every spatial and reference format, on tiny generated files and on the real fixtures."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from spotmap.io import (
    read_10x_h5,
    read_count_table,
    read_h5ad_counts,
    read_reference,
    read_spaceranger,
    read_spatial,
    write_10x_h5,
)
from spotmap.io.spaceranger import POSITION_COLUMNS, write_positions, write_scalefactors

RNG = np.random.default_rng(7)
N_SPOTS, N_GENES = 12, 8
GENES = ["mt-Co1", "Actb", "Gapdh", "Sox2", "Pax6", "Olig2", "Gfap", "Snap25"]
IDS = [f"ENSMUSG{i:011d}" for i in range(N_GENES)]


def _barcodes(n: int) -> list[str]:
    return [f"{''.join(RNG.choice(list('ACGT'), 16))}-1" for _ in range(n)]


BARCODES = _barcodes(N_SPOTS + 4)  # 4 grid spots outside the tissue
COUNTS = RNG.poisson(5, size=(N_SPOTS, N_GENES)).astype(np.int64)
COUNTS[0, 0] = 40  # the mt gene is certainly non-zero somewhere


def _positions() -> pd.DataFrame:
    n = len(BARCODES)
    return pd.DataFrame({"barcode": BARCODES, "in_tissue": [1] * N_SPOTS + [0] * 4,
                         "array_row": np.arange(n), "array_col": 2 * np.arange(n),
                         "pxl_row_in_fullres": 100 + 10 * np.arange(n), "pxl_col_in_fullres": 50 + 5 * np.arange(n)})


def make_outs(root: Path, matrix: str = "h5", positions: str = "csv", gz: bool = True, features: str = "features",
              root_attrs: bool = True, counts: np.ndarray | None = None) -> Path:
    """A tiny Space Ranger outs/ folder: h5 or mtx, new (header) or old (no header) positions."""
    outs = root / "outs"
    (outs / "spatial").mkdir(parents=True)
    X = COUNTS if counts is None else counts
    in_tissue = BARCODES[:N_SPOTS]
    if matrix == "h5":
        write_10x_h5(outs / "filtered_feature_bc_matrix.h5", sp.csr_matrix(X), in_tissue, IDS, GENES,
                     root_attrs=root_attrs)
    else:
        d = outs / "filtered_feature_bc_matrix"
        d.mkdir()
        opener = (lambda p, m="wt": gzip.open(str(p) + ".gz", m)) if gz else (lambda p, m="w": open(p, m))
        with opener(d / "matrix.mtx", "wb") as fh:
            scipy.io.mmwrite(fh, sp.coo_matrix(X.T))
        with opener(d / f"{features}.tsv") as fh:
            for i, g in zip(IDS, GENES):
                fh.write(f"{i}\t{g}\tGene Expression\n" if features == "features" else f"{i}\t{g}\n")
        with opener(d / "barcodes.tsv") as fh:
            fh.write("\n".join(in_tissue) + "\n")
    name = "tissue_positions.csv" if positions == "csv" else "tissue_positions_list.csv"
    write_positions(outs / "spatial" / name, _positions()[POSITION_COLUMNS], header=positions == "csv")
    write_scalefactors(outs / "spatial" / "scalefactors_json.json",
                       {"tissue_hires_scalef": 0.5, "tissue_lowres_scalef": 0.1, "spot_diameter_fullres": 9.0})
    from spotmap.io.spaceranger import write_image

    write_image(outs / "spatial" / "tissue_lowres_image.png", np.full((30, 30, 3), 0.8))
    return outs


def _assert_spots(a: ad.AnnData, sample: str) -> None:
    assert a.shape == (N_SPOTS, N_GENES)
    assert sp.issparse(a.X)
    np.testing.assert_array_equal(a.X.toarray(), COUNTS)
    assert list(a.obs["barcode"]) == BARCODES[:N_SPOTS]
    assert a.obs_names[0] == f"{sample}_{BARCODES[0]}"
    assert (a.obs["sample"] == sample).all()
    pos = _positions().set_index("barcode").loc[BARCODES[:N_SPOTS]]
    np.testing.assert_array_equal(a.obsm["spatial"], pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy())
    assert list(a.var["gene_ids"]) == IDS and list(a.var_names) == GENES
    lib = a.uns["spatial"][sample]
    assert lib["scalefactors"]["tissue_lowres_scalef"] == 0.1 and lib["images"]["lowres"].shape[:2] == (30, 30)


@pytest.mark.parametrize("matrix,positions,gz,features,root_attrs", [
    ("h5", "csv", True, "features", True),
    ("h5", "list", True, "features", False),      # old positions, an h5 without root attributes
    ("mtx", "csv", True, "features", True),       # gzipped v3 mtx
    ("mtx", "list", False, "genes", True),        # plain v2 mtx with genes.tsv
])
def test_spaceranger_layouts(tmp_path, matrix, positions, gz, features, root_attrs):
    outs = make_outs(tmp_path / "s1", matrix, positions, gz, features, root_attrs)
    for path in (outs, outs.parent):  # outs/ or its parent
        _assert_spots(read_spatial(path, sample="S1"), "S1")
    default = read_spatial(outs.parent)
    assert default.obs["sample"].iloc[0] == "s1"


def test_read_10x_h5_keeps_its_signature(tmp_path):
    outs = make_outs(tmp_path / "s", "h5")
    a = read_10x_h5(outs / "filtered_feature_bc_matrix.h5")
    assert a.obs_names[0] == BARCODES[0] and a.X.dtype == np.float32
    b = read_spaceranger(outs.parent, sample="x")
    assert b.n_obs == N_SPOTS and "spatial" in b.obsm


def test_raw_matrix_used_when_no_filtered(tmp_path):
    """A raw mtx with every barcode: only in-tissue spots come back (SpatialExperiment's layout)."""
    outs = tmp_path / "s" / "outs"
    (outs / "spatial").mkdir(parents=True)
    allX = np.vstack([COUNTS, RNG.poisson(1, size=(4, N_GENES))])
    d = outs / "raw_feature_bc_matrix"
    d.mkdir()
    scipy.io.mmwrite(d / "matrix.mtx", sp.coo_matrix(allX.T))
    (d / "features.tsv").write_text("".join(f"{i}\t{g}\tGene Expression\n" for i, g in zip(IDS, GENES)))
    (d / "barcodes.tsv").write_text("\n".join(BARCODES) + "\n")
    write_positions(outs / "spatial" / "tissue_positions_list.csv", _positions(), header=False)
    a = read_spatial(outs, sample="r")
    assert a.n_obs == N_SPOTS
    np.testing.assert_array_equal(a.X.toarray(), COUNTS)


def _h5ad(tmp_path, where: str) -> Path:
    X = sp.csr_matrix(COUNTS.astype(np.float32))
    logn = sp.csr_matrix(np.log1p(COUNTS / COUNTS.sum(1, keepdims=True) * 1e4).astype(np.float32))
    a = ad.AnnData(X=logn if where != "X" else X, obs=pd.DataFrame(index=BARCODES[:N_SPOTS]),
                   var=pd.DataFrame({"gene_ids": IDS}, index=GENES))
    a.obsm["spatial"] = RNG.uniform(0, 100, size=(N_SPOTS, 2))
    if where == "counts":
        a.layers["counts"] = X
    if where == "raw":
        a.raw = ad.AnnData(X=X, obs=a.obs, var=a.var)
    p = tmp_path / f"{where}.h5ad"
    a.write_h5ad(p)
    return p


@pytest.mark.parametrize("where", ["X", "counts", "raw"])
def test_h5ad_counts_layers(tmp_path, where):
    p = _h5ad(tmp_path, where)
    for layer in ("auto", where):
        a = read_spatial(p, sample="H", counts_layer=layer)
        np.testing.assert_array_equal(a.X.toarray(), COUNTS)
        assert a.obs_names[0] == f"H_{BARCODES[0]}" and a.obsm["spatial"].shape == (N_SPOTS, 2)
    assert read_h5ad_counts(p, layer).n_obs == N_SPOTS


def test_h5ad_log_normalised_refused(tmp_path):
    from spotmap.errors import SpotmapError

    p = _h5ad(tmp_path, "counts")
    with pytest.raises(SpotmapError, match=r"log-normalised.*--counts-layer") as e:
        read_spatial(p, counts_layer="X")
    assert str(p) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("orientation,sep,suffix", [("genes_x_spots", ",", ".csv"), ("spots_x_genes", "\t", ".tsv"),
                                                    ("genes_x_spots", ",", ".csv.gz")])
def test_count_table_both_orientations(tmp_path, orientation, sep, suffix):
    df = pd.DataFrame(COUNTS, index=BARCODES[:N_SPOTS], columns=GENES)
    if orientation == "genes_x_spots":
        df = df.T
    counts = tmp_path / f"counts{suffix}"
    df.to_csv(counts, sep=sep)
    coords = tmp_path / "coords.csv"
    pd.DataFrame({"x": np.arange(N_SPOTS + 4.0), "y": -np.arange(N_SPOTS + 4.0)},
                 index=pd.Index(BARCODES, name="barcode")).to_csv(coords)
    a = read_spatial(counts, sample="T", coordinates=coords)
    np.testing.assert_array_equal(a.X.toarray(), COUNTS)
    assert list(a.var_names) == GENES and a.obs["barcode"].tolist() == BARCODES[:N_SPOTS]
    np.testing.assert_array_equal(a.obsm["spatial"][:, 0], np.arange(N_SPOTS))
    b = read_count_table(counts, coords, orientation=orientation)
    assert b.shape == (N_SPOTS, N_GENES)


def test_reference_h5ad_and_table(tmp_path):
    labels = np.array(["A", "B", "C"])[np.arange(N_SPOTS) % 3]
    a = ad.AnnData(X=sp.csr_matrix(COUNTS.astype(np.float32)), obs=pd.DataFrame({"ct": labels},
                   index=[f"c{i}" for i in range(N_SPOTS)]), var=pd.DataFrame({"gene_ids": IDS}, index=GENES))
    a.write_h5ad(tmp_path / "ref.h5ad")
    r = read_reference(tmp_path / "ref.h5ad", labels_key="ct")
    assert r.obs["ct"].cat.categories.tolist() == ["A", "B", "C"] and r.shape == (N_SPOTS, N_GENES)
    # genes × cells table + a cell-type table with one unlabelled cell (dropped)
    pd.DataFrame(COUNTS.T, index=GENES, columns=a.obs_names).to_csv(tmp_path / "ref.csv")
    ct = pd.DataFrame({"cell_type": labels}, index=pd.Index(a.obs_names, name="cell"))
    ct.iloc[:1].to_csv(tmp_path / "one.csv")
    ct.iloc[1:].to_csv(tmp_path / "ct.csv")
    t = read_reference(tmp_path / "ref.csv", cell_types=tmp_path / "ct.csv")
    assert t.n_obs == N_SPOTS - 1 and t.obs_names[0] == "c1"
    np.testing.assert_array_equal(t.X.toarray(), COUNTS[1:])
    assert t.obs["cell_type"].tolist() == labels[1:].tolist()


# ---------------------------------------------------------------------------- real data
SPACERANGER_FIXTURES = [
    # folder, spots, genes, total UMI (READMEs: 100 x 100 / 932; 2695 x 100 / 132,231; 22 in-tissue of 50)
    ("visium_spaceranger_scanpy_tests/1.0.0", 100, 100, 932),
    ("visium_spaceranger_seurat_tests", 2695, 100, 132231),
    ("visium_spaceranger_spatialexperiment_mtx/section1", 22, 50, None),
    ("visium_spaceranger_spatialexperiment_mtx/section2/outs", 22, 50, None),
]


@pytest.mark.shared_data
@pytest.mark.parametrize("folder,n_spots,n_genes,total", SPACERANGER_FIXTURES)
def test_real_spaceranger_fixtures(shared_data, folder, n_spots, n_genes, total):
    path = shared_data / folder
    a = read_spatial(path, sample="real")
    assert a.shape == (n_spots, n_genes)
    if total is not None:
        assert int(a.X.sum()) == total
    assert np.all(a.X.data == np.round(a.X.data)) and a.X.data.min() > 0
    assert a.var["gene_ids"].str.startswith("ENS").all()
    lib = a.uns["spatial"]["real"]
    assert "tissue_lowres_scalef" in lib["scalefactors"] and "lowres" in lib["images"]
    # every spot lies within the full-resolution image extent implied by the scale factors
    img = lib["images"]["lowres"]
    xy = a.obsm["spatial"] * lib["scalefactors"]["tissue_lowres_scalef"]
    assert (xy >= 0).all() and (xy[:, 0] <= img.shape[1]).all() and (xy[:, 1] <= img.shape[0]).all()
    if folder.startswith("visium_spaceranger_spatialexperiment"):
        # in-tissue spots only: the positions file says 22 of 50 (49 listed in section2)
        pos = pd.read_csv(next((path if path.name == "outs" else path / "outs").glob("spatial/tissue_positions_list.csv")),
                          header=None)
        assert set(a.obs["barcode"]) == set(pos.loc[pos[1] == 1, 0])


@pytest.mark.shared_data
def test_real_seurat_h5_without_root_attributes(shared_data):
    import h5py

    h5 = shared_data / "visium_spaceranger_seurat_tests" / "filtered_feature_bc_matrix.h5"
    with h5py.File(h5) as f:
        assert "library_ids" not in f.attrs  # the edge case this fixture is for
    a = read_spatial(h5, sample="seu")  # an .h5 inside the outs folder finds its spatial/ beside it
    assert a.shape == (2695, 100) and "seu" in a.uns["spatial"]
    assert a.var_names[0] == "Xkr4"


@pytest.mark.shared_data
def test_real_probe_h5(shared_data):
    a = read_10x_h5(shared_data / "visium_spaceranger_scanpy_tests" / "2.1.0" / "raw_probe_bc_matrix.h5")
    assert a.shape == (4987, 1000) and int(a.X.sum()) == 3372


@pytest.mark.shared_data
@pytest.mark.parametrize("folder,counts,coords,n_spots,n_genes", [
    ("spacexr_visium_hippocampus", "counts.csv", "coords.csv", 313, 276),
    ("spacexr_slideseq_cerebellum", "MappedDGEForR.csv", "BeadLocationsForR.csv", 100, 378),
    ("spacexr_merfish_hypothalamus", "counts.csv", "coords.csv", 750, 134),
])
def test_real_count_tables(shared_data, folder, counts, coords, n_spots, n_genes):
    d = shared_data / folder / "spatial"
    a = read_spatial(d / counts, sample="t", coordinates=d / coords)
    assert a.shape == (n_spots, n_genes)
    raw = pd.read_csv(d / counts, index_col=0)  # genes × spots on disk
    np.testing.assert_array_equal(a.X.toarray(), raw.to_numpy().T)
    xy = pd.read_csv(d / coords, index_col=0).loc[a.obs["barcode"]]
    np.testing.assert_allclose(a.obsm["spatial"], xy.iloc[:, :2].to_numpy(dtype=float))
    if (d / "nUMI.csv").exists():
        numi = pd.read_csv(d / "nUMI.csv", index_col=0).iloc[:, 0].loc[a.obs["barcode"]]
        assert (np.asarray(a.X.sum(1)).ravel() <= numi.to_numpy() + 1e-6).all()


@pytest.mark.shared_data
def test_real_references(shared_data):
    hip = shared_data / "spacexr_visium_hippocampus" / "reference"
    r = read_reference(hip / "counts.csv", labels_key="x", cell_types=hip / "cell_types.csv")
    assert r.shape == (510, 307) and r.obs["x"].nunique() == 17 and (r.obs["x"].value_counts() == 30).all()
    cb = shared_data / "spacexr_slideseq_cerebellum" / "reference"
    r = read_reference(cb / "dge.csv", labels_key="cluster", cell_types=cb / "meta_data.csv")
    assert r.shape == (475, 384) and r.obs["cluster"].nunique() == 19
    meta = pd.read_csv(cb / "meta_data.csv", index_col=0)
    assert (np.asarray(r.X.sum(1)).ravel() <= meta.loc[r.obs_names, "nUMI"].to_numpy()).all()


def test_simulated_samples_read_both_ways(sim_small, sim_single):
    truth = pd.read_csv(sim_small / "truth" / "spots.csv", index_col=0)
    a = read_spatial(sim_small / "samples" / "sample1" / "outs", sample="sample1")
    assert a.n_obs == 150 and set(a.obs_names) == set(truth.index[truth["sample"] == "sample1"])
    np.testing.assert_array_equal(np.asarray(a.X.sum(1)).ravel(), truth.loc[a.obs_names, "total_counts"].to_numpy())
    b = read_spatial(sim_single / "samples" / "sample1", sample="sample1")  # headerless positions
    assert b.n_obs == 100 and "sample1" in b.uns["spatial"]
    # a copy into an odd folder name still reads, with the folder name as default sample id
    dst = Path(shutil.copytree(sim_single / "samples" / "sample1", sim_small.parent / "odd_name"))
    assert read_spatial(dst).obs["sample"].iloc[0] == "odd_name"
    assert json.loads((sim_single / "truth" / "params.json").read_text())["positions"] == "list"


def test_parquet_positions_and_foreign_library_key(tmp_path):
    """Space Ranger 3 writes positions as parquet; an .h5ad keyed by another library id is re-keyed."""
    outs = make_outs(tmp_path / "p", "h5", "csv")
    (outs / "spatial" / "tissue_positions.csv").unlink()
    _positions().to_parquet(outs / "spatial" / "tissue_positions.parquet")
    a = read_spatial(outs, sample="P")
    _assert_spots(a, "P")
    a.uns["spatial"] = {"some_library": a.uns["spatial"]["P"]}
    a.obs_names = a.obs["barcode"].to_numpy()
    a.write_h5ad(tmp_path / "p.h5ad")
    b = read_spatial(tmp_path / "p.h5ad", sample="Q")
    assert list(b.uns["spatial"]) == ["Q"] and b.obs_names[0] == f"Q_{BARCODES[0]}"
    # a file already written by spotmap (obs_names prefixed, obs['barcode'] kept) reads back unchanged
    a.obs_names = [f"P_{x}" for x in a.obs["barcode"]]
    a.write_h5ad(tmp_path / "again.h5ad")
    assert read_spatial(tmp_path / "again.h5ad", sample="P").obs_names.tolist() == a.obs_names.tolist()
