"""A likelihood whose cost grows with the non-zero counts, not with spots × genes (Visium HD).

The mu-dependent NB terms of :mod:`spotmap.mapping.likelihood` are, per (s, g)::

    zero term   z(mu) = -alpha · log(1 + mu/alpha)            every entry, zero counts included
    count term        d · log(mu / (alpha + mu))              non-zero entries only

With 8 µm bins ~98 % of entries are zero, yet the zero term is what makes the dense likelihood cost
S × G per epoch. Here the zero term of each gene is either

* **expanded**: for every spot, replaced by its second-order expansion in mu around the batch mean mu0 of
  each gene, whose sum over spots and genes is exact and cheap thanks to the model's low rank
  (mu_sg = y_s (Σ_f w_sf mg_fg + s_eg)): the linear part needs ``Σ_s mu_sg`` (a (F,) · (F, G) product), the
  curvature part per spot is a quadratic form ``y_s² w_sᵀ A w_s + …`` with ``A = mg diag(z''(mu0)) mgᵀ``
  (F, F) — O(S F² + E G F²) instead of O(S G F). The curvature term of each spot is softly capped by a linear
  one (:func:`soft_cap`, see :func:`sparse_gene_loglik`), because a bare quadratic grows without bound where
  z flattens and would reward expected counts far above mu0. At the **non-zero** entries the expansion is
  swapped for the exact terms (sampled sparse-dense products, O(nnz · F));
* or **exact**, by the dense fused kernel (:class:`~spotmap.mapping.likelihood.FusedNBMean`) on the
  (S, |exact|) block. Genes *always exact* (chosen at the start: :func:`choose_exact_genes`) have their counts
  held apart and their count terms computed there too; genes made exact *for one step* (below) keep their
  count terms in the sparse products, with their expansion masked out (``keep_g``), so switching a gene
  costs nothing and rebuilds nothing.

So the only approximation is at **zero counts of expanded genes**. Its size is set by
``u_sg = (mu_sg - mu0_eg) / (alpha_eg + mu0_eg)`` (> -1): with ``U = max |u|`` over the entries of a step,

* per entry, uncapped (``q = z(mu0) + z'(mu0) δ + ½ z''(mu0) δ²``, ``q - z = alpha (log(1+u) - u + u²/2)``)::

      |q - z| ≤ alpha |u|³ / (3 (1 - |u|))  ≤  |u|² / (3 (1 - |u|)) · |z(mu) - z(mu0)|
                                           ≤  |u|² / (3 (1 - |u|)) · max(|z(mu)|, |z(mu0)|)

  (for u ≥ 0 also ``q - z ∈ [0, alpha u³/3]``);
* per spot s, with the cap (which moves the curvature term Q_s by at most ``Q_s ρ⁴/4``, ``ρ = Q_s/C_s ≤ U``,
  and ``alpha u² ≤ |u| (1 + |u|) |z(mu) - z(mu0)|``)::

      |Σ_g q_sg - Σ_g z_sg|  ≤  ε(U) · Σ_g |z(mu_sg) - z(mu0_eg)|  ≤  ε(U) · Σ_g max(|z(mu_sg)|, |z(mu0_eg)|)
      ε(U) = U² / (3 (1 - U)) + U⁵ (1 + U) / 8             (:func:`relative_error_bound`; U < 1)

  sums over the spot's zero counts of expanded genes. ε(0.25) = 0.028, ε(0.1) = 0.0037.

**The bound holds at every step.** With ``u_max`` set (``--sparse-u-max``), before each evaluation
:meth:`SparseLikelihood.check` finds, at the values of that evaluation (the guide's draws) and over the spots of
each batch, every gene with ``|u_sg| > u_max`` (or ``mu_sg > mu_max``) at some spot, and makes those genes exact
for that evaluation (:func:`~spotmap.mapping.sparse_bound.genes_over_bound`), nothing n × G at once:

1. per-gene bounds ``max_s mu_sg ≤ M_g``, ``|u_sg| ≤ U_g`` from the spots grouped by their dominant type
   (:func:`~spotmap.mapping.sparse_bound.gene_bounds`, O(n F + F² G)) clear most genes;
2. for the others, mu is computed exactly (forward only) at the spots that could pass the limits — those whose
   ``y_s Σ_f w_sf · max_f mg_fg`` reaches them, a prefix of the spots sorted by ``y_s Σ_f w_sf``
   (:func:`~spotmap.mapping.sparse_bound.exact_range`), so a gene is made exact only if it truly passes.

Every expanded entry of every step therefore has ``|u| ≤ u_max``, and each spot's error is at most ``ε(u_max)``
of ``Σ_g |z(mu_sg) - z(mu0_eg)|`` as above. The split is made afresh at each step, not accumulated: the
guide's draws move the largest mu of a gene from step to step, so the union of the genes over the bound at
*some* step grows towards most genes while only a fraction is over it at any one step (docs/mapping.md).
After training :func:`~spotmap.mapping.sparse_bound.approximation_check` measures the error at the posterior
means, the genes split as a step there would split them (``uns['mod']['sparse_likelihood']``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from spotmap.mapping.likelihood import (CHUNK_ELEMENTS, GPU_CHUNK_ELEMENTS, BatchOrdered, Chunk, CountBatch,
                                        SpotCounts, nb_mean_loglik)
from spotmap.mapping.sparse_bound import (approximation_check, choose_exact_genes, gene_bounds, genes_over_bound,
                                          relative_error_bound)

# torch's CSR tensors work as documented here; its "beta" notice would be printed at every step
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


@dataclass
class SparseBatch:
    """Non-zeros of a set of spots (ordered by batch e) in sparse genes, as CSR and transposed CSR tensors.

    ``crow``/``col``/``d``: CSR of the (B, Gz) block; ``row``: spot of each non-zero; ``perm``: the order of
    the non-zeros sorted by gene (stable), with ``tcrow``/``trow`` the CSR of the transposed (Gz, B) block;
    ``segments``: (e, r0, r1) row ranges of one batch each; ``flat_eg``: e · Gz + g of each non-zero.
    """

    n_rows: int
    n_genes: int
    crow: torch.Tensor
    col: torch.Tensor
    d: torch.Tensor
    row: torch.Tensor
    perm: torch.Tensor
    tcrow: torch.Tensor
    trow: torch.Tensor
    flat_eg: torch.Tensor
    segments: list[tuple[int, int, int]]

    @classmethod
    def from_csr(cls, X: sp.csr_matrix, batch: np.ndarray, device: torch.device) -> "SparseBatch":
        """From rows already ordered by ``batch`` (int codes per row)."""
        X = sp.csr_matrix(X)
        if not X.has_sorted_indices:
            X.sort_indices()
        B, Gz = X.shape
        batch = np.asarray(batch, dtype=np.int64)
        lens = np.diff(X.indptr)
        row = np.repeat(np.arange(B, dtype=np.int64), lens)
        # transpose by scipy's O(nnz + G) counting sort; the data carry each non-zero's position
        P = sp.csr_matrix((np.arange(X.nnz, dtype=np.int64), X.indices, X.indptr), shape=X.shape).tocsc()
        perm = P.data if P.has_sorted_indices else P.sorted_indices().data
        segments = []
        r0 = 0
        while r0 < B:
            r1 = r0 + int(np.searchsorted(batch[r0:], batch[r0], side="right"))
            segments.append((int(batch[r0]), r0, r1))
            r0 = r1

        def t(a, dtype):
            return torch.as_tensor(np.ascontiguousarray(a).astype(dtype, copy=False), device=device)

        return cls(n_rows=B, n_genes=Gz, crow=t(X.indptr, np.int64), col=t(X.indices, np.int64),
                   d=t(X.data, np.float32), row=t(row, np.int64), perm=t(perm, np.int64),
                   tcrow=t(P.indptr, np.int64), trow=t(row[perm], np.int64),
                   flat_eg=t(batch[row] * Gz + X.indices, np.int64), segments=segments)

    def csr(self, values: torch.Tensor) -> torch.Tensor:
        """(B, Gz) sparse CSR tensor with these values at the non-zeros."""
        return torch.sparse_csr_tensor(self.crow, self.col, values, size=(self.n_rows, self.n_genes),
                                       check_invariants=False)

    def csr_t(self, values: torch.Tensor) -> torch.Tensor:
        """(Gz, B) sparse CSR tensor of the transpose, ``values`` given in the (B, Gz) order."""
        return torch.sparse_csr_tensor(self.tcrow, self.trow, values.index_select(0, self.perm),
                                       size=(self.n_genes, self.n_rows), check_invariants=False)


class SampledBase(torch.autograd.Function):
    """``base_sg = Σ_f w_sf mg_fg + s_eg`` at the non-zeros of a :class:`SparseBatch` only: (nnz,).

    Forward: one sampled dense-dense product (``torch.sparse.sampled_addmm``); backward: two sparse-dense
    products (CSR and transposed CSR) and an index-add, so nothing (B, Gz) is ever formed.
    """

    @staticmethod
    def forward(ctx, w_sf, mg_fg, s_eg, nz: SparseBatch):  # noqa: D102
        ctx.nz = nz
        ctx.save_for_backward(w_sf, mg_fg)
        ctx.s_shape = s_eg.shape
        prod = torch.sparse.sampled_addmm(nz.csr(torch.zeros_like(nz.d, dtype=w_sf.dtype)), w_sf, mg_fg,
                                          beta=0.0).values()
        return prod + s_eg.reshape(-1).index_select(0, nz.flat_eg)

    @staticmethod
    def backward(ctx, g_base):  # noqa: D102
        nz = ctx.nz
        w_sf, mg_fg = ctx.saved_tensors
        need = ctx.needs_input_grad
        g_w = torch.sparse.mm(nz.csr(g_base), mg_fg.T.contiguous()) if need[0] else None          # (B, F)
        g_mg = torch.sparse.mm(nz.csr_t(g_base), w_sf).T if need[1] else None                     # (F, Gz)
        g_s = None
        if need[2]:
            g_s = torch.zeros(ctx.s_shape[0] * ctx.s_shape[1], dtype=g_base.dtype, device=g_base.device)
            g_s = g_s.index_add_(0, nz.flat_eg, g_base).reshape(ctx.s_shape)                       # (E, Gz)
        return g_w, g_mg, g_s, None


def expansion(mu0: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Value, first and second derivative in mu of ``z(mu) = -alpha log(1 + mu/alpha)`` at ``mu0``."""
    apm = alpha + mu0
    return -alpha * torch.log1p(mu0 / alpha), -alpha / apm, alpha / (apm * apm)


