"""The sparse (Visium HD) likelihood: exact where it claims to be, the documented expansion elsewhere,
and the same abundances as the dense likelihood on data small enough to run both (issue 10)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from spotmap.mapping.likelihood import SpotCounts, nb_mean_loglik
from spotmap.mapping.sparse import SparseLikelihood, sparse_nmf
from spotmap.mapping.sparse_bound import (approximation_check, choose_exact_genes, exact_range, gene_bounds,
                                          genes_over_bound, relative_error_bound)

S, G, F, E = 60, 300, 5, 2


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    w = torch.rand(S, F) * 2
    mg = torch.rand(F, G) * 0.3
    s = torch.rand(E, G) * 0.05
    y = torch.rand(S, 1) + 0.5
    a = torch.rand(E, G) * 5 + 1
    batch = np.sort(rng.integers(0, E, S))
    mu = (w @ mg + s[torch.as_tensor(batch)]) * y
    D = torch.distributions.Poisson(mu).sample()
    return (w, mg, s, y, a), batch, D


def reference(params, batch, D, exact, rows):
    """The sparse likelihood's definition, written densely in float64: exact NB terms at non-zeros and for the
    exact genes; at the zeros of the other genes, the expansion of z(mu) = -alpha log(1 + mu/alpha) around
    each batch's mean mu0: linear part per entry plus, per spot, the curvature term Q softly capped by C."""
    w, mg, s, y, a = params
    b = torch.as_tensor(batch[rows])
    A, Dr = a[b], D[rows].double()
    mu = (w @ mg + s[b]) * y
    mu0 = torch.stack([mu[b == e].mean(0) if (b == e).any() else torch.zeros(G, dtype=mu.dtype)
                       for e in range(E)]).detach()[b]
    z = -A * torch.log1p(mu / A)
    apm = A + mu0
    linear = -A * torch.log1p(mu0 / A) - A / apm * (mu - mu0)
    is_exact = torch.zeros(G, dtype=torch.bool)
    is_exact[exact] = True
    approx = (Dr == 0) & ~is_exact[None, :]
    Q = torch.where(approx, 0.5 * A / apm**2 * (mu - mu0) ** 2, 0.0).sum(1)
    C = torch.where(approx, 0.5 * A / apm * (mu + mu0), 0.0).sum(1)
    capped = torch.where(Q > 0, Q * C / (Q**4 + C**4) ** 0.25, 0.0)
    zero_term = torch.where(approx, linear, z)
    return (zero_term + Dr * torch.log(mu / (A + mu))).sum() + capped.sum()


@pytest.mark.parametrize("exact", [np.array([], dtype=np.int64), np.array([3, 10, 50, 299]), np.arange(G)],
                         ids=["no-exact-genes", "some-exact", "all-exact"])
@pytest.mark.parametrize("rows", [np.arange(S), np.array([2, 5, 33, 40, 59])], ids=["full", "minibatch"])
def test_value_and_gradients_match_the_definition(case, exact, rows):
    params, batch, D = case
    lik = SparseLikelihood(sp.csr_matrix(D.numpy()), batch, exact, torch.device("cpu"))
    idx = lik.sort_by_batch(torch.as_tensor(rows))
    order = idx.numpy()
    p32 = [t.clone().requires_grad_() for t in params]
    value = lik.loglik(p32[0][idx], p32[1], p32[2], p32[3][idx], p32[4], lik.batch_rows(idx))
    value.backward()
    p64 = [t.clone().double().requires_grad_() for t in params]
    ref = reference([p64[0][idx], p64[1], p64[2], p64[3][idx], p64[4]], batch, D, exact, order)
    ref.backward()
    assert float(value) == pytest.approx(float(ref), rel=2e-6)
    for mine, theirs in zip(p32, p64):
        scale = float(theirs.grad.abs().max())
        assert float((mine.grad.double() - theirs.grad).abs().max()) <= 2e-5 * scale


def test_expansion_never_rewards_a_runaway_spot(case):
    """Scaling one spot's expected counts far above the batch mean must lower the approximate log-likelihood,
    as it lowers the exact one (a bare quadratic zero term would grow as the square of the scale: a minibatch
    fit of a whole Visium HD sample ran off that way)."""
    params, batch, D = case
    w, mg, s, y, a = params
    lik = SparseLikelihood(sp.csr_matrix(D.numpy()), batch, np.array([], dtype=np.int64), torch.device("cpu"))
    idx = lik.sort_by_batch(torch.arange(S))
    values = []
    for factor in (1.0, 10.0, 100.0, 1000.0):
        y_run = y.clone()
        y_run[idx[0]] *= factor
        values.append(float(lik.loglik(w[idx], mg, s, y_run[idx], a, lik.batch_rows(idx))))
    assert all(later < earlier for earlier, later in zip(values, values[1:])), values


