"""The aggregation itself: restart flags, cell-type stability and the consensus posterior."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd

from spotmap.aggregate import mixture
from spotmap.aggregate.mixture import XTOL, mixture_summaries, moment_matched_lognormal
from spotmap.aggregate.restarts import Restart, check_restarts, mod_of
from spotmap.aggregate.stability import (agreement, map_stats, mean_chunks, pair_correlations, pair_log_ratios,
                                        ratio_score, score, total_agreement)
from spotmap.aggregate.summary import summary_lines
from spotmap.errors import SpotmapError
from spotmap.results import QUANTILES, SITE_U, SITE_W, SUMMARIES, set_summaries
from spotmap.utils import log

DEFAULT_THRESHOLD = 0.8
DEFAULT_ELBO_GAP = 0.1
#: cell types (restarts) whose total cells differ between restarts by more than this factor are flagged; chosen
#: between the ratios of identifiable types and of two signatures that cannot be told apart, as measured from
#: independent starts (BENCHMARKS.md, "Restarts from random starts (issue 21)")
DEFAULT_TOTAL_RATIO = 1.25


@dataclass
class AggregateResult:
    """Everything ``spotmap aggregate`` writes (see :func:`spotmap.steps.aggregate.write_aggregate`)."""

    consensus: ad.AnnData
    stability: pd.DataFrame          #: cell_type, stability, flagged, total_ratio, total_cells, flagged_by
    restarts: pd.DataFrame           #: restart, elbo, agreement, flagged, total_ratio, total_cells, used, flagged_by
    pairs: pd.DataFrame              #: cell_type, restart_a, restart_b, correlation, total_ratio (long format)
    summary: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)


def _consensus(base: ad.AnnData, rs: list[Restart], factors: list[str]) -> ad.AnnData:
    mrna = np.stack([r.mrna_per_cell for r in rs])  # R × F
    S, F = rs[0].loc.shape
    cons = base.copy()
    for k in list(cons.obsm.keys()):
        if k.endswith(SITE_W) or k.endswith(SITE_U) or k in ("w_sf_loc", "w_sf_scale"):
            del cons.obsm[k]
    summ_w = {k: np.empty((S, F), dtype=np.float32) for k in SUMMARIES}
    summ_u = {k: np.empty((S, F), dtype=np.float32) for k in SUMMARIES}
    mm_loc = np.empty((S, F), dtype=np.float32)
    mm_scale = np.empty((S, F), dtype=np.float32)
    step = max(1, mixture.CHUNK_ELEMENTS // (len(rs) * F))
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
    mod = mod_of(base)
    for key in ("elbo", "elbo_initial", "seed", "epochs", "converged"):
        mod.pop(key, None)
    mod["factor_names"] = list(factors)
    mod["mrna_per_cell"] = [float(x) for x in mrna.mean(0)]
    cons.uns["mod"] = mod
    return cons


def _check_settings(threshold: float, stability: str, agreement_threshold: float | None, elbo_gap: float,
                    total_ratio: float) -> None:
    if stability not in ("median", "min"):
        raise SpotmapError(f"--stability must be 'median' or 'min' (got {stability!r})")
    for name, val in (("--threshold", threshold), ("--elbo-gap", elbo_gap), ("--total-ratio", total_ratio)) + (
            (("--agreement-threshold", agreement_threshold),) if agreement_threshold is not None else ()):
        if isinstance(val, bool) or not (isinstance(val, (int, float)) and np.isfinite(val)):
            raise SpotmapError(f"{name} must be a finite number (got {val!r})")
    if not -1 <= threshold <= 1:
        raise SpotmapError(f"--threshold must lie between -1 and 1, a correlation (got {threshold!r})")
    if elbo_gap < 0:
        raise SpotmapError(f"--elbo-gap must be >= 0 (got {elbo_gap!r})")
    if total_ratio < 1:
        raise SpotmapError(f"--total-ratio must be >= 1, a factor between two restarts' total cells (got {total_ratio!r})")


def _elbo_gaps(rs_all: list[Restart]) -> tuple[np.ndarray, int | None, np.ndarray]:
    """``(final -ELBOs, best restart or None, gaps)``: each restart's final -ELBO above the best one's, as a
    fraction of the best restart's improvement during training (NaN where it cannot be told)."""
    names_all = [r.name for r in rs_all]
    elbo = np.array([r.elbo for r in rs_all])
    finite = np.isfinite(elbo)
    best = int(np.nanargmin(np.where(finite, elbo, np.nan))) if finite.any() else None
    if not finite.all():
        log.warning("no final ELBO (uns['mod']['elbo']) in restart(s) %s: the ELBO rule skips them",
                    ", ".join(n for n, f in zip(names_all, finite) if not f))
    gap = np.full(len(rs_all), np.nan)
    if best is not None:
        elbo_scale = rs_all[best].elbo_initial - elbo[best]
        if np.isfinite(elbo_scale) and elbo_scale > 0:
            gap = (elbo - elbo[best]) / elbo_scale
        else:
            log.warning("the best restart %s has no first-epoch -ELBO above its final one (training history): the "
                        "ELBO rule is not applied", names_all[best])
    return elbo, best, gap


