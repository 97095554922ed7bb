"""Co-location after mapping: factors and regions recover a known tissue, determinism, errors, AnnData API, plots."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from spotmap import colocation
from spotmap.colocation import ColocationSettings, run_colocation
from spotmap.colocation.nmf import choose_n_factors, factor_tables
from spotmap.colocation.synthetic import structured_tissue
from spotmap.errors import SpotmapError

REPO = Path(__file__).resolve().parents[1]


def _groups_share_one_factor(coloc: pd.DataFrame, type_group: pd.Series) -> None:
    """Every true group's types have the same dominant factor, and different groups different ones."""
    top = coloc.idxmax(axis=1)
    factor_of_group = {}
    for g, types in type_group[type_group >= 0].groupby(type_group).groups.items():
        dominant = set(top[list(types)])
        assert len(dominant) == 1, f"group {g} split over factors {dominant}"
        factor_of_group[g] = dominant.pop()
        assert (coloc.loc[list(types), factor_of_group[g]] > 0.8).all(), coloc.loc[list(types)]
    assert len(set(factor_of_group.values())) == len(factor_of_group), factor_of_group


# ------------------------------------------------------------------------------------ known layouts
@pytest.mark.parametrize("layout,n_samples,seed", [("bands", 1, 0), ("patches", 2, 1)])
def test_factors_and_regions_recover_a_known_tissue(layout, n_samples, seed):
    t = structured_tissue(n_spots=1200, n_groups=4, types_per_group=3, n_widespread=2, n_samples=n_samples,
                          layout=layout, seed=seed)
    res = run_colocation(t.abundance, t.coords, t.samples, n_factors=(2, 8), seed=0)
    f, r = res.factors, res.regions
    assert f.n_factors == 4, f.reason
    assert r.n_regions == 4, r.reason
    assert adjusted_rand_score(t.region, r.regions) >= 0.8
    _groups_share_one_factor(f.colocation_factors, t.type_group)
    np.testing.assert_allclose(f.colocation_factors.sum(1), 1.0, rtol=1e-12)
    # cells per spot in the factors add up to (about) the cells per spot
    total = t.abundance.sum(1).to_numpy()
    assert np.corrcoef(f.factor_abundance.sum(1), total)[0, 1] > 0.9
    assert abs(f.factor_abundance.to_numpy().sum() / total.sum() - 1) < 0.1
    # each region's composition is its own group's types (+ the widespread ones)
    for reg in range(r.n_regions):
        truth = pd.Series(t.region[(r.regions == reg).to_numpy()]).mode()[0]
        top3 = r.composition.loc[reg].drop(index=[c for c in t.abundance if c.startswith("wide")]).nlargest(3)
        assert set(top3.index) == {f"g{truth}_{i}" for i in range(3)}
    assert list(f.fits["n_factors"]) == list(range(2, 9))
    assert f.fits["explained_variance"].is_monotonic_increasing


def test_scaling_types_finds_groups_that_raw_abundance_misses():
    """Many widespread types: on raw abundances (cell2location) their noise dominates the squared loss."""
    t = structured_tissue(n_spots=2000, n_groups=6, types_per_group=4, n_widespread=10, layout="patches", seed=0)
    scaled = colocation.find_factors(t.abundance, 6)
    _groups_share_one_factor(scaled.colocation_factors, t.type_group)
    raw = colocation.find_factors(t.abundance, 6, settings=ColocationSettings(scale_types=False))
    g = t.type_group.to_numpy()
    assert adjusted_rand_score(g[g >= 0], raw.colocation_factors.to_numpy().argmax(1)[g >= 0]) < 0.8


def test_subsample_and_projection_keep_every_spot():
    t = structured_tissue(n_spots=1500, n_groups=3, types_per_group=3, n_widespread=1, layout="patches", seed=2)
    s = ColocationSettings(range_fit_spots=200, max_fit_spots=300, silhouette_spots=300)
    res = run_colocation(t.abundance, n_factors=(2, 6), settings=s)
    assert (res.factors.range_fitted_spots, res.factors.fitted_spots) == (200, 300)
    assert res.factors.n_factors == 3
    assert res.factors.factor_abundance.index.equals(t.abundance.index)
    assert adjusted_rand_score(t.region, res.regions.regions) >= 0.8
    _groups_share_one_factor(res.factors.colocation_factors, t.type_group)


