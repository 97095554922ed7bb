"""AnnData functions in scanpy's manner: read a mapping's abundance, annotate the AnnData, return it.

Written (``key`` = ``key_added``, default ``'colocation'``; the region key defaults to ``'region'``):

* :func:`factors` — ``obsm['{key}_factor_abundance']`` (DataFrame, spots × factors, cells per spot) and
  ``uns['{key}']`` = ``{'colocation_factors': types × factors DataFrame, 'fits': DataFrame,
  'n_factors', 'reason', 'fitted_spots', 'range_fitted_spots', 'quantity', 'settings'}``;
* :func:`regions` — ``obs['{key}']`` (categorical region ``'0'``, ``'1'``, …, largest first) and
  ``uns['{key}']`` = ``{'composition': regions × types DataFrame, 'fits': DataFrame, 'n_regions',
  'reason'}``;
* :func:`colocation` — both.
"""

from __future__ import annotations

from dataclasses import asdict

import anndata as ad
import numpy as np
import pandas as pd

from spotmap.colocation.run import find_factors, find_regions, resolve_settings
from spotmap.colocation.settings import ColocationSettings
from spotmap.errors import input_error
from spotmap.results import SITE_W, obsm_key

FACTORS_KEY = "colocation"
REGIONS_KEY = "region"


def abundance_table(adata: ad.AnnData, quantity: str = "q05", source: str | None = None) -> pd.DataFrame:
    """Spots × types table of ``obsm['{quantity}_cell_abundance_w_sf']`` with plain cell-type names.

    Names come from ``uns['mod']['factor_names']`` when present, else the columns lose cell2location's
    ``'{quantity}cell_abundance_w_sf_'`` prefix.
    """
    key = obsm_key(quantity, SITE_W)
    if key not in adata.obsm:
        have = [k for k in adata.obsm if k.endswith(SITE_W)]
        raise input_error(source, f"no '{quantity}' cell abundance; present: {', '.join(have) or 'none'}",
                          f"obsm['{key}']")
    values = adata.obsm[key]
    names = adata.uns.get("mod", {}).get("factor_names") if isinstance(adata.uns.get("mod"), dict) else None
    if names is None:
        prefix = f"{quantity}{SITE_W}_"
        cols = values.columns if isinstance(values, pd.DataFrame) else range(np.shape(values)[1])
        names = [str(c)[len(prefix):] if str(c).startswith(prefix) else str(c) for c in cols]
    names = [str(n) for n in names]
    arr = np.asarray(values)
    if arr.ndim != 2 or arr.shape[1] != len(names):
        raise input_error(source, f"{arr.shape[1] if arr.ndim == 2 else '?'} columns but {len(names)} cell-type "
                          "names", f"obsm['{key}']")
    return pd.DataFrame(arr, index=adata.obs_names, columns=names)


def _platform(adata: ad.AnnData) -> str | None:
    meta = adata.uns.get("spotmap", {})
    return str(meta["platform"]) if isinstance(meta, dict) and meta.get("platform") is not None else None


def _coords_samples(adata: ad.AnnData, sample_key: str, s: ColocationSettings):
    if s.n_neighbours is None:
        return None, None
    coords = np.asarray(adata.obsm["spatial"]) if "spatial" in adata.obsm else None
    samples = adata.obs[sample_key].astype(str).to_numpy() if sample_key in adata.obs else None
    return coords, samples


def factors(adata: ad.AnnData, n_factors=None, quantity: str | None = None, key_added: str = FACTORS_KEY,
            seed: int | None = None, settings: ColocationSettings | None = None, sample_key: str = "sample",
            source: str | None = None) -> ad.AnnData:
    """Co-location factors of the mapped abundance; writes ``obsm``/``uns`` (module docstring), returns adata.

    ``quantity``: the posterior summary (default ``settings.quantity``, q05); ``n_factors``: a number,
    ``(lo, hi)``, ``'lo-hi'`` or None (``settings.factor_range``, chosen from the data).
    """
    s = resolve_settings(settings, seed).for_platform(_platform(adata))
    q = quantity or s.quantity
    table = abundance_table(adata, q, source)
    coords, samples = _coords_samples(adata, sample_key, s)
    res = find_factors(table, n_factors, coords, samples, settings=s, source=source,
                       field=f"obsm['{obsm_key(q, SITE_W)}']")
    adata.obsm[f"{key_added}_factor_abundance"] = res.factor_abundance.set_axis(adata.obs_names)
    adata.uns[key_added] = {
        "colocation_factors": res.colocation_factors, "fits": res.fits, "n_factors": int(res.n_factors),
        "reason": res.reason, "fitted_spots": int(res.fitted_spots),
        "range_fitted_spots": int(res.range_fitted_spots), "quantity": q,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items() if v is not None},
    }
    return adata


def regions(adata: ad.AnnData, n_regions=None, quantity: str | None = None, factors_key: str | None = FACTORS_KEY,
            key_added: str = REGIONS_KEY, seed: int | None = None, settings: ColocationSettings | None = None,
            sample_key: str = "sample", source: str | None = None) -> ad.AnnData:
    """Tissue regions from each spot's composition; writes ``obs``/``uns`` (module docstring), returns adata.

    Uses the factor abundance ``obsm['{factors_key}_factor_abundance']`` when present (run :func:`factors`
    first) and ``settings.region_features == 'factors'``, else the cell-type proportions.
    """
    s = resolve_settings(settings, seed).for_platform(_platform(adata))
    q = quantity or s.quantity
    table = abundance_table(adata, q, source)
    fab_key = f"{factors_key}_factor_abundance" if factors_key else None
    fab = adata.obsm[fab_key] if fab_key and fab_key in adata.obsm else None
    coords, samples = _coords_samples(adata, sample_key, s)
    res = find_regions(table, n_regions, fab, coords, samples, settings=s, source=source,
                       field=f"obsm['{obsm_key(q, SITE_W)}']")
    labels = res.regions.to_numpy()
    adata.obs[key_added] = pd.Categorical(labels.astype(str), categories=[str(i) for i in range(res.n_regions)])
    comp = res.composition.copy()
    comp.index = comp.index.astype(str)
    adata.uns[key_added] = {"composition": comp, "fits": res.fits, "n_regions": int(res.n_regions),
                            "reason": res.reason}
    return adata


def colocation(adata: ad.AnnData, n_factors=None, n_regions=None, quantity: str | None = None,
               key_added: str = FACTORS_KEY, regions_key: str = REGIONS_KEY, seed: int | None = None,
               settings: ColocationSettings | None = None, sample_key: str = "sample",
               source: str | None = None) -> ad.AnnData:
    """:func:`factors` then :func:`regions` (on the factors); returns adata."""
    factors(adata, n_factors, quantity, key_added, seed, settings, sample_key, source)
    return regions(adata, n_regions, quantity, key_added, regions_key, seed, settings, sample_key, source)
