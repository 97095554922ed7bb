"""The equal-weight mixture of log-normal posteriors: its moments and exact quantiles.

Each restart's posterior of a cell abundance is log-normal, ``log w ~ Normal(loc_r, scale_r)``; the
mixture of R of them is pooled without sampling: the mean is the mean of the means, the sd follows from
the law of total variance, and the quantiles solve ``mean_r Φ((log q − loc_r) / scale_r) = p``
(vectorised Halley steps safeguarded by bisection, in log space).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr, ndtri

from spotmap.results import QUANTILES

XTOL = 1e-10            #: Newton/bisection stops when every update of log q is below this
MAX_ITER = 200
CHUNK_ELEMENTS = 500_000  #: restarts × spots × types per chunk (4 MB per float64 array; peak ≈ 15 such)


def _solve_quantile(loc: np.ndarray, scale: np.ndarray, p: float, xtol: float, max_iter: int,
                    x0: np.ndarray | None = None) -> np.ndarray:
    """log-space p-quantile of the equal-weight mixture of Normal(loc_r, scale_r); loc, scale (R, n).

    Halley steps (Newton with the curvature term) on g(x) = mean_r Φ((x − loc_r)/scale_r) − p, kept inside
    a bracket that shrinks with the sign of g at every iterate; a step leaving it is replaced by bisection.
    """
    z = float(ndtri(p))
    comp = loc + scale * z  # each component's own p-quantile: the mixture's lies between min and max
    lo, hi = comp.min(0), comp.max(0)
    if x0 is None:  # the moment-matched normal (in log space)
        x0 = loc.mean(0) + np.sqrt((scale**2).mean(0) + loc.var(0)) * z
    x = np.clip(x0, lo, hi)
    out = x.copy()
    idx = np.arange(x.size)
    inv_sqrt2pi = 1.0 / math.sqrt(2.0 * math.pi)
    R = loc.shape[0]
    for _ in range(max_iter):
        t = (x[None, :] - loc) / scale
        g = ndtr(t).sum(0) / R - p
        phi = np.exp(-0.5 * t * t) / scale  # φ(t)/scale, up to 1/sqrt(2π)
        g1 = phi.sum(0) * (inv_sqrt2pi / R)
        g2 = -(phi * t / scale).sum(0) * (inv_sqrt2pi / R)
        lo = np.where(g < 0, x, lo)
        hi = np.where(g > 0, x, hi)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            xn = x - 2 * g * g1 / (2 * g1 * g1 - g * g2)
        bad = ~np.isfinite(xn) | (xn < lo) | (xn > hi)
        xn = np.where(bad, 0.5 * (lo + hi), xn)
        done = (np.abs(xn - x) < xtol) | (hi - lo < xtol)
        out[idx[done]] = xn[done]
        keep = ~done
        if not keep.any():
            return out
        x, lo, hi, loc, scale, idx = xn[keep], lo[keep], hi[keep], loc[:, keep], scale[:, keep], idx[keep]
    out[idx] = x  # not reached in practice: even bisection alone gains a bit per step
    return out


def mixture_quantiles(loc, scale, p, xtol: float = XTOL, max_iter: int = MAX_ITER) -> np.ndarray:
    """Quantiles of the equal-weight mixture of log-normals ``exp(Normal(loc[r], scale[r]))`` over axis 0.

    Parameters
    ----------
    loc, scale
        Arrays of the same shape ``(R, ...)``: R mixture components (restarts) for every element.
    p
        A probability in (0, 1), or a sequence of them.
    xtol
        Absolute tolerance on ``log q`` (relative on q). Newton steps, safeguarded by bisection
        inside the bracket ``[min_r q_r, max_r q_r]`` (each component's own quantile), stop for an
        element once an update is below ``xtol``; Newton converges quadratically, so the error left
        is far below ``xtol``.

    Returns
    -------
    ``q`` of shape ``loc.shape[1:]`` for a scalar ``p``, else ``(len(p),) + loc.shape[1:]``; it solves
    ``mean_r Φ((log q − loc_r) / scale_r) = p``.
    """
    loc = np.asarray(loc, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    if loc.ndim < 1 or loc.shape != scale.shape or loc.shape[0] < 1:
        raise ValueError(f"loc and scale must share a shape (R, ...) with R >= 1; got {loc.shape} and {scale.shape}")
    if not (np.all(np.isfinite(loc)) and np.all(np.isfinite(scale)) and np.all(scale > 0)):
        raise ValueError("loc must be finite and scale finite and > 0")
    ps = np.atleast_1d(np.asarray(p, dtype=np.float64))
    if ps.ndim != 1 or np.any(~(ps > 0) | ~(ps < 1)):
        raise ValueError(f"p must lie strictly between 0 and 1 (got {p!r})")
    R, rest = loc.shape[0], loc.shape[1:]
    n = int(np.prod(rest, dtype=np.int64))
    L, S = loc.reshape(R, n), scale.reshape(R, n)
    out = np.empty((ps.size, n))
    step = max(1, CHUNK_ELEMENTS // R)
    for i in range(0, n, step):
        for k, pk in enumerate(ps):
            out[k, i:i + step] = np.exp(_solve_quantile(L[:, i:i + step], S[:, i:i + step], float(pk), xtol, max_iter))
    out = out.reshape((ps.size,) + rest)
    return out[0] if np.ndim(p) == 0 else out


def mixture_moments(loc, scale) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of the equal-weight mixture of ``exp(Normal(loc[r], scale[r]))`` over axis 0.

    mean = mean_r m_r with m_r = exp(loc_r + scale_r²/2); var = mean_r v_r + mean_r (m_r − mean)²
    with v_r = m_r² (exp(scale_r²) − 1) (law of total variance).
    """
    loc = np.asarray(loc, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    m = np.exp(loc + 0.5 * scale**2)
    mean = m.mean(0)
    var = (m**2 * np.expm1(scale**2)).mean(0) + ((m - mean) ** 2).mean(0)
    return mean, np.sqrt(var)


def moment_matched_lognormal(mean, sd) -> tuple[np.ndarray, np.ndarray]:
    """(loc, scale) of the log-normal with the given mean and sd."""
    mean = np.asarray(mean, dtype=np.float64)
    s2 = np.log1p((np.asarray(sd, dtype=np.float64) / mean) ** 2)
    return np.log(mean) - 0.5 * s2, np.sqrt(s2)


def mixture_summaries(loc, scale, xtol: float = XTOL, start: dict[str, np.ndarray] | None = None
                      ) -> dict[str, np.ndarray]:
    """means, stds, q05, q50, q95 of the log-normal mixture over axis 0 (the keys of results.SUMMARIES).

    ``start``: optional first guesses of the quantiles ({'q05': ..., ...}, same shape as the result).
    """
    loc = np.asarray(loc, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    mean, sd = mixture_moments(loc, scale)
    if start is None:
        q = mixture_quantiles(loc, scale, [QUANTILES[k] for k in QUANTILES], xtol=xtol)
    else:
        R = loc.shape[0]
        q = [np.exp(_solve_quantile(loc.reshape(R, -1), scale.reshape(R, -1), QUANTILES[k], xtol, MAX_ITER,
                                    np.log(start[k]).ravel())).reshape(mean.shape) for k in QUANTILES]
    out = {"means": mean, "stds": sd}
    for i, k in enumerate(QUANTILES):
        out[k] = q[i]
    return out