def test_visium_hd_bins_need_the_neighbourhood_mean():
    """Bins of 0-3 cells: co-location shows only across neighbours; the neighbourhood mean recovers it."""
    t = structured_tissue(n_spots=6400, n_groups=4, types_per_group=3, n_widespread=2, layout="patches",
                          cells_per_bin=1.5, seed=3)
    bins = ColocationSettings(n_neighbours=24, n_restarts=2)
    res = run_colocation(t.abundance, t.coords, t.samples, n_factors=(3, 6), n_regions=(2, 8), settings=bins)
    assert res.factors.n_factors == 4, res.factors.reason
    assert adjusted_rand_score(t.region, res.regions.regions) >= 0.8
    _groups_share_one_factor(res.factors.colocation_factors, t.type_group)
    plain = run_colocation(t.abundance, n_factors=4, n_regions=4, settings=ColocationSettings(n_restarts=2))
    assert adjusted_rand_score(t.region, plain.regions.regions) < 0.5
    # the region composition is of the bins themselves (about 1.5 cells per bin), not of neighbourhoods
    assert 1.0 < res.regions.composition.sum(1).mean() < 2.0


# ------------------------------------------------------------------------------------ spotmap's own map
def test_mapped_abundance_recovers_the_layout(sim_small):
    """Counts drawn from the fixture's signatures over a known layout, mapped by spotmap, then co-location."""
    from spotmap.mapping import map_cell_types

    sig = pd.read_csv(sim_small / "truth" / "signatures.csv", index_col=0)
    sig = sig[~sig.index.str.startswith("mt-")]
    t = structured_tissue(n_spots=400, n_groups=3, types_per_group=2, n_widespread=0, n_samples=2,
                          layout="patches", seed=4)
    assert t.abundance.shape[1] == sig.shape[1]
    rng = np.random.default_rng(5)
    mu = t.abundance.to_numpy() @ sig.to_numpy().T * 0.4
    counts = rng.poisson(mu * rng.gamma(10.0, 0.1, size=mu.shape)).astype(np.float32)
    keep = counts.sum(1) > 0   # what QC would remove
    adata = ad.AnnData(counts[keep], obs=pd.DataFrame({"sample": t.samples[keep]}, index=t.abundance.index[keep]),
                       var=pd.DataFrame(index=sig.index))
    adata.obsm["spatial"] = t.coords[keep]
    type_group = pd.Series(t.type_group.to_numpy(), index=sig.columns)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mapped, _ = map_cell_types(adata, sig, progress=False, device="cpu", max_epochs=100, seed=0)
    colocation.colocation(mapped, n_factors=(2, 5))
    assert mapped.uns["colocation"]["n_factors"] == 3
    assert adjusted_rand_score(t.region[keep], mapped.obs["region"].astype(int)) >= 0.8
    _groups_share_one_factor(mapped.uns["colocation"]["colocation_factors"], type_group)


# ------------------------------------------------------------------------------------ determinism
def test_same_seed_bit_identical_other_seed_same_answer():
    t = structured_tissue(n_spots=800, n_groups=3, types_per_group=3, n_widespread=2, layout="patches", seed=6)
    a = run_colocation(t.abundance, n_factors=(2, 5), seed=11)
    b = run_colocation(t.abundance, n_factors=(2, 5), seed=11)
    c = run_colocation(t.abundance, n_factors=(2, 5), seed=12)
    for name, table in a.tables().items():
        pd.testing.assert_frame_equal(table, b.tables()[name], check_exact=True)
    assert a.summary() == b.summary()
    # another seed: other numbers (other starts), the same answer
    assert not np.array_equal(a.factors.factor_abundance.to_numpy(), c.factors.factor_abundance.to_numpy())
    assert (a.factors.n_factors, a.regions.n_regions) == (c.factors.n_factors, c.regions.n_regions) == (3, 3)
    assert adjusted_rand_score(a.regions.regions, c.regions.regions) > 0.95


# ------------------------------------------------------------------------------------ bad input
def _abundance(n_spots=50, n_types=4, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.gamma(2.0, 1.0, size=(n_spots, n_types)), index=[f"s{i}" for i in range(n_spots)],
                        columns=[f"T{j}" for j in range(n_types)])


def _nan_at_s3_t1() -> pd.DataFrame:
    x = _abundance()
    x.iloc[3, 1] = np.nan
    return x


def _negative() -> pd.DataFrame:
    x = _abundance()
    x.iloc[0, 0] = -1.0
    return x


@pytest.mark.parametrize("make,kwargs,expected", [
    (lambda: _abundance(n_types=1), {}, "at least two cell types"),
    (lambda: _abundance(n_spots=6), {"n_factors": 10}, "fewer spots (6) than factors (10)"),
    (lambda: _abundance() * 0, {}, "zero everywhere"),
    (_nan_at_s3_t1, {}, "non-finite value(s), first at spot 's3', type 'T1'"),
    (_negative, {}, "must be non-negative"),
    (lambda: _abundance(n_spots=6), {"n_factors": 2, "n_regions": 9}, "fewer spots (6) than regions (9)"),
    (lambda: _abundance(), {"n_factors": "5-3"}, "range 5-3 is empty"),
    (lambda: _abundance(), {"n_factors": "a-b"}, "expected N or LO-HI"),
    (lambda: _abundance(), {"n_factors": 0}, "at least 1"),
    (lambda: _abundance(), {"settings": ColocationSettings(n_neighbours=5)}, "needs the spots' coordinates"),
    (lambda: _abundance(), {"settings": ColocationSettings(region_features="genes")}, "region_features"),
])
def test_unusable_input_is_one_clear_line(make, kwargs, expected):
    with pytest.raises(SpotmapError) as e:
        run_colocation(make(), source="res/sp.h5ad", **kwargs)
    msg = str(e.value)
    assert expected in msg and "\n" not in msg
    if "settings" not in kwargs:  # input and numbers name the file; settings are not in a file
        assert msg.startswith("res/sp.h5ad: "), msg


