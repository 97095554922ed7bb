"""The restarts to aggregate: read from their result folders and checked against the first one.

Every restart must hold the same spots, genes and cell types as the first (in any order: they are put
into the first one's order), a finite w_sf posterior and positive mRNA per cell; anything else is a
one-line input error naming the folder and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from spotmap.errors import SpotmapError, input_error
from spotmap.results import read_results
from spotmap.utils import log


@dataclass
class Restart:
    """What aggregation needs of one restart, in the first restart's spot and cell-type order."""

    name: str
    source: str
    loc: np.ndarray          #: (spots, types) float32, log w_sf ~ Normal(loc, scale)
    scale: np.ndarray        #: (spots, types) float32
    mrna_per_cell: np.ndarray  #: (types,) Σ_g m_g g_fg
    elbo: float              #: final -ELBO (NaN when unknown)
    elbo_initial: float      #: first-epoch -ELBO (from the training history), NaN when unknown
    epochs: object
    converged: object
    seed: object
    settings: dict
    detection: np.ndarray | None  #: (spots,) posterior mean y_s


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


def mod_of(a: ad.AnnData) -> dict:
    return dict(a.uns.get("mod", {}))


def _array(x, dtype=np.float64) -> np.ndarray:
    return np.asarray(x.to_numpy() if isinstance(x, pd.DataFrame) else x, dtype=dtype)


def _posterior(a: ad.AnnData, src: str, n_types: int) -> tuple[np.ndarray, np.ndarray]:
    """``obsm['w_sf_loc']`` and ``obsm['w_sf_scale']``, checked."""
    # float32 as stored (halves memory on large data); every computation casts a chunk to float64
    loc, scale = _array(a.obsm["w_sf_loc"], np.float32), _array(a.obsm["w_sf_scale"], np.float32)
    for key, arr in (("w_sf_loc", loc), ("w_sf_scale", scale)):
        if arr.shape != (a.n_obs, n_types):
            raise input_error(src, f"shape must be spots × cell types = {(a.n_obs, n_types)}",
                              field=f"obsm['{key}']", value=arr.shape)
    if not np.all(np.isfinite(loc)):
        raise input_error(src, "holds non-finite values", field="obsm['w_sf_loc']",
                          value=int((~np.isfinite(loc)).sum()))
    if not np.all(np.isfinite(scale) & (scale > 0)):
        raise input_error(src, "must be finite and > 0", field="obsm['w_sf_scale']",
                          value=int((~(np.isfinite(scale) & (scale > 0))).sum()))
    return loc, scale


def _elbos(mod: dict, src: str) -> tuple[float, float]:
    """Final and first-epoch -ELBO of ``uns['mod']`` (NaN when unknown)."""
    elbo = mod.get("elbo")
    try:
        elbo = float(elbo) if elbo is not None else float("nan")
    except (TypeError, ValueError):
        raise input_error(src, "must be a number", field="uns['mod']['elbo']", value=elbo) from None
    try:
        elbo0 = float(mod.get("elbo_initial", float("nan")))
    except (TypeError, ValueError):
        elbo0 = float("nan")
    return elbo, elbo0


def _check_one(name: str, a: ad.AnnData, src: str, base: ad.AnnData, first: str, factors: pd.Index | None
               ) -> tuple[Restart, pd.Index]:
    mod = mod_of(a)
    for key in ("w_sf_loc", "w_sf_scale"):
        if key not in a.obsm:
            raise input_error(src, "missing the w_sf posterior: not a spotmap mapping result", field=f"obsm['{key}']")
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
    loc, scale = _posterior(a, src, len(fn))
    mrna = np.asarray(mod.get("mrna_per_cell", []), dtype=np.float64).ravel()
    if mrna.shape != (len(fn),) or not np.all(np.isfinite(mrna) & (mrna > 0)):
        raise input_error(src, f"must hold {len(fn)} positive numbers, one per cell type",
                          field="uns['mod']['mrna_per_cell']", value=mrna.shape)
    if f_order is not None:
        loc, scale, mrna = loc[:, f_order], scale[:, f_order], mrna[f_order]
    if s_order is not None:
        loc, scale = loc[s_order], scale[s_order]
    elbo, elbo0 = _elbos(mod, src)
    det = None
    if "detection_y_s" in a.obs:
        det = a.obs["detection_y_s"].to_numpy(dtype=np.float64)
        det = det if s_order is None else det[s_order]
    settings = mod.get("settings", {})
    return Restart(name, src, loc, scale, mrna, elbo, elbo0, mod.get("epochs"), mod.get("converged"), mod.get("seed"),
                   dict(settings) if isinstance(settings, dict) else {}, det), factors


def check_restarts(adatas: dict[str, ad.AnnData], sources: dict[str, str]) -> tuple[list[Restart], list[str]]:
    """Every restart checked against the first one: ``(restarts, cell-type names)``."""
    if not adatas:
        raise SpotmapError("no restarts to aggregate: give at least one --restart folder")
    names = list(adatas)
    base, factors, out = adatas[names[0]], None, []
    for name in names:
        r, factors = _check_one(name, adatas[name], sources.get(name, name), base, names[0], factors)
        out.append(r)
    return out, list(factors)


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
    """A restart's result with only what aggregation needs (obs, var, the w_sf posterior, uns['mod']): every
    restart but the first, whose counts and summaries would be read for nothing."""
    import h5py

    path = folder / "sp.h5ad"
    if not path.exists():
        raise input_error(path, "not found: not a spotmap mapping result folder")
    try:
        with h5py.File(path, "r") as f:
            for key in ("w_sf_loc", "w_sf_scale"):
                if f"obsm/{key}" not in f:
                    raise input_error(path, "missing the w_sf posterior", field=f"obsm['{key}']")
            obsm = {k: _read_elem(f[f"obsm/{k}"]) for k in ("w_sf_loc", "w_sf_scale")}
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
