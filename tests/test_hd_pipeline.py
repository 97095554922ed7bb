"""Visium HD through the pipeline (issue 10): bins drawn as rasters on the bin grid, a report whose size
does not grow with the number of bins, ``--mapping-mode auto`` and the whole flow
(``spotmap simulate --platform visium-hd`` → ``spotmap run``) end to end.

The raster and report-size tests use a synthetic HD mapping result made directly as AnnData
(:func:`make_hd_result`; no model is run), so they can be as large as a real slide.
"""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

BIN_PX = 8 / 0.2738  # full-resolution pixels per 8 µm bin (a typical Visium HD scale)


def make_hd_result(n_bins: int = 20_000, n_types: int = 6, sample: str = "hd1", seed: int = 0,
                   n_genes: int = 20, image: bool = True, flip_x: bool = False, swap: bool = False) -> ad.AnnData:
    """A mapping result of one Visium HD sample as ``spotmap map`` writes it, made directly: bins of a
    square grid inside an elliptic tissue (obs array_row/array_col, obsm['spatial'] in full-resolution
    pixels, a tissue image), smooth cell-type territories with gamma noise per bin, the w_sf posterior
    and every summary (spotmap.results.add_posterior), uns['spotmap']['platform'] = 'visium-hd'.

    ``flip_x``: image x runs against array_col; ``swap``: image x follows array_row (both happen in
    real data, depending on the slide's orientation)."""
    from spotmap.results import add_posterior

    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_bins / (np.pi / 4 * 0.9))))
    rr, cc = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    inside = ((rr - side / 2) / (side * 0.5)) ** 2 + ((cc - side / 2) / (side * 0.5)) ** 2 < 1
    r, c = rr[inside][:n_bins], cc[inside][:n_bins]
    n = len(r)
    centres = rng.uniform(0, side, size=(n_types, 2))
    d2 = (r[:, None] - centres[None, :, 0]) ** 2 + (c[:, None] - centres[None, :, 1]) ** 2
    w = rng.gamma(2.0, np.maximum(1.5 * np.exp(-d2 / (2 * (side / 5) ** 2)), 1e-3) / 2.0)
    names = [f"type_{i}" for i in range(n_types)]
    obs = pd.DataFrame({"sample": pd.Categorical([sample] * n), "array_row": r, "array_col": c, "in_tissue": 1},
                       index=[f"{sample}_s_008um_{i:05d}_{j:05d}-1" for i, j in zip(r, c)])
    a = ad.AnnData(X=sp.csr_matrix((n, n_genes), dtype=np.float32), obs=obs,
                   var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))
    x = (side - c if flip_x else c) if not swap else r
    y = r if not swap else c
    a.obsm["spatial"] = np.column_stack([x * BIN_PX + 300, y * BIN_PX + 200]).astype(float)
    add_posterior(a, np.log(w + 1e-3), np.full(w.shape, 0.3), names, np.full(n_types, 100.0))
    a.obs["detection_y_s"] = rng.gamma(20, 1 / 20, size=n).astype(np.float32)
    a.obs["total_counts"] = rng.poisson(60, size=n).astype(np.float32)
    a.uns["mod"]["elbo"] = 1.0
    a.uns["spotmap"] = {"platform": "visium-hd", "bin_size_um": 8}
    if image:
        scale = 0.05
        h = int((side * BIN_PX + 600) * scale)
        img = rng.uniform(0.6, 0.9, size=(h, h, 3)).astype(np.float32)
        a.uns["spatial"] = {sample: {"images": {"hires": img, "lowres": img[::3, ::3]},
                                     "scalefactors": {"tissue_hires_scalef": scale, "tissue_lowres_scalef": scale / 3}}}
    return a


def _pixel_of(layout, x: float, y: float) -> tuple[int, int]:
    """The raster pixel (row, col) that shows display point (x, y), from the layout's extent."""
    left, right, bottom, top = layout.extent
    h, w = layout.shape
    return int((y - top) / (bottom - top) * h), int((x - left) / (right - left) * w)


