"""The findings of an aggregation in plain words (``summary.txt`` and the report)."""

from __future__ import annotations

import numpy as np


def fmt(x: float) -> str:
    return "NA" if x is None or not np.isfinite(x) else f"{x:.3g}"


def _restart_lines(res, rs_all, names, gap, r_flags, best) -> list[str]:
    s = res.settings
    lines = []
    for i, row in res.restarts.iterrows():
        why = []
        if r_flags["agreement"][i]:
            why.append(f"its cell-type maps disagree with the other restarts (agreement {fmt(row['agreement'])} "
                       f"< {s['agreement_threshold']:g})")
        if r_flags["total_ratio"][i]:
            why.append(f"its total cells per cell type differ from the {'other' if len(rs_all) == 2 else 'median'} "
                       f"restart's by a factor {fmt(row['total_ratio'])} (median over cell types; rule: > "
                       f"{s['total_ratio']:g}); {row['total_cells']:.4g} cells in all")
        if r_flags["elbo"][i]:
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
            pair = r_flags["agreement"][i] or r_flags["total_ratio"][i]
            extra = " With only two restarts it cannot be told which one is off." if len(rs_all) == 2 and pair else ""
            if row["restart"] not in names:
                extra += " It was left out of the consensus."
            elif not s["keep_flagged"]:
                extra += (" Every restart is flagged: it is the one kept in the consensus"
                          f"{' (the best by final -ELBO)' if best == i else ''}.")
            lines.append(f"Restart {row['restart']} is flagged: {' and '.join(why)}; it may have stopped early "
                         f"or landed in another optimum.{extra}")
    return lines


def _cell_type_lines(res, names, corr, pairs, log_ratios, totals, n_spots: int) -> list[str]:
    s = res.settings
    lines = []
    for k, row in res.stability.iterrows():
        if not row["flagged"]:
            continue
        why = []
        if "correlation" in row["flagged_by"].split(","):
            worst = int(np.argmin(corr[:, k]))
            i, j = pairs[worst]
            why.append(f"the {s['stability']} correlation of its abundance across spots between restarts is "
                       f"{fmt(row['stability'])} (threshold {s['threshold']:g}; lowest {fmt(corr[worst, k])}, "
                       f"{names[i]} vs {names[j]})")
        if "total_ratio" in row["flagged_by"].split(","):
            worst = int(np.argmax(log_ratios[:, k]))
            i, j = pairs[worst]
            stat = "median" if s["stability"] == "median" else "largest"
            why.append(f"its total cells differ between restarts by a factor {fmt(row['total_ratio'])} ({stat} over "
                       f"restart pairs; threshold {s['total_ratio']:g}; most apart {names[i]} {totals[i, k]:.4g} vs "
                       f"{names[j]} {totals[j, k]:.4g} cells)")
        lines.append(f"Cell type {row['cell_type']} is unstable across restarts: {' and '.join(why)}; mean "
                     f"{row['total_cells'] / n_spots:.3g} cells per spot. "
                     "Its map depends on the run: treat it with caution (it may be rare, absent, or confused with a "
                     "similar or missing reference type; two flagged types whose totals move in opposite directions "
                     "are likely one type the reference splits in two, whose sum is reliable).")
    return lines


def summary_lines(res, rs_all, names, corr, pairs, stats, gap, r_flags, best) -> list[str]:
    """The summary of :func:`spotmap.aggregate.aggregate`: restarts flagged and why, cell types flagged and how
    badly, which restarts the consensus holds, and the best restart. ``stats`` are the sums over the pooled
    restarts (:class:`spotmap.aggregate.stability.MapStats`), ``r_flags`` the restart rules' hits."""
    from spotmap.aggregate.stability import pair_log_ratios, totals

    s = res.settings
    R_all, R = len(rs_all), len(names)
    lines = []
    if R == 1 and R_all == 1:
        lines.append(f"Only one restart ({names[0]}) was aggregated: stability across restarts cannot be assessed "
                     "(reported as NA); the consensus is that restart's posterior. Run 3 or more restarts to check it.")
    elif R == 1:
        lines.append(f"Only one restart ({names[0]}) is left in the consensus: cell-type stability cannot be assessed "
                     "(reported as NA).")
    lines += _restart_lines(res, rs_all, names, gap, r_flags, best)
    lines += _cell_type_lines(res, names, corr, pairs, pair_log_ratios(stats, pairs), totals(stats),
                              stats.n)
    n_flag = int(res.stability["flagged"].sum())
    pooled_flagged = [n for n, f in zip(res.restarts["restart"], res.restarts["flagged"]) if f and n in names]
    if R < R_all:
        lines.append(f"The consensus and the cell-type stability pool {R} of {R_all} restarts ({', '.join(names)}); "
                     "flagged restarts are left out by default (--keep-flagged pools them all).")
    elif pooled_flagged and R > 1:
        lines.append(f"The consensus and the cell-type stability include the flagged restart(s) "
                     f"{', '.join(pooled_flagged)} (--keep-flagged); rerun without it to pool and score the others only.")
    if R > 1 and n_flag == 0:
        lines.append(f"All {len(res.stability)} cell types are stable across {R} restarts ({s['stability']} pairwise "
                     f"correlation >= {s['threshold']:g}, total cells within a factor {s['total_ratio']:g}).")
    if best is not None and not np.isfinite(gap[best]) and R_all > 1:
        lines.append("No first-epoch -ELBO (training_history.tsv) for the best restart: restarts were not checked "
                     "for a far worse final -ELBO.")
    if best is not None:
        lines.append(f"Best restart (lowest final -ELBO): {rs_all[best].name} ({rs_all[best].elbo:.8g}).")
    else:
        lines.append("No restart recorded a final ELBO: the best restart cannot be named.")
    return lines
