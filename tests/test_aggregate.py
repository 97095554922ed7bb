"""Restart aggregation: exact mixture summaries, stability scores, flags, errors and the output folder."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from scipy.optimize import brentq
from scipy.special import ndtr

from spotmap.aggregate import aggregate, aggregate_restarts, load_restarts, mixture_moments, mixture_quantiles
from spotmap.errors import SpotmapError
from spotmap.results import add_posterior, lognormal_summaries, read_results, table, write_results

TYPES = ["T cell", "B cell", "Fibro", "Endo", "Macro", "Epi"]


def _truth(n_spots=300, n_types=6, seed=0):
    """A spatial pattern: every type has a smooth zone of high abundance plus background."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, n_spots)
    centres = np.linspace(0.05, 0.95, n_types)
    ab = 0.2 + 4.0 * np.exp(-((x[:, None] - centres[None, :]) ** 2) / 0.02)
    return ab * rng.gamma(8, 1 / 8, size=ab.shape)


def _restart(truth, seed, noise=0.08, elbo=1.0e5, types=TYPES, spots=None, genes=None, broken=False):
    rng = np.random.default_rng(seed)
    S, F = truth.shape
    spots = spots or [f"s{i}" for i in range(S)]
    genes = genes or [f"g{i}" for i in range(12)]
    a = ad.AnnData(np.ones((S, len(genes)), dtype=np.float32), obs=pd.DataFrame(index=spots),
                   var=pd.DataFrame(index=genes))
    base = truth if not broken else rng.permuted(truth, axis=0)  # a restart whose maps are scrambled
    loc = np.log(base) + rng.normal(0, noise, truth.shape)
    scale = rng.uniform(0.05, 0.4, truth.shape)
    mrna = np.linspace(800, 2000, F) * rng.uniform(0.97, 1.03, F)
    add_posterior(a, loc, scale, list(types), mrna)
    a.obs["detection_y_s"] = rng.uniform(0.3, 0.5, S)
    mod = dict(a.uns["mod"])
    # final -ELBO; the first-epoch one is 1e4 higher (the improvement training made)
    mod.update({"elbo": float(elbo * (1 + rng.uniform(0, 1e-4))), "elbo_initial": float(elbo + 1e4), "seed": seed,
                "settings": {"seed": seed}})
    a.uns["mod"] = mod
    return a


def _agreeing(n=3, **kw):
    t = _truth()
    return {f"restart_{k + 1}": _restart(t, seed=k + 1, **kw) for k in range(n)}


# ------------------------------------------------------------------------------------------------- mixture

def test_mixture_quantiles_match_monte_carlo_and_root_finder():
    rng = np.random.default_rng(0)
    R, shape = 4, (3, 5)
    loc = rng.normal(0, 1.5, (R,) + shape)
    scale = rng.uniform(0.05, 1.2, (R,) + shape)
    ps = [0.05, 0.5, 0.95]
    q = mixture_quantiles(loc, scale, ps)
    assert q.shape == (3,) + shape
    # Monte Carlo from the mixture: pick a component, then draw from it
    n = 200_000
    comp = rng.integers(0, R, size=(n,) + shape)
    draws = np.exp(np.take_along_axis(loc, comp, 0)
                   + np.take_along_axis(scale, comp, 0) * rng.standard_normal(comp.shape))
    # compare in probability: the share of draws below q is p (a quantile in a gap between components has a
    # flat CDF, so its value itself is ill-determined by sampling while the probability is not)
    for k, p in enumerate(ps):
        frac = (draws <= q[k]).mean(0)
        assert np.all(np.abs(frac - p) < 4 * np.sqrt(p * (1 - p) / n)), (p, frac)
    mc = np.quantile(draws, ps, axis=0)
    assert np.median(np.abs(q / mc - 1)) < 0.01
    # and a scalar root finder, element by element, to the documented tolerance
    for k, p in enumerate(ps):
        for idx in np.ndindex(shape):
            L, Sc = loc[(slice(None),) + idx], scale[(slice(None),) + idx]
            x = brentq(lambda v: ndtr((v - L) / Sc).mean() - p, -30, 30, xtol=1e-13)
            assert abs(np.log(q[(k,) + idx]) - x) < 1e-8
    mean, sd = mixture_moments(loc, scale)
    np.testing.assert_allclose(mean, draws.mean(0), rtol=0.03)
    np.testing.assert_allclose(sd, draws.std(0), rtol=0.1)


