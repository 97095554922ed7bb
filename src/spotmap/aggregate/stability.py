"""Agreement between restarts: correlations across spots of their abundance maps, and the ratios of their
total cells, from one pass of sums.

A cell type's stability is the median (or minimum) over restart pairs of the Pearson correlation across
spots of its posterior-mean abundance. A restart's agreement is the median over cell types of the
correlation of its map with the element-wise median of all restarts (with two restarts: with the other).
Correlations are blind to scale, so the absolute abundance is compared too: a cell type's *total ratio* is
``exp`` of the median (or maximum) over restart pairs of ``|log(T_a / T_b)|``, ``T`` the type's total
posterior-mean cells over all spots (symmetric, ≥ 1: 1.5 means one restart finds 1.5 times the other's
cells); a restart's total ratio is ``exp`` of the median over cell types of ``|log(T_r / T_ref)|``, with
``T_ref`` the median over restarts (with two restarts: the other one). Totals below
``TOTAL_FLOOR`` cells per spot count as that much, so that two restarts that both find a type (nearly)
absent agree. The maps are never held whole: :func:`map_stats` accumulates the sums every statistic needs,
a chunk of spots at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spotmap.aggregate import mixture

#: totals are compared as at least this many cells per spot on average (a type both restarts find absent agrees)
TOTAL_FLOOR = 0.01


def mean_chunks(rs: list, S: int):
    """Posterior-mean abundance maps of the restarts ``rs`` (each with ``loc``, ``scale``: spots × types),
    (R, spots, types) float64, a spot chunk at a time."""
    step = max(1, mixture.CHUNK_ELEMENTS // (len(rs) * rs[0].loc.shape[1]))
    for i in range(0, S, step):
        loc = np.stack([r.loc[i:i + step] for r in rs]).astype(np.float64)
        scale = np.stack([r.scale[i:i + step] for r in rs]).astype(np.float64)
        yield np.exp(loc + 0.5 * scale * scale)


@dataclass
class MapStats:
    """Sums over spots of R maps (spots × K each), enough for every correlation between them."""

    n: int
    s1: np.ndarray        # (R, K)   Σ x        (x shifted by a per-column constant: correlations ignore it)
    s2: np.ndarray        # (R, K)   Σ x²
    cross: np.ndarray     # (R, R, K) Σ x_r x_q
    mean: np.ndarray      # (R, K)   column means (unshifted)
    ref1: np.ndarray | None = None   # (K,)   Σ m, m = element-wise median over restarts (shifted)
    ref2: np.ndarray | None = None   # (K,)   Σ m²
    xref: np.ndarray | None = None   # (R, K) Σ x_r m


def map_stats(chunks, with_ref: bool) -> MapStats:
    """One pass over ``chunks`` — arrays (R, spots in the chunk, K) — accumulating :class:`MapStats`."""
    st = None
    for x in chunks:
        x = np.asarray(x, dtype=np.float64)
        if st is None:
            R, _, K = x.shape
            shift = x.mean(1)
            st = MapStats(0, np.zeros((R, K)), np.zeros((R, K)), np.zeros((R, R, K)), np.zeros((R, K)))
            if with_ref:
                ref_shift = np.median(x, axis=0).mean(0)
                st.ref1, st.ref2, st.xref = np.zeros(K), np.zeros(K), np.zeros((R, K))
        xc = x - shift[:, None, :]
        st.n += x.shape[1]
        st.s1 += xc.sum(1)
        st.s2 += (xc * xc).sum(1)
        st.cross += np.einsum("rnk,qnk->rqk", xc, xc)
        if with_ref:
            m = np.median(x, axis=0) - ref_shift
            st.ref1 += m.sum(0)
            st.ref2 += (m * m).sum(0)
            st.xref += np.einsum("rnk,nk->rk", xc, m)
    st.mean = st.s1 / st.n + shift
    return st


def _corr(sxy, sx, sy, sxx, syy, n) -> np.ndarray:
    """Pearson correlation from sums; undefined (a constant map) counts as 0, i.e. no evidence of agreement."""
    vx = sxx / n - (sx / n) ** 2
    vy = syy / n - (sy / n) ** 2
    cov = sxy / n - (sx / n) * (sy / n)
    # a variance at the rounding level of the (shifted) second moment is a constant map
    ok = (vx > 1e-12 * np.maximum(sxx / n, 1e-300)) & (vy > 1e-12 * np.maximum(syy / n, 1e-300))
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(ok, cov / np.sqrt(np.where(ok, vx * vy, 1.0)), 0.0)
    return np.clip(c, -1.0, 1.0)


def pair_correlations(st: MapStats) -> tuple[list[tuple[int, int]], np.ndarray]:
    """pairs [(i, j)] and their correlations (n_pairs, K) across spots."""
    R, K = st.s1.shape
    pairs = [(i, j) for i in range(R) for j in range(i + 1, R)]
    corr = np.array([_corr(st.cross[i, j], st.s1[i], st.s1[j], st.s2[i], st.s2[j], st.n) for i, j in pairs])
    return pairs, corr.reshape(len(pairs), K)


def score(corr: np.ndarray, statistic: str) -> np.ndarray:
    if corr.shape[0] == 0:
        return np.full(corr.shape[1], np.nan)
    return corr.min(0) if statistic == "min" else np.median(corr, axis=0)


def agreement(st: MapStats) -> np.ndarray:
    """Per restart: median over columns of the correlation with the robust reference (see module doc)."""
    R = st.s1.shape[0]
    if R < 2:
        return np.full(R, np.nan)
    if R == 2:
        c = _corr(st.cross[0, 1], st.s1[0], st.s1[1], st.s2[0], st.s2[1], st.n)
        return np.array([np.median(c)] * 2)
    return np.array([np.median(_corr(st.xref[r], st.s1[r], st.ref1, st.s2[r], st.ref2, st.n)) for r in range(R)])


def totals(st: MapStats) -> np.ndarray:
    """(R, K) total posterior-mean cells over all spots, floored at ``TOTAL_FLOOR`` per spot."""
    return np.maximum(st.mean, TOTAL_FLOOR) * st.n


def pair_log_ratios(st: MapStats, pairs: list[tuple[int, int]]) -> np.ndarray:
    """(n_pairs, K) ``|log(T_i / T_j)|`` of every restart pair's totals."""
    log_t = np.log(totals(st))
    return np.array([np.abs(log_t[i] - log_t[j]) for i, j in pairs]).reshape(len(pairs), log_t.shape[1])


def ratio_score(log_ratios: np.ndarray, statistic: str) -> np.ndarray:
    """Per type: ``exp`` of the median (``'median'``) or maximum (``'min'``: every pair must agree) over pairs
    of ``|log ratio|`` (NaN without a pair)."""
    if log_ratios.shape[0] == 0:
        return np.full(log_ratios.shape[1], np.nan)
    return np.exp(log_ratios.max(0) if statistic == "min" else np.median(log_ratios, axis=0))


def total_agreement(st: MapStats) -> np.ndarray:
    """Per restart: ``exp`` of the median over types of ``|log(T_r / T_ref)|`` (see module doc)."""
    R = st.s1.shape[0]
    if R < 2:
        return np.full(R, np.nan)
    log_t = np.log(totals(st))
    ref = log_t[::-1] if R == 2 else np.median(log_t, axis=0)[None, :]
    return np.exp(np.median(np.abs(log_t - ref), axis=1))
