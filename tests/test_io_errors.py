"""Bad input: each case gives exit code 2, ONE line naming the file and the problem, and no output files."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from spotmap.cli import cli
from spotmap.errors import SpotmapError
from spotmap.io import read_reference, read_spatial, write_10x_h5
from spotmap.io.genes import shared_genes

N_SPOTS, N_GENES = 10, 150
GENES = [f"Gene{i}" for i in range(N_GENES)]
BARCODES = [f"AAAC{i:012d}-1" for i in range(N_SPOTS)]


def run_qc_cli(tmp_path: Path, *args: str) -> tuple[str, Path]:
    """Run `spotmap qc` in-process; return the one error line and the output folder."""
    outdir = tmp_path / "out"
    r = CliRunner().invoke(cli, ["qc", "--sample", "S1", "--outdir", str(outdir), "--min-counts", "0",
                                 "--min-genes", "0", *args])
    assert r.exit_code == 2, r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("spotmap: error:")]
    assert len(errors) == 1, r.output
    leftovers = [p for p in outdir.rglob("*")] if outdir.exists() else []
    assert leftovers == [], leftovers  # no partial output, not even a hidden staging folder
    return errors[0], outdir


def write_table(tmp_path: Path, counts: np.ndarray, barcodes=BARCODES, genes=GENES, coords_barcodes=None) -> tuple[Path, Path]:
    c = tmp_path / "counts.csv"
    pd.DataFrame(counts.T, index=genes, columns=barcodes).to_csv(c)
    xy = tmp_path / "coords.csv"
    cb = list(coords_barcodes if coords_barcodes is not None else barcodes)
    pd.DataFrame({"x": np.arange(len(cb)), "y": np.arange(len(cb))}, index=pd.Index(cb, name="barcode")).to_csv(xy)
    return c, xy


def good_counts() -> np.ndarray:
    return np.random.default_rng(0).poisson(3, size=(N_SPOTS, N_GENES))


def test_missing_file(tmp_path):
    err, _ = run_qc_cli(tmp_path, "--input", str(tmp_path / "nope.h5ad"))
    assert "nope.h5ad" in err and "not found" in err


def test_corrupt_h5(tmp_path):
    outs = tmp_path / "s" / "outs"
    (outs / "spatial").mkdir(parents=True)
    (outs / "filtered_feature_bc_matrix.h5").write_bytes(b"this is not HDF5 at all" * 10)
    err, _ = run_qc_cli(tmp_path, "--input", str(outs))
    assert "filtered_feature_bc_matrix.h5" in err and "corrupt or truncated" in err


def test_truncated_h5(tmp_path):
    h5 = tmp_path / "full.h5"
    write_10x_h5(h5, sp.csr_matrix(good_counts()), BARCODES, GENES, GENES)
    data = h5.read_bytes()
    outs = tmp_path / "s" / "outs"
    (outs / "spatial").mkdir(parents=True)
    (outs / "filtered_feature_bc_matrix.h5").write_bytes(data[: len(data) // 2])
    err, _ = run_qc_cli(tmp_path, "--input", str(outs))
    assert "filtered_feature_bc_matrix.h5" in err and "10x HDF5" in err


@pytest.mark.parametrize("value,expected", [(2.5, "not integers"), (-1, "negative"), (0.25, "log-normalised")])
def test_non_integer_or_negative_counts(tmp_path, value, expected):
    X = good_counts().astype(float)
    if value == 0.25:  # a whole log-normalised-looking matrix
        X = np.log1p(X) + 0.25
    else:
        X[3, 7] = value
    c, xy = write_table(tmp_path, X)
    err, _ = run_qc_cli(tmp_path, "--input", str(c), "--coordinates", str(xy))
    assert "counts.csv" in err and expected in err


def test_negative_counts_in_h5ad(tmp_path):
    X = good_counts().astype(np.float32)
    X[0, 0] = -3
    a = ad.AnnData(X=sp.csr_matrix(X), obs=pd.DataFrame(index=BARCODES), var=pd.DataFrame(index=GENES))
    a.obsm["spatial"] = np.zeros((N_SPOTS, 2))
    a.write_h5ad(tmp_path / "neg.h5ad")
    err, _ = run_qc_cli(tmp_path, "--input", str(tmp_path / "neg.h5ad"), "--counts-layer", "X")
    assert "neg.h5ad" in err and "negative" in err and "X" in err


def test_all_zero_matrix(tmp_path):
    c, xy = write_table(tmp_path, np.zeros((N_SPOTS, N_GENES), dtype=int))
    err, _ = run_qc_cli(tmp_path, "--input", str(c), "--coordinates", str(xy))
    assert "counts.csv" in err and "all zero" in err


def test_duplicate_barcodes_in_table(tmp_path):
    bcs = BARCODES[:-1] + [BARCODES[0]]
    c, xy = write_table(tmp_path, good_counts(), barcodes=bcs, coords_barcodes=BARCODES)
    err, _ = run_qc_cli(tmp_path, "--input", str(c), "--coordinates", str(xy))
    assert "counts.csv" in err and "duplicate" in err and BARCODES[0] in err


def test_duplicate_barcodes_in_h5(tmp_path):
    outs = tmp_path / "s" / "outs"
    (outs / "spatial").mkdir(parents=True)
    write_10x_h5(outs / "filtered_feature_bc_matrix.h5", sp.csr_matrix(good_counts()), BARCODES[:-1] + [BARCODES[0]],
                 GENES, GENES)
    err, _ = run_qc_cli(tmp_path, "--input", str(outs))
    assert "filtered_feature_bc_matrix.h5" in err and "duplicate barcode" in err


def test_duplicate_barcodes_in_coordinates(tmp_path):
    c, xy = write_table(tmp_path, good_counts(), coords_barcodes=BARCODES + [BARCODES[2]])
    err, _ = run_qc_cli(tmp_path, "--input", str(c), "--coordinates", str(xy))
    assert "coords.csv" in err and "duplicate" in err and BARCODES[2] in err


def test_coordinates_missing_for_some_spots(tmp_path):
    c, xy = write_table(tmp_path, good_counts(), coords_barcodes=BARCODES[:-2])
    err, _ = run_qc_cli(tmp_path, "--input", str(c), "--coordinates", str(xy))
    assert "coords.csv" in err and "missing for 2 of 10" in err


def test_spaceranger_positions_missing_for_some_spots(tmp_path):
    from spotmap.io.spaceranger import POSITION_COLUMNS, write_positions

    outs = tmp_path / "s" / "outs"
    (outs / "spatial").mkdir(parents=True)
    write_10x_h5(outs / "filtered_feature_bc_matrix.h5", sp.csr_matrix(good_counts()), BARCODES, GENES, GENES)
    pos = pd.DataFrame({"barcode": BARCODES[1:], "in_tissue": 1, "array_row": 0, "array_col": 0,
                        "pxl_row_in_fullres": 1, "pxl_col_in_fullres": 1})
    write_positions(outs / "spatial" / "tissue_positions.csv", pos[POSITION_COLUMNS])
    err, _ = run_qc_cli(tmp_path, "--input", str(outs))
    assert "tissue_positions.csv" in err and "no position" in err and BARCODES[0] in err


def test_count_table_without_coordinates(tmp_path):
    c, _ = write_table(tmp_path, good_counts())
    err, _ = run_qc_cli(tmp_path, "--input", str(c))
    assert "counts.csv" in err and "--coordinates" in err


def _reference(tmp_path: Path, genes, labels, name="ref.h5ad") -> Path:
    n = len(labels)
    a = ad.AnnData(X=sp.csr_matrix(np.random.default_rng(1).poisson(2, size=(n, len(genes))).astype(np.float32)),
                   obs=pd.DataFrame({"cell_type": labels}, index=[f"c{i}" for i in range(n)]),
                   var=pd.DataFrame(index=genes))
    p = tmp_path / name
    a.write_h5ad(p)
    return p


def test_no_gene_overlap_with_reference(tmp_path):
    c, xy = write_table(tmp_path, good_counts())
    ref = _reference(tmp_path, [f"ENSG{i}" for i in range(N_GENES)], ["A", "B"] * 5)
    err, _ = run_qc_cli(tmp_path, "--input", str(c), "--coordinates", str(xy), "--reference", str(ref))
    assert "ref.h5ad: only 0 genes shared" in err and "at least 100" in err


@pytest.mark.parametrize("labels,key,expected", [(["A", "B"] * 5, "celltype", "no obs column 'celltype'"),
                                                 (["A"] * 10, "cell_type", "single class")])
def test_reference_label_problems_in_cli(tmp_path, labels, key, expected):
    c, xy = write_table(tmp_path, good_counts())
    ref = _reference(tmp_path, GENES, labels)
    err, _ = run_qc_cli(tmp_path, "--input", str(c), "--coordinates", str(xy), "--reference", str(ref),
                        "--labels-key", key)
    assert "ref.h5ad" in err and expected in err


def test_shared_genes_by_id_then_symbol(tmp_path):
    sp_ad = ad.AnnData(X=sp.csr_matrix((2, 200)), var=pd.DataFrame({"gene_ids": [f"ENS{i}" for i in range(200)]},
                                                                   index=[f"sym{i}" for i in range(200)]))
    ref = ad.AnnData(X=sp.csr_matrix((2, 150)), var=pd.DataFrame({"gene_ids": [f"ENS{i}" for i in range(50, 200)]},
                                                                 index=[f"other{i}" for i in range(150)]))
    pairs, by = shared_genes(sp_ad, ref)
    assert by == "id" and len(pairs) == 150 and pairs.iloc[0].tolist() == ["sym50", "other0"]
    ref.var = pd.DataFrame(index=[f"sym{i}" for i in range(60, 210)])  # no ids: symbols
    pairs, by = shared_genes(sp_ad, ref)
    assert by == "symbol" and len(pairs) == 140
    with pytest.raises(SpotmapError, match="only 140 genes shared"):
        shared_genes(sp_ad, ref, min_genes=141)


def test_reference_label_column_missing(tmp_path):
    ref = _reference(tmp_path, GENES, ["A", "B"] * 5)
    with pytest.raises(SpotmapError) as e:
        read_reference(ref, labels_key="celltype")
    msg = str(e.value)
    assert "ref.h5ad" in msg and "'celltype'" in msg and "'cell_type'" in msg and "\n" not in msg


def test_reference_single_class(tmp_path):
    ref = _reference(tmp_path, GENES, ["A"] * 10)
    with pytest.raises(SpotmapError, match=r"ref\.h5ad.*single class.*'A'"):
        read_reference(ref)


def test_reference_label_table_problems(tmp_path):
    counts = tmp_path / "ref.csv"
    pd.DataFrame(good_counts().T, index=GENES, columns=[f"c{i}" for i in range(N_SPOTS)]).to_csv(counts)
    ct = tmp_path / "ct.csv"
    pd.DataFrame({"x": ["T"] * N_SPOTS}, index=pd.Index([f"c{i}" for i in range(N_SPOTS)], name="")).to_csv(ct)
    with pytest.raises(SpotmapError, match=r"ct\.csv.*no column 'cell_type'.*'x'"):
        read_reference(counts, cell_types=ct)
    with pytest.raises(SpotmapError, match=r"ct\.csv.*single class"):
        read_reference(counts, labels_key="x", cell_types=ct)
    with pytest.raises(SpotmapError, match=r"ref\.csv.*needs a cell-type table"):
        read_reference(counts)


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch, sim_single):
    """A crash half-way through writing the outputs leaves neither final nor temporary files."""
    import spotmap.pl as pl
    import spotmap.qc as qc
    from spotmap.steps.qc import write_qc_outputs

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pl, "qc_spatial", boom)
    a = read_spatial(sim_single / "samples" / "sample1", sample="sample1")
    filtered, summary = qc.run_qc(a, "sample1", min_counts=10, min_genes=10)
    with pytest.raises(RuntimeError):
        write_qc_outputs(a, filtered, summary, tmp_path / "o", "sample1", 10, 10, 0.2)
    assert list((tmp_path / "o").iterdir()) == []


def test_too_strict_thresholds_name_the_medians(tmp_path, sim_single):
    err, _ = run_qc_cli(tmp_path, "--input", str(sim_single / "samples" / "sample1"), "--min-counts", "1e9")
    assert "only 0 of 100 spots pass QC" in err and "medians" in err


@pytest.mark.parametrize("opt,value", [("--max-mt-fraction", "20"), ("--min-counts", "-1")])
def test_bad_thresholds(tmp_path, sim_single, opt, value):
    err, _ = run_qc_cli(tmp_path, "--input", str(sim_single / "samples" / "sample1"), opt, value)
    assert opt in err and value in err


def test_mt_gene_list_matching_nothing(tmp_path, sim_single):
    f = tmp_path / "mt.txt"
    f.write_text("# human names on mouse data\nMT-CO1\nMT-ND1\n")
    err, _ = run_qc_cli(tmp_path, "--input", str(sim_single / "samples" / "sample1"), "--mt-genes", str(f))
    assert "none of the 2 mitochondrial genes" in err


def test_not_a_known_format(tmp_path):
    p = tmp_path / "sample.xlsx"
    p.write_text("x")
    err, _ = run_qc_cli(tmp_path, "--input", str(p))
    assert "sample.xlsx" in err and "unknown input format" in err


def test_corrupt_h5ad(tmp_path):
    p = tmp_path / "bad.h5ad"
    p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    err, _ = run_qc_cli(tmp_path, "--input", str(p))
    assert "bad.h5ad" in err and "cannot be read" in err


@pytest.mark.parametrize("sample", ["a b", "../escape", ""])
def test_bad_sample_id(tmp_path, sim_single, sample):
    outdir = tmp_path / "out"
    r = CliRunner().invoke(cli, ["qc", "--sample", sample, "--outdir", str(outdir), "--input",
                                 str(sim_single / "samples" / "sample1")])
    assert r.exit_code == 2 and "--sample must" in r.output and not outdir.exists()


@pytest.mark.parametrize("batch", ["run 1", ""])
def test_bad_batch_label(tmp_path, sim_single, batch):
    outdir = tmp_path / "out"
    r = CliRunner().invoke(cli, ["qc", "--sample", "S1", "--batch", batch, "--outdir", str(outdir), "--input",
                                 str(sim_single / "samples" / "sample1")])
    assert r.exit_code == 2 and f"--batch must be a label without spaces (got {batch!r})" in r.output
    assert not outdir.exists()


def test_no_in_tissue_spots(tmp_path):
    c, _ = write_table(tmp_path, good_counts())
    xy = tmp_path / "coords.csv"
    pd.DataFrame({"x": 1.0, "y": 2.0, "in_tissue": 0}, index=pd.Index(BARCODES, name="barcode")).to_csv(xy)
    err, _ = run_qc_cli(tmp_path, "--input", str(c), "--coordinates", str(xy))
    assert "counts.csv" in err and "no in-tissue spots" in err
