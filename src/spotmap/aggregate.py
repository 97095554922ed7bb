"""Pool mapping restarts into one consensus result and measure how well they agree.

Each restart is a full mapping result (see :mod:`spotmap.results`) from its own seed. Its
variational posterior of every cell abundance is log-normal, ``log w_sf ~ Normal(loc_r, scale_r)``,
so restarts can be pooled **exactly**, without sampling:

* **Consensus** — the equal-weight mixture of the R per-restart posteriors. Its mean is the mean of
  the restart means; its sd follows from the law of total variance; its quantiles solve
  ``mean_r Φ((log q − loc_r) / scale_r) = p`` (:func:`mixture_quantiles`: vectorised Newton steps
  safeguarded by bisection, in log space, to ``|Δ log q| < 1e-10``). u_sf (mRNA counts) is pooled
  the same way, each restart scaled by its own ``mrna_per_cell``. ``obsm['w_sf_loc'/'w_sf_scale']``
  of the consensus hold the *moment-matched* log-normal of the mixture (same mean and sd), so
  :func:`spotmap.results.add_posterior` applied to them reproduces the consensus means and sds; the
  stored quantiles are the exact mixture ones.
* **Stability** — for every pair of restarts and every cell type, the Pearson correlation across
  spots of the posterior-mean abundance (cell types carry the same names in every restart, so they
  match directly). A cell type's stability is the median (or minimum) over pairs; below
  ``threshold`` it is flagged. Co-location groups (``obsm['means_z_sr_groups']``), when present, are
  first matched to those of the best restart with ``scipy.optimize.linear_sum_assignment`` on
  correlation, then scored the same way.
* **Restart flags** — a restart's *agreement* is the median over cell types of the correlation of
  its abundance with the element-wise median of all restarts (with two restarts: with the other
  one). A restart is flagged when its agreement is below ``agreement_threshold`` or its final
  -ELBO exceeds the best one by more than ``elbo_gap`` times the improvement the best restart made
  during training (its first-epoch -ELBO minus its final one). The loss omits data constants, so its
  absolute level means nothing and a gap relative to it would not either.

See docs/aggregate.md for the rules and the output files.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.special import ndtr, ndtri

from spotmap.errors import SpotmapError, input_error
from spotmap.results import (QUANTILES, RESULT_FILES, SITE_U, SITE_W, SUMMARIES, read_results,
                             set_summaries, write_results)
from spotmap.utils import atomic_dir, atomic_path, log, write_table

DEFAULT_THRESHOLD = 0.8
DEFAULT_ELBO_GAP = 0.1
XTOL = 1e-10            #: Newton/bisection stops when every update of log q is below this
MAX_ITER = 200
GROUPS_KEY = "means_z_sr_groups"
_CHUNK_ELEMENTS = 500_000  # restarts × spots × types per chunk (4 MB per float64 array; peak ≈ 15 such)

AGGREGATE_FILES = ("stability.tsv", "restarts.tsv", "stability_pairs.tsv", "summary.txt", "stability_mqc.tsv",
                   "stability_heatmap_mqc.yaml", "restarts_mqc.tsv", "aggregate_summary_mqc.html")


# --------------------------------------------------------------------------------------------------
# The mixture of log-normals
# --------------------------------------------------------------------------------------------------

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
    step = max(1, _CHUNK_ELEMENTS // R)
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


# --------------------------------------------------------------------------------------------------
# Checking and aligning restarts
# --------------------------------------------------------------------------------------------------

@dataclass
class _Restart:
    name: str
    source: str
    loc: np.ndarray          # spots × types, float64, in the first restart's spot and type order
    scale: np.ndarray
    mrna_per_cell: np.ndarray
    elbo: float
    elbo_initial: float      # first-epoch -ELBO (from the training history), NaN when unknown
    epochs: object
    converged: object
    seed: object
    settings: dict
    detection: np.ndarray | None
    groups: np.ndarray | None
    group_names: list[str] | None


def _diff(a, b, what: str, ref: str) -> str:
    a, b = list(a), list(b)
    missing = [x for x in a if x not in set(b)]
    extra = [x for x in b if x not in set(a)]
    msg = f"{what} differ from {ref}'s: {len(missing)} missing, {len(extra)} extra"
    ex = (missing[:1] and f"e.g. missing {missing[0]!r}") or (extra[:1] and f"e.g. extra {extra[0]!r}") or \
        "(duplicated names)"
    return f"{msg}, {ex}"


def _order(names_ref: pd.Index, names: pd.Index, src: str, field_name: str, what: str, ref: str) -> np.ndarray | None:
    """Positions that put ``names`` into ``names_ref``'s order (None when already equal); refuse a mismatch."""
    if names.equals(names_ref):
        return None
    if len(names) != len(names_ref) or set(names) != set(names_ref) or not names.is_unique:
        raise input_error(src, _diff(names_ref, names, what, ref), field=field_name)
    return names.get_indexer(names_ref)


def _mod(a: ad.AnnData) -> dict:
    return dict(a.uns.get("mod", {}))


