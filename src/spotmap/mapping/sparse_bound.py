"""The error bound of the sparse likelihood's expanded zero term (:mod:`spotmap.mapping.sparse`).

The zero term ``z(mu) = -alpha log(1 + mu/alpha)`` of an expanded gene is replaced by its second-order
expansion around the batch mean mu0; with ``u = (mu - mu0)/(alpha + mu0)`` and ``U`` the largest |u| of the
expanded entries, the error of a spot's summed zero terms is at most ``ε(U)`` (:func:`relative_error_bound`)
of ``Σ_g |z(mu_sg) - z(mu0_eg)| ≤ Σ_g max(|z(mu_sg)|, |z(mu0_eg)|)`` (derivation: the module docstring of
:mod:`spotmap.mapping.sparse`). This module holds the per-step decision of which genes pass ``u_max``
(:func:`genes_over_bound`: the cheap bounds :func:`gene_bounds`, then :func:`exact_range` for the genes they
cannot clear), the always-exact genes of ``--sparse-mu-max`` (:func:`choose_exact_genes`), and the check of the
error at the posterior (:func:`split_at`, :func:`approximation_check`).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch

from spotmap.mapping.settings import SPARSE_MU_MAX

#: the bound on mu of choose_exact_genes is multiplied by this (the posterior may move away from the start)
SAFETY = 2.0


def relative_error_bound(u_max: float) -> float:
    """``ε(U) = U²/(3(1 - U)) + U⁵(1 + U)/8`` for ``0 ≤ U < 1``: the largest error of a spot's expanded zero
    terms, relative to ``Σ_g |z(mu_sg) - z(mu0_eg)|``, when every expanded entry has ``|u| ≤ U``. The first
    part is the expansion's: ``|log(1+u) - u + u²/2| ≤ |u|³/(3(1-|u|))``, set against the exact term's own size,
    ``q - z ∈ [0, alpha u³/3]`` for ``u ≥ 0`` and ``alpha |u| ≤ |z - z0|`` for ``u < 0`` (the route of
    :mod:`spotmap.mapping.sparse`'s docstring); the second the soft cap's (it moves the curvature term
    ``Q = ½ Σ alpha u²`` by at most ``Q U⁴/4``)."""
    U = float(u_max)
    if not 0.0 <= U < 1.0:
        raise ValueError(f"the bound needs 0 ≤ u_max < 1 (got {u_max})")
    return U * U / (3.0 * (1.0 - U)) + U**5 * (1.0 + U) / 8.0


def gene_bounds(w_sf: torch.Tensor, y_s: torch.Tensor, mg_fg: torch.Tensor, s_g: torch.Tensor,
                alpha_g: torch.Tensor, mu0_g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-gene upper bounds ``(M_g, U_g)`` on ``max_s mu_sg`` and ``max_s |u_sg|`` over a set of spots of one batch.

    ``mu_sg = y_s (Σ_f w_sf mg_fg + s_g)``, ``u_sg = (mu_sg - mu0_g)/(alpha_g + mu0_g)``. The spots are grouped by
    their dominant type k (largest ``y_s w_sf``); within group k, ``y_s Σ_f w_sf mg_fg`` is at most both
    ``Σ_f W_kf mg_fg`` (``W_kf = max_s y_s w_sf``) and ``T_k max_f mg_fg`` (``T_k = max_s y_s Σ_f w_sf``), so
    ``M_g = max_k min(W_k · mg_g, T_k max_f mg_fg) + max_s y_s · s_g`` and, with ``mu_sg ≥ L_g = min_s y_s · s_g``,
    ``U_g = max(M_g - mu0_g, mu0_g - L_g)/(alpha_g + mu0_g)``. Cost O(n F + F² G), nothing n × G.
    Shapes: ``w_sf`` (n, F), ``y_s`` (n, 1), ``mg_fg`` (F, G), ``s_g`` / ``alpha_g`` / ``mu0_g`` (G,).
    """
    yw = y_s * w_sf                                                                           # (n, F)
    F = yw.shape[1]
    k = yw.argmax(1)                                                                          # (n,)
    W_kf = torch.zeros((F, F), dtype=yw.dtype, device=yw.device).scatter_reduce_(
        0, k[:, None].expand(-1, F), yw, "amax", include_self=False)                          # (K=F, F)
    T_k = torch.zeros(F, dtype=yw.dtype, device=yw.device).scatter_reduce_(0, k, yw.sum(1), "amax",
                                                                            include_self=False)  # (K,)
    M = torch.minimum(W_kf @ mg_fg, T_k[:, None] * mg_fg.amax(0)).amax(0) + y_s.max() * s_g    # (G,)
    L = y_s.min() * s_g
    U = torch.maximum(M - mu0_g, mu0_g - L) / (alpha_g + mu0_g)
    return M, U


def exact_range(w_sf: torch.Tensor, y_s: torch.Tensor, mg_fg: torch.Tensor, s_g: torch.Tensor,
                level_g: torch.Tensor, low_g: torch.Tensor, L_g: torch.Tensor, chunk_elements: int,
                blocks: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-gene ``(hi_g, lo_g)``: an upper bound on ``max_s mu_sg`` that is exact wherever it exceeds ``level_g``,
    and a lower bound on ``min_s mu_sg`` (exact for the genes with ``low_g``, else ``L_g``), over a set of spots.

    Spot s can only have ``mu_sg > level_g`` if ``T_s max_f mg_fg + max_s' y_s' s_g > level_g``
    (``T_s = y_s Σ_f w_sf``). With the spots sorted by ``T_s``, these are a prefix of that order for each gene:
    mu is computed exactly on the prefix (genes in ``blocks`` blocks of similar prefix length, forward only, row
    chunks of about ``chunk_elements`` entries) and bounded by ``T_s max_f mg_fg + max y · s_g`` after it, so
    ``hi_g`` is the exact maximum whenever that exceeds ``level_g``, and at most ``level_g`` otherwise. Genes with
    ``low_g`` take every spot (their exact minimum is needed). Cost O(Σ_g prefix_g · F), nothing n × G at once.
    Shapes: ``w_sf`` (n, F), ``y_s`` (n, 1), ``mg_fg`` (F, C), ``s_g`` / ``level_g`` / ``L_g`` (C,), ``low_g`` (C,) bool.
    """
    n, C = w_sf.shape[0], mg_fg.shape[1]
    T = (y_s * w_sf).sum(1)                                                                   # (n,)
    order = torch.argsort(T, descending=True)
    T_sorted = torch.cat([T[order], T.new_zeros(1)])                                          # (n + 1,)
    top, y_max = mg_fg.amax(0), y_s.max()                                                     # (C,), ()
    need = (level_g - y_max * s_g) / top.clamp_min(torch.finfo(top.dtype).tiny)               # T_s above this
    n_g = torch.searchsorted(-T_sorted[:n], -need.contiguous(), side="left")                 # (C,) prefix lengths
    n_g = torch.where(low_g, torch.full_like(n_g, n), n_g)
    hi, lo = L_g.clone(), L_g.clone()
    by_length = torch.argsort(n_g)
    for genes in torch.tensor_split(by_length, min(blocks, C)):
        if genes.numel() == 0:
            continue
        m = int(n_g[genes].max())
        mg, s = mg_fg[:, genes], s_g[genes]
        rest = T_sorted[m] * top[genes] + y_max * s                                            # bound after the prefix
        if m == 0:
            hi[genes] = rest
            continue
        rows = order[:m]
        step = max(1, chunk_elements // genes.numel())
        block_hi = torch.full_like(s, -math.inf)
        block_lo = torch.full_like(s, math.inf)
        for r in range(0, m, step):
            mu = (w_sf[rows[r:r + step]] @ mg + s) * y_s[rows[r:r + step]]                   # (chunk, |block|)
            block_hi = torch.maximum(block_hi, mu.amax(0))
            block_lo = torch.minimum(block_lo, mu.amin(0))
        hi[genes] = torch.maximum(block_hi, rest)
        if m == n:
            lo[genes] = torch.maximum(block_lo, L_g[genes])
    return hi, lo


def genes_over_bound(w_sf: torch.Tensor, y_s: torch.Tensor, mg_fg: torch.Tensor, s_g: torch.Tensor,
                     alpha_g: torch.Tensor, u_max: float, mu_max: float = math.inf,
                     chunk_elements: int = 1 << 20) -> tuple[torch.Tensor, torch.Tensor]:
    """``(exact_g, U_g)`` over a set of spots of one batch, ``mu0_g`` their mean of ``mu_sg``: ``exact_g`` marks the
    genes with ``|u_sg| > u_max`` or ``mu_sg > mu_max`` at some spot, ``U_g`` bounds ``max_s |u_sg|`` (exact where
    it exceeds ``u_max``). Two stages: :func:`gene_bounds` (O(n F + F² G)) clears most genes; the others are
    decided by :func:`exact_range` on the spots that could exceed the limits. Forward only.
    Shapes: ``w_sf`` (n, F), ``y_s`` (n, 1), ``mg_fg`` (F, G), ``s_g`` / ``alpha_g`` (G,).
    """
    mu0 = ((y_s * w_sf).sum(0) @ mg_fg + y_s.sum() * s_g) / w_sf.shape[0]                      # (G,)
    M, U = gene_bounds(w_sf, y_s, mg_fg, s_g, alpha_g, mu0)
    c = torch.nonzero((U > u_max) | (M > mu_max)).reshape(-1)
    if c.numel():
        m0, a, L = mu0[c], alpha_g[c], y_s.min() * s_g[c]
        level = (m0 + u_max * (a + m0)).clamp_max(mu_max)
        hi, lo = exact_range(w_sf, y_s, mg_fg[:, c], s_g[c], level, m0 - L > u_max * (a + m0), L, chunk_elements)
        M[c], U[c] = hi, torch.maximum(hi - m0, m0 - lo) / (a + m0)
    return (U > u_max) | (M > mu_max), U


def choose_exact_genes(w_sf: np.ndarray, y_s: np.ndarray, mg_fg: np.ndarray, mu_max: float = SPARSE_MU_MAX,
                       safety: float = SAFETY, s_g: float = 0.0) -> np.ndarray:
    """Genes whose expected count may exceed ``mu_max`` in some spot: always computed exactly (``--sparse-mu-max``).

    Uses the bound ``max_s mu_sg ≤ max_s (y_s Σ_f w_sf) · max_f mg_fg + (max_s y_s) s_g`` (a spot's cells all
    of the type that expresses g most) at the given (initial) values, times ``safety``. ``w_sf`` (S, F), ``y_s``
    (S,) or (S, 1), ``mg_fg`` (F, G). Returns sorted gene indices.
    """
    y = np.asarray(y_s, dtype=np.float64).reshape(-1)
    top = float((y * np.asarray(w_sf).sum(1)).max()) if len(y) else 0.0
    bound = top * np.asarray(mg_fg).max(0) + float(y.max() if len(y) else 0.0) * s_g           # (G,)
    return np.flatnonzero(safety * bound > mu_max)


def split_at(w_sf: np.ndarray, y_s: np.ndarray, mg_fg: np.ndarray, s_eg: np.ndarray, alpha_eg: np.ndarray,
             batch: np.ndarray, u_max: float, mu_max: float = math.inf) -> np.ndarray:
    """Sorted indices of the genes a full-batch step at these values makes exact (:func:`genes_over_bound` per
    batch, in float64). Shapes: ``w_sf`` (S, F), ``y_s`` (S,) or (S, 1), ``mg_fg`` (F, G), ``s_eg`` / ``alpha_eg``
    (E, G), ``batch`` (S,) codes 0 … E-1."""
    w = torch.as_tensor(np.asarray(w_sf, dtype=np.float64))
    y = torch.as_tensor(np.asarray(y_s, dtype=np.float64).reshape(-1, 1))
    mg = torch.as_tensor(np.asarray(mg_fg, dtype=np.float64))
    s, a = (torch.as_tensor(np.asarray(x, dtype=np.float64)) for x in (s_eg, alpha_eg))
    exact = torch.zeros(mg.shape[1], dtype=torch.bool)
    for e in np.unique(batch):
        rows = torch.as_tensor(np.flatnonzero(batch == e))
        exact |= genes_over_bound(w[rows], y[rows], mg, s[e], a[e], u_max, mu_max)[0]
    return np.flatnonzero(exact.numpy())


def approximation_check(X: sp.csr_matrix, w_sf: np.ndarray, mg_fg: np.ndarray, s_eg: np.ndarray, y_s: np.ndarray,
                        alpha_eg: np.ndarray, batch: np.ndarray, exact_genes: np.ndarray, u_max: float | None = None,
                        max_spots: int = 20_000, seed: int = 0, chunk: int = 256) -> dict:
    """Exact vs expanded zero term over the expanded genes at given (posterior) values, on up to ``max_spots`` spots.

    Returns JSON-safe figures: the number of exact and expanded genes, spots checked, the largest ``mu/alpha``
    and the largest ``|u|`` at a zero count of an expanded gene, the error (nats, ``Σ_s |Σ_g (q - z)|``) scaled to
    all spots, that error relative to ``Σ |z|`` (``relative_error``) and relative to
    ``Σ max(|z(mu)|, |z(mu0)|)`` (``bound_relative_error``: what the bound ε is about), and, with ``u_max``,
    ``bound`` = ε(u_max) (:func:`relative_error_bound`) and ``bound_at_max_u`` = ε(largest |u| found) (None if that is 1 or more).
    Shapes: ``w_sf`` (S, F), ``mg_fg`` (F, G), ``s_eg`` / ``alpha_eg`` (E, G), ``y_s`` (S,) or (S, 1).
    """
    S, G = X.shape
    expanded = np.setdiff1d(np.arange(G), exact_genes)
    rng = np.random.default_rng(seed)
    spots = np.arange(S) if S <= max_spots else np.sort(rng.choice(S, max_spots, replace=False))
    y = np.asarray(y_s, dtype=np.float64).reshape(-1)
    batch = np.asarray(batch)
    mg = mg_fg[:, expanded].astype(np.float64)
    s_z, a_z = s_eg[:, expanded].astype(np.float64), alpha_eg[:, expanded].astype(np.float64)
    # expansion point: mean of mu_sg over all spots of each batch (exact, low rank); minibatch training expands
    # around each minibatch's mean, which scatters around this one
    mu0 = np.stack([(y[batch == e] @ w_sf[batch == e]) @ mg / max((batch == e).sum(), 1)
                    + y[batch == e].mean() * s_z[e] if (batch == e).any() else np.zeros(len(expanded))
                    for e in range(len(s_z))])
    err = exact_abs = scale_abs = 0.0
    max_x = max_u = 0.0
    Xz = X[:, expanded].tocsr()
    for i in range(0, len(spots), chunk):
        rows = spots[i:i + chunk]
        e = batch[rows]
        a, m0 = a_z[e], mu0[e]
        mu = (w_sf[rows] @ mg + s_z[e]) * y[rows, None]
        zero = Xz[rows].toarray() == 0
        z = -a * np.log1p(mu / a)
        z0 = -a * np.log1p(m0 / a)
        apm = a + m0
        dm = mu - m0
        linear = z0 - a / apm * dm
        q = (0.5 * a / apm**2 * dm**2 * zero).sum(1)
        c = (0.5 * a / apm * (mu + m0) * zero).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            capped = np.where(q > 0, q * c / (q**4 + c**4) ** 0.25, 0.0)
        err += float(np.abs((linear * zero).sum(1) + capped - (z * zero).sum(1)).sum())
        exact_abs += float((-z * zero).sum())
        scale_abs += float((np.maximum(-z, -z0) * zero).sum())
        if zero.any():
            max_x = max(max_x, float((mu / a)[zero].max()))
            max_u = max(max_u, float((np.abs(dm) / apm)[zero].max()))
    factor = S / len(spots)
    out = {"exact_genes": int(len(exact_genes)), "sparse_genes": int(len(expanded)),
           "spots_checked": int(len(spots)), "max_mu_over_alpha_at_zeros": max_x, "max_u_at_zeros": max_u,
           "error_nats": err * factor, "relative_error": err / exact_abs if exact_abs > 0 else 0.0,
           "bound_relative_error": err / scale_abs if scale_abs > 0 else 0.0}
    if u_max is not None:
        out["u_max"] = float(u_max)
        out["bound"] = relative_error_bound(u_max)
        out["bound_at_max_u"] = relative_error_bound(max_u) if max_u < 1 else None
    return out