# ------------------------------------------------------------------------------------ AnnData API
def _mapped_like(t, platform: str | None = None) -> ad.AnnData:
    """An AnnData as `spotmap map` writes it: q05 abundance with cell2location's column names."""
    types = list(t.abundance.columns)
    adata = ad.AnnData(np.zeros((len(t.abundance), 3), dtype=np.float32),
                       obs=pd.DataFrame({"sample": t.samples}, index=t.abundance.index))
    adata.obsm["q05_cell_abundance_w_sf"] = t.abundance.set_axis([f"q05cell_abundance_w_sf_{f}" for f in types],
                                                                 axis=1)
    adata.obsm["spatial"] = t.coords
    adata.uns["mod"] = {"factor_names": types}
    if platform:
        adata.uns["spotmap"] = {"platform": platform}
    return adata


def test_anndata_api_writes_results_that_survive_h5ad(tmp_path):
    t = structured_tissue(n_spots=900, n_groups=3, types_per_group=3, n_widespread=1, n_samples=2, seed=7)
    adata = _mapped_like(t)
    out = colocation.factors(adata, n_factors=(2, 5))
    assert out is adata
    colocation.regions(adata)
    fab = adata.obsm["colocation_factor_abundance"]
    assert fab.shape == (900, 3) and fab.index.equals(adata.obs_names)
    assert adata.uns["colocation"]["n_factors"] == 3 and adata.uns["colocation"]["quantity"] == "q05"
    assert list(adata.obs["region"].cat.categories) == ["0", "1", "2"]
    assert adjusted_rand_score(t.region, adata.obs["region"].astype(int)) >= 0.8
    # the AnnData functions give what the table API gives
    res = run_colocation(t.abundance, n_factors=(2, 5))
    np.testing.assert_array_equal(fab.to_numpy(), res.factors.factor_abundance.to_numpy())
    np.testing.assert_array_equal(adata.obs["region"].astype(int), res.regions.regions.to_numpy())
    adata.write_h5ad(tmp_path / "sp.h5ad")
    back = ad.read_h5ad(tmp_path / "sp.h5ad")
    pd.testing.assert_frame_equal(back.uns["colocation"]["colocation_factors"],
                                  adata.uns["colocation"]["colocation_factors"])
    assert back.uns["region"]["reason"] == adata.uns["region"]["reason"]
    with pytest.raises(SpotmapError, match=r"sp.h5ad: field 'obsm\['means_cell_abundance_w_sf'\]'.*present: q05"):
        colocation.factors(back, quantity="means", source="sp.h5ad")


def test_anndata_api_gives_visium_hd_bins_a_neighbourhood():
    t = structured_tissue(n_spots=3600, n_groups=3, types_per_group=3, n_widespread=1, layout="patches",
                          cells_per_bin=1.5, seed=8)
    adata = colocation.colocation(_mapped_like(t, platform="visium-hd"), n_factors=3, n_regions=3)
    assert adata.uns["colocation"]["settings"]["n_neighbours"] == ColocationSettings().hd_n_neighbours
    assert adjusted_rand_score(t.region, adata.obs["region"].astype(int)) >= 0.8
    spots = colocation.factors(_mapped_like(t), n_factors=3)
    assert "n_neighbours" not in spots.uns["colocation"]["settings"]


# ------------------------------------------------------------------------------------ rules and tables
def test_factor_tables_are_shares_and_cells():
    rng = np.random.default_rng(0)
    w, h = rng.gamma(1.0, 1.0, size=(30, 3)), rng.gamma(1.0, 1.0, size=(3, 5))
    coloc, fab = factor_tables(w, h, [f"s{i}" for i in range(30)], list("ABCDE"))
    np.testing.assert_allclose(coloc.sum(1), 1.0)
    np.testing.assert_allclose(fab.sum(1), (w @ h).sum(1))            # cells per spot over factors
    cells = (w.sum(0)[:, None] * h)                                   # factors × types, whole tissue
    order = np.argsort(-cells.sum(1))
    np.testing.assert_allclose(coloc.to_numpy(), (cells / cells.sum(0)).T[:, order])
    assert fab.sum(0).is_monotonic_decreasing and list(fab.columns) == ["fact_0", "fact_1", "fact_2"]