def _kept(r_flag: np.ndarray, names_all: list[str], keep_flagged: bool, best: int | None) -> tuple[list[int], list[str]]:
    """Indices of the restarts pooled into the consensus, and the names of those left out: every restart with
    ``keep_flagged``, else the unflagged ones — or, when every restart is flagged, the best by final -ELBO alone
    (the first restart when no -ELBO is known)."""
    R_all = len(names_all)
    if keep_flagged or not r_flag.any():
        if keep_flagged and r_flag.any():
            log.info("--keep-flagged: the flagged restart(s) %s stay in the consensus",
                     ", ".join(n for n, f in zip(names_all, r_flag) if f))
        return list(range(R_all)), []
    keep = [i for i in range(R_all) if not r_flag[i]]
    if not keep:
        keep = [best if best is not None else 0]
        log.warning("every restart is flagged: the consensus is %s alone (%s); --keep-flagged pools them all",
                    names_all[keep[0]], "the best by final -ELBO" if best is not None else "no -ELBO is known: the first")
    excluded = [names_all[i] for i in range(R_all) if i not in keep]
    log.info("leaving the flagged restart(s) %s out of the consensus and the stability (--keep-flagged keeps them)",
             ", ".join(excluded))
    return keep, excluded


def _flagged_by(reasons: dict[str, np.ndarray]) -> list[str]:
    """Per row, the names of the rules that flag it, comma-separated ('' when none)."""
    n = len(next(iter(reasons.values())))
    return [",".join(name for name, hit in reasons.items() if hit[i]) for i in range(n)]


def _consensus_info(rs_all: list[Restart], names: list[str], excluded: list[str], elbo, gap, best,
                    settings: dict) -> dict:
    """``uns['mod']['consensus']``: how the consensus was made and from which restarts."""
    names_all = [r.name for r in rs_all]
    return {
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
        **settings,
    }


def _type_stability(stats, names: list[str], factors: list[str], stability: str, threshold: float,
                    total_ratio: float) -> tuple[pd.DataFrame, pd.DataFrame, list, np.ndarray]:
    """``(stability table, pairs table, restart pairs, their correlations)`` of the pooled restarts: per type the
    correlation of the maps and the ratio of the totals between restart pairs, and the flags they raise."""
    S = stats.n
    pairs, corr = pair_correlations(stats)
    log_ratios = pair_log_ratios(stats, pairs)
    scores, ratios = score(corr, stability), ratio_score(log_ratios, stability)
    t_flags = {"correlation": np.nan_to_num(scores, nan=np.inf) < threshold,
               "total_ratio": np.nan_to_num(ratios, nan=-np.inf) > total_ratio}
    stab_df = pd.DataFrame({"cell_type": factors, "stability": scores,
                            "flagged": t_flags["correlation"] | t_flags["total_ratio"], "total_ratio": ratios,
                            "total_cells": stats.mean.mean(0) * S, "flagged_by": _flagged_by(t_flags)})
    pairs_df = pd.DataFrame([
        {"cell_type": f, "restart_a": names[i], "restart_b": names[j], "correlation": float(corr[p, k]),
         "total_ratio": float(np.exp(log_ratios[p, k]))}
        for p, (i, j) in enumerate(pairs) for k, f in enumerate(factors)],
        columns=["cell_type", "restart_a", "restart_b", "correlation", "total_ratio"])
    return stab_df, pairs_df, pairs, corr


