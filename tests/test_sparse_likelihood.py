"""The sparse (Visium HD) likelihood: exact where it claims to be, the documented expansion elsewhere,
and the same abundances as the dense likelihood on data small enough to run both (issue 10)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from spotmap.mapping.likelihood import SpotCounts, nb_mean_loglik
from spotmap.mapping.sparse import SparseLikelihood, approximation_check, choose_exact_genes, sparse_nmf

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
def test_sparse_and_dense_give_the_same_abundances(tmp_path):
    """Issue 10: on HD data small enough for both, sparse and dense abundances agree within 0.01 Pearson, even
    with every gene's zeros approximated (``sparse_mu_max`` huge: no exact gene)."""
    import pandas as pd

    from spotmap.io import read_spatial
    from spotmap.mapping.model import map_cell_types
    from spotmap.simulate import SimulationParams, simulate

    sim = simulate(tmp_path / "sim", SimulationParams(platform="visium-hd", n_bins=400, n_genes=2000,
                                                      n_cell_types=4, n_cells=200, seed=3))
    adata = read_spatial(sim / "samples" / "sample1" / "outs", sample="sample1")
    adata = adata[np.asarray(adata.X.sum(1)).ravel() >= 20].copy()
    sig = pd.read_csv(sim / "truth" / "signatures.csv", index_col=0)
    est = {}
    for lik in ("dense", "sparse"):
        res, _ = map_cell_types(adata, sig, n_cells_per_location=1.5, likelihood=lik, sparse_mu_max=1e9,
                                max_epochs=200, progress=False)
        assert res.uns["mod"]["likelihood"] == lik
        est[lik] = res.obsm["means_cell_abundance_w_sf"].to_numpy()
    check = res.uns["mod"]["sparse_likelihood"]
    assert check["exact_genes"] == 0 and check["sparse_genes"] == adata.n_vars
    assert 0 < check["relative_error"] < 0.01
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