def test_mixture_of_one_is_the_lognormal():
    rng = np.random.default_rng(1)
    loc, scale = rng.normal(0, 1, (1, 40)), rng.uniform(0.1, 1, (1, 40))
    s = lognormal_summaries(loc[0], scale[0])
    np.testing.assert_allclose(mixture_quantiles(loc, scale, 0.05), s["q05"], rtol=1e-9)
    m, sd = mixture_moments(loc, scale)
    np.testing.assert_allclose(m, s["means"], rtol=1e-12)
    np.testing.assert_allclose(sd, s["stds"], rtol=1e-9)
    with pytest.raises(ValueError):
        mixture_quantiles(loc, -scale, 0.5)
    with pytest.raises(ValueError):
        mixture_quantiles(loc, scale, 1.0)


# ------------------------------------------------------------------------------------------------- consensus

def test_agreeing_restarts_are_stable_and_consensus_is_the_mixture():
    ads = _agreeing(3)
    cons, stab, rst = aggregate_restarts(ads)
    # the columns of earlier versions first, unchanged; then the scale-aware ones
    assert list(stab.columns) == ["cell_type", "stability", "flagged", "total_ratio", "total_cells", "flagged_by"]
    assert list(rst.columns) == ["restart", "elbo", "agreement", "flagged", "total_ratio", "total_cells", "used",
                                 "flagged_by"]
    assert (stab["stability"] >= 0.9).all() and not stab["flagged"].any()
    assert (rst["agreement"] >= 0.9).all() and not rst["flagged"].any() and rst["used"].all()
    assert ((stab["total_ratio"] >= 1) & (stab["total_ratio"] < 1.1)).all() and (stab["flagged_by"] == "").all()
    np.testing.assert_allclose(stab["total_cells"], table(cons, "means").sum().to_numpy(), rtol=1e-5)
    # mean of means, exactly
    means = np.mean([lognormal_summaries(a.obsm["w_sf_loc"], a.obsm["w_sf_scale"])["means"] for a in ads.values()], 0)
    np.testing.assert_allclose(table(cons, "means"), means, rtol=1e-5)
    # quantiles are the mixture's; u_sf pools each restart scaled by its own mRNA per cell
    loc = np.stack([a.obsm["w_sf_loc"] for a in ads.values()]).astype(float)
    scale = np.stack([a.obsm["w_sf_scale"] for a in ads.values()]).astype(float)
    np.testing.assert_allclose(table(cons, "q05"), mixture_quantiles(loc, scale, 0.05), rtol=1e-5)
    m = np.stack([a.uns["mod"]["mrna_per_cell"] for a in ads.values()])[:, None, :]
    np.testing.assert_allclose(table(cons, "q95", "mRNA_count_u_sf"), mixture_quantiles(loc + np.log(m), scale, 0.95),
                               rtol=1e-5)
    # obsm w_sf_loc/scale: a moment-matched log-normal that reproduces means and stds under add_posterior
    again = add_posterior(ad.AnnData(obs=cons.obs[[]]), cons.obsm["w_sf_loc"], cons.obsm["w_sf_scale"], TYPES,
                          np.ones(len(TYPES)))
    np.testing.assert_allclose(table(again, "means"), table(cons, "means"), rtol=1e-4)
    np.testing.assert_allclose(table(again, "stds"), table(cons, "stds"), rtol=1e-3)
    info = cons.uns["mod"]["consensus"]
    assert "moment-matched" in info["w_sf_loc_scale"] and info["best_restart"] in ads
    assert "elbo" not in cons.uns["mod"]
    np.testing.assert_allclose(cons.obs["detection_y_s"], np.mean([a.obs["detection_y_s"] for a in ads.values()], 0),
                               rtol=1e-5)