def _restart_flags(rs_all: list, agreement_threshold: float, total_ratio: float, elbo_gap: float) -> dict:
    """Every restart's flags over all restarts: ELBO gap, agreement of the maps and of the totals.

    Returns ``{'elbo', 'best', 'gap'}`` (:func:`_elbo_gaps`), ``'stats'`` (the map statistics of all restarts),
    ``'agreement'`` and ``'total_ratio'`` (R,), ``'flags'`` (``{rule: (R,) bool}``) and ``'flagged'`` (R,) bool.
    """
    elbo, best, gap = _elbo_gaps(rs_all)
    S = rs_all[0].loc.shape[0]
    stats = map_stats(mean_chunks(rs_all, S), with_ref=len(rs_all) >= 3)
    agree, r_ratio = agreement(stats), total_agreement(stats)
    flags = {"agreement": np.nan_to_num(agree, nan=np.inf) < agreement_threshold,
             "total_ratio": np.nan_to_num(r_ratio, nan=-np.inf) > total_ratio,
             "elbo": np.nan_to_num(gap, nan=-np.inf) > elbo_gap}
    return {"elbo": elbo, "best": best, "gap": gap, "stats": stats, "agreement": agree, "total_ratio": r_ratio,
            "flags": flags, "flagged": np.logical_or.reduce(list(flags.values()))}