def soft_cap(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``q · c / (q⁴ + c⁴)^¼`` for ``q, c ≥ 0``: ≈ q while q ≪ c, → c as q grows past it (elementwise, smooth)."""
    m = torch.maximum(q, c).clamp_min(torch.finfo(q.dtype).tiny)
    qm, cm = q / m, c / m
    return q * cm / (qm.pow(4) + cm.pow(4)).clamp_min(1.0).pow(0.25)


def sparse_gene_loglik(w_sf: torch.Tensor, mg_fg: torch.Tensor, s_eg: torch.Tensor, y_s: torch.Tensor,
                       alpha_eg: torch.Tensor, nz: SparseBatch, keep_g: torch.Tensor | None = None) -> torch.Tensor:
    """The mu-dependent NB terms of a batch of spots, zero terms expanded (see the module docstring).

    Zero term, per batch e, gene g and spot s, by its expansion around the batch mean
    ``mu0_eg = Σ_s mu_sg / n`` (held fixed within a step), ``δ_sg = mu_sg - mu0_eg``::

        Σ_g z(mu_sg) ≈ Σ_g [z(mu0) + z'(mu0) δ_sg] + cap(Q_s, C_s)
        Q_s = ½ Σ_g z''(mu0) δ_sg²      C_s = ½ Σ_g |z'(mu0)| (mu_sg + mu0_g)      (sums over the spot's zeros)

    The linear part sums over spots to ``n z(mu0) + z'(mu0) (m1 - n mu0)`` with the exact moment
    ``m1_eg = Σ_s mu_sg``; ``Q_s`` is a quadratic form in ``w_s`` (``A = mg diag(z'') mgᵀ``, (F, F)) and ``C_s``
    is linear. The soft cap :func:`soft_cap` keeps the curvature term below ``C_s``: the plain quadratic
    would *reward* mu far above mu0 (it grows as δ² while z flattens), and a minibatch fit can run off into
    that region; capped, the approximate zero term keeps decreasing in mu, like z. Since
    ``Q_s / C_s ≤ max_g |δ_sg| / (alpha + mu0_g)`` (term by term), the cap changes Q by less than (Q/C)⁴/4
    wherever the expansion itself is accurate (|δ| ≪ alpha), for spots far below the mean too.
    At the non-zeros the expansion is swapped for the exact terms. ``keep_g`` (G,), 1 for expanded genes and
    0 for the others, masks the expansion (and the exact zero term at the non-zeros) of genes whose zero term
    the caller computes exactly; their count terms ``d log(mu / (alpha + mu))`` stay. None: every gene expanded.
    Shapes: ``w_sf`` (B, F), ``mg_fg`` (F, G), ``s_eg`` / ``alpha_eg`` (E, G), ``y_s`` (B, 1).
    """
    E, G = alpha_eg.shape
    keep = torch.ones(G, dtype=w_sf.dtype, device=w_sf.device) if keep_g is None else keep_g.to(w_sf.dtype)
    linear = torch.zeros((), dtype=w_sf.dtype, device=w_sf.device)
    mu0_eg = torch.zeros((E, G), dtype=w_sf.dtype, device=w_sf.device)
    q_all, c_all = [], []                                                                       # (n,) per segment
    for e, r0, r1 in nz.segments:
        w, y = w_sf[r0:r1], y_s[r0:r1]                                                          # (n, F), (n, 1)
        n = r1 - r0
        s, a = s_eg[e], alpha_eg[e]                                                             # (G,)
        m1 = (y * w).sum(0) @ mg_fg + y.sum() * s                                               # (G,)
        mu0 = (m1 / n).detach()
        mu0_eg[e] = mu0
        z0, z1, z2 = (z * keep for z in expansion(mu0, a))
        linear = linear + (n * z0 + z1 * (m1 - n * mu0)).sum()
        # Q_s over all genes: ½ Σ_g z2 (y w·mg_g + y s_g - mu0_g)², expanded in y_s and w_s
        A = (mg_fg * z2) @ mg_fg.T                                                              # (F, F)
        b1, b2 = mg_fg @ (z2 * s), mg_fg @ (z2 * mu0)                                           # (F,)
        c1, c2, c3 = (z2 * s * s).sum(), (z2 * s * mu0).sum(), (z2 * mu0 * mu0).sum()
        yv = y.reshape(-1)
        q_all.append(0.5 * (yv * yv * ((w @ A) * w).sum(1) + 2 * yv * (yv * (w @ b1) - w @ b2)
                            + yv * yv * c1 - 2 * yv * c2 + c3))
        c_all.append(0.5 * (yv * (w @ (mg_fg @ -z1) - (z1 * s).sum()) - (z1 * mu0).sum()))
    q_s, c_s = torch.cat(q_all), torch.cat(c_all)                                               # (B,)
    if nz.d.numel() == 0:
        return linear + soft_cap(q_s.clamp_min(0.0), c_s.clamp_min(0.0)).sum()
    base = SampledBase.apply(w_sf, mg_fg, s_eg, nz)                                             # (nnz,)
    total, q_nz, c_nz = NonzeroTerms.apply(base, y_s.reshape(-1), alpha_eg.reshape(-1), mu0_eg.reshape(-1),
                                           keep, nz)
    # Q_s and C_s sum over the zero counts: take the non-zero entries' shares out
    capped = soft_cap((q_s - q_nz).clamp_min(0.0), (c_s - c_nz).clamp_min(0.0)).sum()
    return linear + capped + total


class NonzeroTerms(torch.autograd.Function):
    """The non-zero entries' part of :func:`sparse_gene_loglik`, fused: O(nnz) memory and passes, no autograd graph.

    With ``mu = base · y_row``, ``a``/``mu0`` gathered per entry (``flat_eg``), ``k`` the entry's gene's
    ``keep`` (1: expanded, 0: zero term exact elsewhere), ``δ = mu - mu0`` and the expansion ``z0, z1, z2``
    of the zero term at ``mu0`` (:func:`expansion`), returns

    * ``total``: Σ over non-zeros of the count term ``d log(mu / (a + mu))`` plus ``k`` × (the exact zero term
      ``-a log(1 + mu/a)`` minus the linear part of the expansion ``z0 + z1 δ``, which the batch sums count
      at every entry);
    * ``q_nz`` (B,): per spot, Σ ``k ½ z2 δ²``, and ``c_nz`` (B,): Σ ``-k ½ z1 (mu + mu0)`` — the non-zeros'
      shares of the curvature term and of its cap, to be taken out of the per-spot sums over all genes.

    ``mu0`` is held fixed (the caller detaches it). Backward recomputes the entries' values from the inputs
    and returns the gradients for ``base`` (nnz,), ``y`` (B,) and ``alpha`` (E·G,) with derivatives by hand
    (checked against autograd on the definition in the tests).
    """

    @staticmethod
    def _entries(base, y, alpha, mu0, keep, nz):
        yk = y.index_select(0, nz.row)
        a = alpha.index_select(0, nz.flat_eg)
        m0 = mu0.index_select(0, nz.flat_eg)
        inv = torch.reciprocal(a + m0)                                                          # 1 / (alpha + mu0)
        return yk, base * yk, a, m0, inv, keep.index_select(0, nz.col)

    @staticmethod
    def forward(ctx, base, y, alpha, mu0, keep, nz: SparseBatch):  # noqa: D102
        ctx.nz = nz
        ctx.save_for_backward(base, y, alpha, mu0, keep)
        d = nz.d
        _, mu, a, m0, inv, k = NonzeroTerms._entries(base, y, alpha, mu0, keep, nz)
        z1 = -a * inv
        dm = mu - m0
        B = y.shape[0]
        q_nz = torch.zeros(B, dtype=mu.dtype, device=mu.device).index_add_(0, nz.row, 0.5 * k * a * inv * inv * dm * dm)
        c_nz = torch.zeros(B, dtype=mu.dtype, device=mu.device).index_add_(0, nz.row, -0.5 * k * z1 * (mu + m0))
        # count term + k (exact zero term - (z0 + z1 δ)), z0 = -a log(1 + mu0/a)
        t = d * (torch.log(mu) - torch.log(a + mu)) + k * (a * (torch.log1p(m0 / a) - torch.log1p(mu / a)) - z1 * dm)
        return t.double().sum().to(mu.dtype), q_nz, c_nz

    @staticmethod
    def backward(ctx, g_total, g_q, g_c):  # noqa: D102
        nz = ctx.nz
        base, y, alpha, mu0, keep = ctx.saved_tensors
        d = nz.d
        yk, mu, a, m0, inv, k = NonzeroTerms._entries(base, y, alpha, mu0, keep, nz)
        gq, gc = g_q.index_select(0, nz.row), g_c.index_select(0, nz.row)
        inv_amu = torch.reciprocal(a + mu)
        z1 = -a * inv
        z2 = a * inv * inv
        dm = mu - m0
        # d/dmu: count term d/mu - d/(a + mu); zero term -a/(a + mu), linear part z1; q share z2 δ; c share -½ z1
        g_mu = g_total * (d / mu - d * inv_amu - k * (a * inv_amu + z1)) + k * (gq * z2 * dm - 0.5 * gc * z1)
        # d/dalpha (mu0 fixed): count term -d/(a + mu); zero term log(a/(a + mu)) + 1 - a/(a + mu);
        # z0' = -log1p(mu0/a) + mu0/(a + mu0); z1' = -mu0/(a + mu0)²; z2' = (mu0 - a)/(a + mu0)³
        z1_a = -m0 * inv * inv
        g_a = g_total * (-d * inv_amu + k * (torch.log(a * inv_amu) + 1.0 - a * inv_amu + torch.log1p(m0 / a)
                                             - m0 * inv - z1_a * dm))
        g_a += k * (gq * (0.5 * (m0 - a) * inv * inv * inv * dm * dm) - gc * (0.5 * z1_a * (mu + m0)))
        g_base = g_mu * yk
        g_y = torch.zeros_like(y).index_add_(0, nz.row, g_mu * base)
        g_alpha = torch.zeros_like(alpha).index_add_(0, nz.flat_eg, g_a)
        return g_base, g_y, g_alpha, None, None, None


@dataclass
class SparseCountBatch:
    """A (mini)batch for :class:`SparseLikelihood`, for the same spots in the same order (sorted by batch): the
    always-exact genes' :class:`CountBatch` (None if there are none) and the other genes' :class:`SparseBatch`."""

    exact: CountBatch | None
    sparse: SparseBatch


def zero_count_batch(segments: list[tuple[int, int, int]], n_rows: int, n_genes: int, device: torch.device) -> CountBatch:
    """A :class:`CountBatch` of ``n_rows`` spots × ``n_genes`` genes with no non-zero: fed to
    :class:`~spotmap.mapping.likelihood.FusedNBMean` it gives the exact zero term of every entry."""
    limit = CHUNK_ELEMENTS if torch.device(device).type == "cpu" else GPU_CHUNK_ELEMENTS
    rows = max(1, limit // max(n_genes, 1))
    none_i = torch.zeros(0, dtype=torch.int64, device=device)
    none_f = torch.zeros(0, dtype=torch.float32, device=device)
    chunks = [Chunk(e, r, min(r + rows, r1), none_i, none_i, none_f)
              for e, r0, r1 in segments for r in range(r0, r1, rows)]
    return CountBatch(n_rows, n_genes, chunks)


class SparseLikelihood(BatchOrdered):
    """Counts split into always-exact genes and the others, whose zero terms are exact or expanded step by step
    (see the module docstring), with (mini)batch builders.

    ``X`` (S, G) CSR counts, ``batch`` (S,) batch codes, ``exact_genes`` the genes whose zero term is always
    exact: their counts are held apart and computed by the dense fused kernel with their non-zeros. With
    ``u_max`` set, each evaluation first makes exact, for that evaluation, every other gene whose bound on |u|
    exceeds ``u_max`` or whose bound on mu exceeds ``mu_max`` at its values (:meth:`check`); with
    ``u_max=None`` the split is the one given.
    """

    def __init__(self, X: sp.csr_matrix, batch: np.ndarray, exact_genes: np.ndarray, device: torch.device,
                 u_max: float | None = None, mu_max: float = math.inf) -> None:
        X = sp.csr_matrix(X)
        self.n_obs, self.n_genes = X.shape
        self.device = device
        self.batch_np = np.asarray(batch, dtype=np.int64)
        self.batch = torch.as_tensor(self.batch_np, device=device)
        floor = np.zeros(self.n_genes, dtype=bool)
        floor[np.asarray(exact_genes, dtype=np.int64)] = True
        self.floor_idx = torch.as_tensor(np.flatnonzero(floor), device=device)    #: always exact
        self.free_idx = torch.as_tensor(np.flatnonzero(~floor), device=device)    #: exact or expanded per step
        self.X_free = X[:, np.flatnonzero(~floor)].tocsr()
        self.floor_counts = (SpotCounts(X[:, np.flatnonzero(floor)].tocsr(), self.batch_np, device)
                             if floor.any() else None)
        self.order = torch.as_tensor(np.argsort(self.batch_np, kind="stable"), device=device)
        self._full: SparseCountBatch | None = None
        self.u_max, self.mu_max = u_max, float(mu_max)
        #: (len(free_idx),) which of the other genes were exact at the last evaluation
        self.dynamic = torch.zeros(len(self.free_idx), dtype=torch.bool, device=device)
        self._dynamic_idx = torch.zeros(0, dtype=torch.int64, device=device)
        #: what the checks saw: evaluations, those that made some gene exact beyond the always-exact ones, exact
        #: genes summed over them and at most, and the largest bound on |u| of a gene left expanded (≤ u_max)
        self.steps, self.steps_moved, self.exact_sum, self.exact_most = 0, 0, 0, 0
        self.max_u = torch.zeros((), device=device)

    @property
    def n_exact(self) -> int:
        """Exact genes at the last evaluation."""
        return int(self.floor_idx.numel() + self._dynamic_idx.numel())

    @property
    def exact(self) -> torch.Tensor:
        """(G,) bool: the genes exact at the last evaluation."""
        mask = torch.zeros(self.n_genes, dtype=torch.bool, device=self.device)
        mask[self.floor_idx] = True
        mask[self.free_idx[self._dynamic_idx]] = True
        return mask

    def exact_genes(self) -> np.ndarray:
        """Sorted indices of the genes exact at the last evaluation."""
        return torch.nonzero(self.exact).reshape(-1).cpu().numpy()

    def check_summary(self) -> dict:
        """JSON-safe figures of the checks so far (:meth:`check`)."""
        return {"always_exact": int(self.floor_idx.numel()), "steps_checked": self.steps,
                "steps_with_genes_moved": self.steps_moved,
                "exact_genes_per_step_mean": self.exact_sum / self.steps if self.steps else float(self.n_exact),
                "exact_genes_per_step_max": self.exact_most, "max_u_bound_in_training": float(self.max_u)}

    def batch_rows(self, idx: torch.Tensor) -> SparseCountBatch:
        """Rows ``idx`` (sorted by batch)."""
        rows = idx.cpu().numpy()
        exact = self.floor_counts.batch_rows(idx) if self.floor_counts is not None else None
        return SparseCountBatch(exact, SparseBatch.from_csr(self.X_free[rows], self.batch_np[rows], self.device))

    @torch.no_grad()
    def check(self, w_sf: torch.Tensor, mg_fg: torch.Tensor, s_eg: torch.Tensor, y_s: torch.Tensor,
              alpha_eg: torch.Tensor, nz: SparseBatch) -> None:
        """Set which genes not always exact are exact in this evaluation: those whose |u| exceeds ``u_max`` (or mu
        ``mu_max``) in some spot of ``nz`` at these values, per batch segment
        (:func:`~spotmap.mapping.sparse_bound.genes_over_bound`). Shapes as in :meth:`loglik` (every gene)."""
        zi = self.free_idx
        mg, s_z, a_z = mg_fg.index_select(1, zi), s_eg.index_select(1, zi), alpha_eg.index_select(1, zi)
        dynamic = torch.zeros(len(zi), dtype=torch.bool, device=self.device)
        u = torch.zeros(len(zi), dtype=w_sf.dtype, device=self.device)
        limit = CHUNK_ELEMENTS if torch.device(self.device).type == "cpu" else GPU_CHUNK_ELEMENTS
        for e, r0, r1 in nz.segments:
            over, U = genes_over_bound(w_sf[r0:r1], y_s[r0:r1], mg, s_z[e], a_z[e], self.u_max, self.mu_max, limit)
            dynamic |= over
            u = torch.maximum(u, U)
        self.dynamic = dynamic
        self._dynamic_idx = torch.nonzero(dynamic).reshape(-1)
        n = self.n_exact
        self.steps += 1
        self.steps_moved += int(self._dynamic_idx.numel() > 0)
        self.exact_sum += n
        self.exact_most = max(self.exact_most, n)
        if len(zi):
            self.max_u = torch.maximum(self.max_u, u.masked_fill(dynamic, 0.0).max())

    def loglik(self, w_sf: torch.Tensor, mg_fg: torch.Tensor, s_eg: torch.Tensor, y_s: torch.Tensor,
               alpha_eg: torch.Tensor, batch: SparseCountBatch) -> torch.Tensor:
        """The mu-dependent NB terms of ``batch``: exact genes' zero terms exactly, the others' expanded, every
        count term exactly (module docstring); with ``u_max`` set, :meth:`check` runs first.
        Shapes: ``w_sf`` (B, F), ``mg_fg`` (F, G), ``s_eg`` / ``alpha_eg`` (E, G), ``y_s`` (B, 1)."""
        nz = batch.sparse
        if self.u_max is not None:
            self.check(w_sf.detach(), mg_fg.detach(), s_eg.detach(), y_s.detach(), alpha_eg.detach(), nz)
        zi = self.free_idx
        mg_z, s_z, a_z = mg_fg.index_select(1, zi), s_eg.index_select(1, zi), alpha_eg.index_select(1, zi)
        ll = sparse_gene_loglik(w_sf, mg_z, s_z, y_s, a_z, nz, keep_g=~self.dynamic)
        di = self._dynamic_idx
        if di.numel():                                   # zero terms of this step's exact genes; counts above
            zeros = zero_count_batch(nz.segments, nz.n_rows, di.numel(), self.device)
            ll = ll + nb_mean_loglik(w_sf, mg_z.index_select(1, di), s_z.index_select(1, di), y_s,
                                     a_z.index_select(1, di), zeros)
        if batch.exact is not None:
            xi = self.floor_idx
            ll = ll + nb_mean_loglik(w_sf, mg_fg.index_select(1, xi), s_eg.index_select(1, xi), y_s,
                                     alpha_eg.index_select(1, xi), batch.exact)
        return ll


def sparse_nmf(X: sp.csr_matrix, h_fg: torch.Tensor, w_sf: torch.Tensor, y_s: torch.Tensor, iterations: int,
               block: int = 50_000, device: torch.device | None = None) -> torch.Tensor:
    """``iterations`` Poisson-NMF (KL, Lee–Seung) updates of ``w_sf`` with fixed ``h_fg`` and detection ``y_s``.

    ``w ← w · ((D / (y · w h)) hᵀ) / (h 1)``, where the ratio is only needed at the non-zero counts: one sampled
    product and one sparse-dense product per update, in row blocks of ``block`` spots (memory O(nnz)).
    The updates run on ``device`` (default: the CPU); the result is on the CPU.
    Shapes: X (S, G) counts, ``h_fg`` (F, G), ``w_sf`` (S, F), ``y_s`` (S, 1); returns the new (S, F).
    """
    dev = torch.device("cpu") if device is None else torch.device(device)
    h = h_fg.float().to(dev)
    denom = h.sum(1)[None, :]                                                                  # (1, F)
    h_t = h.T.contiguous()                                                                     # (G, F)
    w = w_sf.float().clone()
    X = sp.csr_matrix(X, dtype=np.float32)
    for r0 in range(0, X.shape[0], block):
        Xb = X[r0:r0 + block]
        crow = torch.as_tensor(Xb.indptr.astype(np.int64), device=dev)
        col = torch.as_tensor(Xb.indices.astype(np.int64), device=dev)
        d = torch.as_tensor(Xb.data, device=dev)
        row = torch.repeat_interleave(torch.arange(Xb.shape[0], device=dev), crow[1:] - crow[:-1])
        wb, yb = w[r0:r0 + block].to(dev), y_s[r0:r0 + block].reshape(-1).float().to(dev)
        pattern = torch.sparse_csr_tensor(crow, col, torch.zeros_like(d), size=Xb.shape, check_invariants=False)
        for _ in range(iterations):
            fit = torch.sparse.sampled_addmm(pattern, wb, h, beta=0.0).values()
            ratio = d / (fit * yb.index_select(0, row)).clamp_min(1e-10)
            wb = wb * torch.sparse.mm(torch.sparse_csr_tensor(crow, col, ratio, size=Xb.shape,
                                                                check_invariants=False), h_t) / denom
        w[r0:r0 + block] = wb.cpu()
    return w


__all__ = ["SparseLikelihood", "SparseCountBatch", "approximation_check", "choose_exact_genes", "gene_bounds",
           "relative_error_bound", "sparse_gene_loglik", "sparse_nmf"]
