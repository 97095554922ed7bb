"""The negative-binomial log-likelihood of the mapping model, exploiting that most counts are zero.

For counts ``d`` with mean ``mu`` and inverse dispersion ``alpha`` (``GammaPoisson(alpha, alpha/mu)``)::

    log NB(d | mu, alpha) = lgamma(d + alpha) - lgamma(alpha) - lgamma(d + 1)
                            - alpha · log(1 + mu/alpha) + d · log(mu / (alpha + mu))

Summed over spots s and genes g this splits into

* a **dense part** over every (s, g): ``-alpha_eg · log(1 + mu_sg/alpha_eg)`` — it needs only ``mu`` and
  ``alpha``, never the counts, so the count matrix is never densified;
* a **nonzero part** over the observed entries only: ``d · log(mu / (alpha + mu))``;
* a **count-only part** ``lgamma(d + alpha_eg) - lgamma(alpha_eg)``, which does not depend on mu. It is
  computed once per step from the histogram of distinct (batch, gene, count) triples of the *full*
  data (:class:`CountHistogram`, far fewer than the nonzero entries), so it is exact even with minibatches;
* ``lgamma(d + 1)`` is constant and dropped (the reported -ELBO omits it).

The dense and nonzero parts are fused in :class:`FusedNBMean`, a ``torch.autograd.Function`` that walks the
spots in chunks (each chunk from one batch), computes mu, the log-likelihood and its gradients with respect
to all inputs in one pass, and keeps only chunk-sized temporaries: memory stays bounded and nothing
spots × genes is kept for the backward pass. A sparse (Visium HD) variant only has to replace the dense
part; the data side (:class:`SpotCounts`) is already sparse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

#: Target number of spots × genes elements per chunk (float32: 4 MiB per work buffer, cache-friendly).
CHUNK_ELEMENTS = 1 << 20
#: The same on a GPU, where each chunk costs ~20 kernel launches and caches matter less (256 MiB per buffer)
GPU_CHUNK_ELEMENTS = 1 << 26
#: Column block of the mu product (n, F+1) @ (F+1, G) on the CPU: MKL's sgemm is far from its peak for this
#: very wide, short-K shape and runs faster on column blocks (0: one product).
MU_BLOCK_COLS = 1024


@dataclass
class Chunk:
    """Rows ``r0:r1`` of a :class:`CountBatch`, all from batch ``e``, with their nonzeros.

    ``flat`` (int64) indexes the nonzeros in the chunk's row-major (rows × G) block, ``gene`` (int64) is their
    gene and ``d`` (float) their count.
    """

    e: int
    r0: int
    r1: int
    flat: torch.Tensor
    gene: torch.Tensor
    d: torch.Tensor


@dataclass
class CountBatch:
    """Nonzero counts of a set of spots (ordered by batch), cut into :class:`Chunk` s of one batch each."""

    n_rows: int
    n_genes: int
    chunks: list[Chunk]

    @property
    def nnz(self) -> int:
        return sum(int(c.d.numel()) for c in self.chunks)


class BatchOrdered:
    """Spot order shared by the count holders (:class:`SpotCounts`, ``spotmap.mapping.sparse.SparseLikelihood``):
    minibatches sorted by batch, and the cached full-data batch. Needs ``n_obs``, ``batch`` (S,) batch codes on
    the device, ``order`` (spots grouped by batch), ``_full`` and a ``batch_rows(idx)`` method."""

    def sort_by_batch(self, idx: torch.Tensor) -> torch.Tensor:
        """``idx`` reordered so that spots of one batch are contiguous (stable, deterministic)."""
        b = self.batch[idx]
        key = b * self.n_obs + idx  # batch first, then spot index: unique keys, so the sort is deterministic
        return idx[torch.argsort(key)]

    def full(self):
        """The batch of all spots, in ``order`` (built once)."""
        if self._full is None:
            self._full = self.batch_rows(self.order)
        return self._full


class SpotCounts(BatchOrdered):
    """The spots × genes count matrix as CSR tensors on the training device, with batch labels.

    ``batch_rows(idx)`` gathers a minibatch (rows ``idx``, which must already be sorted by batch) without
    densifying anything; ``full()`` is the cached full-data batch.
    """

    def __init__(self, X: sp.csr_matrix, batch: np.ndarray, device: torch.device,
                 chunk_elements: int | None = None) -> None:
        X = sp.csr_matrix(X)
        if not X.has_sorted_indices:
            X = X.copy()
            X.sort_indices()
        self.n_obs, self.n_genes = X.shape
        self.device = device
        # on the CPU these share memory with X (no copy); int32 column indices, 8 bytes per nonzero in all
        self.indptr = torch.as_tensor(X.indptr.astype(np.int64, copy=False), device=device)
        self.indices = torch.as_tensor(X.indices.astype(np.int32, copy=False), device=device)
        self.data = torch.as_tensor(X.data.astype(np.float32, copy=False), device=device)
        self.batch_np = np.asarray(batch, dtype=np.int64)
        self.batch = torch.as_tensor(self.batch_np, device=device)
        if chunk_elements is None:
            chunk_elements = CHUNK_ELEMENTS if torch.device(device).type == "cpu" else GPU_CHUNK_ELEMENTS
        self.rows_per_chunk = max(1, int(chunk_elements // max(self.n_genes, 1)))
        #: spot order used for full-batch steps: grouped by batch, stable
        self.order = torch.as_tensor(np.argsort(self.batch_np, kind="stable"), device=device)
        self._full: CountBatch | None = None

    def batch_rows(self, idx: torch.Tensor) -> CountBatch:
        """Nonzeros of rows ``idx`` (sorted by batch) and their chunks."""
        idx = idx.to(self.device)
        starts = self.indptr[idx]
        lens = self.indptr[idx + 1] - starts
        n = len(idx)
        rows = torch.repeat_interleave(torch.arange(n, device=self.device), lens)
        offsets = torch.cumsum(lens, 0) - lens
        pos = starts[rows] + (torch.arange(rows.numel(), device=self.device) - offsets[rows])
        nz_gene = self.indices[pos].long()
        nz_val = self.data[pos]
        # chunks: break at batch changes and every rows_per_chunk rows
        b = self.batch[idx].cpu().numpy()
        ends = np.cumsum(lens.cpu().numpy())
        chunks = []
        r0 = 0
        G = self.n_genes
        while r0 < n:
            e = int(b[r0])
            r1 = r0 + 1
            limit = min(n, r0 + self.rows_per_chunk)
            while r1 < limit and b[r1] == e:
                r1 += 1
            k0, k1 = (int(ends[r0 - 1]) if r0 > 0 else 0), int(ends[r1 - 1])
            gene = nz_gene[k0:k1]
            chunks.append(Chunk(e, r0, r1, (rows[k0:k1] - r0) * G + gene, gene, nz_val[k0:k1]))
            r0 = r1
        return CountBatch(n, G, chunks)


class CountHistogram:
    """Distinct (batch e, gene g, count d ≥ 1) triples with their multiplicity c, for the count-only part.

    ``loglik(alpha_eg) = Σ c · (lgamma(d + alpha_eg) - lgamma(alpha_eg))`` — differentiable in alpha.
    """

    def __init__(self, X: sp.csr_matrix, batch: np.ndarray, n_batches: int, device: torch.device,
                 max_rows: int = 20_000) -> None:
        X = sp.csr_matrix(X)
        G = X.shape[1]
        batch = np.asarray(batch, dtype=np.int64)
        base = int(np.rint(X.data.max())) + 1 if X.nnz else 1   # key = (e·G + g)·base + d, unique per triple
        keys, mults = [], []
        for r0 in range(0, X.shape[0], max_rows):  # row blocks: memory stays bounded
            blk = X[r0:r0 + max_rows].tocoo()
            key = (batch[r0 + blk.row] * G + blk.col.astype(np.int64)) * base + np.rint(blk.data).astype(np.int64)
            u, c = np.unique(key, return_counts=True)
            keys.append(u)
            mults.append(c)
        key = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        mult = np.concatenate(mults) if mults else np.zeros(0, np.int64)
        uniq, inv = np.unique(key, return_inverse=True)
        mult = np.bincount(inv.ravel(), weights=mult, minlength=len(uniq))
        flat_eg = uniq // base
        self.flat_eg = torch.as_tensor(flat_eg, device=device)
        self.d = torch.as_tensor((uniq % base).astype(np.float32), device=device)
        self.mult = torch.as_tensor(mult.astype(np.float32), device=device)
        # Σ over triples of c·lgamma(alpha_eg) = Σ_eg (nonzeros of e, g)·lgamma(alpha_eg): one term per (e, g)
        self.nnz_eg = torch.as_tensor(np.bincount(flat_eg, weights=mult, minlength=n_batches * G)
                                      .reshape(n_batches, G).astype(np.float32), device=device)
        self.n_batches, self.n_genes = n_batches, G

    def __len__(self) -> int:
        return int(self.d.numel())

    def loglik(self, alpha_eg: torch.Tensor) -> torch.Tensor:
        a = alpha_eg.reshape(-1).index_select(0, self.flat_eg)
        return (self.mult * torch.lgamma(self.d + a)).sum() - (self.nnz_eg * torch.lgamma(alpha_eg)).sum()


class FusedNBMean(torch.autograd.Function):
    """Σ over a set of spots of the mu-dependent NB terms, with mu_sg = (Σ_f w_sf mg_fg + s_eg) · y_s.

    Inputs: ``w_sf`` (B, F) cells per spot; ``mg_fg`` (F, G) = m_g · g_fg, expected mRNA per cell;
    ``s_eg`` (E, G) additive background; ``y_s`` (B, 1) detection; ``alpha_eg`` (E, G) inverse
    dispersion; ``counts`` a :class:`CountBatch` for the same B spots in the same order.
    Returns the scalar ``Σ_sg [-alpha · log(1 + mu/alpha)] + Σ_nz d · log(mu/(alpha + mu))``.
    Gradients are computed during the forward pass (SVI always needs them) chunk by chunk.

    The detection y and the background are folded into augmented small factors, so that each (n, G) chunk
    needs exactly three matrix products and no separate scaling pass::

        mu              = [w·y, y] @ [mg; s_e]              (n, F+1) @ (F+1, G)
        [dL/d(w·y), ·]  = dmu @ [mg; s_e]ᵀ                  (n, G) @ (G, F+1): d/dw and d/dy
        [g_mg; g_s]     += [w·y, y]ᵀ @ dmu                  (F+1, n) @ (n, G): d/dmg, d/ds_e

    The dense part is ``-alpha · log1p(mu/alpha)`` and its alpha-gradient ``Σ_s [q/(1+q) - log1p(q)]`` with
    ``q = mu/alpha``, the first sum read off the accumulator (``Σ_s dmu · mu``, see ``flush``): for a gene with
    a small q every term is of the size of q, so float32 keeps its digits, where the textbook form
    ``n·log(alpha) - Σ_s log(alpha + mu)`` subtracts sums of size n·log(alpha).
    """

    @staticmethod
    def forward(ctx, w_sf, mg_fg, s_eg, y_s, alpha_eg, counts: CountBatch):  # noqa: D102
        need = ctx.needs_input_grad
        grads = need[0] or need[1] or need[2] or need[3] or need[4]
        F, G = mg_fg.shape
        B = w_sf.shape[0]
        dt, dev = w_sf.dtype, w_sf.device
        total = torch.zeros((), dtype=torch.float64, device=dev)
        g_w = torch.empty_like(w_sf) if grads else None
        g_s = torch.zeros_like(s_eg) if grads else None
        g_y = torch.empty_like(y_s) if grads else None
        g_a = torch.zeros_like(alpha_eg) if grads else None
        # augmented factors: rows of A = [w·y, y] (zero-padded), M = [mg; s_e] (row F is refilled when the batch
        # changes)
        P = F + 1 if dev.type != "cpu" else -(-(F + 1) // 16) * 16   # zero-padded: MKL is faster with 16k columns
        A = torch.zeros((B, P), dtype=dt, device=dev)
        torch.mul(w_sf, y_s, out=A[:, :F])
        A[:, F:F + 1] = y_s
        M = torch.empty((F + 1, G), dtype=dt, device=dev)
        M[:F] = mg_fg
        # accumulator of the current batch, transposed: [g_mg; g_s[e]; 0]ᵀ (this layout is the faster one for MKL)
        acc_t = torch.zeros((G, P), dtype=dt, device=dev) if grads else None
        g_mg_t = torch.zeros((G, F), dtype=dt, device=dev) if grads else None
        gw_aug = torch.empty((B, F + 1), dtype=dt, device=dev) if grads else None
        minus_one = torch.full((), -1.0, dtype=dt, device=dev)
        # chunk-sized work buffers, reused by every chunk: no allocation (and no page faults) per chunk
        rows = max((ch.r1 - ch.r0) for ch in counts.chunks) if counts.chunks else 0
        work = torch.empty((2 if grads else 1, rows, G), dtype=dt, device=dev)
        cur = -1
        blk = MU_BLOCK_COLS if (MU_BLOCK_COLS > 0 and dev.type == "cpu") else G

        def flush(e):  # the accumulator's batch-e sums into the gradients
            g_mg_t.add_(acc_t[:, :F])
            g_s[e] += acc_t[:, F]
            # d/d alpha of the batch's terms: Σ_s [q/(1+q) - log1p(q)] - Σ_nz d/(alpha+mu), q = mu/alpha. With
            # dmu as written below, Σ_s dmu·mu = -Σ_s mu/(1+q) + Σ_nz d/(1+q), so its first sum and the
            # nonzeros' last term are -(Σ_s dmu·mu) / alpha, and Σ_s dmu·mu = Σ_k M_kg · acc[g, k]
            # (mu = A M): no sum of n terms of size 1 that cancel (each -alpha/(alpha+mu) ≈ -1 for rare genes)
            dmu_mu = (acc_t[:, :F + 1] * M.T).sum(1)                                         # (G,)
            g_a[e] -= dmu_mu / alpha_eg[e]
            acc_t.zero_()

        for ch in counts.chunks:
            e, r0, r1 = ch.e, ch.r0, ch.r1
            n = r1 - r0
            if e != cur:
                if grads and cur >= 0:
                    flush(cur)
                M[F] = s_eg[e]
                cur = e
            t = work[0, :n]
            a = alpha_eg[e]
            Ac = A[r0:r1, :F + 1]
            for j in range(0, G, blk):                      # (n, G) mu = (w mg + s_e) · y
                torch.mm(Ac, M[:, j:j + blk], out=t[:, j:j + blk])
            nz = ch.d.numel() > 0
            if nz:
                mu_nz = t.view(-1).index_select(0, ch.flat)  # gathered before dividing by alpha
                a_nz = a.index_select(0, ch.gene)
            t.div_(a)                                       # q = mu / alpha
            if grads:                                       # d/d mu of the dense part: -alpha/(alpha+mu) = -1/(1+q)
                dmu = torch.add(t, 1.0, out=work[1, :n])
                torch.div(minus_one, dmu, out=dmu)
            # -alpha·log(1 + mu/alpha) with log1p: exact for the small q of rare genes, where log(alpha + mu) -
            # log(alpha) loses every digit
            col_log1p = t.log1p_().sum(0)
            part = -torch.dot(a, col_log1p)
            if grads:
                g_a[e] -= col_log1p
            if nz:
                d = ch.d
                t_nz = mu_nz + a_nz
                part = part + torch.dot(d, torch.log(mu_nz / t_nz))
                if grads:
                    # at the nonzeros dmu = -alpha/(alpha+mu) + d/mu - d/(alpha+mu) = (d/mu - 1) · alpha/(alpha+mu):
                    # written, not added
                    dmu.view(-1).scatter_(0, ch.flat, (d / mu_nz - 1.0).mul_(a_nz.div_(t_nz)))  # unique indices
            total += part.double()
            if grads:
                torch.mm(dmu, M.T, out=gw_aug[r0:r1])       # (n, F+1): Σ_g dmu mg_fg | Σ_g dmu s_eg
                acc_t.addmm_(dmu.T, A[r0:r1])               # (G, P): g_mg, g_s[e]
        del work
        if grads:
            if cur >= 0:
                flush(cur)
            gw_f = gw_aug[:, :F]
            # d/d y_s = Σ_g dmu · (w mg + s_e) = Σ_f w_sf (Σ_g dmu mg_fg) + Σ_g dmu s_eg
            torch.add((w_sf * gw_f).sum(1, keepdim=True), gw_aug[:, F:], out=g_y)
            torch.mul(gw_f, y_s, out=g_w)                   # d/d w_sf = y_s Σ_g dmu mg_fg
            g_mg = g_mg_t.T.contiguous()
        else:
            g_mg = None
        ctx.save_for_backward(*(x if x is not None else torch.empty(0) for x in (g_w, g_mg, g_s, g_y, g_a)))
        return total.to(dt)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        g_w, g_mg, g_s, g_y, g_a = ctx.saved_tensors
        need = ctx.needs_input_grad
        out = [g * grad_out if (need[i] and g.numel()) else None for i, g in enumerate((g_w, g_mg, g_s, g_y, g_a))]
        return (*out, None)


def nb_mean_loglik(w_sf: torch.Tensor, mg_fg: torch.Tensor, s_eg: torch.Tensor, y_s: torch.Tensor,
                   alpha_eg: torch.Tensor, counts: CountBatch) -> torch.Tensor:
    """The mu-dependent NB log-likelihood terms of ``counts`` (see :class:`FusedNBMean`); differentiable."""
    return FusedNBMean.apply(w_sf, mg_fg, s_eg, y_s, alpha_eg, counts)


def nb_loglik_reference(D: torch.Tensor, mu: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Plain NB log-likelihood sum without ``lgamma(d+1)`` (dense; for tests and small checks)."""
    return (torch.lgamma(D + alpha) - torch.lgamma(alpha) - alpha * torch.log1p(mu / alpha)
            + D * (torch.log(mu) - torch.log(alpha + mu))).sum()
