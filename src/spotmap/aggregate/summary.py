"""The findings of an aggregation in plain words (``summary.txt`` and the report)."""

from __future__ import annotations

import numpy as np


def fmt(x: float) -> str:
    return "NA" if x is None or not np.isfinite(x) else f"{x:.3g}"


def _restart_lines(res, rs_all, names, gap, low_agree, bad_elbo, best) -> list[str]:
    s = res.settings
    lines = []
    for i, row in res.restarts.iterrows():
        why = []
        if low_agree[i]:
            why.append(f"its cell-type maps disagree with the other restarts (agreement {fmt(row['agreement'])} "
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
            extra = " With only two restarts it cannot be told which one is off." \
                if len(rs_all) == 2 and low_agree[i] else ""
            excl = " It was left out of the consensus." if row["restart"] not in names else ""
            lines.append(f"Restart {row['restart']} is flagged: {' and '.join(why)}; it may have stopped early "
                         f"or landed in a poor optimum.{extra}{excl}")
    return lines


def _cell_type_lines(res, names, corr, pairs, mean_ab) -> list[str]:
    s = res.settings
    lines = []
    for k, row in res.stability.iterrows():
        if not row["flagged"]:
            continue
        worst = int(np.argmin(corr[:, k]))
        i, j = pairs[worst]
        lines.append(f"Cell type {row['cell_type']} is unstable across restarts: the {s['stability']} correlation of "
                     f"its abundance across spots between restarts is {fmt(row['stability'])} "
                     f"(threshold {s['threshold']:g}; "
                     f"lowest {fmt(corr[worst, k])}, {names[i]} vs {names[j]}); mean {mean_ab[k]:.3g} cells per spot. "
                     "Its map depends on the run: treat it with caution (it may be rare, absent, or confused with a "
                     "similar or missing reference type).")
    return lines


def summary_lines(res, rs_all, names, corr, pairs, mean_ab, gap, low_agree, bad_elbo, best) -> list[str]:
    """The summary of :func:`spotmap.aggregate.aggregate`: restarts flagged and why, cell types flagged and how
    badly, then what the consensus holds and the best restart."""
    s = res.settings
    R_all, R = len(rs_all), len(names)
    lines = []
    if R == 1:
        lines.append(f"Only one restart ({names[0]}) was aggregated: stability across restarts cannot be assessed "
                     "(reported as NA); the consensus is that restart's posterior. Run 3 or more restarts to check it.")
    lines += _restart_lines(res, rs_all, names, gap, low_agree, bad_elbo, best)
    lines += _cell_type_lines(res, names, corr, pairs, mean_ab)
    n_flag = int(res.stability["flagged"].sum())
    pooled_flagged = [n for n, f in zip(res.restarts["restart"], res.restarts["flagged"]) if f and n in names]
    if pooled_flagged and R > 1:
        lines.append(f"The consensus and the cell-type stability include the flagged restart(s) "
                     f"{', '.join(pooled_flagged)}; rerun with --exclude-flagged to pool and score the others only.")
    if R > 1 and n_flag == 0:
        lines.append(f"All {len(res.stability)} cell types are stable across {R} restarts ({s['stability']} pairwise "
                     f"correlation >= {s['threshold']:g}).")
    if best is not None and not np.isfinite(gap[best]) and R_all > 1:
        lines.append("No first-epoch -ELBO (training_history.tsv) for the best restart: restarts were not checked "
                     "for a far worse final -ELBO.")
    if best is not None:
        lines.append(f"Best restart (lowest final -ELBO): {rs_all[best].name} ({rs_all[best].elbo:.8g}).")
    else:
        lines.append("No restart recorded a final ELBO: the best restart cannot be named.")
    return lines
