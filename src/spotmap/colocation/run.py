"""The whole analysis on tables: co-location factors, then tissue regions, with the choices explained.

:func:`run_colocation` is what a pipeline step calls: it takes the spots × types abundance (and,
optionally, coordinates and samples), and returns a :class:`ColocationResult` whose :meth:`tables`
are the output files. :func:`find_factors` and :func:`find_regions` are its two halves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd

from spotmap.colocation.clustering import (assign, choose_n_regions, proportions, region_composition,
                                           region_fits)
from spotmap.colocation.inputs import (DEFAULT_FIELD, check_abundance, factor_numbers, is_range,
                                       neighbourhood_mean, parse_numbers, region_numbers, subsample)
from spotmap.colocation.nmf import choose_n_factors, factor_tables, fit_factors, fit_range, project
from spotmap.colocation.settings import ColocationSettings, range_text
from spotmap.errors import SpotmapError, input_error

REGION_FEATURES = ("factors", "types")


@dataclass
class FactorResult:
    """Co-location factors (see :mod:`spotmap.colocation.nmf`).

    ``colocation_factors``: types × factors, share of each type's cells in each factor (rows sum to 1);
    ``factor_abundance``: spots × factors, cells per spot; ``fits``: one row per factor number tried;
    ``n_factors`` and ``reason``: the number kept and why; ``range_fitted_spots``: spots the fits of the
    range used; ``fitted_spots``: spots the chosen number's fit used (the others were projected).
    """

    colocation_factors: pd.DataFrame
    factor_abundance: pd.DataFrame
    fits: pd.DataFrame
    n_factors: int
    reason: str
    fitted_spots: int
    range_fitted_spots: int


@dataclass
class RegionResult:
    """Tissue regions: ``regions`` (spot → region 0…K-1), ``composition`` (regions × types, mean cells per
    spot), ``fits`` (silhouette per K tried), ``n_regions`` and ``reason``."""

    regions: pd.Series
    composition: pd.DataFrame
    fits: pd.DataFrame
    n_regions: int
    reason: str


@dataclass
class ColocationResult:
    """Everything :func:`run_colocation` found; :meth:`tables` maps output file names to tables."""

    factors: FactorResult
    regions: RegionResult
    settings: ColocationSettings

    def tables(self) -> dict[str, pd.DataFrame]:
        """``{file name: table}``; write each with ``table.to_csv(path)`` (the index is the first column)."""
        f, r = self.factors, self.regions
        return {
            "colocation_factors.csv": f.colocation_factors,
            "factor_abundance.csv": f.factor_abundance,
            "regions.csv": r.regions.to_frame(),
            "region_composition.csv": r.composition,
            "factor_fits.csv": f.fits.set_index("n_factors"),
            "region_fits.csv": r.fits.set_index("n_regions"),
        }

    def summary(self) -> dict:
        """JSON-safe: the numbers chosen, why, the spots fitted and the settings."""
        return {"n_factors": int(self.factors.n_factors), "factor_reason": self.factors.reason,
                "n_regions": int(self.regions.n_regions), "region_reason": self.regions.reason,
                "fitted_spots": int(self.factors.fitted_spots),
                "range_fitted_spots": int(self.factors.range_fitted_spots),
                "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.settings).items()}}


def resolve_settings(settings: ColocationSettings | None, seed: int | None) -> ColocationSettings:
    s = settings or ColocationSettings()
    s = replace(s, seed=int(seed)) if seed is not None else s
    if s.region_features not in REGION_FEATURES:
        raise SpotmapError(f"field 'region_features': must be one of {', '.join(REGION_FEATURES)} "
                           f"(got {s.region_features!r})")
    if min(s.range_fit_spots, s.max_fit_spots, s.silhouette_spots) < 2 or min(s.n_restarts, s.kmeans_n_init) < 1:
        raise SpotmapError("range_fit_spots, max_fit_spots and silhouette_spots must be at least 2, n_restarts and "
                           f"kmeans_n_init at least 1 (got {s.range_fit_spots}, {s.max_fit_spots}, "
                           f"{s.silhouette_spots}, {s.n_restarts}, {s.kmeans_n_init})")
    return s


def _smoothed(df: pd.DataFrame, coords, samples, s: ColocationSettings, source: str | None) -> np.ndarray:
    x = df.to_numpy()
    if samples is not None and len(samples) != len(df):
        raise input_error(source, f"one sample label per spot needed ({len(df)} spots)", "samples", len(samples))
    if s.n_neighbours is None:
        return x
    if coords is None:
        raise input_error(source, "n_neighbours needs the spots' coordinates", "coords", None)
    return neighbourhood_mean(x, coords, samples, int(s.n_neighbours), source)


def find_factors(abundance, n_factors=None, coords=None, samples=None, seed: int | None = None,
                 settings: ColocationSettings | None = None, source: str | None = None,
                 field: str = DEFAULT_FIELD) -> FactorResult:
    """Co-location factors of ``abundance`` (spots × types, cells per spot).

    ``n_factors``: an int, ``(lo, hi)``, ``'lo-hi'`` or a list (None: ``settings.factor_range``); with
    several, each is fitted and one is chosen (:func:`~spotmap.colocation.nmf.choose_n_factors`).
    ``coords`` (spots × 2) and ``samples`` are needed only with ``settings.n_neighbours``. ``source`` and
    ``field`` name the input in error messages (e.g. the ``sp.h5ad`` path and its ``obsm`` key).
    """
    s = resolve_settings(settings, seed)
    df = check_abundance(abundance, source, field)
    n_spots, n_types = df.shape
    ks = factor_numbers(n_factors, n_spots, n_types, s.factor_range, source)
    x = _smoothed(df, coords, samples, s, source)
    range_rows = subsample(n_spots, s.range_fit_spots, s.seed)
    rows = subsample(n_spots, s.max_fit_spots, s.seed)
    if max(ks) > min(len(range_rows), len(rows)):
        raise input_error(source, f"range_fit_spots ({s.range_fit_spots}) or max_fit_spots ({s.max_fit_spots}) "
                          "is below the number of factors", "n_factors", max(ks))
    for r in (range_rows, rows):
        if not x[r].any():
            raise input_error(source, "the subsample of spots fitted holds no cells", field, len(r))
    fits_table, fits = fit_range(x[range_rows], ks, s.seed, s)
    k, reason = choose_n_factors(fits_table, n_types, s.gain_threshold)
    asked = s.factor_range if n_factors is None else n_factors
    if is_range(n_factors) and max(parse_numbers(asked, s.factor_range, "n_factors", source)) > n_types:
        text = range_text(asked) if isinstance(asked, tuple) else asked
        reason = (f"{k} factors: the range {text} cut at the {n_types} cell types" if len(ks) == 1
                  else f"{reason} (numbers above the {n_types} cell types not tried)")
    # the chosen number, on the (larger) subsample for the final fit unless that is the same one
    fit = fits[k] if np.array_equal(rows, range_rows) else fit_factors(x[rows], k, s.seed, s)
    w_sr = fit.w_sr if len(rows) == n_spots else project(fit, x)
    coloc, fab = factor_tables(w_sr, fit.h_rf, df.index, df.columns)
    return FactorResult(colocation_factors=coloc, factor_abundance=fab, fits=fits_table, n_factors=k,
                        reason=reason, fitted_spots=len(rows), range_fitted_spots=len(range_rows))


def find_regions(abundance, n_regions=None, factor_abundance: pd.DataFrame | None = None, coords=None,
                 samples=None, seed: int | None = None, settings: ColocationSettings | None = None,
                 source: str | None = None, field: str = DEFAULT_FIELD) -> RegionResult:
    """Tissue regions: spots clustered by composition (see :mod:`spotmap.colocation.clustering`).

    The composition is each spot's share of cells in each factor when ``factor_abundance`` is given and
    ``settings.region_features == 'factors'``, else its share of each cell type (of the neighbourhood
    mean with ``settings.n_neighbours``). ``region_composition`` is always of ``abundance`` itself.
    """
    s = resolve_settings(settings, seed)
    df = check_abundance(abundance, source, field)
    n_spots = len(df)
    numbers = region_numbers(n_regions, n_spots, s.region_range, source)
    if s.region_features == "factors" and factor_abundance is not None:
        if len(factor_abundance) != n_spots:
            raise input_error(source, f"factor abundance has {len(factor_abundance)} spots, abundance {n_spots}",
                              "factor_abundance", len(factor_abundance))
        features = proportions(np.asarray(factor_abundance, dtype=np.float64))
    else:
        features = proportions(_smoothed(df, coords, samples, s, source))
    rows = subsample(n_spots, s.max_fit_spots, s.seed)
    fits, models = region_fits(features, numbers, s.seed, s.kmeans_n_init, s.silhouette_spots, fit_rows=rows)
    k, reason = choose_n_regions(fits)
    labels = assign(models[k], features)
    regions = pd.Series(labels, index=pd.Index(df.index, name="spot"), name="region")
    return RegionResult(regions=regions, composition=region_composition(df.to_numpy(), labels, df.columns),
                        fits=fits, n_regions=k, reason=reason)


def run_colocation(abundance, coords=None, samples=None, n_factors=None, n_regions=None, seed: int | None = None,
                   settings: ColocationSettings | None = None, source: str | None = None,
                   field: str = DEFAULT_FIELD) -> ColocationResult:
    """Co-location factors and tissue regions of ``abundance`` (spots × types, cells per spot).

    ``coords`` (spots × 2) and ``samples`` (one label per spot) are used for the neighbourhood mean
    (``settings.n_neighbours``); ``n_factors``/``n_regions``: a number, a range or None (the settings'
    range, chosen from the data); ``seed`` overrides ``settings.seed``. Same inputs and seed, same result.
    """
    s = resolve_settings(settings, seed)
    factors = find_factors(abundance, n_factors, coords, samples, settings=s, source=source, field=field)
    regions = find_regions(abundance, n_regions, factors.factor_abundance, coords, samples, settings=s,
                           source=source, field=field)
    return ColocationResult(factors=factors, regions=regions, settings=s)