def test_scrambled_restart_is_flagged_and_can_be_left_out():
    t = _truth()
    ads = {"restart_1": _restart(t, 1), "restart_2": _restart(t, 2), "restart_3": _restart(t, 3, broken=True)}
    res = aggregate(ads)
    flags = res.restarts.set_index("restart")["flagged"]
    assert flags["restart_3"] and not flags["restart_1"] and not flags["restart_2"]
    assert res.restarts.set_index("restart").loc["restart_3", "agreement"] < 0.5
    assert any("restart_3" in ln and "disagree" in ln for ln in res.summary)
    # pooled with --keep-flagged: with min over pairs every type sees the scrambled restart; with median
    # (default) the good pair wins
    kept = aggregate(ads, keep_flagged=True)
    assert kept.restarts["used"].all() and kept.consensus.uns["mod"]["consensus"]["excluded"] == []
    assert aggregate(ads, stability="min", keep_flagged=True).stability["flagged"].all()
    assert any("include the flagged restart(s) restart_3" in ln for ln in kept.summary)
    # by default (and with the former exclude_flagged=True) it is left out of the consensus and the stability
    good = np.mean([table(ads[k], "means").to_numpy() for k in ("restart_1", "restart_2")], 0)
    for ex in (res, aggregate(ads, exclude_flagged=True), aggregate(ads, stability="min")):
        assert ex.consensus.uns["mod"]["consensus"]["excluded"] == ["restart_3"]
        assert ex.restarts.set_index("restart")["used"].to_dict() == {"restart_1": True, "restart_2": True,
                                                                      "restart_3": False}
        assert not ex.stability["flagged"].any()
        np.testing.assert_allclose(table(ex.consensus, "means"), good, rtol=1e-5)
    assert any("restart_3" in ln and "left out of the consensus" in ln for ln in res.summary)
    assert any("pool 2 of 3 restarts" in ln for ln in res.summary)
    assert aggregate(ads, exclude_flagged=False).restarts["used"].all()  # the former switch, still honoured


def test_far_worse_elbo_is_flagged():
    t = _truth()
    ads = {"restart_1": _restart(t, 1), "restart_2": _restart(t, 2), "restart_3": _restart(t, 3, elbo=1.3e5)}
    res = aggregate(ads)
    r = res.restarts.set_index("restart")
    assert r.loc["restart_3", "flagged"] and not r.loc["restart_1", "flagged"]
    assert any("restart_3" in ln and "-ELBO" in ln for ln in res.summary)
    assert any(ln.startswith("Best restart") and ("restart_1" in ln or "restart_2" in ln) for ln in res.summary)
    assert not aggregate(ads, elbo_gap=5).restarts["flagged"].any()  # gap = 3e4 = 3 × the 1e4 improvement
    # without a first-epoch -ELBO the rule cannot be applied: said, not guessed
    for a in ads.values():
        a.uns["mod"] = {k: v for k, v in a.uns["mod"].items() if k != "elbo_initial"}
    res = aggregate(ads)
    assert not res.restarts["flagged"].any()
    assert any("were not checked for a far worse final -ELBO" in ln for ln in res.summary)
    # ... unless the training histories are given
    hist = {k: pd.DataFrame({"epoch": [1, 2], "elbo": [a.uns["mod"]["elbo"] + 1e4, a.uns["mod"]["elbo"]]})
            for k, a in ads.items()}
    assert aggregate(ads, histories=hist).restarts.set_index("restart").loc["restart_3", "flagged"]


