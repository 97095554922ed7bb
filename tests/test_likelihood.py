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
