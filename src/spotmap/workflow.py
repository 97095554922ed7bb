"""The whole pipeline on one machine: ``spotmap run`` and ``spotmap demo``.

Each step is its :mod:`spotmap.steps` function, called in this process with the same settings and file
names the Nextflow processes use (they call the same steps through the CLI), so a local run and a
pipeline run publish the same layout::

    OUTDIR/qc/<sample>/                 spotmap qc (per sample), qc/qc_batch/ (batch-effect UMAP)
    OUTDIR/signatures/                  spotmap signatures (skipped when --signatures is given)
    OUTDIR/mapping/restart_<seed>/      spotmap map, one per restart seed (samples mapped jointly)
    OUTDIR/mapping/consensus/           spotmap aggregate
    OUTDIR/mapping/colocation/          spotmap colocation on the consensus (skipped with --skip-colocation)
    OUTDIR/mapping/<sample>/...         the same per sample (--mapping-mode per_sample; auto with Visium HD)
    OUTDIR/multiqc/multiqc_report.html  spotmap report
    OUTDIR/pipeline_info/params.json    parameters and their defaults (for the report's workflow summary)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from spotmap.colocation.settings import ColocationSettings, range_text
from spotmap.errors import SpotmapError
from spotmap.mapping.priors import MappingPriors
from spotmap.mapping.settings import MappingSettings
from spotmap.utils import atomic_path, log, software_versions

MAPPING_MODES = ("auto", "joint", "per_sample")


@dataclass
class RunParams:
    """Parameters of :func:`run_pipeline` (names as in nextflow.config, snake_case; its defaults are these).

    ``qc_*`` None: the QC default of each sample's platform; ``n_cells_per_location`` None: the mapping's
    default of the inputs' platform; ``*_max_epochs`` None: the step's own default. ``colocation_n_factors``
    None: the number of co-location factors is chosen from ``colocation_n_factors_range`` (``'LO-HI'``);
    ``colocation_n_regions`` None: chosen by silhouette. ``extra_*_args``: more keyword arguments of
    :func:`spotmap.steps.qc.run`, :func:`spotmap.steps.signatures.run`, :func:`spotmap.steps.map.run` and
    :func:`spotmap.steps.colocation.run`.
    """

    samplesheet: str = ""
    reference: str | None = None
    signatures: str | None = None
    outdir: str = "results"
    labels_key: str = "cell_type"
    cell_types: str | None = None
    batch_key: str | None = None
    restarts: int = 3
    qc_min_counts: float | None = None
    qc_min_genes: int | None = None
    qc_max_mt_fraction: float | None = None
    seed: int = MappingSettings.seed
    mapping_mode: str = "auto"
    n_cells_per_location: float | None = None
    detection_alpha: float = MappingPriors.detection_alpha
    signatures_max_epochs: int | None = None
    map_max_epochs: int | None = None
    keep_flagged: bool = False  # pool flagged restarts into the consensus too (spotmap aggregate --keep-flagged)
    device: str = MappingSettings.device
    threads: int | None = None  # CPU threads of qc-batch, signatures, map, colocation (0: all cores); None: each default
    skip_colocation: bool = False
    colocation_n_factors: int | None = None
    colocation_n_factors_range: str = range_text(ColocationSettings.factor_range)
    colocation_n_regions: int | None = None
    colocation_quantity: str = ColocationSettings.quantity
    extra_qc_args: dict = field(default_factory=dict)
    extra_signatures_args: dict = field(default_factory=dict)
    extra_map_args: dict = field(default_factory=dict)
    extra_colocation_args: dict = field(default_factory=dict)

    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.restarts)]


def resolve_mapping_mode(mode: str, hd_samples: list[str]) -> str:
    """``auto`` → ``per_sample`` when any sample is Visium HD (100,000s of bins each: one model per
    sample), ``joint`` otherwise (as cell2location); ``joint`` and ``per_sample`` stay as given."""
    if mode not in MAPPING_MODES:
        raise SpotmapError(f"--mapping-mode must be one of {', '.join(MAPPING_MODES)} (got {mode!r})")
    if mode != "auto":
        return mode
    return "per_sample" if hd_samples else "joint"


def write_params(params: RunParams, path: Path) -> None:
    defaults = RunParams()
    doc = {"params": asdict(params), "defaults": {f.name: getattr(defaults, f.name) for f in fields(RunParams)},
           "versions": software_versions()}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, default=str))


def _step(label: str, run, /, **kwargs) -> Path:
    """Run one step, with a log line before and after."""
    log.info("[%s] start", label)
    t0 = time.perf_counter()
    out = run(**kwargs)
    log.info("[%s] done in %.1f s", label, time.perf_counter() - t0)
    return out


def _check(params: RunParams) -> None:
    if params.reference is None and params.signatures is None:
        raise SpotmapError("give --reference (to estimate signatures) or --signatures (computed elsewhere)")
    if params.mapping_mode not in MAPPING_MODES:
        raise SpotmapError(f"--mapping-mode must be one of {', '.join(MAPPING_MODES)} (got {params.mapping_mode!r})")
    if params.restarts < 1:
        raise SpotmapError(f"--restarts must be at least 1 (got {params.restarts})")
    if not params.skip_colocation:  # before hours of mapping
        from spotmap.steps.colocation import check_request

        check_request(params.colocation_n_factors, None, params.colocation_n_regions, params.colocation_quantity)
        check_request(None, params.colocation_n_factors_range, None, params.colocation_quantity)


def _qc(params: RunParams, rows: list, out: Path) -> list[Path]:
    """QC per sample (``OUTDIR/qc/<sample>/``), then the batch-effect view of several samples."""
    from spotmap.steps import qc, qc_batch

    qc_files = []
    for row in rows:
        qc_files.append(_step(f"qc {row.sample}", qc.run, sample=row.sample, input=row.input,
                              outdir=out / "qc" / row.sample, coordinates=row.coordinates, bin_size=row.bin_size,
                              batch=row.batch, min_counts=params.qc_min_counts, min_genes=params.qc_min_genes,
                              max_mt_fraction=params.qc_max_mt_fraction, **params.extra_qc_args))
    if len(qc_files) > 1:
        _step("qc-batch", qc_batch.run, spatial=qc_files, outdir=out / "qc" / "qc_batch")
    return qc_files


def _signatures(params: RunParams, out: Path) -> Path:
    from spotmap.steps import signatures

    if params.signatures is not None:
        return Path(params.signatures)
    epochs = {"max_epochs": params.signatures_max_epochs} if params.signatures_max_epochs else {}
    if params.threads is not None:
        epochs["threads"] = params.threads or None
    return _step("signatures", signatures.run, reference=params.reference, labels_key=params.labels_key,
                 outdir=out / "signatures", seed=params.seed, device=params.device, batch_key=params.batch_key,
                 cell_types=params.cell_types, **epochs, **params.extra_signatures_args)


def _map_and_aggregate(params: RunParams, group: str, files: list[Path], signatures: Path, base: Path,
                       n_cells: float | None, batch_key: str | None) -> Path:
    """Every restart seed of one mapping (all samples, or one in per-sample mode), then their consensus (and
    its co-location); returns the consensus folder."""
    from spotmap.steps import aggregate, map as map_step

    epochs = {"max_epochs": params.map_max_epochs} if params.map_max_epochs else {}
    keys = {"batch_key": batch_key} if batch_key else {}
    restart_dirs = []
    for seed in params.seeds():
        restart_dirs.append(_step(
            f"map {group or 'all'} seed {seed}", map_step.run, spatial=files, signatures=signatures,
            outdir=base / f"restart_{seed}", seed=seed, device=params.device,
            detection_alpha=params.detection_alpha, name=f"{group + '_' if group else ''}restart_{seed}",
            n_cells_per_location=n_cells, **epochs, **keys, **params.extra_map_args))
    consensus = _step(f"aggregate {group or 'all'}", aggregate.run, restarts=restart_dirs, outdir=base / "consensus",
                      keep_flagged=params.keep_flagged)
    return consensus if params.skip_colocation else _colocation(params, group, consensus, base / "colocation")


def _colocation(params: RunParams, group: str, consensus: Path, outdir: Path) -> Path:
    """Co-located cell types and tissue regions of one consensus into ``outdir`` (``<mapping>/colocation/``,
    beside the consensus); returns the consensus folder."""
    from spotmap.steps import colocation

    factors = ({"n_factors": params.colocation_n_factors} if params.colocation_n_factors is not None
               else {"n_factors_range": params.colocation_n_factors_range})
    _step(f"colocation {group or 'all'}", colocation.run, mapping=consensus, outdir=outdir,
          n_regions=params.colocation_n_regions, quantity=params.colocation_quantity, seed=params.seed, **factors,
          **params.extra_colocation_args)
    return consensus


def run_pipeline(params: RunParams) -> Path:
    """Run QC → signatures → map (per restart seed) → aggregate → co-location → report; return the report's path."""
    from spotmap.io.samplesheet import read_samplesheet, sample_rows
    from spotmap.steps import report

    _check(params)
    if params.threads is not None:  # one process: torch's and the BLAS/OpenMP pools are process-wide
        from spotmap.utils import set_threads

        set_threads(params.threads)
    out = Path(params.outdir)
    rows = sample_rows(read_samplesheet(params.samplesheet))
    write_params(params, out / "pipeline_info" / "params.json")
    hd_samples = [r.sample for r in rows if r.is_visium_hd]  # from the samplesheet, as workflows/spotmap.nf
    mapping_mode = resolve_mapping_mode(params.mapping_mode, hd_samples)
    if params.mapping_mode == "auto":
        log.info("mapping mode auto: %s (%s)", mapping_mode,
                 f"Visium HD sample(s): {', '.join(hd_samples)}" if hd_samples else "no Visium HD sample")
    cells_per_sample = {r.sample: r.n_cells_per_location for r in rows if r.n_cells_per_location is not None}
    if cells_per_sample and mapping_mode == "joint":
        log.warning("samplesheet n_cells_per_location is applied in per-sample mapping only; the joint model uses "
                    "%s for every sample", f"--n-cells-per-location {params.n_cells_per_location:g}"
                    if params.n_cells_per_location is not None else "spotmap map's default")

    qc_files = _qc(params, rows, out)
    signatures = _signatures(params, out)
    if mapping_mode == "joint":
        # samples sharing a batch label share y_e, s_eg, alpha_eg
        batch_key = "batch" if any(r.batch is not None for r in rows) else None
        _map_and_aggregate(params, "", qc_files, signatures, out / "mapping", params.n_cells_per_location, batch_key)
    else:
        for f in qc_files:
            _map_and_aggregate(params, f.stem, [f], signatures, out / "mapping" / f.stem,
                               cells_per_sample.get(f.stem, params.n_cells_per_location), None)
    path = _step("report", report.run, results=out, outdir=out / "multiqc")
    log.info("report: %s", path)
    return path