def test_unconverged_restart_is_noted_but_not_flagged():
    ads = _agreeing(3)
    for a in ads.values():
        a.uns["mod"] = {**a.uns["mod"], "converged": False, "epochs": 100}
    res = aggregate(ads)
    assert not res.restarts["flagged"].any()
    assert not any("is flagged" in ln or "flag" in ln.lower() for ln in res.summary), res.summary
    assert sum("reached its epoch limit (100)" in ln for ln in res.summary) == 3


def test_unstable_type_is_flagged_by_name():
    t = _truth()
    ads = {f"restart_{k}": _restart(t, k) for k in (1, 2, 3)}
    rng = np.random.default_rng(9)
    for a in ads.values():  # 'Macro' gets an independent random map in each restart
        loc = a.obsm["w_sf_loc"].copy()
        loc[:, 4] = rng.normal(-1, 1, a.n_obs)
        add_posterior(a, loc, a.obsm["w_sf_scale"], TYPES, np.asarray(a.uns["mod"]["mrna_per_cell"]))
    res = aggregate(ads)
    assert res.stability.set_index("cell_type")["flagged"].to_dict() == {
        k: k == "Macro" for k in TYPES}
    assert any(ln.startswith("Cell type Macro is unstable") for ln in res.summary)


def _scaled(a: ad.AnnData, factor: np.ndarray) -> ad.AnnData:
    """``a`` with every spot's abundance of type f multiplied by ``factor[f]`` (same maps, other totals)."""
    b = a.copy()
    add_posterior(b, b.obsm["w_sf_loc"] + np.log(factor)[None, :], b.obsm["w_sf_scale"], TYPES,
                  np.asarray(b.uns["mod"]["mrna_per_cell"]))
    return b


def test_scale_flag_fires_where_correlation_agrees():
    """Two restarts whose maps agree (correlation ≈ 1) but one finds twice the other's cells of one type: the
    type is flagged by its total ratio, not by correlation; neither restart is (one type of six)."""
    t = _truth()
    a1 = _restart(t, 1)
    ads = {"restart_1": a1, "restart_2": _scaled(a1, np.where(np.array(TYPES) == "Fibro", 2.0, 1.0))}
    res = aggregate(ads)
    st = res.stability.set_index("cell_type")
    assert (st["stability"] > 0.999).all()
    assert st["flagged"].to_dict() == {k: k == "Fibro" for k in TYPES}
    assert st.loc["Fibro", "flagged_by"] == "total_ratio" and st.loc["Fibro", "total_ratio"] == pytest.approx(2.0, rel=1e-3)
    np.testing.assert_allclose(st.drop("Fibro")["total_ratio"], 1.0, atol=1e-4)
    assert not res.restarts["flagged"].any() and res.restarts["used"].all()
    line = next(ln for ln in res.summary if ln.startswith("Cell type Fibro is unstable"))
    assert "total cells differ between restarts by a factor 2" in line and "correlation" not in line.split(";")[0]
    pair = res.pairs.set_index(["cell_type", "restart_a", "restart_b"])
    assert pair.loc[("Fibro", "restart_1", "restart_2"), "total_ratio"] == pytest.approx(2.0, rel=1e-3)
    # the ratio is symmetric: the same with the restarts swapped; a looser threshold lets it pass
    swapped = aggregate({"restart_2": ads["restart_2"], "restart_1": a1}).stability.set_index("cell_type")
    assert swapped.loc["Fibro", "total_ratio"] == pytest.approx(st.loc["Fibro", "total_ratio"], rel=1e-9)
    assert not aggregate(ads, total_ratio=2.5).stability["flagged"].any()


