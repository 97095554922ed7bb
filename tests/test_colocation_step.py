"""The co-location step: `spotmap colocation` on a mapping folder (files, figures over the tissue image, the
report's content), its refusals (one line, exit 2, nothing written), and `spotmap run` running it on every
consensus (or not, with --skip-colocation)."""

from __future__ import annotations

import json
from html import escape as html_escape
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.metrics import adjusted_rand_score

from spotmap.cli import cli
from spotmap.colocation.synthetic import structured_tissue
from spotmap.report import sections
from spotmap.steps.colocation import COLOCATION_FILES

PIXELS = 100.0   # full-resolution pixels per spot spacing (obsm['spatial'])
SCALE = 0.1      # the hires image's scale factor: 10 image pixels per spot spacing


@pytest.fixture(scope="module")
def tissue():
    """Three regions of two co-located types each, plus one widespread type; two samples of 300 spots."""
    return structured_tissue(n_spots=600, n_groups=3, types_per_group=2, n_widespread=1, n_samples=2,
                             layout="patches", seed=3)


def mapping_folder(path: Path, t, image: bool = True, types: list[str] | None = None) -> Path:
    """A result folder as `spotmap map` writes it: sp.h5ad with q05 and means abundance under cell2location's
    names, uns['mod']['factor_names'], obs['sample'], obsm['spatial'] and (``image``) a hires image per sample."""
    abundance = t.abundance if types is None else t.abundance[types]
    names = list(abundance.columns)
    adata = ad.AnnData(np.zeros((len(abundance), 2), dtype=np.float32),
                       obs=pd.DataFrame({"sample": t.samples}, index=abundance.index))
    for q, factor in (("q05", 1.0), ("means", 1.3)):
        adata.obsm[f"{q}_cell_abundance_w_sf"] = (abundance * factor).set_axis(
            [f"{q}cell_abundance_w_sf_{f}" for f in names], axis=1)
    adata.obsm["spatial"] = t.coords * PIXELS
    adata.uns["mod"] = {"factor_names": names}
    if image:
        side = int(np.ceil(t.coords.max() * PIXELS * SCALE)) + 20
        rng = np.random.default_rng(0)
        adata.uns["spatial"] = {s: {"images": {"hires": rng.random((side, side, 3)).astype(np.float32)},
                                    "scalefactors": {"tissue_hires_scalef": SCALE}} for s in np.unique(t.samples)}
    path.mkdir(parents=True)
    adata.write_h5ad(path / "sp.h5ad")
    return path


def invoke(*args: str):
    """`spotmap colocation ARGS`, in this process. Never with --threads N: the command sets NUMBA_NUM_THREADS,
    which numba refuses to change once its threads run (the shared `spotmap run` sets all cores). Every call
    thus runs on the same number of threads, so runs compare bit for bit (on another number, OpenMP sums
    k-means' inertia in another order)."""
    return CliRunner().invoke(cli, ["colocation", *map(str, args)])


@pytest.fixture(scope="module")
def result(tissue, tmp_path_factory):
    root = tmp_path_factory.mktemp("coloc")
    mapping = mapping_folder(root / "consensus", tissue)
    r = invoke("--mapping", mapping, "--outdir", root / "colocation", "--n-factors-range", "2-6")
    assert r.exit_code == 0, r.output
    return {"root": root, "mapping": mapping, "out": root / "colocation"}


