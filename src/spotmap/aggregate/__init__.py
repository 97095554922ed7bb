"""Pool mapping restarts into one consensus result and measure how well they agree.

Each restart is a full mapping result (see :mod:`spotmap.results`) from its own seed. Its
variational posterior of every cell abundance is log-normal, ``log w_sf ~ Normal(loc_r, scale_r)``,
so restarts can be pooled **exactly**, without sampling:

* **Consensus** — the equal-weight mixture of the R per-restart posteriors. Its mean is the mean of
  the restart means; its sd follows from the law of total variance; its quantiles solve
  ``mean_r Φ((log q − loc_r) / scale_r) = p`` (:func:`mixture_quantiles`: vectorised Halley steps
  safeguarded by bisection, in log space, to ``|Δ log q| < 1e-10``). u_sf (mRNA counts) is pooled
  the same way, each restart scaled by its own ``mrna_per_cell``. ``obsm['w_sf_loc'/'w_sf_scale']``
  of the consensus hold the *moment-matched* log-normal of the mixture (same mean and sd), so
  :func:`spotmap.results.add_posterior` applied to them reproduces the consensus means and sds; the
  stored quantiles are the exact mixture ones.
* **Stability** — for every pair of restarts and every cell type, the Pearson correlation across
  spots of the posterior-mean abundance (cell types carry the same names in every restart, so they
  match directly), and the ratio of the type's total cells over all spots, as ``|log(T_a / T_b)|``
  (symmetric; reported as its ``exp``, ≥ 1): correlation is blind to scale. A cell type's stability is
  the median (or minimum) correlation over pairs, its total ratio the median (or maximum) ratio; it
  is flagged when the first is below ``threshold`` or the second above ``total_ratio``.
* **Restart flags** — a restart's *agreement* is the median over cell types of the correlation of
  its abundance with the element-wise median of all restarts (with two restarts: with the other
  one), its *total ratio* the median over cell types of the ratio of its total cells to the median
  restart's. A restart is flagged when its agreement is below ``agreement_threshold``, its total
  ratio above ``total_ratio``, or its final -ELBO exceeds the best one by more than ``elbo_gap``
  times the improvement the best restart made during training (its first-epoch -ELBO minus its
  final one). The loss omits data constants, so its absolute level means nothing and a gap relative
  to it would not either.
* **Flagged restarts are left out** of the consensus and the cell-type stability unless
  ``keep_flagged``; when every restart is flagged, the best by final -ELBO is kept alone.

Modules: :mod:`.mixture` (the log-normal mixture), :mod:`.restarts` (reading and checking restarts),
:mod:`.stability` (correlations), :mod:`.core` (:func:`aggregate`), :mod:`.summary` (the findings in
words). The files of ``spotmap aggregate`` are written by :mod:`spotmap.steps.aggregate`. See
docs/aggregate.md for the rules and the output files.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from spotmap.aggregate.core import (DEFAULT_ELBO_GAP, DEFAULT_THRESHOLD, DEFAULT_TOTAL_RATIO, AggregateResult,
                                    aggregate, aggregate_restarts)
from spotmap.aggregate.mixture import (mixture_moments, mixture_quantiles, mixture_summaries,
                                       moment_matched_lognormal)
from spotmap.aggregate.restarts import check_restarts, load_restarts

__all__ = ["DEFAULT_ELBO_GAP", "DEFAULT_THRESHOLD", "DEFAULT_TOTAL_RATIO", "AggregateResult", "aggregate", "aggregate_restarts",
           "check_restarts", "load_restarts", "mixture_moments", "mixture_quantiles", "mixture_summaries",
           "moment_matched_lognormal"]