def test_restart_on_another_scale_is_flagged_and_left_out():
    """A restart whose every type has 1.6 times the others' cells (elsewhere on the detection-vs-abundance
    ridge, maps unchanged) is flagged by its total ratio and left out of the consensus by default."""
    t = _truth()
    ads = {"restart_1": _restart(t, 1), "restart_2": _restart(t, 2)}
    ads["restart_3"] = _scaled(_restart(t, 3), np.full(len(TYPES), 1.6))
    res = aggregate(ads)
    r = res.restarts.set_index("restart")
    assert r["flagged"].to_dict() == {"restart_1": False, "restart_2": False, "restart_3": True}
    assert r.loc["restart_3", "flagged_by"] == "total_ratio" and r.loc["restart_3", "agreement"] > 0.9
    assert r.loc["restart_3", "total_ratio"] == pytest.approx(1.6, rel=0.05)
    assert r.loc["restart_3", "total_cells"] == pytest.approx(1.6 * r.loc["restart_1", "total_cells"], rel=0.05)
    assert r["used"].to_dict() == {"restart_1": True, "restart_2": True, "restart_3": False}
    assert not res.stability["flagged"].any()
    assert any(ln.startswith("Restart restart_3 is flagged: its total cells") for ln in res.summary)
    # kept, it makes every type's totals disagree in two of the three pairs
    kept = aggregate(ads, keep_flagged=True)
    assert kept.stability["flagged"].all() and set(kept.stability["flagged_by"]) == {"total_ratio"}


def test_every_restart_flagged_keeps_the_best_by_elbo():
    """Two restarts that disagree are both flagged (it cannot be told which is off); the consensus is the one
    with the lower final -ELBO alone, never nothing."""
    t = _truth()
    ads = {"restart_1": _restart(t, 1, elbo=1.02e5), "restart_2": _restart(t, 2, broken=True)}
    res = aggregate(ads)
    r = res.restarts.set_index("restart")
    assert r["flagged"].all() and r["used"].to_dict() == {"restart_1": False, "restart_2": True}
    assert res.consensus.uns["mod"]["consensus"]["used"] == ["restart_2"]
    np.testing.assert_allclose(table(res.consensus, "means"), table(ads["restart_2"], "means"), rtol=1e-5)
    assert res.stability["stability"].isna().all() and not res.stability["flagged"].any()
    assert any("restart_2 is flagged" in ln and "the one kept in the consensus (the best by final -ELBO)" in ln
               for ln in res.summary)
    assert any("Only one restart (restart_2) is left" in ln for ln in res.summary)
    assert aggregate(ads, keep_flagged=True).restarts["used"].all()


def test_single_restart_passes_through():
    ads = _agreeing(1)
    res = aggregate(ads)
    a = ads["restart_1"]
    assert res.stability["stability"].isna().all() and not res.stability["flagged"].any()
    assert not res.restarts["flagged"].any() and res.restarts["agreement"].isna().all()
    np.testing.assert_allclose(table(res.consensus, "q05"), table(a, "q05"), rtol=1e-5)
    np.testing.assert_allclose(res.consensus.obsm["w_sf_loc"], a.obsm["w_sf_loc"], atol=1e-5)
    assert any("Only one restart" in ln for ln in res.summary)


# ------------------------------------------------------------------------------------------------- errors

def _write(tmp_path, ads):
    dirs = []
    for name, a in ads.items():
        write_results(a, tmp_path / name)
        dirs.append(tmp_path / name)
    return dirs


@pytest.mark.parametrize("odd", ["spots", "types", "genes"])
def test_mismatch_is_one_line_naming_the_odd_folder(tmp_path, odd):
    t = _truth()
    kw = {"spots": {"spots": [f"x{i}" for i in range(t.shape[0])]},
          "types": {"types": TYPES[:-1] + ["Neuron"]},
          "genes": {"genes": [f"h{i}" for i in range(12)]}}[odd]
    ads = {"restart_1": _restart(t, 1), "restart_2": _restart(t, 2), "restart_odd": _restart(t, 3, **kw)}
    dirs = _write(tmp_path, ads)
    out = tmp_path / "consensus"
    r = CliRunner().invoke(__import__("spotmap.cli", fromlist=["cli"]).cli,
                           ["aggregate", *sum((["--restart", str(d)] for d in dirs), []), "--outdir", str(out)])
    assert r.exit_code == 2, r.output
    err = [ln for ln in r.output.splitlines() if ln.startswith("spotmap: error")]
    assert len(err) == 1 and "restart_odd" in err[0] and {"spots": "spots", "types": "cell types",
                                                          "genes": "genes"}[odd] in err[0]
    assert not out.exists()  # nothing half-written


