"""The fused NB likelihood of the mapping model against plain autograd: batch boundaries, chunks, blocks."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from spotmap.mapping import likelihood as lik
from spotmap.mapping.likelihood import CountBatch, SpotCounts, nb_mean_loglik

S, G, F, E = 53, 37, 5, 3


def _case(dtype):
    rng = np.random.default_rng(1)
    D = rng.poisson(rng.gamma(0.5, 4.0, size=(S, G))).astype(np.float32)
    batch = rng.integers(0, E, S)
    D[np.flatnonzero(batch == 1)[:3]] = 0      # empty rows: the first chunk of batch 1 has no nonzeros
    D[30] = 0
    counts = SpotCounts(sp.csr_matrix(D), batch, torch.device("cpu"), chunk_elements=3 * G)
    gen = torch.Generator().manual_seed(3)

    def t(*shape, lo=0.05, hi=1.0):
        return (torch.rand(*shape, dtype=torch.float64, generator=gen) * (hi - lo) + lo).to(dtype).requires_grad_()

    inputs = [t(S, F, hi=2.0), t(F, G, hi=3.0), t(E, G, hi=0.3), t(S, 1, lo=0.2), t(E, G, lo=0.3, hi=6.0)]
    return D, batch, counts, inputs


def _reference(D, batch, inputs, rows):
    """Autograd through the plain formula, float64, for spots ``rows`` (in that order)."""
    x = [v.detach().double().requires_grad_() for v in inputs]
    w, mg, s_eg, y, alpha = x
    b = torch.as_tensor(batch)[rows]
    mu = (w[rows] @ mg + s_eg[b]) * y[rows]
    a, d = alpha[b], torch.as_tensor(D, dtype=torch.float64)[rows]
    ll = (-a * torch.log1p(mu / a) + d * torch.log(mu / (a + mu))).sum()
    return ll, torch.autograd.grad(ll, x)


def _fused(inputs, counts, cb: CountBatch, rows):
    w, mg, s_eg, y, alpha = inputs
    d = dict(dtype=inputs[0].dtype)
    for c in cb.chunks:
        c.d = c.d.to(**d)
    ll = nb_mean_loglik(w[rows], mg, s_eg, y[rows], alpha, cb)
    return ll, torch.autograd.grad(ll, inputs)


@pytest.mark.parametrize("block", [0, 8, 1024])
def test_fused_float64_equals_autograd(monkeypatch, block):
    monkeypatch.setattr(lik, "MU_BLOCK_COLS", block)   # mu product in column blocks (or whole)
    D, batch, counts, inputs = _case(torch.float64)
    full = counts.full()
    assert len(full.chunks) > E and any(c.d.numel() == 0 for c in full.chunks)
    o = counts.order
    ref, ref_g = _reference(D, batch, inputs, o)
    ll, grads = _fused(inputs, counts, full, o)
    assert float(ll) == pytest.approx(float(ref), rel=1e-12)
    for g, r in zip(grads, ref_g):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)

    # chunks in any order (batches revisited): the per-batch accumulators are flushed correctly
    rev = CountBatch(full.n_rows, full.n_genes, full.chunks[::-1])
    ll2, grads2 = _fused(inputs, counts, rev, o)
    assert float(ll2) == pytest.approx(float(ref), rel=1e-12)
    for g, r in zip(grads2, ref_g):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)

    # a minibatch
    idx = counts.sort_by_batch(torch.tensor([9, 2, 51, 5, 0, 33, 17, 44]))
    ref, ref_g = _reference(D, batch, inputs, idx)
    ll, grads = _fused(inputs, counts, counts.batch_rows(idx), idx)
    assert float(ll) == pytest.approx(float(ref), rel=1e-12)
    for g, r in zip(grads, ref_g):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_fused_float32_close_to_float64_and_deterministic():
    D, batch, counts, inputs = _case(torch.float32)
    o = counts.order
    ref, ref_g = _reference(D, batch, inputs, o)
    ll, grads = _fused(inputs, counts, counts.full(), o)
    assert float(ll) == pytest.approx(float(ref), rel=1e-5)
    for g, r in zip(grads, ref_g):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4 * float(r.abs().max()))
    ll2, grads2 = _fused(inputs, counts, counts.full(), o)     # bit-identical on a repeat
    assert torch.equal(ll, ll2) and all(torch.equal(a, b) for a, b in zip(grads, grads2))
    with torch.no_grad():                                        # the value without gradients is the same
        ll3 = nb_mean_loglik(*(v.detach()[o] if v.shape[0] == S else v.detach() for v in inputs), counts.full())
    assert torch.equal(ll3, ll.detach())


def test_float32_alpha_gradient_of_rare_genes():
    """d/d alpha of genes with a tiny mean (Visium HD bins: 0.001–0.01 counts per bin) keeps its digits in
    float32. The whole gradient (these terms + the count histogram's lgamma terms) is far smaller than either
    part, so the kernel's part must be right to more digits than its size: every term of the dense part is of
    the size of mu/alpha here, none of the size log(alpha). Many chunks, as with the ~20,000 genes of a real
    sample. The bound is absolute (the whole gradient can be near 0 by chance): the textbook form
    n·log(alpha) - Σ_s log(alpha + mu) is off by 3–4e-3 on this case, this kernel by about 2e-5."""
    rng = np.random.default_rng(5)
    n, g, f = 20000, 6, 3
    gen = torch.Generator().manual_seed(7)
    w = torch.rand(n, f, dtype=torch.float64, generator=gen) + 0.2
    mg = torch.tensor(np.geomspace(1e-3, 1e-2, g)[None, :] * rng.uniform(0.5, 1.5, (f, 1)))
    s_eg = torch.full((1, g), 1e-5, dtype=torch.float64)
    y = torch.rand(n, 1, dtype=torch.float64, generator=gen) * 0.5 + 0.75
    alpha = torch.tensor(np.geomspace(1.0, 20.0, g)[None, :])
    D = rng.negative_binomial(alpha.numpy(), alpha.numpy() / (alpha.numpy() + ((w @ mg + s_eg) * y).numpy()))
    D = D.astype(np.float32)
    batch = np.zeros(n, dtype=np.int64)
    counts = SpotCounts(sp.csr_matrix(D), batch, torch.device("cpu"), chunk_elements=100 * g)
    o = counts.order
    inputs = [v.float().requires_grad_() for v in (w, mg, s_eg, y, alpha)]
    _, ref_g = _reference(D, batch, inputs, o)
    _, grads = _fused(inputs, counts, counts.full(), o)
    err = (grads[4].double() - ref_g[4]).abs().max()
    assert err < 3e-4, float(err)