# ------------------------------------------------------------------------------------------------
# Rasters on the bin grid
# ------------------------------------------------------------------------------------------------

def test_grid_layout_only_for_square_grids():
    from spotmap.pl import grid_layout

    hd = make_hd_result(3000, image=False)
    assert grid_layout(hd) is not None
    # without a platform tag the square grid is still recognised (neighbouring bins mix row/col parity)
    del hd.uns["spotmap"]
    assert grid_layout(hd) is not None
    hd.uns["spotmap"] = {"platform": "visium"}
    assert grid_layout(hd) is None
    # Visium's hexagonal lattice (array_row + array_col even) is drawn as dots
    rows, cols = np.meshgrid(np.arange(20), np.arange(40), indexing="ij")
    keep = (rows + cols) % 2 == 0
    vis = ad.AnnData(obs=pd.DataFrame({"array_row": rows[keep], "array_col": cols[keep]},
                                      index=[f"s{i}" for i in range(keep.sum())]))
    assert grid_layout(vis) is None
    assert grid_layout(ad.AnnData(obs=pd.DataFrame(index=["a", "b"]))) is None


@pytest.mark.parametrize("flip_x,swap", [(False, False), (True, False), (False, True)])
def test_raster_puts_every_bin_where_its_spot_is(flip_x, swap):
    """Each bin's value lands in the raster pixel under its obsm['spatial'] position, whatever the
    slide's orientation (x against array_col, or x along array_row)."""
    from spotmap.pl import spatial_layout

    a = make_hd_result(4000, image=True, flip_x=flip_x, swap=swap)
    layout = spatial_layout(a, "hd1")
    assert layout is not None and layout.factor == 1
    values = np.arange(a.n_obs, dtype=float)
    img = layout.raster(values)
    scale = a.uns["spatial"]["hd1"]["scalefactors"]["tissue_hires_scalef"]
    xy = a.obsm["spatial"] * scale
    pix = np.array([_pixel_of(layout, x, y) for x, y in xy])
    assert (img[pix[:, 0], pix[:, 1]] == values).all()
    assert np.isnan(img).sum() == img.size - a.n_obs  # NaN outside the tissue


def test_large_grids_are_block_averaged():
    from spotmap.pl import grid_layout

    a = make_hd_result(30_000, image=False)
    layout = grid_layout(a, max_px=50)
    assert max(layout.shape) <= 50 and layout.factor > 1
    values = np.asarray(a.obs["total_counts"], dtype=float)
    img = layout.raster(values)
    # a pixel is the mean of the bins of its block
    df = pd.DataFrame({"i": layout.rows, "j": layout.cols, "v": values}).groupby(["i", "j"])["v"].mean()
    got = img[df.index.get_level_values(0), df.index.get_level_values(1)]
    assert np.allclose(got, df.to_numpy())
    multi = layout.raster(np.column_stack([values, 2 * values]))
    assert multi.shape == (*layout.shape, 2) and np.allclose(multi[..., 1], 2 * img, equal_nan=True)


def test_hd_maps_are_images_not_dots():
    """Abundance maps and the mapping QC figure draw HD bins as images (a few hundred pixels a side),
    with no scatter of the bins."""
    import matplotlib.image
    import matplotlib.pyplot as plt
    from matplotlib.collections import PathCollection

    from spotmap.pl import abundance_maps, spatial_qc as plot_spatial_qc

    a = make_hd_result(20_000)
    figs = abundance_maps(a) + [plot_spatial_qc(a, name="restart_0")]
    def is_bin_raster(im) -> bool:  # NaN (masked) or transparent outside the tissue
        arr = im.get_array()
        if np.ma.getmaskarray(arr).any():
            return True
        return arr.ndim == 3 and arr.shape[-1] == 4 and (np.asarray(arr)[..., 3] == 0).any()

    try:
        for fig in figs:
            for ax in fig.axes:
                for coll in ax.collections:
                    assert not (isinstance(coll, PathCollection) and len(coll.get_offsets()) > 100), \
                        f"{ax.get_title()!r}: bins drawn as {len(coll.get_offsets())} dots"
            rasters = [im for ax in fig.axes for im in ax.images
                       if isinstance(im, matplotlib.image.AxesImage) and is_bin_raster(im)]
            assert rasters, "no raster of the bins"
            for im in rasters:
                assert max(im.get_array().shape[:2]) <= 1000
        grid_fig = figs[0]
        assert any("cells per bin" in ax.get_ylabel() for ax in grid_fig.axes)
        assert len([ax for ax in grid_fig.axes if ax.images]) >= 6  # one panel per type
    finally:
        for f in figs:
            plt.close(f)


