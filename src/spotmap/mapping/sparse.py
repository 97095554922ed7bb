"""A likelihood whose cost grows with the non-zero counts, not with spots × genes (Visium HD).

The mu-dependent NB terms of :mod:`spotmap.mapping.likelihood` are, per (s, g)::

    zero term   z(mu) = -alpha · log(1 + mu/alpha)            every entry, zero counts included
    count term        d · log(mu / (alpha + mu))              non-zero entries only

With 8 µm bins ~98 % of entries are zero, yet the zero term is what makes the dense likelihood cost
S × G per epoch. Here the genes are split in two sets:

* **exact genes** (``exact_genes``): those whose expected count can get large in some bin (bound below).
  Their terms are computed exactly by the dense fused kernel (:class:`~spotmap.mapping.likelihood.FusedNBMean`)
  on the (S, |exact|) block;
* **sparse genes** (all others): the zero term is replaced by its second-order expansion in mu around
  the batch mean mu0 of each gene, whose sum over spots and genes is exact and cheap thanks to the
  model's low rank (mu_sg = y_s (Σ_f w_sf mg_fg + s_eg)): the linear part needs ``Σ_s mu_sg`` (a (F,) · (F, G)
  product), the curvature part per spot is a quadratic form ``y_s² w_sᵀ A w_s + …`` with
  ``A = mg diag(z''(mu0)) mgᵀ`` (F, F) — O(S F² + E G F²) instead of O(S G F). The curvature term of each
  spot is softly capped by a linear one (:func:`soft_cap`, see :func:`sparse_gene_loglik`), because a bare
  quadratic grows without bound where z flattens and would reward expected counts far above mu0. At the
  **non-zero** entries the expansion is then swapped for the exact terms (computed with sampled sparse-dense
  products, O(nnz · F)). So the only approximation is at **zero counts of sparse genes**, where the
  expansion's error per entry is ``≈ alpha · |u|³/3`` with ``u = (mu - mu0)/(alpha + mu0)`` (the cap only
  acts once |u| approaches one).

Sparse genes are those whose expected count stays below ``mu_max`` in every bin under the bound
``max_s mu_sg ≤ max_s (y_s Σ_f w_sf) · max_f mg_fg + (max_s y_s) · s_g`` evaluated at the initial values
(with a safety factor, see :func:`choose_exact_genes`); the error actually incurred is measured after training
by :func:`approximation_check` (exact vs approximate zero term at the fitted posterior) and written to
``uns['mod']['sparse_likelihood']``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from spotmap.mapping.likelihood import BatchOrdered, CountBatch, SpotCounts, nb_mean_loglik
from spotmap.mapping.settings import SPARSE_MU_MAX

# torch's CSR tensors work as documented here; its "beta" notice would be printed at every step
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

#: the bound of choose_exact_genes is multiplied by this (the posterior may move away from the initial values)
SAFETY = 2.0


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
        prod = torch.sparse.sampled_addmm(nz.csr(torch.zeros_like(nz.d)), w_sf, mg_fg, beta=0.0).values()
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
                       alpha_eg: torch.Tensor, nz: SparseBatch) -> torch.Tensor:
    """The mu-dependent NB terms of the sparse genes of a batch of spots (see the module docstring).

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
    At the non-zeros the expansion is swapped for the exact terms.
    Shapes: ``w_sf`` (B, F), ``mg_fg`` (F, Gz), ``s_eg`` / ``alpha_eg`` (E, Gz), ``y_s`` (B, 1).
    """
    E, Gz = alpha_eg.shape
    linear = torch.zeros((), dtype=w_sf.dtype, device=w_sf.device)
    mu0_eg = torch.zeros((E, Gz), dtype=w_sf.dtype, device=w_sf.device)
    q_all, c_all = [], []                                                                       # (n,) per segment
    for e, r0, r1 in nz.segments:
        w, y = w_sf[r0:r1], y_s[r0:r1]                                                          # (n, F), (n, 1)
        n = r1 - r0
        s, a = s_eg[e], alpha_eg[e]                                                             # (Gz,)
        m1 = (y * w).sum(0) @ mg_fg + y.sum() * s                                               # (Gz,)
        mu0 = (m1 / n).detach()
        mu0_eg[e] = mu0
        z0, z1, z2 = expansion(mu0, a)
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
    total, q_nz, c_nz = NonzeroTerms.apply(base, y_s.reshape(-1), alpha_eg.reshape(-1), mu0_eg.reshape(-1), nz)
    # Q_s and C_s sum over the zero counts: take the non-zero entries' shares out
    capped = soft_cap((q_s - q_nz).clamp_min(0.0), (c_s - c_nz).clamp_min(0.0)).sum()
    return linear + capped + total


class NonzeroTerms(torch.autograd.Function):
    """The non-zero entries' part of :func:`sparse_gene_loglik`, fused: O(nnz) memory and passes, no autograd graph.

    With ``mu = base · y_row``, ``a``/``mu0`` gathered per entry (``flat_eg``), ``δ = mu - mu0`` and the
    expansion ``z0, z1, z2`` of the zero term at ``mu0`` (:func:`expansion`), returns

    * ``total``: Σ over non-zeros of the exact terms ``d log mu - (d + a) log(a + mu) + a log a`` minus the
      linear part of the expansion ``z0 + z1 δ`` (which the batch sums count at every entry);
    * ``q_nz`` (B,): per spot, Σ ``½ z2 δ²``, and ``c_nz`` (B,): Σ ``-½ z1 (mu + mu0)`` — the non-zeros' shares
      of the curvature term and of its cap, to be taken out of the per-spot sums over all genes.

    ``mu0`` is held fixed (the caller detaches it). Backward recomputes the entries' values from the inputs
    and returns the gradients for ``base`` (nnz,), ``y`` (B,) and ``alpha`` (E·Gz,) with derivatives by hand
    (checked against autograd on the definition in the tests).
    """

    @staticmethod
    def _entries(base, y, alpha, mu0, nz):
        yk = y.index_select(0, nz.row)
        a = alpha.index_select(0, nz.flat_eg)
        m0 = mu0.index_select(0, nz.flat_eg)
        inv = torch.reciprocal(a + m0)                                                          # 1 / (alpha + mu0)
        return yk, base * yk, a, m0, inv

    @staticmethod
    def forward(ctx, base, y, alpha, mu0, nz: SparseBatch):  # noqa: D102
        ctx.nz = nz
        ctx.save_for_backward(base, y, alpha, mu0)
        d = nz.d
        _, mu, a, m0, inv = NonzeroTerms._entries(base, y, alpha, mu0, nz)
        z1 = -a * inv
        dm = mu - m0
        B = y.shape[0]
        q_nz = torch.zeros(B, dtype=mu.dtype, device=mu.device).index_add_(0, nz.row, 0.5 * a * inv * inv * dm * dm)
        c_nz = torch.zeros(B, dtype=mu.dtype, device=mu.device).index_add_(0, nz.row, -0.5 * z1 * (mu + m0))
        # exact - (z0 + z1 δ), z0 = -a log(1 + mu0/a)
        t = d * torch.log(mu) - (d + a) * torch.log(a + mu) + a * (torch.log(a) + torch.log1p(m0 / a)) - z1 * dm
        return t.double().sum().to(mu.dtype), q_nz, c_nz

    @staticmethod
    def backward(ctx, g_total, g_q, g_c):  # noqa: D102
        nz = ctx.nz
        base, y, alpha, mu0 = ctx.saved_tensors
        d = nz.d
        yk, mu, a, m0, inv = NonzeroTerms._entries(base, y, alpha, mu0, nz)
        gq, gc = g_q.index_select(0, nz.row), g_c.index_select(0, nz.row)
        inv_amu = torch.reciprocal(a + mu)
        z1 = -a * inv
        z2 = a * inv * inv
        dm = mu - m0
        # d/dmu: exact d/mu - (d + a)/(a + mu); linear part z1; q share z2 δ; c share -½ z1
        g_mu = g_total * (d / mu - (d + a) * inv_amu - z1) + gq * z2 * dm - 0.5 * gc * z1
        # d/dalpha (mu0 fixed): exact -log(a + mu) - (d + a)/(a + mu) + log a + 1; z0' = -log1p(mu0/a) + mu0/(a + mu0);
        # z1' = -mu0/(a + mu0)²; z2' = (mu0 - a)/(a + mu0)³
        z1_a = -m0 * inv * inv
        g_a = g_total * (torch.log(a * inv_amu) - (d + a) * inv_amu + 1.0 + torch.log1p(m0 / a) - m0 * inv - z1_a * dm)
        g_a += gq * (0.5 * (m0 - a) * inv * inv * inv * dm * dm) - gc * (0.5 * z1_a * (mu + m0))
        g_base = g_mu * yk
        g_y = torch.zeros_like(y).index_add_(0, nz.row, g_mu * base)
        g_alpha = torch.zeros_like(alpha).index_add_(0, nz.flat_eg, g_a)
        return g_base, g_y, g_alpha, None, None


@dataclass
class SparseCountBatch:
    """A (mini)batch for :class:`SparseLikelihood`: the exact genes' :class:`CountBatch` and the sparse genes'
    :class:`SparseBatch`, for the same spots in the same order."""

    exact: CountBatch | None
    sparse: SparseBatch


class SparseLikelihood(BatchOrdered):
    """Counts split into exact and sparse genes (see the module docstring), with (mini)batch builders.

    ``X`` (S, G) CSR counts, ``batch`` (S,) batch codes, ``exact_genes`` sorted gene indices computed exactly.
    """

    def __init__(self, X: sp.csr_matrix, batch: np.ndarray, exact_genes: np.ndarray, device: torch.device) -> None:
        X = sp.csr_matrix(X)
        self.n_obs, self.n_genes = X.shape
        self.device = device
        self.batch_np = np.asarray(batch, dtype=np.int64)
        self.batch = torch.as_tensor(self.batch_np, device=device)
        exact = np.zeros(self.n_genes, dtype=bool)
        exact[np.asarray(exact_genes, dtype=np.int64)] = True
        self.exact_idx = torch.as_tensor(np.flatnonzero(exact), device=device)
        self.sparse_idx = torch.as_tensor(np.flatnonzero(~exact), device=device)
        self.X_sparse = X[:, np.flatnonzero(~exact)].tocsr()
        self.exact_counts = (SpotCounts(X[:, np.flatnonzero(exact)].tocsr(), self.batch_np, device)
                             if exact.any() else None)
        self.order = torch.as_tensor(np.argsort(self.batch_np, kind="stable"), device=device)
        self._full: SparseCountBatch | None = None

    @property
    def n_exact(self) -> int:
        return int(self.exact_idx.numel())

    def batch_rows(self, idx: torch.Tensor) -> SparseCountBatch:
        """Rows ``idx`` (sorted by batch)."""
        rows = idx.cpu().numpy()
        exact = self.exact_counts.batch_rows(idx) if self.exact_counts is not None else None
        return SparseCountBatch(exact, SparseBatch.from_csr(self.X_sparse[rows], self.batch_np[rows], self.device))

    def loglik(self, w_sf: torch.Tensor, mg_fg: torch.Tensor, s_eg: torch.Tensor, y_s: torch.Tensor,
               alpha_eg: torch.Tensor, batch: SparseCountBatch) -> torch.Tensor:
        """The mu-dependent NB terms of ``batch`` (exact genes exactly, sparse genes as in the module docstring)."""
        zi = self.sparse_idx
        mg_z, s_z, a_z = mg_fg.index_select(1, zi), s_eg.index_select(1, zi), alpha_eg.index_select(1, zi)
        ll = sparse_gene_loglik(w_sf, mg_z, s_z, y_s, a_z, batch.sparse)
        if batch.exact is not None:
            xi = self.exact_idx
            ll = ll + nb_mean_loglik(w_sf, mg_fg.index_select(1, xi), s_eg.index_select(1, xi), y_s,
                                     alpha_eg.index_select(1, xi), batch.exact)
        return ll


def choose_exact_genes(w_sf: np.ndarray, y_s: np.ndarray, mg_fg: np.ndarray, mu_max: float = SPARSE_MU_MAX,
                       safety: float = SAFETY, s_g: float = 0.0) -> np.ndarray:
    """Genes whose expected count may exceed ``mu_max`` in some spot: computed exactly.

    Uses the bound ``max_s mu_sg ≤ max_s (y_s Σ_f w_sf) · max_f mg_fg + (max_s y_s) s_g`` (a spot's cells all
    of the type that expresses g most) at the given (initial) values, times ``safety``. ``w_sf`` (S, F), ``y_s``
    (S,) or (S, 1), ``mg_fg`` (F, G). Returns sorted gene indices.
    """
    y = np.asarray(y_s, dtype=np.float64).reshape(-1)
    top = float((y * np.asarray(w_sf).sum(1)).max()) if len(y) else 0.0
    bound = top * np.asarray(mg_fg).max(0) + float(y.max() if len(y) else 0.0) * s_g           # (G,)
    return np.flatnonzero(safety * bound > mu_max)


def approximation_check(X: sp.csr_matrix, w_sf: np.ndarray, mg_fg: np.ndarray, s_eg: np.ndarray, y_s: np.ndarray,
                        alpha_eg: np.ndarray, batch: np.ndarray, exact_genes: np.ndarray,
                        max_spots: int = 20_000, seed: int = 0, chunk: int = 256) -> dict:
    """Exact vs approximate zero term over the sparse genes at given (posterior) values, on up to ``max_spots`` spots.

    Returns JSON-safe figures: the number of exact and sparse genes, spots checked, the largest
    ``mu/alpha`` at a zero count of a sparse gene, the approximation error (nats, |q - z|) summed over
    the checked spots and scaled to all spots (absolute per spot), and that error relative to the magnitude of the exact zero
    term. Shapes: ``w_sf`` (S, F), ``mg_fg`` (F, G), ``s_eg`` / ``alpha_eg`` (E, G), ``y_s`` (S,) or (S, 1).
    """
    S, G = X.shape
    sparse_genes = np.setdiff1d(np.arange(G), exact_genes)
    rng = np.random.default_rng(seed)
    spots = np.arange(S) if S <= max_spots else np.sort(rng.choice(S, max_spots, replace=False))
    y = np.asarray(y_s, dtype=np.float64).reshape(-1)
    batch = np.asarray(batch)
    mg = mg_fg[:, sparse_genes].astype(np.float64)
    s_z, a_z = s_eg[:, sparse_genes].astype(np.float64), alpha_eg[:, sparse_genes].astype(np.float64)
    # expansion point: mean of mu_sg over all spots of each batch (exact, low rank); minibatch training expands
    # around each minibatch's mean, which scatters around this one
    mu0 = np.stack([(y[batch == e] @ w_sf[batch == e]) @ mg / max((batch == e).sum(), 1)
                    + y[batch == e].mean() * s_z[e] if (batch == e).any() else np.zeros(len(sparse_genes))
                    for e in range(len(s_z))])
    err = exact_abs = 0.0
    max_x = 0.0
    for i in range(0, len(spots), chunk):
        rows = spots[i:i + chunk]
        e = batch[rows]
        a, m0 = a_z[e], mu0[e]
        mu = (w_sf[rows] @ mg + s_z[e]) * y[rows, None]
        zero = X[rows][:, sparse_genes].toarray() == 0
        z = -a * np.log1p(mu / a)
        apm = a + m0
        dm = mu - m0
        linear = -a * np.log1p(m0 / a) - a / apm * dm
        q = (0.5 * a / apm**2 * dm**2 * zero).sum(1)
        c = (0.5 * a / apm * (mu + m0) * zero).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            capped = np.where(q > 0, q * c / (q**4 + c**4) ** 0.25, 0.0)
        err += float(np.abs((linear * zero).sum(1) + capped - (z * zero).sum(1)).sum())
        exact_abs += float((-z * zero).sum())
        if zero.any():
            max_x = max(max_x, float((mu / a)[zero].max()))
    scale = S / len(spots)
    return {"exact_genes": int(len(exact_genes)), "sparse_genes": int(len(sparse_genes)),
            "spots_checked": int(len(spots)), "max_mu_over_alpha_at_zeros": max_x,
            "error_nats": err * scale, "relative_error": err / exact_abs if exact_abs > 0 else 0.0}


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
