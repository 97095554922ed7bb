"""Co-location factors: a non-negative factorisation of the spots × types cell abundance.

The abundance ``x_sf`` (cells of type f in spot s, e.g. cell2location's q05) is factorised as
``x_sf ≈ Σ_r w_sr h_rf`` with scikit-learn's NMF (Frobenius loss, coordinate descent, elastic-net
penalty ``alpha``/``l1_ratio`` on both W and H — cell2location's ``CoLocatedGroupsSklearnNMF``). A
factor r is a group of cell types found together; from W (spots × factors) and H (factors × types):

* cells of type f attributed to factor r over the whole tissue: ``c_rf = (Σ_s w_sr) h_rf``;
  **colocation factors** (types × factors) ``c_rf / Σ_r c_rf`` — the share of each type's cells in each
  factor, rows summing to 1. (cell2location divides ``h_rf`` by ``Σ_r h_rf``, which leaves out the
  factor's total loading ``Σ_s w_sr`` and so depends on how NMF splits scale between W and H;
  ``c_rf`` does not.)
* **factor abundance** (spots × factors) ``w_sr Σ_f h_rf`` — cells per spot in each factor
  (cell2location's ``nUMI_factors``); summed over factors it is the fitted total cells per spot.

Each type is first divided by its standard deviation over spots (``scale_types``; H is multiplied back,
so the tables stay in cells): on raw abundances the squared loss is dominated by the most abundant types,
and simulated co-located groups were recovered far less often (docs/colocation.md).

Several random initialisations (restarts) are fitted per factor number; the one with the smallest
reconstruction error is kept, and the agreement of the others with it is the **stability** of that
factor number: the mean cosine similarity of the factors' type profiles (rows of H) after matching
factors one to one (Hungarian algorithm). See :func:`choose_n_factors` for the choice of the number.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning

from spotmap.colocation.settings import ColocationSettings

FIT_COLUMNS = ("n_factors", "rel_error", "explained_variance", "gain_per_factor", "stability", "n_iter")


@dataclass
class FactorFit:
    """The best of ``n_restarts`` NMF fits with ``n_factors`` factors.

    ``w_sr``: fitted spots × factors; ``h_rf``: factors × types; ``rel_error``: ‖X − WH‖_F / ‖X‖_F;
    ``explained_variance``: 1 − ‖X − WH‖²_F / ‖X − column means‖²_F; ``stability``: mean matched cosine
    similarity of the other restarts' type profiles with the best one's (NaN with one restart);
    ``model``: the scikit-learn estimator (fitted on ``x / scale_f``), to project further spots;
    ``scale_f``: the divisor of each type (1 when not scaled). Errors are those of the scaled fit.
    ``gain_per_factor`` is filled in by :func:`fit_range`.
    """

    n_factors: int
    w_sr: np.ndarray
    h_rf: np.ndarray
    rel_error: float
    explained_variance: float
    stability: float
    n_iter: int
    model: NMF
    scale_f: np.ndarray
    gain_per_factor: float = float("nan")

    def row(self) -> dict:
        return {k: getattr(self, k) for k in FIT_COLUMNS}


def restart_seeds(seed: int, n_restarts: int, n_factors: int) -> list[int]:
    """Seeds of the restarts for one factor number (different numbers get different seeds)."""
    ss = np.random.SeedSequence([int(seed), int(n_factors)])
    return [int(s) for s in ss.generate_state(n_restarts)]


def _estimator(n_factors: int, seed: int, s: ColocationSettings) -> NMF:
    return NMF(n_components=n_factors, init="random", solver="cd", beta_loss="frobenius", alpha_W=s.alpha,
               alpha_H="same", l1_ratio=s.l1_ratio, max_iter=s.max_iter, tol=s.tol, random_state=seed)


def _unit_rows(h: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(h, axis=1, keepdims=True)
    return np.divide(h, norm, out=np.zeros_like(h), where=norm > 0)


def matched_similarity(h_a: np.ndarray, h_b: np.ndarray) -> float:
    """Mean cosine similarity of the rows of ``h_a`` and ``h_b`` (factors × types) matched one to one."""
    sim = _unit_rows(h_a) @ _unit_rows(h_b).T
    rows, cols = linear_sum_assignment(-sim)
    return float(sim[rows, cols].mean())


def type_scale(x: np.ndarray) -> np.ndarray:
    """Per type, its standard deviation over spots (its mean where that is 0, 1 where both are)."""
    sd, mean = x.std(0), x.mean(0)
    return np.where(sd > 0, sd, np.where(mean > 0, mean, 1.0))


def fit_factors(x: np.ndarray, n_factors: int, seed: int = 0, settings: ColocationSettings | None = None,
                scale_f: np.ndarray | None = None) -> FactorFit:
    """Fit NMF with ``n_factors`` factors to ``x`` (spots × types, non-negative) from ``n_restarts`` starts.

    ``scale_f``: the per-type divisor (default: :func:`type_scale` of ``x`` when ``settings.scale_types``).
    """
    s = settings or ColocationSettings()
    x = np.asarray(x, dtype=np.float64)
    if scale_f is None:
        scale_f = type_scale(x) if s.scale_types else np.ones(x.shape[1])
    x = x / scale_f
    norm2 = float((x ** 2).sum())
    centred2 = float(((x - x.mean(0)) ** 2).sum())
    fits = []
    for r_seed in restart_seeds(seed, max(1, s.n_restarts), n_factors):
        model = _estimator(n_factors, r_seed, s)
        with warnings.catch_warnings():
            # hitting max_iter is reported through n_iter (in the fits table), not as a warning per fit
            warnings.simplefilter("ignore", ConvergenceWarning)
            w = model.fit_transform(x)
        fits.append((float(model.reconstruction_err_) ** 2, w, model))
    best = min(range(len(fits)), key=lambda i: fits[i][0])  # ties: the first
    err2, w, model = fits[best]
    h = model.components_
    others = [matched_similarity(h, f[2].components_) for i, f in enumerate(fits) if i != best]
    return FactorFit(n_factors=n_factors, w_sr=w, h_rf=h * scale_f[None, :], rel_error=float(np.sqrt(err2 / norm2)),
                     explained_variance=1.0 - err2 / centred2 if centred2 > 0 else float("nan"),
                     stability=float(np.mean(others)) if others else float("nan"),
                     n_iter=int(model.n_iter_), model=model, scale_f=scale_f)


def project(fit: FactorFit, x: np.ndarray) -> np.ndarray:
    """W for further spots ``x`` (spots × types) with H fixed: the non-negative, penalised least squares
    problem of the fit, solved by the same coordinate descent (spots × factors)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fit.model.transform(np.asarray(x, dtype=np.float64) / fit.scale_f)