def _report_images(html: str) -> list[bytes]:
    """The PNGs embedded in a report; each must decode, at a bounded size."""
    import io

    from PIL import Image

    out = [base64.b64decode(b) for b in re.findall(r'data:image/png;base64,([A-Za-z0-9+/=]+)', html)]
    for png in out:
        with Image.open(io.BytesIO(png)) as im:
            im.load()
            assert max(im.size) <= 2000, im.size
    return out


def _synthetic_results(root: Path, n_bins: int) -> Path:
    """A results folder holding one HD consensus (sp.h5ad only) and its mapping QC figure."""
    from spotmap.pl import spatial_qc as plot_spatial_qc
    from spotmap.report.mqc import save_mqc_figure
    from spotmap.utils import write_h5ad

    a = make_hd_result(n_bins)
    res = root / "results"
    (res / "mapping" / "consensus").mkdir(parents=True)
    write_h5ad(a, res / "mapping" / "consensus" / "sp.h5ad")
    save_mqc_figure(plot_spatial_qc(a, name="restart_0"), res / "mapping" / "restart_0" / "restart_0_spatial_qc_mqc.png")
    return res


@pytest.mark.parametrize("n_bins", [pytest.param(50_000, id="50k"),
                                    pytest.param(200_000, id="200k", marks=pytest.mark.slow)])
def test_hd_report_stays_small(tmp_path, n_bins):
    """The report of an HD sample is a few MB and builds in seconds, at any number of bins."""
    from spotmap.report import build_report

    res = _synthetic_results(tmp_path, n_bins)
    t0 = time.perf_counter()
    report = build_report(res, tmp_path / "multiqc")
    seconds = time.perf_counter() - t0
    size = report.stat().st_size
    html = report.read_text(errors="replace")
    images = _report_images(html)
    maps = [p for p in (tmp_path / "multiqc" / "report_content" / "abundance_maps").glob("*.png")]
    assert len(maps) == 2 and "Cell abundance per type: hd1" in html
    assert len(images) >= 3
    assert all(len(b) < 400_000 for b in images), [len(b) for b in images]  # palette PNGs of bounded size
    assert size < 6_000_000, f"report {size / 1e6:.1f} MB"
    assert seconds < 120, f"report took {seconds:.0f} s"
    print(f"HD report, {n_bins} bins: {size / 1e6:.2f} MB in {seconds:.1f} s")


# ------------------------------------------------------------------------------------------------
# spotmap run: mapping mode auto, and the whole flow end to end
# ------------------------------------------------------------------------------------------------

def test_mapping_mode_auto():
    from spotmap.errors import SpotmapError
    from spotmap.workflow import RunParams, resolve_mapping_mode

    assert RunParams().mapping_mode == "auto"
    assert resolve_mapping_mode("auto", ["hd1"]) == "per_sample"
    assert resolve_mapping_mode("auto", []) == "joint"
    assert resolve_mapping_mode("joint", ["hd1"]) == "joint"  # an explicit mode is kept
    assert resolve_mapping_mode("per_sample", []) == "per_sample"
    with pytest.raises(SpotmapError, match="--mapping-mode"):
        resolve_mapping_mode("both", [])


