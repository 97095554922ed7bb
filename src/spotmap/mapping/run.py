"""The ``spotmap map`` step: read inputs, map, write the result folder and its QC / MultiQC files."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from spotmap.errors import input_error
from spotmap.utils import log

DEFAULT_CHECKPOINT_EVERY = 200
RECONSTRUCTION_SPOTS = 1000


def read_spatial_inputs(paths: list[Path], batch_key: str = "sample") -> ad.AnnData:
    """Read QC-filtered ``.h5ad`` files (raw counts) and concatenate them, keeping every ``uns['spatial']`` entry."""
    from spotmap.io.counts import read_h5ad_counts

    adatas = []
    for path in paths:
        a = read_h5ad_counts(path)
        if batch_key not in a.obs:
            raise input_error(path, "no batch column in obs (spotmap qc writes obs['sample']; or set --batch-key)",
                              field=f"obs['{batch_key}']")
        if a.n_obs == 0:
            raise input_error(path, "holds no spots", field="obs")
        adatas.append(a)
    if len(adatas) == 1:
        return adatas[0]
    seen: dict[str, Path] = {}
    for path, a in zip(paths, adatas):
        dup = [n for n in a.obs_names[:] if n in seen]
        if dup:
            raise input_error(path, f"spot id also in {seen[dup[0]]} (obs_names must be '<sample>_<barcode>')",
                              field="obs_names", value=dup[0])
        seen.update({n: path for n in a.obs_names})
    genes = [set(a.var_names) for a in adatas]
    if any(g != genes[0] for g in genes[1:]):
        log.warning("the spatial files have different genes; using the %d genes they share",
                    len(set.intersection(*genes)))
    spatial = {}
    for a in adatas:
        spatial.update(a.uns.get("spatial", {}))
    out = ad.concat(adatas, join="inner", merge="same")
    out.obs[batch_key] = pd.Categorical(out.obs[batch_key].astype(str))
    if spatial:
        out.uns["spatial"] = spatial
    return out


def read_signature_table(path: Path) -> tuple[pd.DataFrame, pd.Series | None]:
    """Signatures (genes × types) via :func:`spotmap.reference.signatures.read_signatures`, plus gene ids if known."""
    from spotmap.reference.signatures import read_signatures

    sig = read_signatures(path)
    ids = None
    if Path(path).suffix.lower() == ".h5ad":
        try:
            ref = ad.read_h5ad(path, backed="r")
            if "gene_ids" in ref.var:
                ids = pd.Series(ref.var["gene_ids"].astype(str).to_numpy(), index=ref.var_names.astype(str))
                ids = ids.reindex(sig.index)
                ids = None if ids.isna().any() else ids
            ref.file.close()
        except Exception:  # ids are optional: fall back to symbols
            ids = None
    return sig, ids


def cells_per_location_of(paths: list[Path]) -> float:
    """The default ``N_cells_per_location`` of the inputs' platform (:func:`spotmap.mapping.priors.default_cells_per_location`:
    8 per Visium spot, 2 per 8 µm Visium HD bin); inputs whose defaults differ need an explicit value."""
    from spotmap.mapping.priors import default_cells_per_location
    from spotmap.qc import platform_of_file

    platforms = {Path(p): platform_of_file(p) for p in paths}
    values = {p: default_cells_per_location(*pf) for p, pf in platforms.items()}
    first = next(iter(values))
    for path, value in values.items():
        if value != values[first]:
            raise input_error(path, f"the default cells per location of its platform ({value:g}) differs from "
                                    f"{first}'s ({values[first]:g}): set --n-cells-per-location, or map the samples "
                                    "one by one", field="uns['spotmap']", value=_platform_text(*platforms[path]))
    return values[first]


def _platform_text(platform: str, bin_size_um: int | None) -> str:
    return f"{platform} {bin_size_um} µm bins" if bin_size_um else platform


def run_mapping(spatial: list[Path], signatures: Path, outdir: Path, name: str, checkpoint_every: int | None = None,
                checkpoint: Path | None = None, **settings) -> ad.AnnData:
    """Map and write ``outdir`` (see :mod:`spotmap.results` and ``docs/mapping.md``); returns the result AnnData.

    ``settings['n_cells_per_location']`` None (or absent): the inputs' platform default (:func:`cells_per_location_of`).
    ``checkpoint``: the checkpoint file (default ``outdir/checkpoint.pt``).
    """
    from spotmap.mapping.model import map_cell_types
    from spotmap.mapping.plots import history_tail, plot_history, plot_reconstruction, plot_spatial_qc
    from spotmap.report.mqc import save_mqc_figure, write_mqc_linegraph
    from spotmap.results import write_results

    outdir = Path(outdir)
    batch_key = settings.get("batch_key", "sample")
    if settings.get("n_cells_per_location") is None:
        settings["n_cells_per_location"] = cells_per_location_of([Path(p) for p in spatial])
        log.info("--n-cells-per-location %g (the default for these inputs' platform)", settings["n_cells_per_location"])
    adata = read_spatial_inputs([Path(p) for p in spatial], batch_key)
    sig, ids = read_signature_table(Path(signatures))
    every = DEFAULT_CHECKPOINT_EVERY if checkpoint_every is None else int(checkpoint_every)
    if every < 0:
        raise input_error(None, "--checkpoint-every must be 0 (off) or a positive number of epochs", value=every)
    if checkpoint is not None and every:  # fail now, not at the first checkpoint
        checkpoint = Path(checkpoint)
        try:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise input_error(checkpoint, f"cannot create the checkpoint's folder ({exc.strerror})",
                              field="--checkpoint") from None
    checkpoint = checkpoint or outdir / "checkpoint.pt"
    result, history, mapper = map_cell_types(
        adata, sig, signature_ids=ids, return_mapper=True, checkpoint_every=every or None,
        checkpoint_path=str(checkpoint) if every else None, **settings)
    result.uns["mod"]["name"] = name

    # QC figures and MultiQC content first; sp.h5ad (written last by write_results) marks a complete folder
    outdir.mkdir(parents=True, exist_ok=True)
    save_mqc_figure(plot_history(history, name), outdir / "training_history.png")
    tail = history_tail(history)
    step = max(1, len(tail) // 500)
    write_mqc_linegraph(outdir / f"{name}_training_mqc.yaml", id="spotmap_mapping_history",
                        section_name="Mapping: training",
                        series={name: dict(zip(tail["epoch"].iloc[::step], tail["elbo"].iloc[::step]))},
                        description="-ELBO per epoch of each mapping restart (first 20 % of epochs not shown; "
                                    "the constant Σ log d! is omitted).", ylab="-ELBO")
    rng = np.random.default_rng(mapper.settings.seed)
    spots = np.sort(rng.choice(result.n_obs, size=min(RECONSTRUCTION_SPOTS, result.n_obs), replace=False))
    observed = mapper.X[spots].toarray()
    save_mqc_figure(plot_reconstruction(observed, mapper.expected_counts(spots), name),
                    outdir / f"{name}_reconstruction_mqc.png")
    # a panel row per sample (several samples may share one batch)
    by = "sample" if "sample" in result.obs else batch_key
    save_mqc_figure(plot_spatial_qc(result, by, name), outdir / f"{name}_spatial_qc_mqc.png")
    write_results(result, outdir, history)
    log.info("wrote %s (%d spots × %d cell types; %d epochs%s)", outdir, result.n_obs, len(mapper.factor_names),
             len(history), ", converged" if history.attrs.get("converged") else "")
    return result