def test_all_genes_exact_equals_the_dense_likelihood(case):
    params, batch, D = case
    X = sp.csr_matrix(D.numpy())
    lik = SparseLikelihood(X, batch, np.arange(G), torch.device("cpu"))
    sparse_value = lik.loglik(*params, lik.full())
    dense = SpotCounts(X, batch, torch.device("cpu"))
    dense_value = nb_mean_loglik(*params, dense.full())
    assert float(sparse_value) == pytest.approx(float(dense_value), rel=1e-6)


def test_expansion_error_is_small_and_measured(case):
    """With no exact gene the expansion is the only approximation: it must stay a small fraction of the zero
    term, and approximation_check must report it (not zero, not huge)."""
    params, batch, D = case
    w, mg, s, y, a = (t.double().numpy() for t in params)
    X = sp.csr_matrix(D.numpy())
    check = approximation_check(X, w, mg, s, y, a, batch, np.array([], dtype=np.int64))
    assert check["sparse_genes"] == G and check["spots_checked"] == S
    assert 0 < check["relative_error"] < 0.02
    lik = SparseLikelihood(X, batch, np.array([], dtype=np.int64), torch.device("cpu"))
    exact = SparseLikelihood(X, batch, np.arange(G), torch.device("cpu"))
    gap = abs(float(lik.loglik(*params, lik.full())) - float(exact.loglik(*params, exact.full())))
    # the check sums |error| per entry, the likelihoods differ by the signed sum
    assert 0 < gap <= check["error_nats"] * (1 + 1e-6)


def test_bound_per_entry_holds_on_random_inputs():
    """The documented per-entry bound of the expansion (module docstring of spotmap.mapping.sparse), against
    the exact zero term in float64, for alpha from 0.001 to 100 and mu/alpha up to ~1 (and far beyond mu0)."""
    rng = np.random.default_rng(5)
    n = 200_000
    alpha = 10 ** rng.uniform(-3, 2, n)
    mu0 = alpha * 10 ** rng.uniform(-4, 0.3, n)
    mu = np.where(rng.random(n) < 0.5, mu0 * rng.uniform(0, 1, n), mu0 + alpha * rng.uniform(0, 1.5, n))
    u = (mu - mu0) / (alpha + mu0)
    keep = np.abs(u) < 0.99
    alpha, mu0, mu, u = alpha[keep], mu0[keep], mu[keep], u[keep]
    z, z0 = -alpha * np.log1p(mu / alpha), -alpha * np.log1p(mu0 / alpha)
    q = z0 - alpha / (alpha + mu0) * (mu - mu0) + 0.5 * alpha / (alpha + mu0) ** 2 * (mu - mu0) ** 2
    err, au = np.abs(q - z), np.abs(u)
    assert (mu / alpha).max() > 1 and alpha.min() < 0.01 and au.max() > 0.9 and (u < -0.5).any()
    tol = 1e-12 * (np.abs(z) + np.abs(z0) + 1)                                 # float64 rounding
    assert np.all(err <= alpha * au**3 / (3 * (1 - au)) + tol)
    assert np.all(err <= au**2 / (3 * (1 - au)) * np.abs(z - z0) + tol)
    assert np.all(err <= au**2 / (3 * (1 - au)) * np.maximum(np.abs(z), np.abs(z0)) + tol)
    up = u >= 0
    assert np.all(q[up] - z[up] >= -tol[up]) and np.all(q[up] - z[up] <= alpha[up] * u[up] ** 3 / 3 + tol[up])
    # the bound is attained to first order: not loose by orders of magnitude where |u| is small
    small = (au > 1e-3) & (au < 0.05)
    assert np.median(err[small] / (alpha[small] * au[small] ** 3 / 3)) > 0.8
    assert relative_error_bound(0.25) == pytest.approx(0.25**2 / 2.25 + 0.25**5 * 1.25 / 8)


