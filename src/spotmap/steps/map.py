"""``spotmap map``: map cell types onto one or more QC-filtered samples (jointly) and write the result folder."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from spotmap.errors import input_error
from spotmap.mapping.priors import MappingPriors
from spotmap.mapping.settings import MappingSettings
from spotmap.report import sections
from spotmap.utils import log

_P, _S = MappingPriors(), MappingSettings()

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
    from spotmap.io.platform import platform_of
    from spotmap.mapping.priors import default_cells_per_location

    platforms = {Path(p): platform_of(p) for p in paths}
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


def run(*, spatial: list[str | os.PathLike], signatures: str | os.PathLike, outdir: str | os.PathLike,
        name: str | None = None, n_cells_per_location: float | None = None,
        detection_alpha: float = _P.detection_alpha, n_groups: int = _P.n_groups, max_epochs: int = _S.max_epochs,
        lr: float = _S.lr, local_lr: float | None = _S.local_lr, batch_size: int | None = _S.batch_size,
        seed: int = _S.seed, device: str = _S.device, checkpoint_every: int | None = None,
        checkpoint: str | os.PathLike | None = None, batch_key: str = _S.batch_key, min_epochs: int = _S.min_epochs,
        tol: float = _S.tol, window: int = _S.window, likelihood: str = _S.likelihood,
        sparse_mu_max: float = _S.sparse_mu_max, sparse_u_max: float = _S.sparse_u_max,
        init_iterations: int = _S.init_iterations,
        **settings) -> Path:
    """Map cell types onto the QC-filtered ``spatial`` files (jointly) with ``signatures``; write ``outdir``.

    One restart (``seed``). Writes ``outdir/sp.h5ad`` and the other files of a result folder
    (:mod:`spotmap.results`, ``docs/mapping.md``), then ``training_history.png`` and the MultiQC files
    ``<name>_training_mqc.yaml``, ``<name>_reconstruction_mqc.png``, ``<name>_spatial_qc_mqc.png``
    (``name`` default ``restart_<seed>``). ``n_cells_per_location`` None: the inputs' platform default
    (:func:`cells_per_location_of`). ``checkpoint``: the checkpoint file (default ``outdir/checkpoint.pt``),
    every ``checkpoint_every`` epochs (default :data:`DEFAULT_CHECKPOINT_EVERY`; 0: none). ``settings``: any
    other field of :class:`~spotmap.mapping.MappingSettings`. Returns ``outdir``.
    """
    from spotmap.mapping.model import map_cell_types
    from spotmap.results import write_results

    outdir = Path(outdir)
    name = name or f"restart_{seed}"
    settings |= dict(detection_alpha=detection_alpha, n_groups=n_groups, max_epochs=max_epochs, lr=lr,
                     local_lr=local_lr, batch_size=batch_size, seed=seed, device=device, batch_key=batch_key,
                     min_epochs=min_epochs, tol=tol, window=window, likelihood=likelihood,
                     sparse_mu_max=sparse_mu_max, sparse_u_max=sparse_u_max, init_iterations=init_iterations)
    if n_cells_per_location is None:
        n_cells_per_location = cells_per_location_of([Path(p) for p in spatial])
        log.info("--n-cells-per-location %g (the default for these inputs' platform)", n_cells_per_location)
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
        checkpoint_path=str(checkpoint) if every else None, n_cells_per_location=n_cells_per_location, **settings)
    result.uns["mod"]["name"] = name

    # QC figures and MultiQC content first; sp.h5ad (written last by write_results) marks a complete folder
    write_qc_content(outdir, name, result, history, mapper, batch_key)
    write_results(result, outdir, history)
    log.info("wrote %s (%d spots × %d cell types; %d epochs%s)", outdir, result.n_obs, len(mapper.factor_names),
             len(history), ", converged" if history.attrs.get("converged") else "")
    return outdir


def write_qc_content(outdir: Path, name: str, result: ad.AnnData, history: pd.DataFrame, mapper, batch_key: str) -> None:
    """``training_history.png`` and the MultiQC files of one mapping run (see :func:`run`)."""
    from spotmap import pl
    from spotmap.report.mqc import save_mqc_figure, write_mqc_linegraph

    outdir.mkdir(parents=True, exist_ok=True)
    save_mqc_figure(pl.mapping_history(history, name), outdir / "training_history.png")
    tail = pl.history_tail(history)
    step = max(1, len(tail) // 500)
    write_mqc_linegraph(outdir / f"{name}{sections.MAPPING_HISTORY.file}", sections.MAPPING_HISTORY,
                        series={name: dict(zip(tail["epoch"].iloc[::step], tail["elbo"].iloc[::step]))},
                        ylab="-ELBO")
    rng = np.random.default_rng(mapper.settings.seed)
    spots = np.sort(rng.choice(result.n_obs, size=min(RECONSTRUCTION_SPOTS, result.n_obs), replace=False))
    observed = mapper.X[spots].toarray()
    save_mqc_figure(pl.reconstruction(observed, mapper.expected_counts(spots), name),
                    outdir / f"{name}{sections.RECONSTRUCTION.file}")
    # a panel row per sample (several samples may share one batch)
    by = "sample" if "sample" in result.obs else batch_key
    save_mqc_figure(pl.spatial_qc(result, by, name), outdir / f"{name}{sections.SPATIAL_QC.file}")
