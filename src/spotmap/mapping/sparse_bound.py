"""The error bound of the sparse likelihood's expanded zero term (:mod:`spotmap.mapping.sparse`).

The zero term ``z(mu) = -alpha log(1 + mu/alpha)`` of an expanded gene is replaced by its second-order
expansion around the batch mean mu0; with ``u = (mu - mu0)/(alpha + mu0)`` and ``U`` the largest |u| of the
expanded entries, the error of a spot's summed zero terms is at most ``ε(U)`` (:func:`relative_error_bound`)
of ``Σ_g |z(mu_sg) - z(mu0_eg)| ≤ Σ_g max(|z(mu_sg)|, |z(mu0_eg)|)`` (derivation: the module docstring of
:mod:`spotmap.mapping.sparse`). This module holds the per-gene bounds on mu and |u| that training checks
at every step (:func:`gene_bounds`), the initial choice of exact genes (:func:`choose_exact_genes`) and the
check of the error at the posterior (:func:`approximation_check`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from spotmap.mapping.settings import SPARSE_MU_MAX

#: the bound on mu of choose_exact_genes is multiplied by this (the posterior may move away from the start)
SAFETY = 2.0


def relative_error_bound(u_max: float) -> float:
    """``ε(U) = U²/(3(1 - U)) + U⁵(1 + U)/8`` for ``0 ≤ U < 1``: the largest error of a spot's expanded zero
    terms, relative to ``Σ_g |z(mu_sg) - z(mu0_eg)|``, when every expanded entry has ``|u| ≤ U``. The first
    part is the expansion's (``|log(1+u) - u + u²/2| ≤ |u|³/(3(1-|u|))`` and ``|log(1+u)| ≥ |u|/(1+|u|)``),
    the second the soft cap's (it moves the curvature term ``Q = ½ Σ alpha u²`` by at most ``Q U⁴/4``)."""
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


def choose_exact_genes(w_sf: np.ndarray, y_s: np.ndarray, mg_fg: np.ndarray, mu_max: float = SPARSE_MU_MAX,
                       safety: float = SAFETY, s_g: float | np.ndarray = 0.0, alpha: float | np.ndarray | None = None,
                       u_max: float | None = None, batch: np.ndarray | None = None) -> np.ndarray:
    """Genes whose zero term must be exact at given values: ``safety · M_g > mu_max`` (their expected count may
    exceed ``mu_max`` in some spot) or, with ``alpha`` and ``u_max`` given, ``U_g > u_max`` (:func:`gene_bounds`,
    mu0 the mean over each batch's spots), in some batch. ``w_sf`` (S, F), ``y_s`` (S,) or (S, 1), ``mg_fg``
    (F, G), ``s_g`` the background and ``alpha`` the overdispersion (scalars or (E, G) per batch), ``batch``
    (S,) batch codes 0 … E-1 (None: one batch). Returns sorted gene indices.
    """
    w = torch.as_tensor(np.asarray(w_sf, dtype=np.float64))
    y = torch.as_tensor(np.asarray(y_s, dtype=np.float64).reshape(-1, 1))
    mg = torch.as_tensor(np.asarray(mg_fg, dtype=np.float64))
    G = mg.shape[1]
    codes = np.zeros(len(y), dtype=np.int64) if batch is None else np.asarray(batch, dtype=np.int64)

    def of_batch(x, e: int) -> torch.Tensor:                                                 # (G,)
        x = np.asarray(1.0 if x is None else x, dtype=np.float64)
        return torch.as_tensor(np.broadcast_to(x[e] if x.ndim == 2 else x, (G,)).copy())

    exact = np.zeros(G, dtype=bool)
    for e in np.unique(codes):
        rows = torch.as_tensor(np.flatnonzero(codes == e))
        we, ye, s = w[rows], y[rows], of_batch(s_g, e)
        mu0 = ((ye * we).sum(0) @ mg + ye.sum() * s) / len(rows)
        M, U = gene_bounds(we, ye, mg, s, of_batch(alpha, e), mu0)
        exact |= (safety * M > mu_max).numpy()
        if alpha is not None and u_max is not None:
            exact |= (U > u_max).numpy()
    return np.flatnonzero(exact)


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