def test_reordered_spots_and_types_are_aligned():
    t = _truth()
    a1 = _restart(t, 1)
    order = np.random.default_rng(0).permutation(t.shape[0])
    a2 = _restart(t, 2)[order].copy()
    tperm = [3, 0, 5, 1, 2, 4]
    a2.obsm["w_sf_loc"] = a2.obsm["w_sf_loc"][:, tperm]
    a2.obsm["w_sf_scale"] = a2.obsm["w_sf_scale"][:, tperm]
    mod = dict(a2.uns["mod"])
    mod["factor_names"] = [TYPES[i] for i in tperm]
    mod["mrna_per_cell"] = [mod["mrna_per_cell"][i] for i in tperm]
    a2.uns["mod"] = mod
    res = aggregate({"restart_1": a1, "restart_2": a2})
    assert (res.stability["stability"] > 0.9).all()
    assert list(res.consensus.obs_names) == list(a1.obs_names)


def test_bad_settings_and_bad_posterior_are_refused():
    ads = _agreeing(2)
    with pytest.raises(SpotmapError, match="--stability"):
        aggregate(ads, stability="mean")
    with pytest.raises(SpotmapError, match="--threshold"):
        aggregate(ads, threshold=2.0)
    for bad in (0.8, float("nan"), float("inf")):
        with pytest.raises(SpotmapError, match="--total-ratio"):
            aggregate(ads, total_ratio=bad)
    ads["restart_2"].obsm["w_sf_scale"][0, 0] = 0.0
    with pytest.raises(SpotmapError, match=r"restart_2.*w_sf_scale"):
        aggregate(ads)
    with pytest.raises(SpotmapError, match="at least one"):
        aggregate({})


# ------------------------------------------------------------------------------------------------- files

