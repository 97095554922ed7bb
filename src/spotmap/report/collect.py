"""Stage 1 of the report: the files of a results folder the report uses, and which mapping result to draw."""

from __future__ import annotations

import os
import re
from pathlib import Path

from spotmap.errors import SpotmapError, input_error


def _read_elem(elem):
    try:
        from anndata.io import read_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem
    return read_elem(elem)


def collect(results: Path, exclude: Path | None = None) -> dict[str, list[Path]]:
    """Files of the results folder the report uses, by kind (recursive, by file name).

    ``exclude``: a folder to leave out (the report's own output folder when it lies inside).
    """
    excluded = exclude.resolve() if exclude is not None else None
    out: dict[str, list[Path]] = {"table": [], "structured": [], "image": [], "html": [], "versions": [],
                                  "params": [], "summary_txt": [], "workflow_summary": [], "h5ad": []}
    skip_dirs = {"multiqc_data", "report_content", ".nextflow", "work"}
    seen: set[str] = set()
    # followlinks: Nextflow stages inputs as symlinks, folders included; `seen` guards against loops
    for root, dirs, files in os.walk(results, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if d not in skip_dirs and not d.startswith(".")
                         and (excluded is None or (Path(root) / d).resolve() != excluded))
        for fn in sorted(files):
            p = Path(root) / fn
            low = fn.lower()
            if fn.startswith("."):
                continue
            if re.search(r"_mqc_versions\.ya?ml$", low):
                out["versions"].append(p)
            elif low.startswith("workflow_summary") and "_mqc." in low:
                out["workflow_summary"].append(p)
            elif low.startswith("methods_description") and "_mqc." in low:
                continue  # regenerated from assets/methods_description_template.yml
            elif re.search(r"_mqc\.(tsv|csv|txt)$", low):
                out["table"].append(p)
            elif re.search(r"_mqc\.(ya?ml|json)$", low):
                out["structured"].append(p)
            elif re.search(r"_mqc\.(png|jpe?g)$", low):
                out["image"].append(p)
            elif re.search(r"_mqc\.html?$", low):
                out["html"].append(p)
            elif low == "params.json" or re.fullmatch(r"params(_[\w.-]+)?\.json", low):
                out["params"].append(p)
            elif low == "summary.txt":
                out["summary_txt"].append(p)
            elif low == "sp.h5ad":
                out["h5ad"].append(p)
    return out


def _elbo_of(h5ad: Path) -> float:
    """Final -ELBO stored in a result's ``uns['mod']['elbo']`` (inf when missing)."""
    try:
        import h5py

        with h5py.File(h5ad, "r") as f:
            return float(f["uns/mod/elbo"][()])
    except Exception:  # noqa: BLE001 - a result without the value simply ranks last
        return float("inf")


def choose_mapping_result(h5ads: list[Path]) -> list[Path]:
    """The consensus result(s); without one, per mapping (the folder holding the restarts: one for
    joint mapping, one per sample in per-sample mode) the restart with the lowest final loss."""
    consensus = [p for p in h5ads if p.parent.name == "consensus"]
    if consensus:
        return consensus
    restarts = [p for p in h5ads if p.parent.name.startswith("restart")] or h5ads
    groups: dict[Path, list[Path]] = {}
    for p in restarts:
        groups.setdefault(p.parent.parent, []).append(p)
    return [min(g, key=lambda p: (_elbo_of(p), str(p))) for _, g in sorted(groups.items(), key=lambda kv: str(kv[0]))]


def read_map_data(h5ad: Path, quantity: str = "q05"):
    """What the maps need of a result's ``sp.h5ad`` — obs, the ``quantity`` abundances (q05, means, ...),
    coordinates, images and ``uns['mod']``/``uns['spotmap']`` — read element by element, without the count
    matrix and the other summaries (GBs and seconds for a Visium HD sample)."""
    import anndata as ad
    import h5py

    from spotmap.results import SITE_W, obsm_key

    key = obsm_key(quantity)
    try:
        with h5py.File(h5ad, "r") as f:
            if f"obsm/{key}" not in f:
                have = sorted(k.removesuffix(f"_{SITE_W}") for k in (f["obsm"] if "obsm" in f else [])
                              if k.endswith(SITE_W))
                raise input_error(h5ad, f"missing the {quantity} cell abundance (present: {', '.join(have) or 'none'})",
                                  field=f"obsm['{key}']")
            if "uns/mod/factor_names" not in f:
                raise input_error(h5ad, "missing cell-type names", field="uns['mod']['factor_names']")
            obsm = {k: _read_elem(f[f"obsm/{k}"]) for k in (key, "spatial") if f"obsm/{k}" in f}
            uns = {k: _read_elem(f[f"uns/{k}"]) for k in ("spatial", "spotmap", "mod") if f"uns/{k}" in f}
            obs = _read_elem(f["obs"])
    except SpotmapError:
        raise
    except Exception as exc:  # noqa: BLE001 - unreadable: one line, the report goes on without the maps
        raise input_error(h5ad, f"cannot be read as AnnData ({type(exc).__name__}: {exc})") from None
    return ad.AnnData(obs=obs, obsm=obsm, uns=uns)


def _samples_of(folder: Path) -> list[str]:
    """The samples of a consensus folder (``obs['sample']`` of its ``sp.h5ad``) or of a co-location folder
    (``samples`` of its ``colocation_summary.json``); empty when unreadable."""
    import json

    import h5py

    try:
        if (folder / "sp.h5ad").is_file():
            with h5py.File(folder / "sp.h5ad", "r") as f:
                return sorted({str(x) for x in _read_elem(f["obs/sample"])})
        return sorted(str(x) for x in json.loads((folder / "colocation_summary.json").read_text())["samples"])
    except Exception:  # noqa: BLE001 - no readable sample names: the folder's name will do
        return []


def consensus_labels(folders: list[Path]) -> dict[Path, str]:
    """A title for each consensus (or co-location) folder: its samples (:func:`_samples_of`), else the
    folder above it (``mapping/<sample>/consensus``); made unique."""
    labels: dict[Path, str] = {}
    for folder in folders:
        names = _samples_of(folder)
        label = folder.parent.name
        if names:
            label = ", ".join(names) if len(names) <= 3 else f"{names[0]} and {len(names) - 1} more samples"
        labels[folder] = label
    counts: dict[str, int] = {}
    for v in labels.values():
        counts[v] = counts.get(v, 0) + 1
    return {k: (f"{v} ({k.parent.name})" if counts[v] > 1 else v) for k, v in labels.items()}
