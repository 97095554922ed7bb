"""Checking the abundance table and the requested numbers; neighbourhood means; seeded subsamples.

Every refusal is one :class:`~spotmap.errors.SpotmapError` line naming the source (a file, when the caller
gives one), the field and the value.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from spotmap.errors import input_error

DEFAULT_FIELD = "abundance"


def check_abundance(abundance, source: str | None = None, field: str = DEFAULT_FIELD) -> pd.DataFrame:
    """``abundance`` (spots × types, cells per spot) as a float64 DataFrame, or a one-line error.

    Accepts a DataFrame (its index and columns name spots and types) or a 2-D array (names ``0…``).
    Refused: not 2-D, fewer than two types, no spots, non-finite or negative values, all zero,
    duplicated type names.
    """
    if isinstance(abundance, pd.DataFrame):
        df = abundance
    else:
        arr = np.asarray(abundance)
        if arr.ndim != 2:
            raise input_error(source, "abundance must be a spots × types table", field, f"{arr.ndim}-D")
        df = pd.DataFrame(arr)
    try:
        x = df.to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise input_error(source, "abundance must be numeric", field, str(df.dtypes.iloc[0])) from None
    n_spots, n_types = x.shape
    if n_types < 2:
        raise input_error(source, "co-location needs at least two cell types", field, f"{n_types} type(s)")
    if n_spots == 0:
        raise input_error(source, "no spots", field, "0 spots")
    bad = ~np.isfinite(x)
    if bad.any():
        s, f = np.argwhere(bad)[0]
        raise input_error(source, f"{int(bad.sum())} non-finite value(s), first at spot {df.index[s]!r}, "
                          f"type {df.columns[f]!r}", field, float(x[s, f]))
    if (x < 0).any():
        s, f = np.argwhere(x < 0)[0]
        raise input_error(source, f"abundance must be non-negative; first negative at spot {df.index[s]!r}, "
                          f"type {df.columns[f]!r}", field, float(x[s, f]))
    if not x.any():
        raise input_error(source, "abundance is zero everywhere: nothing to factorise", field,
                          f"{n_spots} spots × {n_types} types")
    if df.columns.has_duplicates:
        raise input_error(source, "duplicated cell-type names", field,
                          list(df.columns[df.columns.duplicated()][:3]))
    return pd.DataFrame(x, index=df.index.astype(str), columns=df.columns.astype(str))


def factor_numbers(n_factors, n_spots: int, n_types: int, default: tuple[int, int],
                   source: str | None = None) -> list[int]:
    """The factor numbers to try: an int, ``(lo, hi)`` (inclusive), ``'lo-hi'``, a range/list, or None.

    A range (``(lo, hi)``, ``'lo-hi'`` or None: ``default``) is cut at the number of cell types: a
    factorisation into as many factors as types reproduces the abundance exactly, so larger numbers add
    nothing (5-30 on 19 types tries 5 … 19; on 4 types, 4). A single number or a list is kept as given.
    """
    ks = parse_numbers(n_factors, default, "n_factors", source)
    if min(ks) < 1:
        raise input_error(source, "factor numbers must be at least 1", "n_factors", n_factors)
    if is_range(n_factors):
        ks = sorted({min(k, n_types) for k in ks})
    if max(ks) > n_spots:
        raise input_error(source, f"fewer spots ({n_spots}) than factors ({max(ks)})", "n_factors", n_factors)
    return ks


def is_range(value) -> bool:
    """Whether ``value`` asks for a range of numbers: None (the default range), ``(lo, hi)`` or ``'lo-hi'``."""
    return value is None or isinstance(value, tuple) or (isinstance(value, str) and "-" in value)


def region_numbers(n_regions, n_spots: int, default: tuple[int, int], source: str | None = None) -> list[int]:
    """The numbers of regions to try (as :func:`factor_numbers`); each between 1 and the number of spots."""
    ks = parse_numbers(n_regions, default, "n_regions", source)
    if min(ks) < 1:
        raise input_error(source, "the number of regions must be at least 1", "n_regions", n_regions)
    if n_regions is None:  # default range: cut to what the spots allow
        ks = [k for k in ks if k < n_spots] or [1]
    elif max(ks) > n_spots:
        raise input_error(source, f"fewer spots ({n_spots}) than regions ({max(ks)})", "n_regions", n_regions)
    return ks


def parse_numbers(value, default: tuple[int, int], name: str, source: str | None = None) -> list[int]:
    """The numbers ``value`` asks for — N, ``(lo, hi)`` or ``'lo-hi'`` (inclusive), a list, or None (``default``)
    — sorted, or a one-line error naming ``name`` for a malformed or empty range."""
    if value is None:
        value = default
    if isinstance(value, str):
        parts = value.split("-")
        try:
            ks = [int(p) for p in parts]
        except ValueError:
            raise input_error(source, "expected N or LO-HI", name, value) from None
        if len(ks) == 2:
            value = (ks[0], ks[1])
        elif len(ks) == 1:
            value = ks[0]
        else:
            raise input_error(source, "expected N or LO-HI", name, value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return [int(value)]
    if isinstance(value, tuple) and len(value) == 2:
        lo, hi = (int(v) for v in value)
        if lo > hi:
            raise input_error(source, f"range {lo}-{hi} is empty", name, value)
        return list(range(lo, hi + 1))
    try:
        ks = sorted({int(v) for v in value})
    except (TypeError, ValueError):
        raise input_error(source, "expected N, (LO, HI), 'LO-HI' or a list", name, value) from None
    if not ks:
        raise input_error(source, "no numbers given", name, value)
    return ks


def neighbourhood_mean(x: np.ndarray, coords, samples, n_neighbours: int, source: str | None = None) -> np.ndarray:
    """Each spot's abundance averaged with its ``n_neighbours`` nearest spots of the same sample.

    ``x``: spots × types; ``coords``: spots × 2; ``samples``: one label per spot (None: one sample).
    Returns spots × types, in the same units (cells per spot). Used for Visium HD bins, which hold one
    or two cells each: co-location shows only across neighbouring bins.
    """
    xy = np.asarray(coords, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[0] != len(x) or xy.shape[1] < 2:
        raise input_error(source, f"coordinates must be spots × 2 for {len(x)} spots", "coords", xy.shape)
    if not np.isfinite(xy[:, :2]).all():
        raise input_error(source, "non-finite coordinates", "coords")
    if n_neighbours < 1:
        raise input_error(source, "n_neighbours must be at least 1", "n_neighbours", n_neighbours)
    lab = np.zeros(len(x), dtype=np.int64) if samples is None else pd.factorize(np.asarray(samples))[0]
    out = np.empty_like(x)
    for e in np.unique(lab):
        idx = np.flatnonzero(lab == e)
        k = min(n_neighbours + 1, len(idx))
        _, nn = cKDTree(xy[idx, :2]).query(xy[idx, :2], k=k)
        nn = nn.reshape(len(idx), k)
        acc = np.zeros((len(idx), x.shape[1]))
        for j in range(k):  # sum column by column: no spots × k × types array
            acc += x[idx[nn[:, j]]]
        out[idx] = acc / k
    return out


def subsample(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subsample of ``size`` of ``n`` spots (all of them when n ≤ size)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