def test_cli_writes_the_consensus_folder(tmp_path):
    from spotmap.cli import cli

    t = _truth()
    ads = {"restart_1": _restart(t, 1), "restart_2": _restart(t, 2), "restart_3": _restart(t, 3, broken=True)}
    dirs = _write(tmp_path, ads)
    out = tmp_path / "consensus"
    r = CliRunner().invoke(cli, ["aggregate", *sum((["--restart", str(d)] for d in dirs), []), "--outdir", str(out),
                                 "--threshold", "0.8", "--stability", "median"])
    assert r.exit_code == 0, r.output
    for f in ("sp.h5ad", "W_cell_density.csv", "W_cell_density_q05.csv", "W_mRNA_count.csv", "W_mRNA_count_q05.csv",
              "stability.tsv", "restarts.tsv", "summary.txt", "stability_mqc.tsv", "stability_heatmap_mqc.yaml",
              "restarts_mqc.tsv", "aggregate_summary_mqc.html"):
        assert (out / f).exists(), f
    cons = read_results(out)
    np.testing.assert_allclose(pd.read_csv(out / "W_cell_density.csv", index_col=0).to_numpy(),
                               table(cons, "means").to_numpy(), rtol=1e-5)
    rst = pd.read_csv(out / "restarts.tsv", sep="\t", keep_default_na=False)
    assert list(rst.columns) == ["restart", "elbo", "agreement", "flagged", "total_ratio", "total_cells", "used",
                                 "flagged_by"]
    assert rst.set_index("restart")["flagged"].to_dict() == {"restart_1": False, "restart_2": False, "restart_3": True}
    assert rst.set_index("restart")["used"].to_dict() == {"restart_1": True, "restart_2": True, "restart_3": False}
    assert rst.set_index("restart")["flagged_by"].to_dict() == {"restart_1": "", "restart_2": "",
                                                                "restart_3": "agreement"}
    st = pd.read_csv(out / "stability.tsv", sep="\t")
    assert list(st.columns) == ["cell_type", "stability", "flagged", "total_ratio", "total_cells", "flagged_by"]
    assert list(st["cell_type"]) == TYPES
    summary = (out / "summary.txt").read_text().splitlines()
    assert any("restart_3" in ln for ln in summary)
    assert "restart_3" in (out / "aggregate_summary_mqc.html").read_text()
    hm = yaml.safe_load((out / "stability_heatmap_mqc.yaml").read_text())
    assert hm["id"] == "spotmap_stability_heatmap" and hm["plot_type"] == "heatmap"
    assert hm["xcats"] == ["restart_1 vs restart_2"] and hm["ycats"] == TYPES  # the pooled restarts only
    assert -1 <= hm["data"]["B cell"]["restart_1 vs restart_2"] <= 1
    head = [ln[2:] for ln in (out / "stability_mqc.tsv").read_text().splitlines() if ln.startswith("# ")]
    meta = yaml.safe_load("\n".join(head))
    from spotmap.report import sections

    # the registry's section: its title, under the report's "Restart stability"
    assert meta["id"] == "spotmap_stability" and meta["section_name"] == sections.STABILITY.title
    assert meta["parent_id"] == sections.PARENTS["stability"].id and "2 mapping restart(s)" in meta["description"]
    assert "above 1.25" in meta["description"] and meta["headers"]["total_ratio"]["title"] == "Total ratio"
    rt_head = yaml.safe_load("\n".join(ln[2:] for ln in (out / "restarts_mqc.tsv").read_text().splitlines()
                                       if ln.startswith("# ")))
    assert {"total_ratio", "used"} <= set(rt_head["headers"]) and "total ratio > 1.25" in rt_head["description"]
    assert "pool 2 of 3 restarts" in (out / "summary.txt").read_text()
    # --keep-flagged pools all three; --exclude-flagged is accepted and is the default; both: one line, exit 2
    keep = tmp_path / "consensus_keep"
    args = ["aggregate", *sum((["--restart", str(d)] for d in dirs), [])]
    assert CliRunner().invoke(cli, [*args, "--outdir", str(keep), "--keep-flagged"]).exit_code == 0
    assert pd.read_csv(keep / "restarts.tsv", sep="\t")["used"].all()
    excl = tmp_path / "consensus_excl"
    assert CliRunner().invoke(cli, [*args, "--outdir", str(excl), "--exclude-flagged"]).exit_code == 0
    pd.testing.assert_frame_equal(pd.read_csv(excl / "restarts.tsv", sep="\t"), rst.replace("", np.nan))
    for bad in (["--keep-flagged", "--exclude-flagged"], ["--total-ratio", "0.5"], ["--total-ratio", "nan"]):
        r = CliRunner().invoke(cli, [*args, "--outdir", str(tmp_path / "bad"), *bad])
        errs = [ln for ln in r.output.splitlines() if ln.startswith("spotmap: error")]
        assert r.exit_code == 2 and len(errs) == 1 and bad[0] in errs[0], r.output
        assert not (tmp_path / "bad").exists()
    # rerunning into the same folder replaces it; a foreign non-empty folder is refused
    assert CliRunner().invoke(cli, ["aggregate", "--restart", str(dirs[0]), "--outdir", str(out)]).exit_code == 0
    assert not (out / "stability_heatmap_mqc.yaml").exists()  # one restart: no pairs, no heatmap
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("keep me")
    r = CliRunner().invoke(cli, ["aggregate", "--restart", str(dirs[0]), "--outdir", str(tmp_path / "foreign")])
    assert r.exit_code == 2 and (tmp_path / "foreign" / "notes.txt").exists()
    # nor is an input restart (or any other result folder without stability.tsv) replaced
    for target in (dirs[1], dirs[2]):
        r = CliRunner().invoke(cli, ["aggregate", "--restart", str(dirs[0]), "--restart", str(dirs[1]),
                                     "--outdir", str(target)])
        assert r.exit_code == 2 and (target / "sp.h5ad").exists() and not (target / "stability.tsv").exists()