def test_factor_number_rule_and_its_reasons():
    fits = pd.DataFrame({"n_factors": [2, 3, 4, 5], "explained_variance": [0.3, 0.5, 0.7, 0.72],
                         "gain_per_factor": [np.nan, 0.2, 0.2, 0.02], "stability": [1.0, 0.9, 0.95, 0.7]})
    k, why = choose_n_factors(fits, n_types=10, gain_threshold=1.5)   # one type's worth = 0.1
    assert k == 4 and "going to 5 explains 0.20 cell types' worth" in why and "stability across restarts 0.950" in why
    steep = fits.assign(gain_per_factor=[np.nan, 0.2, 0.2, 0.2])
    k, why = choose_n_factors(steep, n_types=10, gain_threshold=1.5)
    assert k == 5 and "the most tried" in why and "wider range" in why
    k, why = choose_n_factors(fits.iloc[[1]], n_types=10, gain_threshold=1.5)
    assert k == 3 and "as requested" in why


# ------------------------------------------------------------------------------------ figures
def test_figures(tmp_path):
    from spotmap.colocation import plots

    t = structured_tissue(n_spots=600, n_groups=3, types_per_group=2, n_widespread=1, n_samples=2, seed=9)
    res = run_colocation(t.abundance, n_factors=3, n_regions=3)
    f = res.factors
    fig = plots.dotplot_factors(f.colocation_factors)
    labels = [x.get_text() for x in fig.axes[0].get_yticklabels()]
    assert labels[:2] in (["g0_0", "g0_1"], ["g0_1", "g0_0"])      # co-located types side by side
    fig = plots.spatial_factors(f.factor_abundance, t.coords, t.samples)
    assert len([a for a in fig.axes if a.get_title()]) == 2 * 3       # samples × factors
    fig = plots.spatial_regions(res.regions.regions, t.coords, t.samples)
    assert [a.get_title() for a in fig.axes] == ["Regions — sample1", "Regions — sample2"]
    fig = plots.composition_bars(res.regions.composition)
    assert len(fig.axes[0].patches) == 3 * 7                            # regions × types shown
    fig.savefig(tmp_path / "bars.png")
    assert (tmp_path / "bars.png").stat().st_size > 1000
    # many bins: a raster without holes on a full grid
    g = structured_tissue(n_spots=2500, n_groups=2, types_per_group=1, n_widespread=0, seed=1)
    fig = plots.spatial_regions(pd.Series(g.region), g.coords, max_points=100, max_px=20)
    img = fig.axes[0].get_images()[0].get_array()
    assert not np.ma.getmaskarray(img).any()


def test_plots_select_no_backend(tmp_path):
    """Importing the plots and drawing a figure neither loads pyplot nor sets the backend (a fresh process;
    matplotlib.get_backend() itself would load pyplot, so the raw rcParams entry is compared)."""
    code = ("import matplotlib, sys; raw = lambda: dict.__getitem__(matplotlib.rcParams, 'backend'); before = raw(); "
            "from spotmap.colocation import plots; import pandas as pd; "
            "fig = plots.composition_bars(pd.DataFrame({'A': [1.0, 2.0], 'B': [0.5, 0.1]})); "
            f"fig.savefig({str(tmp_path / 'f.png')!r}); "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot loaded'; assert raw() == before, raw()")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    assert (tmp_path / "f.png").exists()


def test_a_range_of_factor_numbers_is_cut_at_the_number_of_types():
    """5-30 on 4 types fits 4 factors only (and says why); a single number or a list is kept as given."""
    from spotmap.colocation.inputs import factor_numbers

    assert factor_numbers(None, 100, 19, (5, 30)) == list(range(5, 20))
    assert factor_numbers("5-30", 100, 4, (5, 30)) == [4] == factor_numbers((5, 30), 100, 4, (5, 30))
    assert factor_numbers(6, 100, 4, (5, 30)) == [6] and factor_numbers([2, 9], 100, 4, (5, 30)) == [2, 9]
    with pytest.raises(SpotmapError, match=r"fewer spots \(10\) than factors \(19\)"):
        factor_numbers(None, 10, 19, (5, 30))
    t = structured_tissue(n_spots=300, n_groups=2, types_per_group=2, n_widespread=0, seed=0)
    res = colocation.find_factors(t.abundance)
    assert list(res.fits["n_factors"]) == [4] and res.reason == "4 factors: the range 5-30 cut at the 4 cell types"
    res = colocation.find_factors(t.abundance, "2-30")
    assert list(res.fits["n_factors"]) == [2, 3, 4] and res.reason.endswith("(numbers above the 4 cell types not tried)")