def _array(x, dtype=np.float64) -> np.ndarray:
    return np.asarray(x.to_numpy() if isinstance(x, pd.DataFrame) else x, dtype=dtype)


def _mean_chunks(rs: list[_Restart], S: int):
    """Posterior-mean abundance maps of the restarts, (R, spots, types) float64, a spot chunk at a time."""
    step = max(1, _CHUNK_ELEMENTS // (len(rs) * rs[0].loc.shape[1]))
    for i in range(0, S, step):
        loc = np.stack([r.loc[i:i + step] for r in rs]).astype(np.float64)
        scale = np.stack([r.scale[i:i + step] for r in rs]).astype(np.float64)
        yield np.exp(loc + 0.5 * scale * scale)


def _check_restarts(adatas: dict[str, ad.AnnData], sources: dict[str, str]) -> tuple[list[_Restart], list[str]]:
    if not adatas:
        raise SpotmapError("no restarts to aggregate: give at least one --restart folder")
    names = list(adatas)
    first = names[0]
    base = adatas[first]
    factors = None
    out = []
    for name in names:
        a, src = adatas[name], sources.get(name, name)
        mod = _mod(a)
        for key in ("w_sf_loc", "w_sf_scale"):
            if key not in a.obsm:
                raise input_error(src, "missing the w_sf posterior: not a spotmap mapping result",
                                  field=f"obsm['{key}']")
        if "factor_names" not in mod:
            raise input_error(src, "missing cell-type names", field="uns['mod']['factor_names']")
        fn = pd.Index([str(x) for x in np.atleast_1d(mod["factor_names"])])
        if factors is None:
            factors = fn
            if not fn.is_unique:
                raise input_error(src, "duplicated cell-type names", field="uns['mod']['factor_names']")
        f_order = _order(factors, fn, src, "uns['mod']['factor_names']", "cell types", first)
        s_order = _order(base.obs_names, a.obs_names, src, "obs_names", "spots", first)
        if not a.var_names.equals(base.var_names) and (len(a.var_names) != len(base.var_names)
                                                       or set(a.var_names) != set(base.var_names)):
            raise input_error(src, _diff(base.var_names, a.var_names, "genes", first), field="var_names")
        # float32 as stored (halves memory on large data); every computation casts a chunk to float64
        loc, scale = _array(a.obsm["w_sf_loc"], np.float32), _array(a.obsm["w_sf_scale"], np.float32)
        for key, arr in (("w_sf_loc", loc), ("w_sf_scale", scale)):
            if arr.shape != (a.n_obs, len(fn)):
                raise input_error(src, f"shape must be spots × cell types = {(a.n_obs, len(fn))}",
                                  field=f"obsm['{key}']", value=arr.shape)
        if not np.all(np.isfinite(loc)):
            raise input_error(src, "holds non-finite values", field="obsm['w_sf_loc']",
                              value=int((~np.isfinite(loc)).sum()))
        if not np.all(np.isfinite(scale) & (scale > 0)):
            raise input_error(src, "must be finite and > 0", field="obsm['w_sf_scale']",
                              value=int((~(np.isfinite(scale) & (scale > 0))).sum()))
        mrna = np.asarray(mod.get("mrna_per_cell", []), dtype=np.float64).ravel()
        if mrna.shape != (len(fn),) or not np.all(np.isfinite(mrna) & (mrna > 0)):
            raise input_error(src, f"must hold {len(fn)} positive numbers, one per cell type",
                              field="uns['mod']['mrna_per_cell']", value=mrna.shape)
        if f_order is not None:
            loc, scale, mrna = loc[:, f_order], scale[:, f_order], mrna[f_order]
        if s_order is not None:
            loc, scale = loc[s_order], scale[s_order]
        elbo = mod.get("elbo")
        try:
            elbo = float(elbo) if elbo is not None else float("nan")
        except (TypeError, ValueError):
            raise input_error(src, "must be a number", field="uns['mod']['elbo']", value=elbo) from None
        try:
            elbo0 = float(mod.get("elbo_initial", float("nan")))
        except (TypeError, ValueError):
            elbo0 = float("nan")
        det = None
        if "detection_y_s" in a.obs:
            det = a.obs["detection_y_s"].to_numpy(dtype=np.float64)
            det = det if s_order is None else det[s_order]
        groups = gnames = None
        if GROUPS_KEY in a.obsm:
            g = a.obsm[GROUPS_KEY]
            gnames = [str(c) for c in g.columns] if isinstance(g, pd.DataFrame) else \
                [f"group_{k + 1}" for k in range(np.shape(g)[1])]
            groups = _array(g)
            if groups.ndim != 2 or groups.shape[0] != a.n_obs:
                raise input_error(src, "shape must be spots × groups", field=f"obsm['{GROUPS_KEY}']",
                                  value=groups.shape)
            groups = groups if s_order is None else groups[s_order]
        settings = mod.get("settings", {})
        out.append(_Restart(name, src, loc, scale, mrna, elbo, elbo0, mod.get("epochs"), mod.get("converged"),
                            mod.get("seed"),
                            dict(settings) if isinstance(settings, dict) else {}, det, groups, gnames))
    return out, list(factors)


# --------------------------------------------------------------------------------------------------
# Stability
# --------------------------------------------------------------------------------------------------

def _standardise(x: np.ndarray) -> np.ndarray:
    """Centre and scale along axis -2 (spots); a constant column becomes NaN."""
    c = x - x.mean(-2, keepdims=True)
    sd = np.sqrt((c**2).mean(-2, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd > 0, c / sd, np.nan)


@dataclass
class _MapStats:
    """Sums over spots of R maps (spots × K each), enough for every correlation between them."""

    n: int
    s1: np.ndarray        # (R, K)   Σ x        (x shifted by a per-column constant: correlations ignore it)
    s2: np.ndarray        # (R, K)   Σ x²
    cross: np.ndarray     # (R, R, K) Σ x_r x_q
    mean: np.ndarray      # (R, K)   column means (unshifted)
    ref1: np.ndarray | None = None   # (K,)   Σ m, m = element-wise median over restarts (shifted)
    ref2: np.ndarray | None = None   # (K,)   Σ m²
    xref: np.ndarray | None = None   # (R, K) Σ x_r m


def _map_stats(chunks, with_ref: bool) -> _MapStats:
    """One pass over ``chunks`` — arrays (R, spots in the chunk, K) — accumulating :class:`_MapStats`."""
    st = None
    for x in chunks:
        x = np.asarray(x, dtype=np.float64)
        if st is None:
            R, _, K = x.shape
            shift = x.mean(1)
            st = _MapStats(0, np.zeros((R, K)), np.zeros((R, K)), np.zeros((R, R, K)), np.zeros((R, K)))
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


def _pair_correlations(st: _MapStats) -> tuple[list[tuple[int, int]], np.ndarray]:
    """pairs [(i, j)] and their correlations (n_pairs, K) across spots."""
    R, K = st.s1.shape
    pairs = [(i, j) for i in range(R) for j in range(i + 1, R)]
    corr = np.array([_corr(st.cross[i, j], st.s1[i], st.s1[j], st.s2[i], st.s2[j], st.n) for i, j in pairs])
    return pairs, corr.reshape(len(pairs), K)


def _score(corr: np.ndarray, statistic: str) -> np.ndarray:
    if corr.shape[0] == 0:
        return np.full(corr.shape[1], np.nan)
    return corr.min(0) if statistic == "min" else np.median(corr, axis=0)


def _agreement(st: _MapStats) -> np.ndarray:
    """Per restart: median over columns of the correlation with the robust reference (see module doc)."""
    R = st.s1.shape[0]
    if R < 2:
        return np.full(R, np.nan)
    if R == 2:
        c = _corr(st.cross[0, 1], st.s1[0], st.s1[1], st.s2[0], st.s2[1], st.n)
        return np.array([np.median(c)] * 2)
    return np.array([np.median(_corr(st.xref[r], st.s1[r], st.ref1, st.s2[r], st.ref2, st.n)) for r in range(R)])


def _align_groups(restarts: list[_Restart], ref: int) -> tuple[np.ndarray, list[str], list[list[int]]]:
    """Match every restart's co-location groups to those of restart ``ref``; return (R, spots, K) aligned."""
    k_ref = restarts[ref].groups.shape[1]
    for r in restarts:
        if r.groups.shape[1] != k_ref:
            raise input_error(r.source, f"has {r.groups.shape[1]} co-location groups, restart "
                              f"{restarts[ref].name!r} has {k_ref}", field=f"obsm['{GROUPS_KEY}']")
    Zref = _standardise(restarts[ref].groups)
    aligned, perms = [], []
    for r in restarts:
        c = np.nan_to_num(Zref.T @ _standardise(r.groups) / Zref.shape[0], nan=0.0)  # ref groups × r's groups
        rows, cols = linear_sum_assignment(-c)
        perm = list(cols[np.argsort(rows)])
        perms.append([int(x) for x in perm])
        aligned.append(r.groups[:, perm])
    return np.stack(aligned), list(restarts[ref].group_names), perms


# --------------------------------------------------------------------------------------------------
# The aggregation
# --------------------------------------------------------------------------------------------------

@dataclass
class AggregateResult:
    """Everything ``spotmap aggregate`` writes (see :func:`write_aggregate`)."""

    consensus: ad.AnnData
    stability: pd.DataFrame          #: cell_type, stability, flagged
    restarts: pd.DataFrame           #: restart, elbo, agreement, flagged
    pairs: pd.DataFrame              #: cell_type, restart_a, restart_b, correlation (long format)
    groups: pd.DataFrame | None      #: group, stability, flagged (co-location groups), or None
    summary: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)


def _fmt(x: float) -> str:
    return "NA" if x is None or not np.isfinite(x) else f"{x:.3g}"


def _consensus(base: ad.AnnData, rs: list[_Restart], factors: list[str]) -> ad.AnnData:
    mrna = np.stack([r.mrna_per_cell for r in rs])  # R × F
    S, F = rs[0].loc.shape
    cons = base.copy()
    for k in list(cons.obsm.keys()):
        if k.endswith(SITE_W) or k.endswith(SITE_U) or k in ("w_sf_loc", "w_sf_scale", GROUPS_KEY):
            del cons.obsm[k]
    summ_w = {k: np.empty((S, F), dtype=np.float32) for k in SUMMARIES}
    summ_u = {k: np.empty((S, F), dtype=np.float32) for k in SUMMARIES}
    mm_loc = np.empty((S, F), dtype=np.float32)
    mm_scale = np.empty((S, F), dtype=np.float32)
    step = max(1, _CHUNK_ELEMENTS // (len(rs) * F))
    log_m = np.log(mrna)[:, None, :]
    gm_m = np.exp(np.log(mrna).mean(0))[None, :]
    for i in range(0, S, step):
        sl = slice(i, i + step)
        loc = np.stack([r.loc[sl] for r in rs]).astype(np.float64)
        scale = np.stack([r.scale[sl] for r in rs]).astype(np.float64)
        w = mixture_summaries(loc, scale)
        # u_sf: each restart shifted by its own log mRNA per cell; w's quantiles times their geometric mean
        # are an excellent first guess (the restarts' values differ by little)
        u = mixture_summaries(loc + log_m, scale,
                              start={k: w[k] * gm_m for k in QUANTILES})
        for k in SUMMARIES:
            summ_w[k][sl], summ_u[k][sl] = w[k], u[k]
        mm_loc[sl], mm_scale[sl] = moment_matched_lognormal(w["means"], w["stds"])
    cons.obsm["w_sf_loc"] = mm_loc
    cons.obsm["w_sf_scale"] = mm_scale
    set_summaries(cons, summ_w, factors, SITE_W)
    set_summaries(cons, summ_u, factors, SITE_U)
    cons.obs["total_cell_abundance"] = summ_w["means"].sum(1)
    if all(r.detection is not None for r in rs):
        cons.obs["detection_y_s"] = np.mean([r.detection for r in rs], axis=0).astype(np.float32)
    mod = _mod(base)
    for key in ("elbo", "elbo_initial", "seed", "epochs", "converged"):
        mod.pop(key, None)
    mod["factor_names"] = list(factors)
    mod["mrna_per_cell"] = [float(x) for x in mrna.mean(0)]
    cons.uns["mod"] = mod
    return cons


def aggregate(adatas: dict[str, ad.AnnData], threshold: float = DEFAULT_THRESHOLD, stability: str = "median",
              agreement_threshold: float | None = None, elbo_gap: float = DEFAULT_ELBO_GAP,
              exclude_flagged: bool = False, sources: dict[str, str] | None = None,
              histories: dict[str, pd.DataFrame] | None = None) -> AggregateResult:
    """Pool restarts (``{restart name: result AnnData}``) into a consensus and score their stability.

    Parameters
    ----------
    threshold
        Cell types (and co-location groups) whose stability is below it are flagged.
    stability
        ``'median'`` (default) or ``'min'``: the statistic over restart pairs of each cell type's
        correlation across spots.
    agreement_threshold
        Restarts whose agreement is below it are flagged (default: ``threshold``).
    elbo_gap
        Restarts whose final -ELBO exceeds the best (lowest) one by more than this fraction of the best
        restart's training improvement (first-epoch minus final -ELBO) are flagged. The first-epoch
        value comes from ``histories`` or ``uns['mod']['elbo_initial']``; without it the ELBO rule is
        not applied (said in the summary).
    exclude_flagged
        Leave flagged restarts out of the consensus and the cell-type stability (when at least one
        restart is left); they stay listed in the restarts table.
    sources
        ``{restart name: file or folder}`` used to name the odd input in errors.
    histories
        ``{restart name: training history}`` (columns epoch, elbo, ...), for the first-epoch -ELBO.
    """
    if stability not in ("median", "min"):
        raise SpotmapError(f"--stability must be 'median' or 'min' (got {stability!r})")
    for name, val in (("--threshold", threshold), ("--elbo-gap", elbo_gap)) + (
            (("--agreement-threshold", agreement_threshold),) if agreement_threshold is not None else ()):
        if not (isinstance(val, (int, float)) and np.isfinite(val)):
            raise SpotmapError(f"{name} must be a finite number (got {val!r})")
    if not -1 <= threshold <= 1:
        raise SpotmapError(f"--threshold must lie between -1 and 1, a correlation (got {threshold!r})")
    if elbo_gap < 0:
        raise SpotmapError(f"--elbo-gap must be >= 0 (got {elbo_gap!r})")
    agreement_threshold = threshold if agreement_threshold is None else agreement_threshold
    sources = dict(sources or {})
    rs_all, factors = _check_restarts(adatas, sources)
    for r in rs_all:
        h = (histories or {}).get(r.name)
        if h is not None and len(h) and "elbo" in h:
            r.elbo_initial = float(np.asarray(h["elbo"], dtype=np.float64)[0])
    names_all = [r.name for r in rs_all]
    R_all = len(rs_all)
    _log_settings_differences(rs_all)

    # ---- restart flags: ELBO and agreement over all restarts
    elbo = np.array([r.elbo for r in rs_all])
    finite = np.isfinite(elbo)
    best = int(np.nanargmin(np.where(finite, elbo, np.nan))) if finite.any() else None
    if not finite.all():
        log.warning("no final ELBO (uns['mod']['elbo']) in restart(s) %s: the ELBO rule skips them",
                    ", ".join(n for n, f in zip(names_all, finite) if not f))
    gap = np.full(R_all, np.nan)
    elbo_scale = float("nan")
    if best is not None:
        elbo_scale = rs_all[best].elbo_initial - elbo[best]
        if np.isfinite(elbo_scale) and elbo_scale > 0:
            gap = (elbo - elbo[best]) / elbo_scale
        else:
            log.warning("the best restart %s has no first-epoch -ELBO above its final one (training history): the "
                        "ELBO rule is not applied", names_all[best])
    S = rs_all[0].loc.shape[0]
    stats_all = _map_stats(_mean_chunks(rs_all, S), with_ref=R_all >= 3)
    agreement = _agreement(stats_all)
    low_agree = np.nan_to_num(agreement, nan=np.inf) < agreement_threshold
    bad_elbo = np.nan_to_num(gap, nan=-np.inf) > elbo_gap
    r_flag = low_agree | bad_elbo
    restarts_df = pd.DataFrame({"restart": names_all, "elbo": elbo, "agreement": agreement, "flagged": r_flag})

    keep = list(range(R_all))
    excluded: list[str] = []
    if exclude_flagged and r_flag.any():
        if r_flag.all():
            log.warning("--exclude-flagged: every restart is flagged; keeping them all in the consensus")
        else:
            keep = [i for i in range(R_all) if not r_flag[i]]
            excluded = [names_all[i] for i in range(R_all) if r_flag[i]]
            log.info("--exclude-flagged: leaving %s out of the consensus and the stability", ", ".join(excluded))
    rs = [rs_all[i] for i in keep]
    names = [r.name for r in rs]
    stats = stats_all if len(keep) == R_all else _map_stats(_mean_chunks(rs, S), with_ref=False)

    # ---- cell-type stability
    pairs, corr = _pair_correlations(stats)
    score = _score(corr, stability)
    t_flag = np.nan_to_num(score, nan=np.inf) < threshold
    stab_df = pd.DataFrame({"cell_type": factors, "stability": score, "flagged": t_flag})
    pairs_df = pd.DataFrame([
        {"cell_type": f, "restart_a": names[i], "restart_b": names[j], "correlation": float(corr[p, k])}
        for p, (i, j) in enumerate(pairs) for k, f in enumerate(factors)],
        columns=["cell_type", "restart_a", "restart_b", "correlation"])

    # ---- co-location groups
    groups_df, group_mean, group_names, matching = None, None, None, {}
    have = [r.groups is not None for r in rs]
    if all(have):
        ref = names.index(names_all[best]) if best is not None and names_all[best] in names else 0
        aligned, group_names, perms = _align_groups(rs, ref)
        _, gcorr = _pair_correlations(_map_stats([aligned], with_ref=False))
        matching = {r.name: [r.group_names[k] for k in perm] for r, perm in zip(rs, perms)}
        gscore = _score(gcorr, stability)
        groups_df = pd.DataFrame({"group": group_names, "stability": gscore,
                                  "flagged": np.nan_to_num(gscore, nan=np.inf) < threshold})
        group_mean = aligned.mean(0)
        log.info("co-location groups matched to restart %s by assignment on correlation", names[ref])
    elif any(have):
        log.warning("only some restarts carry obsm['%s'] (%s): co-location group stability not assessed",
                    GROUPS_KEY, ", ".join(n for n, h in zip(names, have) if h))
    else:
        log.info("the restarts carry no co-location groups (obsm['%s']): their stability is not assessed",
                 GROUPS_KEY)

    # ---- consensus
    base = adatas[names_all[0]]  # the spots, genes and counts (identical in every restart)
    cons = _consensus(base, rs, factors)
    if group_mean is not None:
        cons.obsm[GROUPS_KEY] = pd.DataFrame(group_mean.astype(np.float32), index=cons.obs_names,
                                             columns=group_names)
    settings = {"threshold": float(threshold), "stability": stability,
                "agreement_threshold": float(agreement_threshold), "elbo_gap": float(elbo_gap),
                "exclude_flagged": bool(exclude_flagged)}
    info = {
        "method": "equal-weight mixture of the restarts' log-normal posteriors",
        "summaries": "means and stds: exact mixture moments; q05/q50/q95: exact mixture quantiles "
                     f"(Newton-bisection in log space, |d log q| < {XTOL:g})",
        "w_sf_loc_scale": "moment-matched log-normal of the mixture (same mean and sd; its quantiles are "
                          "approximate, the stored q05/q50/q95 are exact)",
        "mrna_per_cell": "mean over restarts; u_sf summaries pool each restart scaled by its own value",
        "restarts": names_all, "used": names, "excluded": excluded,
        "seeds": [str(r.seed) for r in rs_all],
        "elbo": [float(x) for x in elbo],
        "elbo_initial": [float(r.elbo_initial) for r in rs_all],
        "elbo_gap_of_improvement": [float(x) for x in gap],
        "epochs": [str(r.epochs) for r in rs_all],
        "converged": [str(r.converged) for r in rs_all],
        "best_restart": names_all[best] if best is not None else "",
        "mrna_per_cell_by_restart": {r.name: [float(x) for x in r.mrna_per_cell] for r in rs_all},
        "base_restart": names_all[0],
        "group_matching": matching,  # per restart: its group matched to each of the reference's groups
        **settings,
    }
    mod = dict(cons.uns["mod"])
    mod["consensus"] = info
    cons.uns["mod"] = mod

    result = AggregateResult(cons, stab_df, restarts_df, pairs_df, groups_df, settings=settings)
    result.summary = _summary_lines(result, rs_all, names, corr, pairs, stats.mean.mean(0), gap, low_agree,
                                    bad_elbo, best, group_names is not None or any(have))
    return result


def aggregate_restarts(adatas: dict[str, ad.AnnData], threshold: float = DEFAULT_THRESHOLD, stability: str = "median",
                       agreement_threshold: float | None = None, elbo_gap: float = DEFAULT_ELBO_GAP,
                       exclude_flagged: bool = False, sources: dict[str, str] | None = None
                       ) -> tuple[ad.AnnData, pd.DataFrame, pd.DataFrame]:
    """``(consensus AnnData, stability DataFrame, restarts DataFrame)`` — see :func:`aggregate`."""
    res = aggregate(adatas, threshold=threshold, stability=stability, agreement_threshold=agreement_threshold,
                    elbo_gap=elbo_gap, exclude_flagged=exclude_flagged, sources=sources)
    return res.consensus, res.stability, res.restarts


def _log_settings_differences(rs: list[_Restart]) -> None:
    ref = rs[0].settings
    for r in rs[1:]:
        keys = sorted(k for k in set(ref) | set(r.settings) if k != "seed" and
                      json.dumps(ref.get(k), default=str) != json.dumps(r.settings.get(k), default=str))
        if keys:
            log.warning("restart %s was run with other settings than %s: %s", r.name, rs[0].name, ", ".join(keys))


def _summary_lines(res: AggregateResult, rs_all, names, corr, pairs, mean_ab, gap, low_agree, bad_elbo, best,
                   groups_seen: bool) -> list[str]:
    s = res.settings
    stat = s["stability"]
    lines = []
    R_all, R = len(rs_all), len(names)
    if R == 1:
        lines.append(f"Only one restart ({names[0]}) was aggregated: stability across restarts cannot be assessed "
                     "(reported as NA); the consensus is that restart's posterior. Run 3 or more restarts to check it.")
    for i, row in res.restarts.iterrows():
        why = []
        if low_agree[i]:
            why.append(f"its cell-type maps disagree with the other restarts (agreement {_fmt(row['agreement'])} "
                       f"< {s['agreement_threshold']:g})")
        if bad_elbo[i]:
            why.append(f"its final -ELBO {row['elbo']:.8g} is worse than the best ({rs_all[best].name}, "
                       f"{rs_all[best].elbo:.8g}) by {100 * gap[i]:.3g}% of the improvement that restart made "
                       f"during training (rule: > {100 * s['elbo_gap']:g}%)")
        r = rs_all[i]
        unconverged = r.converged is False or str(r.converged) == "False"
        if why and unconverged:
            why.append(f"it stopped at epoch {r.epochs} without meeting the convergence rule")
        elif unconverged:  # informational only (no "flag" wording: the report reads that as a finding)
            lines.append(f"Restart {row['restart']} reached its epoch limit ({r.epochs}) before meeting the "
                         "convergence rule; its maps and final -ELBO are in line with the others.")
        if why:
            extra = " With only two restarts it cannot be told which one is off." if R_all == 2 and low_agree[i] \
                else ""
            excl = " It was left out of the consensus." if row["restart"] not in names else ""
            lines.append(f"Restart {row['restart']} is flagged: {' and '.join(why)}; it may have stopped early "
                         f"or landed in a poor optimum.{extra}{excl}")
    for k, row in res.stability.iterrows():
        if not row["flagged"]:
            continue
        worst = int(np.argmin(corr[:, k]))
        i, j = pairs[worst]
        lines.append(f"Cell type {row['cell_type']} is unstable across restarts: the {stat} correlation of its "
                     f"abundance across spots between restarts is {_fmt(row['stability'])} "
                     f"(threshold {s['threshold']:g}; "
                     f"lowest {_fmt(corr[worst, k])}, {names[i]} vs {names[j]}); mean {mean_ab[k]:.3g} cells per spot. "
                     "Its map depends on the run: treat it with caution (it may be rare, absent, or confused with a "
                     "similar or missing reference type).")
    if res.groups is not None:
        for _, row in res.groups[res.groups["flagged"]].iterrows():
            lines.append(f"Co-location group {row['group']} is unstable across restarts ({stat} correlation "
                         f"{_fmt(row['stability'])} < {s['threshold']:g}).")
    elif not groups_seen:
        lines.append(f"The restarts carry no co-location groups (obsm['{GROUPS_KEY}']): their stability was not "
                     "assessed.")
    n_flag = int(res.stability["flagged"].sum())
    pooled_flagged = [n for n, f in zip(res.restarts["restart"], res.restarts["flagged"]) if f and n in names]
    if pooled_flagged and R > 1:
        lines.append(f"The consensus and the cell-type stability include the flagged restart(s) "
                     f"{', '.join(pooled_flagged)}; rerun with --exclude-flagged to pool and score the others only.")
    if R > 1 and n_flag == 0:
        lines.append(f"All {len(res.stability)} cell types are stable across {R} restarts ({stat} pairwise "
                     f"correlation >= {s['threshold']:g}).")
    if best is not None and not np.isfinite(gap[best]) and R_all > 1:
        lines.append("No first-epoch -ELBO (training_history.tsv) for the best restart: restarts were not checked "
                     "for a far worse final -ELBO.")
    if best is not None:
        lines.append(f"Best restart (lowest final -ELBO): {rs_all[best].name} ({rs_all[best].elbo:.8g}).")
    else:
        lines.append("No restart recorded a final ELBO: the best restart cannot be named.")
    return lines


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------

def _restart_name(path: Path) -> str:
    p = Path(path)
    return (p.parent if p.name == "sp.h5ad" else p).resolve().name


def _read_elem(elem):
    try:
        from anndata.io import read_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem
    return read_elem(elem)


def _read_light(folder: Path) -> ad.AnnData:
    """A restart's result with only what aggregation needs (obs, var, the w_sf posterior, co-location groups,
    uns['mod']): every restart but the first, whose counts and summaries would be read for nothing."""
    import h5py

    path = folder / "sp.h5ad"
    if not path.exists():
        raise input_error(path, "not found: not a spotmap mapping result folder")
    try:
        with h5py.File(path, "r") as f:
            for key in ("w_sf_loc", "w_sf_scale"):
                if f"obsm/{key}" not in f:
                    raise input_error(path, "missing the w_sf posterior", field=f"obsm['{key}']")
            obsm = {k: _read_elem(f[f"obsm/{k}"]) for k in ("w_sf_loc", "w_sf_scale", GROUPS_KEY) if f"obsm/{k}" in f}
            light = ad.AnnData(obs=_read_elem(f["obs"]), var=_read_elem(f["var"]),
                               uns={"mod": _read_elem(f["uns/mod"])} if "uns/mod" in f else {})
    except SpotmapError:
        raise
    except Exception as exc:  # noqa: BLE001 — an unreadable file is bad input, said in one line
        raise input_error(path, f"cannot be read as AnnData ({type(exc).__name__}: {exc})") from None
    for k, v in obsm.items():
        light.obsm[k] = v
    return light


def load_restarts(folders) -> tuple[dict[str, ad.AnnData], dict[str, str]]:
    """Read restart result folders: ``({name: AnnData}, {name: folder})``; name = the folder's name.

    The first restart is read in full (its counts go into the consensus ``sp.h5ad``); the others
    without their count matrix, which aggregation does not need. The first-epoch -ELBO of each
    restart's ``training_history.tsv`` becomes ``uns['mod']['elbo_initial']`` (for the ELBO rule).
    """
    folders = [Path(f).parent if Path(f).name == "sp.h5ad" else Path(f) for f in folders]
    if not folders:
        raise SpotmapError("no restarts to aggregate: give at least one --restart folder")
    adatas, sources = {}, {}
    for k, folder in enumerate(folders):
        name = _restart_name(folder)
        if name in adatas:
            raise input_error(folder, f"two restarts share the folder name {name!r} (also {sources[name]}); "
                              "restarts are named by their folder, so give each its own name")
        adatas[name] = a = read_results(folder) if k == 0 else _read_light(folder)
        sources[name] = str(folder)
        hist = folder / "training_history.tsv"
        mod = dict(a.uns.get("mod", {}))
        if "elbo_initial" not in mod and hist.exists():
            try:
                first = pd.read_csv(hist, sep="\t", comment="#", nrows=1)
                mod["elbo_initial"] = float(first["elbo"].iloc[0])
                a.uns["mod"] = mod
            except Exception as exc:  # noqa: BLE001 — only the ELBO rule needs it; say so and go on
                log.warning("%s: cannot read the first-epoch -ELBO (%s); the ELBO rule may be skipped", hist, exc)
    return adatas, sources


def _na(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in out.columns:
        if out[c].dtype.kind == "f":
            out[c] = out[c].map(lambda x: "NA" if not np.isfinite(x) else f"{x:.6g}")
    return out


def _check_outdir(outdir: Path, sources=()) -> None:
    """Refuse an --outdir that is an input restart or a non-empty folder other than an earlier aggregate result."""
    if any(outdir.resolve() == Path(src).resolve() for src in sources):
        raise input_error(outdir, "is one of the --restart folders; choose another --outdir")
    if outdir.exists() and (not outdir.is_dir() or (any(outdir.iterdir()) and not (outdir / "stability.tsv").exists())):
        raise input_error(outdir, "exists and is not an aggregate result folder; refusing to replace it "
                          "(choose a new --outdir)")


def write_aggregate(res: AggregateResult, outdir: str | Path, sources=()) -> Path:
    """Write the consensus folder: the restart files, stability/restart tables, summary and MultiQC content.

    The folder is assembled beside ``outdir`` and moved into place only when complete. ``outdir`` may
    not be one of ``sources`` (the restart folders), nor a non-empty folder that is not an earlier
    aggregate result (one holding ``stability.tsv``).
    """
    from spotmap.report.mqc import write_mqc_table, write_mqc_yaml

    outdir = Path(outdir)
    _check_outdir(outdir, sources)
    s = res.settings
    stat = s["stability"]
    with atomic_dir(outdir) as tmp:
        write_table(_na(res.stability), tmp / "stability.tsv", index=False)
        write_table(_na(res.restarts), tmp / "restarts.tsv", index=False)
        write_table(_na(res.pairs), tmp / "stability_pairs.tsv", index=False)
        if res.groups is not None:
            write_table(_na(res.groups), tmp / "stability_groups.tsv", index=False)
        with atomic_path(tmp / "summary.txt") as t:
            Path(t).write_text("".join(f"{ln}\n" for ln in res.summary))

        used = res.consensus.uns["mod"]["consensus"]["used"]
        desc = (f"Agreement of the cell-type maps between {len(used)} mapping restart(s): the {stat} over restart "
                f"pairs of the correlation across spots of each cell type's abundance; below {s['threshold']:g} "
                "it is flagged.")
        st = res.stability.set_index("cell_type").rename_axis("Cell type")
        write_mqc_table(_na(st), tmp / "stability_mqc.tsv", id="spotmap_stability", section_name="Restart stability",
                        description=desc, headers={
                            "stability": {"title": "Stability", "min": -1, "max": 1, "scale": "RdYlGn",
                                          "description": f"{stat} pairwise correlation across spots"},
                            "flagged": {"title": "Flagged", "description": f"stability < {s['threshold']:g}"}})
        rt = res.restarts.set_index("restart").rename_axis("Restart")
        best = res.consensus.uns["mod"]["consensus"]["best_restart"]
        write_mqc_table(_na(rt), tmp / "restarts_mqc.tsv", id="spotmap_restarts", section_name="Mapping restarts",
                        description=(f"Final -ELBO (lower is better; best: {best or 'NA'}), agreement with the "
                                     f"other restarts (median over cell types of the correlation) and flags "
                                     f"(agreement < {s['agreement_threshold']:g}, or final -ELBO above the "
                                     f"best by more than {100 * s['elbo_gap']:g}% of the best restart's "
                                     "training improvement)."),
                        headers={"elbo": {"title": "-ELBO", "format": "{:,.6g}"},
                                 "agreement": {"title": "Agreement", "min": -1, "max": 1, "scale": "RdYlGn"},
                                 "flagged": {"title": "Flagged"}})
        pair_labels = [f"{a} vs {b}" for a, b in res.pairs[["restart_a", "restart_b"]].drop_duplicates()
                       .itertuples(index=False)]
        data = {ct: {} for ct in res.stability["cell_type"]}
        for row in res.pairs.itertuples(index=False):
            data[row.cell_type][f"{row.restart_a} vs {row.restart_b}"] = round(float(row.correlation), 4)
        if pair_labels:
            write_mqc_yaml(tmp / "stability_heatmap_mqc.yaml", id="spotmap_stability_heatmap",
                           section_name="Restart stability: pairwise correlations", plot_type="heatmap", data=data,
                           description="Correlation across spots of each cell type's abundance between every pair "
                                       "of restarts.",
                           pconfig={"id": "spotmap_stability_heatmap_plot", "title": "spotmap: restart agreement",
                                    "xlab": "restart pair", "ylab": "cell type", "zlab": "correlation",
                                    "min": -1, "max": 1, "square": False, "xcats_samples": False,
                                    "ycats_samples": False, "cluster_rows": False, "cluster_cols": False},
                           xcats=pair_labels, ycats=list(res.stability["cell_type"]))
        import html
        body = "".join(f"<li>{html.escape(ln)}</li>" for ln in res.summary)
        header = {"id": "spotmap_aggregate_summary", "section_name": "Restart stability: summary",
                  "description": "Plain-language findings of the restart aggregation."}
        import yaml
        with atomic_path(tmp / "aggregate_summary_mqc.html") as t:
            Path(t).write_text(f"<!--\n{yaml.safe_dump(header, sort_keys=False)}-->\n<ul>{body}</ul>\n")
        write_results(res.consensus, tmp)  # sp.h5ad + W_*.csv, the files of a restart folder
    for f in RESULT_FILES:
        assert (outdir / f).exists(), f
    return outdir
