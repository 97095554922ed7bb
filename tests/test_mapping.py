"""The spatial mapping model: likelihood, accuracy on simulated truth, determinism, resume, CLI, bad input."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from spotmap.errors import SpotmapError
from spotmap.mapping import map_cell_types
from spotmap.mapping.likelihood import CountHistogram, SpotCounts, nb_loglik_reference, nb_mean_loglik
from spotmap.results import table
from spotmap.training import load_checkpoint

FAST = dict(max_epochs=25, min_epochs=1000, progress=False, device="cpu")


# ---------------------------------------------------------------------------------------------- fixtures
def _qc_like(sim: Path) -> list[ad.AnnData]:
    """Per-sample AnnData as `spotmap qc` writes them: obs_names '<sample>_<barcode>', obs['sample'],
    mitochondrial genes and failed spots removed, raw counts in X."""
    from spotmap.io.spaceranger import read_spaceranger

    spots = pd.read_csv(sim / "truth" / "spots.csv", index_col=0)
    out = []
    for sample in sorted(spots["sample"].unique()):
        a = read_spaceranger(sim / "samples" / sample / "outs", sample)
        a.obs_names = [f"{sample}_{b}" for b in a.obs_names]
        ok = spots.loc[a.obs_names, "qc_fail"].isna().to_numpy()
        a = a[ok, ~a.var_names.str.startswith("mt-")].copy()
        a.obs["sample"] = sample
        out.append(a)
    return out


@pytest.fixture(scope="module")
def case(sim_small: Path, tmp_path_factory) -> dict:
    parts = _qc_like(sim_small)
    d = tmp_path_factory.mktemp("mapping_inputs")
    files = []
    for a in parts:
        f = d / f"{a.obs['sample'].iloc[0]}.h5ad"
        a.write_h5ad(f)
        files.append(f)
    adata = ad.concat(parts)
    sig = pd.read_csv(sim_small / "truth" / "signatures.csv", index_col=0)
    truth = pd.read_csv(sim_small / "truth" / "cell_abundance.csv", index_col=0).loc[adata.obs_names]
    sig_path = d / "signatures.csv"
    sig.to_csv(sig_path)
    return {"adata": adata, "sig": sig, "truth": truth, "files": files, "sig_path": sig_path, "dir": d}


# ---------------------------------------------------------------------------------------------- likelihood
def test_fused_likelihood_and_gradients_match_plain_nb():
    rng = np.random.default_rng(0)
    S, G, F, E = 41, 17, 3, 3
    D = rng.poisson(rng.gamma(0.6, 3.0, size=(S, G))).astype(np.float32)
    batch = rng.integers(0, E, S)
    X = sp.csr_matrix(D)
    counts = SpotCounts(X, batch, torch.device("cpu"), chunk_elements=4 * G)  # several chunks per batch
    hist = CountHistogram(X, batch, E, torch.device("cpu"))
    t = lambda *s: torch.rand(*s, dtype=torch.float64, generator=torch.Generator().manual_seed(sum(s))).requires_grad_()  # noqa: E731
    w, mg, s_eg, y = t(S, F), t(F, G), t(E, G), t(S, 1)
    alpha = (torch.rand(E, G, dtype=torch.float64) * 4 + 0.3).requires_grad_()
    Dt, bt = torch.tensor(D, dtype=torch.float64), torch.tensor(batch)
    ref = nb_loglik_reference(Dt, (w @ mg + s_eg[bt]) * y, alpha[bt])
    ref_grads = torch.autograd.grad(ref, [w, mg, s_eg, y, alpha])

    full = counts.full()
    assert len(full.chunks) > E  # the chunking is exercised
    for c in full.chunks:
        c.d = c.d.double()
    o = counts.order
    ll = nb_mean_loglik(w[o], mg, s_eg, y[o], alpha, full) + hist.loglik(alpha)
    grads = torch.autograd.grad(ll, [w, mg, s_eg, y, alpha])
    assert float(ll) == pytest.approx(float(ref), rel=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)

    # a minibatch (unsorted input) gives the mu-dependent terms of exactly its rows
    idx = counts.sort_by_batch(torch.tensor([7, 3, 40, 0, 22, 5]))
    assert torch.all(torch.diff(counts.batch[idx]) >= 0)
    mb = counts.batch_rows(idx)
    for c in mb.chunks:
        c.d = c.d.double()
    part = nb_mean_loglik(w[idx], mg, s_eg, y[idx], alpha, mb)
    mu, a, d = ((w @ mg + s_eg[bt]) * y)[idx], alpha[bt][idx], Dt[idx]
    expected = (-a * torch.log1p(mu / a) + d * torch.log(mu / (a + mu))).sum()
    assert float(part) == pytest.approx(float(expected), rel=1e-12)
    # zeros: the histogram holds only distinct nonzero (batch, gene, count) triples
    assert len(hist) < (D > 0).sum() and float(hist.mult.sum()) == (D > 0).sum()


# ---------------------------------------------------------------------------------------------- accuracy
def _pearson(est: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    return np.array([np.corrcoef(est[c], truth[c])[0, 1] for c in truth.columns])


def _nnls_baseline(adata: ad.AnnData, sig: pd.DataFrame) -> pd.DataFrame:
    from scipy.optimize import nnls

    genes = adata.var_names.intersection(sig.index)
    A = sig.loc[genes].to_numpy()
    X = adata[:, genes].X.toarray()
    return pd.DataFrame([nnls(A, x)[0] for x in X], index=adata.obs_names, columns=sig.columns)


def test_recovers_true_abundances_with_defaults_beats_nnls(case):
    res, hist = map_cell_types(case["adata"], case["sig"], progress=False, device="cpu", max_epochs=300)
    est = table(res, "means")[case["truth"].columns]
    r = _pearson(est, case["truth"])
    r_nnls = _pearson(_nnls_baseline(case["adata"], case["sig"]), case["truth"])
    assert np.median(r) > 0.85, r
    assert np.median(r) > np.median(r_nnls) + 0.05, (r, r_nnls)
    # abundances on the right scale (cells per spot) and detection tracks the truth
    ratio = est.to_numpy().sum() / case["truth"].to_numpy().sum()
    assert 0.6 < ratio < 1.5, ratio
    assert res.obsm["q05_cell_abundance_w_sf"].to_numpy().max() > 0
    assert np.all(res.obsm["q05_cell_abundance_w_sf"].to_numpy() <= res.obsm["q95_cell_abundance_w_sf"].to_numpy())
    assert list(hist.columns) == ["epoch", "elbo", "elbo_smoothed", "rel_change", "seconds"]
    assert np.isfinite(hist["elbo"]).all()


def test_minibatch_training_is_finite_and_informative(case):
    res, hist = map_cell_types(case["adata"], case["sig"], batch_size=100, **{**FAST, "max_epochs": 40})
    est = table(res, "means")[case["truth"].columns]
    assert np.isfinite(est.to_numpy()).all()
    assert np.median(_pearson(est, case["truth"])) > 0.6
    assert len(hist) == 40
    # spot-level parameters move once per epoch: three times the global learning rate by default
    assert res.uns["mod"]["batch_size_used"] == 100 and res.uns["mod"]["local_lr_used"] == pytest.approx(0.06)


# ---------------------------------------------------------------------------------------------- determinism
def test_same_seed_bit_identical_other_seed_differs(case):
    a, ha = map_cell_types(case["adata"], case["sig"], seed=3, **FAST)
    b, hb = map_cell_types(case["adata"], case["sig"], seed=3, **FAST)
    c, _ = map_cell_types(case["adata"], case["sig"], seed=4, **FAST)
    for key in ("w_sf_loc", "w_sf_scale", "q05_cell_abundance_w_sf", "means_mRNA_count_u_sf"):
        np.testing.assert_array_equal(np.asarray(a.obsm[key]), np.asarray(b.obsm[key]))
    np.testing.assert_array_equal(ha["elbo"].to_numpy(), hb["elbo"].to_numpy())
    np.testing.assert_array_equal(a.obs["detection_y_s"].to_numpy(), b.obs["detection_y_s"].to_numpy())
    assert not np.array_equal(a.obsm["w_sf_loc"], c.obsm["w_sf_loc"])


def test_each_seed_starts_from_its_own_random_point(case):
    """Restarts start apart: the factorisation that initialises w_sf starts from N/F · a_sf · b_f (Gamma
    factors of mean 1, per spot and type and per type) drawn from the seed — the same seed gives the same start
    bit for bit, another seed another start; without a generator the start is N/F everywhere."""
    from spotmap.io.genes import match_genes
    from spotmap.mapping import MappingSettings, SpatialMapper
    from spotmap.mapping.start import start_abundance

    N, S, F = 8.0, 4000, 6
    np.testing.assert_array_equal(start_abundance(S, F, N, None), np.full((S, F), N / F))
    w3, w3b, w4 = (start_abundance(S, F, N, np.random.default_rng(k)) for k in (3, 3, 4))
    np.testing.assert_array_equal(w3, w3b)
    assert not np.allclose(w3, w4) and (w3 > 0).all()
    # mean N/F over many seeds; the per-type factor moves a whole column (all spots) together
    means = np.array([start_abundance(50, F, N, np.random.default_rng(k)).mean() for k in range(400)])
    assert abs(means.mean() / (N / F) - 1) < 0.1
    col = np.log(w3).mean(0)  # spot factors average out over 4,000 spots; the type factors b_f do not
    assert col.std() > 5 * np.log(w3).std(0).max() / np.sqrt(S)

    sp_sub, sig_sub = match_genes(case["adata"], case["sig"], min_genes=30)

    def start(seed):
        return SpatialMapper(sp_sub, sig_sub, settings=MappingSettings(seed=seed, device="cpu",
                                                                       progress=False)).module().init
    a, b, c = start(3), start(3), start(4)
    for key in ("w_sf", "m_g", "w_sf_scale"):
        np.testing.assert_array_equal(a[key], b[key])
    rel = np.abs(np.log(a["w_sf"]) - np.log(c["w_sf"]))
    assert np.median(rel) > 0.05, np.median(rel)  # after the factorisation the starts still differ


@pytest.mark.parametrize("batch_size", [None, 70], ids=["full-batch", "minibatch"])
def test_resume_from_checkpoint_is_bit_identical(case, tmp_path, batch_size):
    # minibatches: the row-wise optimiser's per-spot step counts must survive the checkpoint too
    kw = dict(seed=1, progress=False, device="cpu", min_epochs=1000, checkpoint_every=7, batch_size=batch_size)
    full, h_full = map_cell_types(case["adata"], case["sig"], max_epochs=30,
                                  checkpoint_path=str(tmp_path / "a.pt"), **kw)
    ck = tmp_path / "b.pt"
    map_cell_types(case["adata"], case["sig"], max_epochs=14, checkpoint_path=str(ck), **kw)  # "killed" at 14
    state = torch.load(ck, weights_only=True)
    assert state["epoch"] == 14
    # every gradient clipped as in full-batch training: at 10 × spots / batch in minibatches (globals too)
    clip = {k: v["param_groups"][0]["clip_norm"] for k, v in state["optim"].items()}
    scale = 1.0 if batch_size is None else case["adata"].n_obs / batch_size
    assert clip["w_sf_loc"] == clip["alpha_eg_inv_loc"] == clip["m_g_loc"] == pytest.approx(10.0 * scale), clip
    resumed, h_res = map_cell_types(case["adata"], case["sig"], max_epochs=30, checkpoint_path=str(ck), **kw)
    np.testing.assert_array_equal(full.obsm["w_sf_loc"], resumed.obsm["w_sf_loc"])
    np.testing.assert_array_equal(full.obsm["w_sf_scale"], resumed.obsm["w_sf_scale"])
    np.testing.assert_array_equal(h_full["elbo"].to_numpy(), h_res["elbo"].to_numpy())
    # a checkpoint of other settings is not used
    other, h_other = map_cell_types(case["adata"], case["sig"], max_epochs=30, checkpoint_path=str(ck),
                                    **{**kw, "seed": 2})
    assert h_other["epoch"].iloc[0] == 1 and not np.array_equal(other.obsm["w_sf_loc"], full.obsm["w_sf_loc"])


def test_non_finite_loss_stops_cleanly(case):
    with pytest.raises(SpotmapError, match="not finite.*learning rate") as exc:
        map_cell_types(case["adata"], case["sig"], lr=1e4, **FAST)
    assert "\n" not in str(exc.value)


# ---------------------------------------------------------------------------------------------- CLI
def _invoke(args: list) -> object:
    from click.testing import CliRunner

    from spotmap.cli import cli

    return CliRunner().invoke(cli, ["map", *map(str, args)], catch_exceptions=False)


def test_cli_writes_the_result_folder_and_resumes(case, tmp_path):
    out = tmp_path / "restart_5"
    args = [a for f in case["files"] for a in ("--spatial", f)] + [
        "--signatures", case["sig_path"], "--outdir", out, "--seed", 5, "--max-epochs", 12, "--checkpoint-every", 6,
        "--device", "cpu", "--n-cells-per-location", 8]
    r = _invoke(args)
    assert r.exit_code == 0, r.output
    for f in ("sp.h5ad", "W_cell_density.csv", "W_cell_density_q05.csv", "W_mRNA_count.csv", "W_mRNA_count_q05.csv",
              "training_history.tsv", "checkpoint.pt", "restart_5_training_mqc.yaml", "restart_5_reconstruction_mqc.png",
              "restart_5_spatial_qc_mqc.png", "training_history.png"):
        assert (out / f).is_file(), f
    res = ad.read_h5ad(out / "sp.h5ad")
    types = list(case["sig"].columns)
    assert list(res.obsm["q05_cell_abundance_w_sf"].columns) == [f"q05cell_abundance_w_sf_{t}" for t in types]
    for k in ("means", "stds", "q05", "q50", "q95"):
        assert f"{k}_cell_abundance_w_sf" in res.obsm and f"{k}_mRNA_count_u_sf" in res.obsm
    assert set(res.obs["sample"]) == {"sample1", "sample2"} and (res.obs["detection_y_s"] > 0).all()
    assert set(res.uns["spatial"]) == {"sample1", "sample2"}
    mod = res.uns["mod"]
    assert list(mod["factor_names"]) == types and int(mod["seed"]) == 5 and np.isfinite(mod["elbo"])
    assert len(mod["mrna_per_cell"]) == len(types) and set(mod["globals"]["y_e"]) == {"sample1", "sample2"}
    w = pd.read_csv(out / "W_cell_density.csv", index_col=0)
    np.testing.assert_allclose(w.to_numpy(), res.obsm["means_cell_abundance_w_sf"].to_numpy(), rtol=1e-5)
    import yaml

    mqc = yaml.safe_load((out / "restart_5_training_mqc.yaml").read_text())
    assert mqc["id"] == "spotmap_mapping_history" and list(mqc["data"]) == ["restart_5"]
    assert min(mqc["data"]["restart_5"]) > 1  # the first 20 % of epochs are left out
    hist = pd.read_csv(out / "training_history.tsv", sep="\t")
    assert len(hist) == 12
    # rerunning with more epochs resumes from the checkpoint: the same answer as one 20-epoch run
    r = _invoke(args[:-8] + ["--max-epochs", 20, "--checkpoint-every", 6, "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(out / "training_history.tsv", sep="\t")) == 20
    once, _ = map_cell_types(case["adata"], case["sig"], seed=5, max_epochs=20, progress=False, device="cpu")
    np.testing.assert_array_equal(ad.read_h5ad(out / "sp.h5ad").obsm["w_sf_loc"], once.obsm["w_sf_loc"])


def test_cli_checkpoint_file_elsewhere(case, tmp_path):
    """``--checkpoint FILE`` puts the checkpoint outside OUTDIR (a pipeline task's work folder is discarded
    on retry) and a rerun into a fresh OUTDIR resumes from it; a folder that cannot be made is a one-line
    error before training."""
    ckpt = tmp_path / "shared" / "ck" / "s1_restart_0.pt"
    base = ["--spatial", case["files"][0], "--signatures", case["sig_path"], "--checkpoint-every", 2,
            "--checkpoint", ckpt, "--device", "cpu", "--n-cells-per-location", 8]
    r = _invoke(base + ["--outdir", tmp_path / "task1" / "restart_0", "--max-epochs", 4])
    assert r.exit_code == 0, r.output
    assert ckpt.is_file() and not (tmp_path / "task1" / "restart_0" / "checkpoint.pt").exists()
    r = _invoke(base + ["--outdir", tmp_path / "task2" / "restart_0", "--max-epochs", 6])   # the retried task
    assert r.exit_code == 0, r.output
    hist = pd.read_csv(tmp_path / "task2" / "restart_0" / "training_history.tsv", sep="\t")
    assert len(hist) == 6 and load_checkpoint(ckpt)["epoch"] == 6
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = tmp_path / "task3"
    r = _invoke(base[:-6] + ["--checkpoint", blocker / "ck.pt", "--outdir", out, "--max-epochs", 2])
    errors = [ln for ln in r.output.splitlines() if ln.startswith("spotmap: error:")]
    assert r.exit_code == 2 and len(errors) == 1 and "ck.pt" in errors[0] and not out.exists(), r.output


def test_cli_bad_inputs_one_line_no_output(case, tmp_path):
    bad_sig = tmp_path / "bad.csv"
    s = case["sig"].copy()
    s.iloc[3, 1] = -1.0
    s.to_csv(bad_sig)
    out = tmp_path / "o1"
    r = _invoke(["--spatial", case["files"][0], "--signatures", bad_sig, "--outdir", out, "--max-epochs", 5])
    errors = [ln for ln in r.output.splitlines() if ln.startswith("spotmap: error:")]
    assert r.exit_code == 2 and len(errors) == 1 and "bad.csv" in errors[0] and "negative" in errors[0]
    assert not out.exists()

    a = ad.read_h5ad(case["files"][0])
    del a.obs["sample"]
    nosample = tmp_path / "nosample.h5ad"
    a.write_h5ad(nosample)
    r = _invoke(["--spatial", nosample, "--signatures", case["sig_path"], "--outdir", out, "--max-epochs", 5])
    assert r.exit_code == 2 and "nosample.h5ad" in r.output and "obs['sample']" in r.output and not out.exists()

    a = ad.read_h5ad(case["files"][0])
    a.X = a.X.astype(np.float32) * 0.37  # not raw counts
    normed = tmp_path / "normed.h5ad"
    a.write_h5ad(normed)
    r = _invoke(["--spatial", normed, "--signatures", case["sig_path"], "--outdir", out, "--max-epochs", 5])
    assert r.exit_code == 2 and "normed.h5ad" in r.output and not out.exists()

    r = _invoke(["--spatial", case["files"][0], "--spatial", case["files"][0], "--signatures", case["sig_path"],
                 "--outdir", out, "--max-epochs", 5])
    assert r.exit_code == 2 and "obs_names" in r.output and not out.exists()


def test_gpu_out_of_memory_is_one_clear_error(case, monkeypatch):
    """A full batch that does not fit the GPU ends with a one-line hint to lower --batch-size, not a traceback."""
    from spotmap.mapping import model as mapping_model

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(mapping_model, "train_svi", oom)
    with pytest.raises(SpotmapError, match=r"GPU ran out of memory training \d+ spots per step.*--batch-size"):
        map_cell_types(case["adata"], case["sig"], **FAST)


def test_api_refuses_unknown_settings_and_mismatched_genes(case):
    with pytest.raises(SpotmapError, match="unknown setting"):
        map_cell_types(case["adata"], case["sig"], epochs=3)
    sig = case["sig"].copy()
    sig.index = [f"other{i}" for i in range(len(sig))]
    with pytest.raises(SpotmapError, match="genes shared"):
        map_cell_types(case["adata"], sig, **FAST)
    with pytest.raises(SpotmapError, match="local_lr must be a positive number"):
        map_cell_types(case["adata"], case["sig"], local_lr=-0.1, **FAST)
    with pytest.raises(SpotmapError, match="init_iterations must be 0 or more"):
        map_cell_types(case["adata"], case["sig"], init_iterations=-1, **FAST)


def test_initial_guide_mean_and_sd_of_w_sf_come_from_the_counts(case):
    """w_sf's guide starts with its mean at the NMF values and its sd from the counts: narrow where a type
    holds many UMIs, wide where it is absent (constant 0.1 before: absent types took hundreds of steps to widen)."""
    import pyro

    from spotmap.io.genes import match_genes
    from spotmap.mapping.model import MappingSettings, SpatialMapper

    a, s = match_genes(case["adata"], case["sig"])
    mod = SpatialMapper(a, s, settings=MappingSettings(device="cpu", progress=False)).module()
    pyro.clear_param_store()
    mod.guide(**mod.batch_kwargs(None))
    loc = pyro.param("w_sf_loc").detach().double().numpy()
    scale = pyro.param("w_sf_scale").detach().double().numpy()
    np.testing.assert_allclose(np.exp(loc + scale**2 / 2), mod.init["w_sf"], rtol=1e-4)
    assert scale.min() >= 0.01 - 1e-7 and scale.max() <= 0.75 * mod.max_scale + 1e-6
    truth = case["truth"].loc[a.obs_names, list(s.columns)].to_numpy()
    present, absent = truth >= 2, truth == 0
    # Visium depth: a present type has hundreds of UMIs per spot (sd ~0.02); an absent one keeps a few after
    # the NMF's iterations (sd ~0.09; in Visium HD bins most start at the 1.5 cap, benchmarks/RESULTS_hd.md)
    sd_present, sd_absent = np.median(scale[present]), np.median(scale[absent])
    assert sd_present < 0.05 and sd_absent > 3 * sd_present, (sd_present, sd_absent)
    # every other site starts at the constant init_scale, its mean at the initial value
    np.testing.assert_allclose(pyro.param("y_s_scale").detach().numpy(), 0.1, rtol=1e-6)
    y_loc = pyro.param("y_s_loc").detach().double().numpy()
    np.testing.assert_allclose(np.exp(y_loc + 0.1**2 / 2), mod.init["y_s"], rtol=1e-5)


def test_fast_elbo_is_the_pyro_model_with_exact_entropy(case):
    """elbo_loss evaluates exactly the pyro program's log joint (plates, subsample scaling, factor) plus the
    guide's analytic entropy, for the same draws."""
    import pyro
    from pyro import poutine

    from spotmap.io.genes import match_genes
    from spotmap.mapping.model import MappingSettings, SpatialMapper
    from spotmap.mapping.module import GLOBAL_SITES, LOCAL_SITES

    a, s = match_genes(case["adata"], case["sig"])
    mod = SpatialMapper(a, s, settings=MappingSettings(device="cpu", progress=False)).module()
    pyro.clear_param_store()
    idx = torch.tensor([4, 90, 17, 250, 3])
    kw = mod.batch_kwargs(idx)  # a minibatch: spot-level terms scaled by S / B
    mod.guide(**kw)
    gen = torch.Generator().manual_seed(0)
    eps, values, entropy = {}, {}, 0.0
    S, B = mod.dims.S, len(idx)
    for site in GLOBAL_SITES + LOCAL_SITES:
        loc, scale = pyro.param(f"{site}_loc").detach(), pyro.param(f"{site}_scale").detach()
        if site in LOCAL_SITES:
            loc, scale = loc[kw["idx"]], scale[kw["idx"]]
        eps[site] = torch.randn(loc.shape, generator=gen)
        values[site] = torch.exp(loc + scale * eps[site])
        h = torch.distributions.LogNormal(loc, scale).entropy().sum()
        entropy += float(h) * (S / B if site in LOCAL_SITES else 1.0)
    with torch.no_grad():
        fast = float(mod.elbo_loss(mod.model, mod.guide, eps=eps, **kw))
        tr = poutine.trace(poutine.condition(mod.model, data=values)).get_trace(**kw)
        log_joint = float(tr.log_prob_sum())
    assert fast == pytest.approx(-(log_joint + entropy), rel=1e-5)
    assert tr.nodes["w_sf"]["scale"] == pytest.approx(S / B)