@pytest.mark.parametrize("u_target", [0.1, 0.5, 0.9])
def test_bound_per_spot_holds_for_the_likelihood(u_target):
    """The implementation (expansion, soft cap, exact swap at the non-zeros) against the exact terms: the
    error of the summed log-likelihood is within ε(U) of Σ max(|z(mu)|, |z(mu0)|) over the expanded zeros, U the
    largest |u| there; alpha set per gene so that |u| reaches ``u_target`` (alpha down to ~0.01, mu/alpha ~1)."""
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    n, g, f = 80, 120, 4
    w = torch.rand(n, f, dtype=torch.float64) ** 3 * 3
    mg = torch.rand(f, g, dtype=torch.float64) ** 2 * 0.5
    mg[:, :30] *= 0.02                                                        # low expression: small alpha below
    s = torch.full((1, g), 0.01, dtype=torch.float64)
    y = torch.rand(n, 1, dtype=torch.float64) + 0.5
    mu = (w @ mg + s) * y
    mu0 = mu.mean(0)
    spread = (mu - mu0).abs().amax(0)
    alpha = (spread / (u_target * torch.as_tensor(rng.uniform(0.5, 1.0, g))) - mu0).clamp_min(0.01)[None, :]
    D = torch.distributions.Poisson(mu).sample()
    X = sp.csr_matrix(D.numpy())
    batch = np.zeros(n, dtype=np.int64)
    params = (w, mg, s, y, alpha)
    approx = SparseLikelihood(X, batch, np.array([], dtype=np.int64), torch.device("cpu"))
    exact = (-alpha * torch.log1p(mu / alpha) + D * torch.log(mu / (alpha + mu))).sum()      # the definition
    gap = abs(float(approx.loglik(*params, approx.full())) - float(exact))
    zero = D == 0
    u = ((mu - mu0) / (alpha + mu0)).abs()
    U = float(u[zero].max())
    scale = float(torch.maximum(alpha * torch.log1p(mu / alpha), alpha * torch.log1p(mu0 / alpha))[zero].sum())
    assert U < 1 and U > 0.6 * u_target and float((mu / alpha).max()) > 0.05 * u_target
    assert 0 < gap <= relative_error_bound(U) * scale
    check = approximation_check(X, w.numpy(), mg.numpy(), s.numpy(), y.numpy(), alpha.numpy(), batch,
                                np.array([], dtype=np.int64), u_max=0.95)
    assert check["max_u_at_zeros"] == pytest.approx(U)
    assert gap <= check["error_nats"] * (1 + 1e-9)
    assert 0 < check["bound_relative_error"] <= check["bound_at_max_u"] == pytest.approx(relative_error_bound(U))


def test_gene_bounds_bound_mu_and_u():
    """M_g and U_g are upper bounds of max_s mu_sg and max_s |u_sg| (spots grouped by dominant type), not
    loose by more than the plain bound max_s (y_s Σ_f w_sf) · max_f mg_fg."""
    rng = np.random.default_rng(2)
    for trial in range(20):
        n, f, g = rng.integers(1, 60), rng.integers(1, 8), 50
        w = torch.as_tensor(rng.gamma(0.3, 1.0, (n, f)) * (rng.random((n, f)) < 0.6))
        y = torch.as_tensor(rng.uniform(0.1, 2.0, (n, 1)))
        mg = torch.as_tensor(rng.gamma(0.5, 1.0, (f, g)))
        s = torch.as_tensor(rng.uniform(0, 0.1, g))
        a = torch.as_tensor(10 ** rng.uniform(-2, 2, g))
        mu = (w @ mg + s) * y
        mu0 = mu.mean(0)
        M, U = gene_bounds(w, y, mg, s, a, mu0)
        assert torch.all(M >= mu.amax(0) * (1 - 1e-12))
        assert torch.all(U >= ((mu - mu0).abs() / (a + mu0)).amax(0) * (1 - 1e-12))
        plain = (y * w).sum(1).max() * mg.amax(0) + y.max() * s
        assert torch.all(M <= plain * (1 + 1e-12))


