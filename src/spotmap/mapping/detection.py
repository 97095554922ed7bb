"""The detection level of each batch: what fixes the absolute number of cells.

The likelihood sees only the product ``y_s · m_g · Σ_f w_sf g_fg``: scaling detection (or sensitivity) up and
cell numbers down by the same factor leaves it unchanged. In cell2location that direction is held only by
priors — the batch means ``y_e ~ Gamma(10, 10 / detection_mean)`` and ``m_g``'s hyperprior, both weak — and
the shrinkage priors of ``w_sf`` push along it as training goes on, so its absolute cell numbers depend on
when training stops (docs/mapping.md, "Absolute numbers"). spotmap fixes the direction instead:

* each batch's detection level ``d_e`` is set from the data and ``N_cells_per_location``, as cell2location's
  ``detection_mean_per_sample=True`` would, but with each type's mRNA per cell weighted by the batch's
  composition (from the non-negative factorisation start) instead of an unweighted mean over types::

      d_e = mean_{s in e} Σ_g D_sg / (N · Σ_f p_ef · Σ_g m_g g_fg)        p_ef: share of batch e's cells of type f

* the model's ``y_s`` is then relative (geometric mean 1 in each batch) and ``m_g`` relative (mean 1 weighted by
  the signatures' mean profile), see :mod:`spotmap.mapping.module`.

So the average spot of a batch holds about ``N`` cells, as the user said it does, and the data decide how the
cells are spread over spots and types.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def signature_weights(g_fg: np.ndarray) -> np.ndarray:
    """(G,) weights of the relative sensitivity's mean: the signatures' mean profile ``mean_f g_fg``, summing to 1."""
    gbar = np.asarray(g_fg, dtype=np.float64).mean(0)
    return gbar / gbar.sum()


def relative_sensitivity(m_g: np.ndarray, g_fg: np.ndarray) -> tuple[np.ndarray, float]:
    """``(m_g / m̄, m̄)`` with ``m̄ = Σ_g m_g ḡ_g`` (:func:`signature_weights`); ``m_g`` of shape (1, G) or (G,)."""
    m = np.asarray(m_g, dtype=np.float64)
    level = float((m.reshape(-1) * signature_weights(g_fg)).sum())
    return m / level, level


def detection_level(X: sp.csr_matrix, g_fg: np.ndarray, m_g: np.ndarray, w_sf: np.ndarray, batch: np.ndarray,
                    n_cells_per_location: float) -> np.ndarray:
    """(E,) detection level ``d_e`` of each batch (module docstring).

    ``X`` (S, G) counts, ``g_fg`` (F, G) signatures, ``m_g`` (G,) or (1, G) relative sensitivity, ``w_sf`` (S, F)
    any cell abundances proportional within each batch to the truth (only the shares ``p_ef`` are used),
    ``batch`` (S,) codes 0..E-1.
    """
    totals = np.asarray(X.sum(1, dtype=np.float64)).ravel()
    mrna = (np.asarray(g_fg, dtype=np.float64) * np.asarray(m_g, dtype=np.float64).reshape(1, -1)).sum(1)  # (F,)
    batch = np.asarray(batch, dtype=np.int64)
    E = int(batch.max()) + 1 if batch.size else 1
    level = np.empty(E)
    for e in range(E):
        rows = batch == e
        share = np.asarray(w_sf, dtype=np.float64)[rows].sum(0)
        share = share / share.sum() if share.sum() > 0 else np.full(len(mrna), 1.0 / len(mrna))
        level[e] = totals[rows].mean() / (n_cells_per_location * float(share @ mrna))
    return level


def fix_detection_level(init: dict[str, np.ndarray], X: sp.csr_matrix, g_fg: np.ndarray, batch: np.ndarray,
                        n_cells_per_location: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Turn the factorisation start (absolute ``y_s``, ``m_g``) into the model's (relative ones) and ``d_e``.

    Returns ``(d_e, init)``: ``m_g`` divided by its level, ``y_s`` = 1 (relative), and ``w_sf`` / ``n_s`` rescaled
    so that every expected count ``y_s m_g w_sf g_fg`` of the start is unchanged (before the floor of w_sf).
    """
    init = dict(init)
    m_rel, m_level = relative_sensitivity(init["m_g"], g_fg)
    d_e = detection_level(X, g_fg, m_rel, init["w_sf"], batch, n_cells_per_location)
    factor = (np.asarray(init["y_s"], dtype=np.float64).reshape(-1) * m_level / d_e[batch])[:, None]  # (S, 1)
    init["w_sf"] = np.maximum(init["w_sf"] * factor, 0.01)
    init["n_s_cells_per_location"] = init["w_sf"].sum(1, keepdims=True)
    init["m_g"] = m_rel
    init["y_s"] = np.ones_like(np.asarray(init["y_s"], dtype=np.float64))
    return d_e, init