def test_load_restarts_refuses_duplicate_names(tmp_path):
    ads = _agreeing(1)
    write_results(ads["restart_1"], tmp_path / "a" / "restart_1")
    write_results(ads["restart_1"], tmp_path / "b" / "restart_1")
    with pytest.raises(SpotmapError, match="share the folder name"):
        load_restarts([tmp_path / "a" / "restart_1", tmp_path / "b" / "restart_1"])
    got, src = load_restarts([tmp_path / "a" / "restart_1"])
    assert list(got) == ["restart_1"] and src["restart_1"].endswith("restart_1")


def test_load_restarts_takes_first_epoch_elbo_from_history(tmp_path):
    ads = _agreeing(2)
    for k, a in ads.items():
        a.uns["mod"] = {x: v for x, v in a.uns["mod"].items() if x != "elbo_initial"}
        hist = pd.DataFrame({"epoch": [1, 2, 3], "elbo": [2e5, 1.5e5, a.uns["mod"]["elbo"]],
                             "elbo_smoothed": [2e5, 1.75e5, 1.5e5], "rel_change": [np.nan] * 3, "seconds": [1.0] * 3})
        write_results(a, tmp_path / k, history=hist)
    got, _ = load_restarts([tmp_path / "restart_1", tmp_path / "restart_2"])
    assert [a.uns["mod"]["elbo_initial"] for a in got.values()] == [2e5, 2e5]
    assert "restart_2" in got and "X" not in got["restart_2"].layers and got["restart_2"].X is None
    assert got["restart_1"].X is not None


def test_results_do_not_depend_on_the_spot_chunking(monkeypatch):
    import spotmap.aggregate.mixture as mixture

    t = _truth()
    ads = {"restart_1": _restart(t, 1), "restart_2": _restart(t, 2), "restart_3": _restart(t, 3, broken=True)}
    whole = aggregate(ads, keep_flagged=True)
    # the streamed correlations and total ratios equal numpy's on the full maps
    m = [table(a, "means").to_numpy(np.float64) for a in ads.values()]
    for p, (i, j) in enumerate([(0, 1), (0, 2), (1, 2)]):
        direct = [np.corrcoef(m[i][:, k], m[j][:, k])[0, 1] for k in range(len(TYPES))]
        got = whole.pairs[(whole.pairs["restart_a"] == f"restart_{i + 1}")
                          & (whole.pairs["restart_b"] == f"restart_{j + 1}")]
        np.testing.assert_allclose(got["correlation"], direct, atol=1e-6)
        ratio = np.exp(np.abs(np.log(m[i].sum(0) / m[j].sum(0))))
        np.testing.assert_allclose(got["total_ratio"], ratio, rtol=1e-6)  # tables hold float32 means
    whole_default = aggregate(ads)  # restart_3 left out
    monkeypatch.setattr(mixture, "CHUNK_ELEMENTS", 7 * 3 * len(TYPES))  # 7 spots per chunk
    for ref, keep in ((whole, True), (whole_default, False)):
        chunked = aggregate(ads, keep_flagged=keep)
        pd.testing.assert_frame_equal(chunked.stability, ref.stability, atol=1e-9)
        pd.testing.assert_frame_equal(chunked.restarts, ref.restarts, atol=1e-9)
        np.testing.assert_allclose(table(chunked.consensus, "q05"), table(ref.consensus, "q05"), rtol=1e-6)