def test_exact_range_is_exact_where_it_matters():
    """exact_range: an upper bound on max_s mu that equals it wherever it exceeds the level (and stays at most the
    level otherwise), and the exact minimum for the genes that ask for it; genes_over_bound then marks exactly the
    genes whose |u| (or mu) passes its limit at some spot, computed densely."""
    rng = np.random.default_rng(4)
    for trial in range(100):
        n, f, g = int(rng.integers(1, 80)), int(rng.integers(1, 8)), int(rng.integers(1, 40))
        w = torch.as_tensor(rng.random((n, f)) ** 3 * (rng.random((n, f)) < 0.5))
        y = torch.as_tensor(rng.uniform(0.3, 1.3, (n, 1)))
        mg = torch.as_tensor(rng.random((f, g)) ** 2)
        s = torch.as_tensor(rng.random(g) * 0.1)
        mu = (w @ mg + s) * y
        level = mu.amax(0) * torch.as_tensor(rng.uniform(0.3, 1.3, g))
        low = torch.as_tensor(rng.random(g) < 0.3)
        L = y.min() * s
        hi, lo = exact_range(w, y, mg, s, level, low, L, chunk_elements=int(rng.integers(1, 200)), blocks=3)
        over = mu.amax(0) > level
        assert torch.all(hi >= mu.amax(0) * (1 - 1e-12)) and torch.allclose(hi[over], mu.amax(0)[over])
        assert torch.all(hi[~over] <= level[~over] * (1 + 1e-12))
        assert torch.all(lo <= mu.amin(0) * (1 + 1e-12)) and torch.allclose(lo[low], mu.amin(0)[low])
        alpha = torch.as_tensor(10 ** rng.uniform(-2, 1, g))
        u_max, mu_max = float(rng.uniform(0.05, 0.5)), float(rng.choice([np.inf, float(mu.max()) / 2]))
        exact, U = genes_over_bound(w, y, mg, s, alpha, u_max, mu_max)
        mu0 = mu.mean(0)
        u = ((mu - mu0).abs() / (alpha + mu0)).amax(0)
        assert torch.equal(exact, (u > u_max) | (mu.amax(0) > mu_max))
        assert torch.all(U >= u * (1 - 1e-12)) and torch.allclose(U[u > u_max], u[u > u_max])


def test_each_step_makes_exact_the_genes_over_the_bound(case):
    """With u_max set, each evaluation makes exact the genes whose |u| (or mu) bound fails at its values, and only
    for that evaluation: lowering one gene's alpha or raising another's expression moves it, restoring the values
    moves it back; genes given as exact always are; the result is the likelihood with that split."""
    params, batch, D = case
    w, mg, s, y, a = params
    a = a * 20
    X = sp.csr_matrix(D.numpy())
    lik = SparseLikelihood(X, batch, np.array([3]), torch.device("cpu"), u_max=0.25, mu_max=50.0)
    full = lik.full()

    def exact_at(mg_, a_, compare=True):
        value = lik.loglik(w, mg_, s, y, a_, full)
        if compare:
            fixed = SparseLikelihood(X, batch, lik.exact_genes(), torch.device("cpu"))   # the same split, no check
            assert float(value) == pytest.approx(float(fixed.loglik(w, mg_, s, y, a_, fixed.full())), rel=1e-6)
        return lik.exact_genes().tolist()

    assert exact_at(mg, a) == [3]                                            # every |u| small here (alpha ≥ 20)
    a_low = a.clone()
    a_low[:, 7] = 1e-3                                                        # overdispersion of gene 7 grows
    assert exact_at(mg, a_low) == [3, 7]
    mg_high = mg.clone()
    mg_high[:, 11] *= 40                                                      # gene 11's expression grows
    assert exact_at(mg_high, a) == [3, 11]
    assert exact_at(mg, a) == [3]                                             # back: expanded again
    mg_huge = mg.clone()
    mg_huge[:, 20] *= 1000                                                    # its expected count > mu_max
    # (|u| small with a huge alpha; float32's dense kernel loses the zero term there: values not compared)
    assert 20 in exact_at(mg_huge, a * 1e6, compare=False)
    summary = lik.check_summary()
    assert summary["steps_checked"] == 5 and summary["always_exact"] == 1
    assert summary["steps_with_genes_moved"] == 3                             # genes 7, 11, 20 at one step each
    assert summary["exact_genes_per_step_max"] >= 2 and summary["max_u_bound_in_training"] <= 0.25


def test_choose_exact_genes_uses_the_bound():
    mg = np.array([[0.1, 2.0, 0.01], [0.1, 0.01, 0.6]])          # (F=2, G=3)
    w = np.array([[1.0, 0.0], [0.0, 3.0]])
    y = np.array([1.0, 0.5])
    # max_s y_s Σ_f w_sf = 1.5; bound = 1.5 · max_f mg_fg = (0.15, 3.0, 0.9), × safety 2 = (0.3, 6.0, 1.8)
    assert choose_exact_genes(w, y, mg, mu_max=1.0).tolist() == [1, 2]
    assert choose_exact_genes(w, y, mg, mu_max=3.0).tolist() == [1]
    assert choose_exact_genes(w, y, mg, mu_max=10.0).tolist() == []