def test_samplesheet_bin_size_reaches_qc(tmp_path):
    from spotmap.io.samplesheet import read_samplesheet, sample_rows

    for name in ("a", "b"):
        (tmp_path / name / "outs").mkdir(parents=True)
    sheet = tmp_path / "s.csv"
    sheet.write_text(f"sample,spaceranger_dir,bin_size\nhd1,{tmp_path}/a/outs,16\nvis1,{tmp_path}/b/outs,\n")
    rows = {r.sample: (r.bin_size, r.is_visium_hd) for r in sample_rows(read_samplesheet(sheet))}
    assert rows == {"hd1": (16, True), "vis1": (None, False)}


def test_samplesheet_cells_per_location_per_sample(tmp_path):
    from spotmap.io.samplesheet import read_samplesheet, sample_rows

    for name in ("a", "b"):
        (tmp_path / name / "outs").mkdir(parents=True)
    sheet = tmp_path / "s.csv"
    sheet.write_text(f"sample,spaceranger_dir,n_cells_per_location\nhd1,{tmp_path}/a/outs,2\nvis1,{tmp_path}/b/outs,\n")
    assert [r.n_cells_per_location for r in sample_rows(read_samplesheet(sheet))] == [2.0, None]


@pytest.fixture(scope="module")
def hd_run(tmp_path_factory):
    """``spotmap simulate --platform visium-hd`` (one sample, 2,000 bins × 1,000 genes × 6 types) →
    ``spotmap run`` with default mapping mode (auto), the true signatures and few epochs. The
    samplesheet gets ``n_cells_per_location = 1.5`` (8 µm bins hold 0–3 cells; applied per sample; not the
    HD default of 2, so that the test sees which one reached the model)."""
    from spotmap.cli import cli

    root = tmp_path_factory.mktemp("hd_run")
    sim, out = root / "sim", root / "results"
    t0 = time.perf_counter()
    r = CliRunner().invoke(cli, ["simulate", "--platform", "visium-hd", "--outdir", str(sim), "--n-bins", "2000",
                                 "--n-genes", "1000", "--n-cell-types", "6", "--n-samples", "1", "--n-cells", "300",
                                 "--seed", "1"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    sheet = pd.read_csv(sim / "samplesheet.csv")
    sheet["n_cells_per_location"] = 1.5
    sheet.to_csv(sim / "samplesheet.csv", index=False)
    r = CliRunner().invoke(cli, ["run", "--samplesheet", str(sim / "samplesheet.csv"),
                                 "--signatures", str(sim / "truth" / "signatures.csv"), "--outdir", str(out),
                                 "--restarts", "2", "--map-max-epochs", "60", "--device", "cpu"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return {"sim": sim, "out": out, "seconds": time.perf_counter() - t0}


def test_hd_run_maps_per_sample_and_aggregates(hd_run):
    out = hd_run["out"]
    assert "bin_size" in (hd_run["sim"] / "samplesheet.csv").read_text().splitlines()[0]
    qc = ad.read_h5ad(out / "qc" / "sample1" / "sample1.h5ad", backed="r")
    assert qc.uns["spotmap"]["platform"] == "visium-hd"
    qc.file.close()
    # auto → per sample: mapping/<sample>/restart_<seed>/ and mapping/<sample>/consensus/, no joint folders
    for rel in ["restart_0/sp.h5ad", "restart_1/sp.h5ad", "consensus/sp.h5ad", "consensus/stability.tsv",
                "consensus/W_cell_density.csv"]:
        assert (out / "mapping" / "sample1" / rel).is_file(), rel
    assert not (out / "mapping" / "restart_0").exists() and not (out / "mapping" / "consensus").exists()
    # co-location beside the sample's consensus, its bins averaged with their neighbours (HD)
    summary = json.loads((out / "mapping" / "sample1" / "colocation" / "colocation_summary.json").read_text())
    assert summary["platform"] == "visium-hd" and summary["settings"]["n_neighbours"] == 24
    assert summary["source"] == str(out / "mapping" / "sample1" / "consensus" / "sp.h5ad")
    res = ad.read_h5ad(out / "mapping" / "sample1" / "restart_0" / "sp.h5ad", backed="r")
    assert res.uns["mod"]["priors"]["N_cells_per_location"] == 1.5   # the samplesheet's value
    res.file.close()


def test_hd_run_recovers_the_truth(hd_run):
    """The consensus abundances follow the simulated truth (per 8 µm bin), every type clearly, and the
    number of cells per bin is right within a factor of 2 (it would be ~3× too high with Visium's 8 cells
    per location)."""
    w = pd.read_csv(hd_run["out"] / "mapping" / "sample1" / "consensus" / "W_cell_density.csv", index_col=0)
    truth = pd.read_parquet(hd_run["sim"] / "truth" / "cell_abundance.parquet")
    assert set(w.index) <= set(truth.index) and len(w) > 1000
    truth = truth.loc[w.index, w.columns]
    per_type = [np.corrcoef(truth[c], w[c])[0, 1] for c in w.columns]
    assert min(per_type) > 0.5, per_type
    assert np.corrcoef(truth.to_numpy().ravel(), w.to_numpy().ravel())[0, 1] > 0.8
    ratio = w.to_numpy().sum(1).mean() / truth.to_numpy().sum(1).mean()
    assert 0.5 < ratio < 2, f"cells per bin {ratio:.2f}× the truth"


def test_hd_run_report_holds_raster_maps(hd_run):
    out = hd_run["out"]
    report = out / "multiqc" / "multiqc_report.html"
    html = report.read_text(errors="replace")
    assert "Cell abundance per type: sample1" in html and "Most abundant types together: sample1" in html
    assert "drawn as an image on the bin grid" in html  # the HD legend
    assert len(_report_images(html)) >= 4
    assert report.stat().st_size < 6_000_000


def test_default_cells_per_location_by_platform():
    from spotmap.mapping.priors import default_cells_per_location

    assert default_cells_per_location("visium-hd", 8) == 2.0
    assert default_cells_per_location("visium-hd", 16) == 8.0      # 4× the area
    assert default_cells_per_location("visium-hd", 2) == 0.125
    assert default_cells_per_location("visium", None) == 8.0


def test_map_without_cells_per_location_uses_the_hd_default(hd_run, tmp_path):
    """``spotmap map`` on a QC'd 8 µm HD sample with no --n-cells-per-location: the prior is 2 cells per bin
    (not the Visium spot's 8). A Visium input beside it makes the default ambiguous: a one-line error naming the
    file, before anything is written."""
    from spotmap.cli import cli

    qc = hd_run["out"] / "qc" / "sample1" / "sample1.h5ad"
    sig = hd_run["sim"] / "truth" / "signatures.csv"
    out = tmp_path / "map"
    r = CliRunner().invoke(cli, ["map", "--spatial", str(qc), "--signatures", str(sig), "--outdir", str(out),
                                 "--max-epochs", "3", "--checkpoint-every", "0", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    res = ad.read_h5ad(out / "sp.h5ad", backed="r")
    assert res.uns["mod"]["priors"]["N_cells_per_location"] == 2.0
    res.file.close()

    visium = ad.read_h5ad(qc)
    visium.uns["spotmap"] = {"platform": "visium"}
    visium.obs_names = [f"v_{n}" for n in visium.obs_names]
    visium.write_h5ad(tmp_path / "visium.h5ad")
    mixed = tmp_path / "mixed"
    r = CliRunner().invoke(cli, ["map", "--spatial", str(qc), "--spatial", str(tmp_path / "visium.h5ad"),
                                 "--signatures", str(sig), "--outdir", str(mixed), "--max-epochs", "3",
                                 "--checkpoint-every", "0", "--device", "cpu"])
    assert r.exit_code != 0
    line = r.output.strip().splitlines()[-1]
    assert "visium.h5ad" in line and "--n-cells-per-location" in line and "(8)" in line and "(2)" in line, line
    assert not mixed.exists()
    # an explicit value settles it
    r = CliRunner().invoke(cli, ["map", "--spatial", str(qc), "--spatial", str(tmp_path / "visium.h5ad"),
                                 "--signatures", str(sig), "--outdir", str(mixed), "--max-epochs", "2",
                                 "--checkpoint-every", "0", "--device", "cpu", "--n-cells-per-location", "3"])
    assert r.exit_code == 0, r.output