def test_writes_every_file_and_recovers_the_tissue(result, tissue):
    out = result["out"]
    names = {p.name for p in out.iterdir()}
    assert set(COLOCATION_FILES) <= names
    assert {sections.COLOCATION_SUMMARY.file, sections.COLOCATION_DOTPLOT.file, sections.COLOCATION_COMPOSITION.file,
            sections.COLOCATION_FACTOR_FITS.file, sections.COLOCATION_REGION_FITS.file} <= names
    for sample in ("sample1", "sample2"):
        assert {f"{sample}{sections.COLOCATION_FACTOR_MAPS.file}", f"{sample}{sections.COLOCATION_REGION_MAP.file}"} <= names
    assert not [n for n in names if n.startswith(".")], "temporary files left behind"
    coloc = pd.read_csv(out / "colocation_factors.csv", index_col="cell_type")
    np.testing.assert_allclose(coloc.sum(1), 1.0, rtol=1e-9)
    # each true pair of co-located types shares one factor
    top = coloc.idxmax(axis=1)
    for g in range(3):
        assert top[f"g{g}_0"] == top[f"g{g}_1"] and coloc.loc[[f"g{g}_0", f"g{g}_1"], top[f"g{g}_0"]].min() > 0.8
    regions = pd.read_csv(out / "regions.csv")
    assert list(regions.columns) == ["spot", "region"] and list(regions["spot"]) == list(tissue.abundance.index)
    assert adjusted_rand_score(tissue.region, regions["region"]) >= 0.8
    comp = pd.read_csv(out / "region_composition.csv", index_col="region")
    assert list(comp.columns) == list(tissue.abundance.columns) and len(comp) == regions["region"].nunique() == 3
    fab = pd.read_csv(out / "factor_abundance.csv", index_col="spot")
    assert fab.shape == (600, 3) and list(fab.index) == list(tissue.abundance.index)
    fits = pd.read_csv(out / "factor_fits.csv")
    assert list(fits["n_factors"]) == [2, 3, 4, 5, 6] and list(fits.loc[fits["chosen"], "n_factors"]) == [3]
    summary = json.loads((out / "colocation_summary.json").read_text())
    assert summary["n_factors"] == 3 and summary["n_regions"] == 3 and summary["samples"] == ["sample1", "sample2"]
    assert summary["factor_numbers_asked"] == "2-6" and summary["quantity"] == "q05"
    assert summary["factor_reason"].startswith("3 factors") and summary["source"].endswith("sp.h5ad")
    # the report's content says the same
    html = (out / sections.COLOCATION_SUMMARY.file).read_text()
    assert html_escape(summary["factor_reason"]) in html and html_escape(summary["region_reason"]) in html
    assert "g0_0" in html
    head = (out / sections.COLOCATION_FACTOR_FITS.file).read_text()
    assert "# id: spotmap_colocation_factor_fits" in head and "3 factors" in head and "\tchosen" in head


def test_factor_and_region_maps_are_drawn_over_the_tissue_image(tissue):
    """With an image (uns['spatial']) every panel holds it under the spots, at the spots' place; without one,
    the spots alone on their coordinates."""
    from spotmap.colocation import plots, run_colocation

    res = run_colocation(tissue.abundance, n_factors=3, n_regions=3)
    side = int(tissue.coords.max() * 10) + 20
    img = np.full((side, side, 3), 0.5)
    sel = tissue.samples == "sample1"
    xy = tissue.coords[sel] * PIXELS
    fig = plots.spatial_factors(res.factors.factor_abundance[sel], xy, tissue.samples[sel],
                                images={"sample1": (img, SCALE)}, ncols=2)
    panels = [a for a in fig.axes if a.get_title()]
    assert len(panels) == 3 and all(len(a.get_images()) == 1 for a in panels)
    x0, x1 = panels[0].get_xlim()
    assert x0 < xy[:, 0].min() * SCALE < xy[:, 0].max() * SCALE < x1  # spots at image pixels
    fig = plots.spatial_regions(res.regions.regions[sel], xy, tissue.samples[sel], images={"sample1": (img, SCALE)})
    assert len(fig.axes[0].get_images()) == 1
    fig = plots.spatial_regions(res.regions.regions[sel], xy, tissue.samples[sel])
    assert not fig.axes[0].get_images()


def test_the_mapping_image_reaches_the_figures(tissue, tmp_path, monkeypatch):
    """The step reads each sample's hires image and scale factor from uns['spatial'] and hands them on."""
    from spotmap.colocation import plots
    from spotmap.steps import colocation

    seen = []
    real = plots.spatial_factors

    def spy(*args, **kwargs):
        seen.append(kwargs.get("images"))
        return real(*args, **kwargs)

    monkeypatch.setattr(plots, "spatial_factors", spy)
    colocation.run(mapping=mapping_folder(tmp_path / "m", tissue), outdir=tmp_path / "o", n_factors=3, n_regions=3)
    assert [sorted(s) for s in seen] == [["sample1"], ["sample2"]]
    assert all(img.ndim == 3 and scale == SCALE for s in seen for img, scale in s.values())
    seen.clear()
    colocation.run(mapping=mapping_folder(tmp_path / "plain", tissue, image=False), outdir=tmp_path / "o2",
                   n_factors=3, n_regions=3)
    assert seen == [None, None]