def test_sparse_nmf_matches_the_dense_update():
    rng = np.random.default_rng(1)
    X = sp.random(40, 30, density=0.2, random_state=2, format="csr", dtype=np.float32)
    X.data = np.ceil(X.data * 5)
    h = torch.rand(4, 30, dtype=torch.float64).float() + 0.1
    w0 = torch.full((40, 4), 0.5)
    y = torch.as_tensor(rng.uniform(0.5, 1.5, (40, 1)), dtype=torch.float32)
    D = torch.as_tensor(X.toarray())
    w = w0.clone()
    for _ in range(5):
        ratio = D / (y * (w @ h)).clamp_min(1e-10)
        w = w * (ratio @ h.T) / h.sum(1)[None, :]
    got = sparse_nmf(X, h, w0, y, 5, block=16)
    assert torch.allclose(got, w, rtol=1e-4, atol=1e-6)
    # on a named device (the GPU when there is one) the result comes back to the CPU
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_device = sparse_nmf(X, h, w0, y, 5, block=16, device=dev)
    assert on_device.device.type == "cpu" and torch.allclose(on_device, w, rtol=1e-4, atol=1e-6)


@pytest.mark.timeout(300)
def test_sparse_and_dense_give_the_same_abundances(tmp_path, monkeypatch):
    """Issue 10: on HD data small enough for both, sparse and dense abundances agree within 0.01 Pearson.
    Issue 20: at every training step, the genes made exact are exactly those with |u| > u_max at some spot at
    that step's values (checked densely here, so every expanded entry keeps |u| ≤ u_max), the split follows
    the values (genes move to the exact set, as alpha or mu pass the bound, and back), and the error reported
    at the posterior stays under the documented bound ε(u_max). ``sparse_mu_max`` huge: only the
    bound on |u| makes genes exact."""
    import pandas as pd

    from spotmap.io import read_spatial
    from spotmap.mapping.model import map_cell_types
    from spotmap.simulate import SimulationParams, simulate

    sim = simulate(tmp_path / "sim", SimulationParams(platform="visium-hd", n_bins=400, n_genes=2000,
                                                      n_cell_types=4, n_cells=200, seed=3))
    adata = read_spatial(sim / "samples" / "sample1" / "outs", sample="sample1")
    adata = adata[np.asarray(adata.X.sum(1)).ravel() >= 20].copy()
    sig = pd.read_csv(sim / "truth" / "signatures.csv", index_col=0)

    u_max, seen = 0.2, []
    check = SparseLikelihood.check

    def checked(self, w_sf, mg_fg, s_eg, y_s, alpha_eg, nz):
        check(self, w_sf, mg_fg, s_eg, y_s, alpha_eg, nz)
        worst = torch.zeros(self.n_genes, dtype=torch.float64)
        for e, r0, r1 in nz.segments:                     # |u| of every entry, densely
            mu = (w_sf[r0:r1].double() @ mg_fg.double() + s_eg[e].double()) * y_s[r0:r1].double()
            mu0 = mu.mean(0)
            worst = torch.maximum(worst, ((mu - mu0).abs() / (alpha_eg[e].double() + mu0)).amax(0))
        seen.append((worst, self.exact.clone(), alpha_eg[0].detach().clone()))

    monkeypatch.setattr(SparseLikelihood, "check", checked)
    est = {}
    for lik in ("dense", "sparse"):
        res, _ = map_cell_types(adata, sig, n_cells_per_location=1.5, likelihood=lik, sparse_mu_max=1e9,
                                sparse_u_max=u_max, max_epochs=200, progress=False)
        assert res.uns["mod"]["likelihood"] == lik
        est[lik] = res.obsm["means_cell_abundance_w_sf"].to_numpy()
    assert len(seen) == 200                                                   # one check per step (full batch)
    worst = torch.stack([u for u, _, _ in seen])                              # (steps, G) max |u| at each step
    sets = torch.stack([e for _, e, _ in seen])
    # the split is the bound's, step by step: a gene is exact exactly when its |u| passes u_max somewhere
    # (float32 in training against float64 here: a band of 1e-4 around u_max is not judged)
    assert torch.all(worst[~sets] <= u_max * (1 + 1e-4)) and torch.all(worst[sets] > u_max * (1 - 1e-4))
    moved_in, moved_out = sets[1:] & ~sets[:-1], sets[:-1] & ~sets[1:]
    assert moved_in.any() and moved_out.any() and sets.sum(1).max() < adata.n_vars / 2
    # both ways in occur: genes moved in at a step where their alpha draw fell (u grows as alpha falls), and
    # genes moved in although their alpha rose, i.e. because their expected counts spread
    alpha = torch.stack([a for _, _, a in seen])
    fell = moved_in & (alpha[1:] < alpha[:-1])
    assert fell.any() and (moved_in & ~fell).any()
    report = res.uns["mod"]["sparse_likelihood"]
    assert report["steps_checked"] == 200 and report["always_exact"] == 0
    assert report["max_u_bound_in_training"] <= u_max * (1 + 1e-5)
    assert report["exact_genes_per_step_max"] == int(sets.sum(1).max())
    assert report["steps_with_genes_moved"] == int((sets.sum(1) > 0).sum()) > 0
    assert report["u_max"] == u_max and report["bound"] == pytest.approx(relative_error_bound(u_max))
    assert report["sparse_genes"] > adata.n_vars / 2 and report["max_u_at_zeros"] <= u_max
    assert 0 < report["bound_relative_error"] <= report["bound_at_max_u"] <= report["bound"]
    assert 0 < report["relative_error"] < 0.01
    r = [np.corrcoef(est["dense"][:, f], est["sparse"][:, f])[0, 1] for f in range(est["dense"].shape[1])]
    assert min(r) > 0.99, r
    truth = pd.read_parquet(sim / "truth" / "cell_abundance.parquet").loc[adata.obs_names, list(sig.columns)]
    acc = [np.corrcoef(est["sparse"][:, f], truth.iloc[:, f])[0, 1] for f in range(truth.shape[1])]
    assert np.median(acc) > 0.8