def aggregate(adatas: dict[str, ad.AnnData], threshold: float = DEFAULT_THRESHOLD, stability: str = "median",
              agreement_threshold: float | None = None, elbo_gap: float = DEFAULT_ELBO_GAP,
              total_ratio: float = DEFAULT_TOTAL_RATIO, keep_flagged: bool = False,
              exclude_flagged: bool | None = None, sources: dict[str, str] | None = None,
              histories: dict[str, pd.DataFrame] | None = None) -> AggregateResult:
    """Pool restarts (``{restart name: result AnnData}``) into a consensus and score their stability.

    Parameters
    ----------
    threshold
        Cell types whose stability (correlation across spots between restarts) is below it are flagged.
    stability
        ``'median'`` (default) or ``'min'``: the statistic over restart pairs of each cell type's
        correlation across spots (with ``'min'``, the largest total ratio of a pair).
    agreement_threshold
        Restarts whose agreement is below it are flagged (default: ``threshold``).
    elbo_gap
        Restarts whose final -ELBO exceeds the best (lowest) one by more than this fraction of the best
        restart's training improvement (first-epoch minus final -ELBO) are flagged. The first-epoch
        value comes from ``histories`` or ``uns['mod']['elbo_initial']``; without it the ELBO rule is
        not applied (said in the summary).
    total_ratio
        Cell types whose total cells differ between restarts by more than this factor (median over restart
        pairs) are flagged, and so are restarts whose totals differ from the median restart's by more than
        it (median over cell types); see :mod:`spotmap.aggregate.stability`.
    keep_flagged
        Pool flagged restarts into the consensus and the cell-type stability too. By default they are left
        out (but stay listed in the restarts table); when every restart is flagged the best by final -ELBO
        is kept alone.
    exclude_flagged
        The former switch (``True``: leave flagged restarts out, now the default; ``False``: keep them);
        when given it overrides ``keep_flagged``.
    sources
        ``{restart name: file or folder}`` used to name the odd input in errors.
    histories
        ``{restart name: training history}`` (columns epoch, elbo, ...), for the first-epoch -ELBO.
    """
    _check_settings(threshold, stability, agreement_threshold, elbo_gap, total_ratio)
    if exclude_flagged is not None:
        keep_flagged = not exclude_flagged
    agreement_threshold = threshold if agreement_threshold is None else agreement_threshold
    rs_all, factors = check_restarts(adatas, dict(sources or {}))
    for r in rs_all:
        h = (histories or {}).get(r.name)
        if h is not None and len(h) and "elbo" in h:
            r.elbo_initial = float(np.asarray(h["elbo"], dtype=np.float64)[0])
    names_all = [r.name for r in rs_all]
    _log_settings_differences(rs_all)

    flags = _restart_flags(rs_all, agreement_threshold, total_ratio, elbo_gap)
    elbo, best, gap, r_flags, stats_all = flags["elbo"], flags["best"], flags["gap"], flags["flags"], flags["stats"]
    keep, excluded = _kept(flags["flagged"], names_all, keep_flagged, best)
    S = rs_all[0].loc.shape[0]
    restarts_df = pd.DataFrame({"restart": names_all, "elbo": elbo, "agreement": flags["agreement"],
                                "flagged": flags["flagged"], "total_ratio": flags["total_ratio"],
                                "total_cells": stats_all.mean.sum(1) * S,
                                "used": [i in keep for i in range(len(rs_all))], "flagged_by": _flagged_by(r_flags)})
    rs = [rs_all[i] for i in keep]
    names = [r.name for r in rs]
    stats = stats_all if len(keep) == len(rs_all) else map_stats(mean_chunks(rs, S), with_ref=False)
    stab_df, pairs_df, pairs, corr = _type_stability(stats, names, factors, stability, threshold, total_ratio)

    # consensus: the spots, genes and counts of the first restart (identical in every restart)
    cons = _consensus(adatas[names_all[0]], rs, factors)
    settings = {"threshold": float(threshold), "stability": stability,
                "agreement_threshold": float(agreement_threshold), "elbo_gap": float(elbo_gap),
                "total_ratio": float(total_ratio), "keep_flagged": bool(keep_flagged),
                "exclude_flagged": not keep_flagged}
    cons.uns["mod"] = {**cons.uns["mod"],
                       "consensus": _consensus_info(rs_all, names, excluded, elbo, gap, best, settings)}
    result = AggregateResult(cons, stab_df, restarts_df, pairs_df, settings=settings)
    result.summary = summary_lines(result, rs_all, names, corr, pairs, stats, gap, r_flags, best)
    return result


def aggregate_restarts(adatas: dict[str, ad.AnnData], threshold: float = DEFAULT_THRESHOLD, stability: str = "median",
                       agreement_threshold: float | None = None, elbo_gap: float = DEFAULT_ELBO_GAP,
                       total_ratio: float = DEFAULT_TOTAL_RATIO, keep_flagged: bool = False,
                       exclude_flagged: bool | None = None, sources: dict[str, str] | None = None
                       ) -> tuple[ad.AnnData, pd.DataFrame, pd.DataFrame]:
    """``(consensus AnnData, stability DataFrame, restarts DataFrame)`` — see :func:`aggregate`."""
    res = aggregate(adatas, threshold=threshold, stability=stability, agreement_threshold=agreement_threshold,
                    elbo_gap=elbo_gap, total_ratio=total_ratio, keep_flagged=keep_flagged,
                    exclude_flagged=exclude_flagged, sources=sources)
    return res.consensus, res.stability, res.restarts


def _log_settings_differences(rs: list[Restart]) -> None:
    ref = rs[0].settings
    for r in rs[1:]:
        keys = sorted(k for k in set(ref) | set(r.settings) if k != "seed" and
                      json.dumps(ref.get(k), default=str) != json.dumps(r.settings.get(k), default=str))
        if keys:
            log.warning("restart %s was run with other settings than %s: %s", r.name, rs[0].name, ", ".join(keys))