def test_same_seed_same_files_and_a_rerun_replaces_the_folder(result, tissue):
    out, again = result["out"], result["root"] / "again"
    r = invoke("--mapping", result["mapping"], "--outdir", again, "--n-factors-range", "2-6")
    assert r.exit_code == 0, r.output
    for name in ("colocation_factors.csv", "factor_abundance.csv", "regions.csv", "region_composition.csv",
                 "factor_fits.csv", "region_fits.csv"):
        assert (out / name).read_bytes() == (again / name).read_bytes(), name
    (again / "stale.txt").write_text("from an earlier run")
    r = invoke("--mapping", result["mapping"], "--outdir", again, "--n-factors", "3", "--n-regions", "3",
               "--quantity", "means", "--seed", "5")
    assert r.exit_code == 0, r.output
    assert not (again / "stale.txt").exists()  # replaced as a whole
    summary = json.loads((again / "colocation_summary.json").read_text())
    assert summary["quantity"] == "means" and summary["settings"]["seed"] == 5
    assert summary["factor_reason"] == "3 factors, as requested" and summary["n_regions"] == 3


def _refused(r, out: Path, *words: str) -> None:
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("spotmap: error:"), r.output
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert not out.exists(), "something was written"


def test_unusable_input_is_one_line_exit_2_and_nothing_written(tissue, tmp_path):
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    _refused(invoke("--mapping", tmp_path / "empty", "--outdir", out), out, "empty", "holds no sp.h5ad")
    _refused(invoke("--mapping", tmp_path / "nowhere", "--outdir", out), out, "nowhere", "not found")
    one = mapping_folder(tmp_path / "one_type", tissue, types=["g0_0"])
    _refused(invoke("--mapping", one, "--outdir", out), out, "sp.h5ad", "at least two cell types", "1 type(s)")
    small = mapping_folder(tmp_path / "small", structured_tissue(n_spots=30, n_groups=2, types_per_group=2,
                                                                 n_widespread=0, seed=1))
    _refused(invoke("--mapping", small, "--outdir", out, "--n-factors", "40"), out, "fewer spots (30) than factors (40)")
    good = mapping_folder(tmp_path / "good", tissue)
    _refused(invoke("--mapping", good, "--outdir", out, "--n-factors", "3", "--n-factors-range", "2-6"), out,
             "not both")
    _refused(invoke("--mapping", good, "--outdir", out, "--n-factors-range", "6-2"), out, "range 6-2 is empty")
    _refused(invoke("--mapping", good, "--outdir", out, "--n-regions", "many"), out, "n_regions", "'many'")
    _refused(invoke("--mapping", good, "--outdir", out, "--quantity", "q50"), out,
             "missing the q50 cell abundance (present: means, q05)")
    _refused(invoke("--mapping", good, "--outdir", good), out, "is the --mapping folder")
    assert (good / "sp.h5ad").is_file()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    r = invoke("--mapping", good, "--outdir", foreign)
    assert r.exit_code == 2 and "not a co-location result folder" in r.output
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_a_failure_while_writing_leaves_the_earlier_result(result, tissue, monkeypatch):
    """Nothing half-written: the folder is assembled beside --outdir and moved in only when complete."""
    from spotmap.steps import colocation

    before = {p.name: p.read_bytes() for p in result["out"].iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(colocation, "write_mqc_content", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        colocation.run(mapping=result["mapping"], outdir=result["out"], n_factors=2)
    assert {p.name: p.read_bytes() for p in result["out"].iterdir()} == before
    assert not [p for p in result["root"].iterdir() if p.name.startswith(".")], "temporary folder left behind"
    with pytest.raises(RuntimeError):
        colocation.run(mapping=result["mapping"], outdir=result["root"] / "new", n_factors=2)
    assert not (result["root"] / "new").exists()


# ------------------------------------------------------------------------------------------------ spotmap run
def test_spotmap_run_writes_colocation_beside_the_consensus(pipeline_run):
    """The shared `spotmap run`: OUTDIR/mapping/colocation/ from the consensus, with the run's seed."""
    out = pipeline_run["results"] / "mapping" / "colocation"
    assert set(COLOCATION_FILES) <= {p.name for p in out.iterdir()}
    summary = json.loads((out / "colocation_summary.json").read_text())
    assert summary["source"] == str(pipeline_run["results"] / "mapping" / "consensus" / "sp.h5ad")
    assert summary["samples"] == ["sample1", "sample2"] and summary["n_types"] == 6
    # the default range 5-30, cut at the 6 cell types
    assert summary["factor_numbers_asked"] == "5-30" and summary["n_factors"] in (5, 6)
    assert list(pd.read_csv(out / "factor_fits.csv")["n_factors"]) == [5, 6]


@pytest.mark.parametrize("mode", ["joint", "per_sample"])
def test_run_passes_its_colocation_options_or_skips(mode, tmp_path, fake_steps):
    from spotmap.workflow import RunParams, run_pipeline

    calls = fake_steps
    for s in ("a", "b"):
        (tmp_path / f"{s}.h5ad").touch()
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(f"sample,h5ad\na,{tmp_path / 'a.h5ad'}\nb,{tmp_path / 'b.h5ad'}\n")
    base = dict(samplesheet=str(sheet), signatures=str(tmp_path / "sig.csv"), outdir=str(tmp_path / "out"),
                restarts=1, seed=4, mapping_mode=mode)
    run_pipeline(RunParams(**base))
    coloc = [kw for name, kw in calls if name == "colocation"]
    consensus = [kw["outdir"] for name, kw in calls if name == "aggregate"]
    assert [kw["outdir"] for kw in coloc] == [c.parent / "colocation" for c in consensus]
    assert len(coloc) == (1 if mode == "joint" else 2)
    assert coloc[0]["n_factors_range"] == "5-30" and "n_factors" not in coloc[0] and coloc[0]["seed"] == 4
    assert coloc[0]["n_regions"] is None and coloc[0]["quantity"] == "q05"
    names = [name for name, _ in calls]
    assert names.index("colocation") > names.index("aggregate") and names[-1] == "report"
    calls.clear()
    run_pipeline(RunParams(**base, colocation_n_factors=7, colocation_n_regions=4, colocation_quantity="means"))
    coloc = next(kw for name, kw in calls if name == "colocation")
    assert coloc["n_factors"] == 7 and "n_factors_range" not in coloc and coloc["n_regions"] == 4
    calls.clear()
    run_pipeline(RunParams(**base, skip_colocation=True))
    assert "colocation" not in [name for name, _ in calls] and "aggregate" in [name for name, _ in calls]


def test_run_refuses_bad_colocation_options_before_mapping(tmp_path, fake_steps):
    from spotmap.errors import SpotmapError
    from spotmap.workflow import RunParams, run_pipeline

    calls = fake_steps
    (tmp_path / "a.h5ad").touch()
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(f"sample,h5ad\na,{tmp_path / 'a.h5ad'}\n")
    for bad, words in (({"colocation_n_factors_range": "30-5"}, "range 30-5 is empty"),
                       ({"colocation_quantity": "stds"}, "--quantity must be one of")):
        with pytest.raises(SpotmapError, match=words.replace("(", r"\(")):
            run_pipeline(RunParams(samplesheet=str(sheet), signatures="s.csv", outdir=str(tmp_path / "o"), **bad))
    assert calls == []
    run_pipeline(RunParams(samplesheet=str(sheet), signatures="s.csv", outdir=str(tmp_path / "o"),
                           colocation_quantity="stds", skip_colocation=True))  # skipped: not checked
    assert "map" in [name for name, _ in calls]