def test_large_sparse_data_train_in_minibatches_by_default(monkeypatch):
    """Without --batch-size a whole HD sample must not be one full-batch step (tens of GB): above
    SPARSE_AUTO_BATCH spots the sparse likelihood trains in minibatches of that size; dense data and explicit
    batch sizes are left alone."""
    import anndata as ad
    import pandas as pd

    from spotmap.mapping import model as mapping_model
    from spotmap.mapping.settings import MappingSettings

    monkeypatch.setattr(mapping_model, "SPARSE_AUTO_BATCH", 100)
    rng = np.random.default_rng(0)
    X = sp.random(300, 200, density=0.03, format="csr", random_state=1, data_rvs=lambda n: rng.integers(1, 5, n))
    X[np.arange(300), rng.integers(0, 200, 300)] = 1.0                     # no empty spot
    genes = [f"g{i}" for i in range(200)]
    adata = ad.AnnData(X=sp.csr_matrix(X), obs=pd.DataFrame({"sample": "s1"}, index=[f"s{i}" for i in range(300)]),
                       var=pd.DataFrame(index=genes))
    sig = pd.DataFrame(rng.gamma(1.0, 1.0, (200, 3)), index=genes, columns=list("ABC"))

    def batch_size(**kw):
        return mapping_model.SpatialMapper(adata, sig, settings=MappingSettings(progress=False, **kw)).batch_size

    assert batch_size(likelihood="sparse") == 100
    assert batch_size(likelihood="auto") == 100                              # 3 % non-zeros: sparse
    assert batch_size(likelihood="dense") is None
    assert batch_size(likelihood="sparse", batch_size=50) == 50
    assert batch_size(likelihood="sparse", batch_size=1000) is None          # at least all spots: full batch

    # on a GPU the same data train in one full batch when GPU_BYTES_PER_NONZERO per non-zero fits its memory
    assert mapping_model.gpu_memory_bytes(torch.device("cpu")) == 0
    def on_gpu(memory: int, **kw):
        m = mapping_model.SpatialMapper(adata, sig, settings=MappingSettings(progress=False, **kw))
        m.device = torch.device("cuda")                                          # no GPU needed: memory is faked
        monkeypatch.setattr(mapping_model, "gpu_memory_bytes", lambda device: memory)
        return m.batch_size

    need = X.nnz * mapping_model.GPU_BYTES_PER_NONZERO / mapping_model.GPU_MEMORY_FRACTION
    assert on_gpu(int(need) + 1, likelihood="sparse") is None
    assert on_gpu(int(need) - 1, likelihood="sparse") == 100
    assert on_gpu(int(need) + 1, likelihood="sparse", batch_size=50) == 50   # an explicit size wins
