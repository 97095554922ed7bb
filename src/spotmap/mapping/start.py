"""Where a restart starts: the random initial cell abundances of the factorisation that initialises w_sf.

Each restart (seed) starts the Poisson factorisation of :func:`spotmap.mapping.model.initial_values` from
its own random point, so that restarts can land in different optima and ``spotmap aggregate`` can see it.
"""

from __future__ import annotations

import numpy as np

#: shapes of the two Gamma(a, a) factors (mean 1, sd 1/sqrt(a)) of the random start: one per spot and cell
#: type (exponential), one per cell type shared by every spot (sd 0.71: two types of one signature start
#: with shares of Beta(2, 2) of their cells; shape 1 left the totals of rare types start-dependent after
#: training, benchmarks/RESULTS_aggregate.md); inf: that factor is 1
START_SPOT_SHAPE = 1.0
START_TYPE_SHAPE = 2.0


def start_abundance(S: int, F: int, n_cells: float, rng: np.random.Generator | None) -> np.ndarray:
    """(S, F) w_sf where the factorisation starts (cells per spot).

    Without ``rng``: ``N / F`` everywhere (deterministic). With it, a random point of mean ``N / F``:
    ``w_sf = N / F · a_sf · b_f``, ``a_sf ~ Gamma(START_SPOT_SHAPE, START_SPOT_SHAPE)`` per spot and type,
    ``b_f ~ Gamma(START_TYPE_SHAPE, START_TYPE_SHAPE)`` per type (mean 1 each; Gamma(1, 1) and Gamma(2, 2) by
    default; drawn in that order, float64). The per-type factor is the one that matters: the factorisation keeps, and
    training barely moves, how two types with (nearly) the same signature divide their cells, so only a start
    that divides them differently across the whole tissue lets restarts show it; a per-spot factor alone
    averages out over the spots (benchmarks/RESULTS_aggregate.md).
    """
    w0 = np.full((S, F), n_cells / F)
    if rng is not None:
        if np.isfinite(START_SPOT_SHAPE):
            w0 = w0 * rng.gamma(START_SPOT_SHAPE, 1.0 / START_SPOT_SHAPE, size=(S, F))
        if np.isfinite(START_TYPE_SHAPE):
            w0 = w0 * rng.gamma(START_TYPE_SHAPE, 1.0 / START_TYPE_SHAPE, size=(1, F))
    return w0
