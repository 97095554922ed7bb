"""Tissues with known regions and known groups of co-located cell types, for tests and benchmarks.

Each tissue region r holds its own set of cell types (group r: ``types_per_group`` types found only there)
plus ``n_widespread`` types found everywhere. Two kinds of observation unit:

* **spots** (Visium, 55 µm, a few cells each): cells of type f in spot s ~ Poisson(rate_rf · ε_sf) with
  ε_sf ~ Gamma(noise_shape, 1 / noise_shape) — abundant cells, Poisson and extra-Poisson noise;
* **bins** (Visium HD 8 µm bins, ``cells_per_bin`` > 0): each bin holds 0–``max_cells_per_bin`` cells,
  each cell's type drawn from its region's composition — so a bin sees one or two cell types, and the
  co-location of a region's types shows only across neighbouring bins.

Regions are vertical ``bands`` of equal width or ``patches`` (the nearest of ``n_groups`` random
centres). Coordinates are in spot units (1 = one spot or bin spacing) on a square grid per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from spotmap.errors import SpotmapError

LAYOUTS = ("bands", "patches")


@dataclass
class SyntheticTissue:
    """A simulated abundance table and its truth.

    ``abundance``: spots × types, cells per spot; ``coords``: spots × 2 (x, y); ``samples``: sample of
    each spot; ``region``: true region of each spot (0 … n_groups-1); ``type_group``: per type, the
    region it belongs to, or -1 for widespread types; ``rates``: regions × types mean cells per spot.
    """

    abundance: pd.DataFrame
    coords: np.ndarray
    samples: np.ndarray
    region: np.ndarray
    type_group: pd.Series
    rates: pd.DataFrame


def _grid(n: int) -> np.ndarray:
    side = int(np.ceil(np.sqrt(n)))
    i = np.arange(n)
    return np.column_stack([i % side, i // side]).astype(np.float64)


def _layout(xy: np.ndarray, n_groups: int, layout: str, rng: np.random.Generator) -> np.ndarray:
    if layout == "bands":
        x = xy[:, 0]
        span = max(float(np.ptp(x)), 1.0)
        return np.minimum(((x - x.min()) / span * n_groups).astype(np.int64), n_groups - 1)
    # patches: nearest of n_groups centres, chosen far apart (farthest-point sampling from a random spot)
    centres = [xy[rng.integers(len(xy))]]
    d = np.full(len(xy), np.inf)
    for _ in range(n_groups - 1):
        d = np.minimum(d, ((xy - centres[-1]) ** 2).sum(1))
        centres.append(xy[int(np.argmax(d))])
    c = np.asarray(centres)
    return np.argmin(((xy[:, None, :] - c[None]) ** 2).sum(-1), axis=1)


def _rates(n_groups: int, types_per_group: int, n_widespread: int, cells: float,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Regions × types mean cells, scaled so an average unit holds ``cells`` cells; the group of each type."""
    n_types = n_groups * types_per_group + n_widespread
    rates = np.zeros((n_groups, n_types))
    group = np.full(n_types, -1)
    for g in range(n_groups):
        cols = np.arange(g * types_per_group, (g + 1) * types_per_group)
        rates[g, cols] = rng.uniform(1.0, 4.0, size=types_per_group)
        group[cols] = g
    wide = np.arange(n_groups * types_per_group, n_types)
    rates[:, wide] = rng.uniform(0.5, 2.0, size=len(wide))[None, :] * rng.uniform(0.8, 1.2, size=(n_groups, len(wide)))
    return rates * cells / rates.sum(1).mean(), group


def structured_tissue(n_spots: int = 2000, n_groups: int = 4, types_per_group: int = 3, n_widespread: int = 2,
                      n_samples: int = 1, layout: str = "bands", cells_per_spot: float = 8.0,
                      noise_shape: float = 5.0, cells_per_bin: float | None = None, max_cells_per_bin: int = 3,
                      seed: int = 0) -> SyntheticTissue:
    """Simulate ``n_spots`` spots (split evenly over ``n_samples`` samples) of a tissue with known regions.

    ``cells_per_bin``: when given, simulate Visium HD-like bins (0–``max_cells_per_bin`` cells each)
    instead of spots; ``cells_per_spot`` is then ignored. Type names are ``g<r>_<i>`` for the types of
    group r and ``wide_<i>`` for widespread ones.
    """
    if layout not in LAYOUTS:
        raise SpotmapError(f"layout must be one of {', '.join(LAYOUTS)} (got {layout!r})")
    if n_groups < 1 or types_per_group < 1 or n_widespread < 0 or n_samples < 1 or n_spots < n_samples * n_groups:
        raise SpotmapError("structured_tissue needs n_groups, types_per_group, n_samples ≥ 1, n_widespread ≥ 0 "
                           "and at least n_groups spots per sample")
    rng = np.random.default_rng(seed)
    rates, group = _rates(n_groups, types_per_group, n_widespread,
                          cells_per_bin if cells_per_bin is not None else cells_per_spot, rng)
    names = [f"g{group[f]}_{f % types_per_group}" if group[f] >= 0 else f"wide_{f - n_groups * types_per_group}"
             for f in range(len(group))]
    parts, xy_all, sample_all, region_all, spot_names = [], [], [], [], []
    for e, n in enumerate(np.diff(np.linspace(0, n_spots, n_samples + 1).astype(np.int64))):
        xy = _grid(int(n))
        region = _layout(xy, n_groups, layout, rng)
        lam = rates[region]
        if cells_per_bin is None:
            parts.append(rng.poisson(lam * rng.gamma(noise_shape, 1.0 / noise_shape, size=lam.shape)))
        else:
            n_cells = np.minimum(rng.poisson(cells_per_bin, size=len(xy)), max_cells_per_bin)
            p = lam / lam.sum(1, keepdims=True)
            parts.append(rng.multinomial(n_cells, p))
        xy_all.append(xy)
        sample_all.append(np.full(len(xy), f"sample{e + 1}"))
        region_all.append(region)
        spot_names += [f"sample{e + 1}_{i}" for i in range(len(xy))]
    abundance = pd.DataFrame(np.vstack(parts).astype(np.float64), index=spot_names, columns=names)
    return SyntheticTissue(abundance=abundance, coords=np.vstack(xy_all), samples=np.concatenate(sample_all),
                           region=np.concatenate(region_all), type_group=pd.Series(group, index=names),
                           rates=pd.DataFrame(rates, columns=names))