def choose_n_factors(fits: pd.DataFrame, n_types: int, gain_threshold: float) -> tuple[int, str]:
    """The factor number to keep, and why, from the fits table (one row per number tried).

    The smallest number past which one more factor explains less than ``gain_threshold / n_types`` of
    the variance — less than ``gain_threshold`` cell types' worth (types scaled to equal variance). A
    factor grouping co-located types explains the variance those types share, at least about two types'
    worth; past the number of such groups, an added factor only fits one type's own noise (about one
    type's worth). When every added factor is above the threshold, the largest number tried.
    """
    fits = fits.sort_values("n_factors")
    ks = fits["n_factors"].to_numpy()
    if len(ks) == 1:
        return int(ks[0]), f"{int(ks[0])} factors, as requested"
    per_type = 1.0 / n_types
    gain = fits["gain_per_factor"].to_numpy(dtype=np.float64)[1:]   # gain from ks[i] to ks[i + 1]
    small = np.flatnonzero(gain < gain_threshold * per_type)
    stab = fits.set_index("n_factors")["stability"]
    if len(small):
        i = int(small[0])
        k = int(ks[i])
        why = (f"{k} factors: going to {int(ks[i + 1])} explains {gain[i] / per_type:.2f} cell types' worth of "
               f"variance per added factor, below the threshold of {gain_threshold:g}; up to {k} each added "
               "factor explained more" if i > 0 else
               f"{k} factors (the fewest tried): going to {int(ks[i + 1])} already explains only "
               f"{gain[i] / per_type:.2f} cell types' worth of variance per added factor "
               f"(threshold {gain_threshold:g})")
    else:
        k = int(ks[-1])
        why = (f"{k} factors (the most tried): every added factor explained at least {gain.min() / per_type:.2f} "
               f"cell types' worth of variance (threshold {gain_threshold:g}); try a wider range")
    st = float(stab.get(k, float("nan")))
    if np.isfinite(st):
        why += f"; stability across restarts {st:.3f}"
    return k, why


def fit_range(x: np.ndarray, numbers, seed: int = 0, settings: ColocationSettings | None = None
              ) -> tuple[pd.DataFrame, dict[int, FactorFit]]:
    """Fit each factor number in ``numbers``; return the fits table and the fits by number."""
    s = settings or ColocationSettings()
    x = np.asarray(x, dtype=np.float64)
    scale_f = type_scale(x) if s.scale_types else np.ones(x.shape[1])
    fits = {int(k): fit_factors(x, int(k), seed, s, scale_f) for k in sorted(set(int(k) for k in numbers))}
    ks = list(fits)
    for a, b in zip(ks[:-1], ks[1:]):  # gain of going from a to b factors, per added factor
        fits[b].gain_per_factor = (fits[b].explained_variance - fits[a].explained_variance) / (b - a)
    table = pd.DataFrame([f.row() for f in fits.values()], columns=list(FIT_COLUMNS))
    return table, fits


def factor_tables(w_sr: np.ndarray, h_rf: np.ndarray, spots, types) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(colocation_factors, factor_abundance)`` from W (spots × factors) and H (factors × types).

    Factors are ordered by their total cells (largest first) and named ``fact_0``, ``fact_1``, …
    (cell2location's names). A type with no fitted cells has a row of NaN.
    """
    w = np.asarray(w_sr, dtype=np.float64)
    h = np.asarray(h_rf, dtype=np.float64)
    size_r = h.sum(1)                                  # cells per unit of w_sr
    ab = w * size_r[None, :]                           # spots × factors, cells per spot
    order = np.argsort(-ab.sum(0), kind="stable")
    ab, w, h = ab[:, order], w[:, order], h[order]
    names = [f"fact_{i}" for i in range(len(order))]
    c_rf = w.sum(0)[:, None] * h                       # factors × types, cells over the tissue
    total = c_rf.sum(0)
    share = np.divide(c_rf, total[None, :], out=np.full_like(c_rf, np.nan), where=total[None, :] > 0)
    coloc = pd.DataFrame(share.T, index=pd.Index(list(types), name="cell_type"), columns=names)
    abundance = pd.DataFrame(ab, index=pd.Index(list(spots), name="spot"), columns=names)
    return coloc, abundance
