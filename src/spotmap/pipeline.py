"""The whole pipeline on one machine: ``spotmap run`` and ``spotmap demo``.

Each step is run through its own CLI command in this process, with the same options and
file names the Nextflow processes use, so a local run and a pipeline run publish the same
layout::

    OUTDIR/qc/<sample>/                 spotmap qc (per sample), qc/qc_batch/ (batch-effect UMAP)
    OUTDIR/signatures/                  spotmap signatures (skipped when --signatures is given)
    OUTDIR/mapping/restart_<seed>/      spotmap map, one per restart seed (samples mapped jointly)
    OUTDIR/mapping/consensus/           spotmap aggregate
    OUTDIR/mapping/<sample>/...         the same per sample (--mapping-mode per_sample; auto with Visium HD)
    OUTDIR/multiqc/multiqc_report.html  spotmap report
    OUTDIR/pipeline_info/params.json    parameters and their defaults (for the report's workflow summary)
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import click

from spotmap.errors import SpotmapError
from spotmap.utils import atomic_path, log, software_versions


@dataclass
class RunParams:
    """Parameters of :func:`run_pipeline` (names as in nextflow.config, snake_case)."""

    samplesheet: str = ""
    reference: str | None = None
    signatures: str | None = None
    outdir: str = "results"
    labels_key: str = "cell_type"
    cell_types: str | None = None
    batch_key: str | None = None
    restarts: int = 3
    qc_min_counts: float | None = None  # None: spotmap qc's auto (by platform: Visium or Visium HD)
    qc_min_genes: int | None = None
    qc_max_mt_fraction: float | None = None
    seed: int = 0
    mapping_mode: str = "auto"
    n_cells_per_location: float | None = None  # None: spotmap map's default by platform (8; Visium HD 2 per 8 µm bin)
    detection_alpha: float = 20.0
    signatures_max_epochs: int | None = None
    map_max_epochs: int | None = None
    device: str = "auto"
    threads: int | None = None  # CPU threads of qc-batch, signatures and map; None: each step's default
    extra_qc_args: list[str] = field(default_factory=list)
    extra_signatures_args: list[str] = field(default_factory=list)
    extra_map_args: list[str] = field(default_factory=list)

    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.restarts)]


def _invoke(command: click.Command, args: list[str], step: str) -> None:
    """Run one step's click command in this process; errors keep their one-line message."""
    args = [str(a) for a in args]
    log.info("[%s] spotmap %s %s", step, command.name, " ".join(args))
    t0 = time.perf_counter()
    try:
        command.main(args=args, prog_name=f"spotmap {command.name}", standalone_mode=False)
    except click.exceptions.UsageError as exc:
        raise SpotmapError(f"{step}: {exc.format_message()}") from None
    log.info("[%s] done in %.1f s", step, time.perf_counter() - t0)


MAPPING_MODES = ("auto", "joint", "per_sample")
HD_PLATFORM = "visium-hd"


def _batches(sheet) -> dict[str, str]:
    """``{sample: batch label}`` when the samplesheet gives a batch to any row (a row without one is its own
    batch, named after the sample), else ``{}`` (every sample its own batch, as ``--batch-key sample``)."""
    if "batch" not in sheet:
        return {}
    labels = {str(r["sample"]): r["batch"] if isinstance(r["batch"], str) and r["batch"] else str(r["sample"])
              for _, r in sheet.iterrows()}
    return labels if any(isinstance(v, str) and v for v in sheet["batch"]) else {}


def _sample_inputs(sheet) -> list[tuple[str, str, list[str]]]:
    """(sample, input path, extra qc args) per samplesheet row: ``--coordinates``, ``--bin-size``
    (Visium HD bin size in µm) and ``--batch`` (see :func:`_batches`) when the row has them."""
    import pandas as pd

    batches = _batches(sheet)
    rows = []
    for _, row in sheet.iterrows():
        path = next((row[c] for c in ("spaceranger_dir", "h5ad", "counts") if c in row and isinstance(row[c], str) and row[c]),
                    None)
        extra = []
        if "coordinates" in row and isinstance(row.get("coordinates"), str) and row["coordinates"]:
            extra += ["--coordinates", row["coordinates"]]
        bin_size = row.get("bin_size") if "bin_size" in row else None
        if bin_size is not None and not (isinstance(bin_size, float) and pd.isna(bin_size)) and bin_size != "":
            extra += ["--bin-size", int(bin_size)]
        if batches:
            extra += ["--batch", batches[str(row["sample"])]]
        rows.append((str(row["sample"]), str(path), extra))
    return rows


def _cells_per_location(sheet) -> dict[str, float]:
    """``{sample: n_cells_per_location}`` of the samplesheet rows that give one (used per sample)."""
    import pandas as pd

    if "n_cells_per_location" not in sheet:
        return {}
    return {str(r["sample"]): float(r["n_cells_per_location"]) for _, r in sheet.iterrows()
            if not pd.isna(r["n_cells_per_location"]) and r["n_cells_per_location"] != ""}


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


def run_pipeline(params: RunParams) -> Path:
    """Run QC → signatures → map (per restart seed) → aggregate → report; return the report's path."""
    from spotmap.cli import aggregate as aggregate_cli
    from spotmap.cli import map as map_cli
    from spotmap.cli import qc as qc_cli
    from spotmap.cli import qc_batch as qc_batch_cli
    from spotmap.cli import report as report_cli
    from spotmap.cli import signatures as signatures_cli
    from spotmap.io.samplesheet import read_samplesheet
    from spotmap.qc import platform_of_file

    if params.reference is None and params.signatures is None:
        raise SpotmapError("give --reference (to estimate signatures) or --signatures (computed elsewhere)")
    if params.mapping_mode not in MAPPING_MODES:
        raise SpotmapError(f"--mapping-mode must be one of {', '.join(MAPPING_MODES)} (got {params.mapping_mode!r})")
    if params.restarts < 1:
        raise SpotmapError(f"--restarts must be at least 1 (got {params.restarts})")
    threads = ["--threads", params.threads] if params.threads is not None else []
    out = Path(params.outdir)
    sheet = read_samplesheet(params.samplesheet)
    cells_per_sample = _cells_per_location(sheet)
    batches = _batches(sheet)
    write_params(params, out / "pipeline_info" / "params.json")

    # 1. QC per sample
    qc_files, hd_samples = [], []
    for sample, path, extra in _sample_inputs(sheet):
        thresholds = [a for flag, v in (("--min-counts", params.qc_min_counts), ("--min-genes", params.qc_min_genes),
                                        ("--max-mt-fraction", params.qc_max_mt_fraction)) if v is not None
                      for a in (flag, v)]
        _invoke(qc_cli.command, ["--sample", sample, "--input", path, "--outdir", out / "qc" / sample,
                                 *thresholds, *extra, *params.extra_qc_args], f"qc {sample}")
        qc_files.append(out / "qc" / sample / f"{sample}.h5ad")
        if "--bin-size" in extra or platform_of_file(qc_files[-1])[0] == HD_PLATFORM:
            hd_samples.append(sample)
    mapping_mode = resolve_mapping_mode(params.mapping_mode, hd_samples)
    if params.mapping_mode == "auto":
        log.info("mapping mode auto: %s (%s)", mapping_mode,
                 f"Visium HD sample(s): {', '.join(hd_samples)}" if hd_samples else "no Visium HD sample")
    if cells_per_sample and mapping_mode == "joint":
        log.warning("samplesheet n_cells_per_location is applied in per-sample mapping only; the joint model uses "
                    "%s for every sample", f"--n-cells-per-location {params.n_cells_per_location:g}"
                    if params.n_cells_per_location is not None else "spotmap map's default")
    if len(qc_files) > 1:
        _invoke(qc_batch_cli.command, [a for f in qc_files for a in ("--spatial", f)]
                + ["--outdir", out / "qc" / "qc_batch", *threads], "qc-batch")

    # 2. Signatures
    if params.signatures is not None:
        signatures = Path(params.signatures)
    else:
        args = ["--reference", params.reference, "--labels-key", params.labels_key, "--outdir", out / "signatures",
                "--seed", params.seed, "--device", params.device, *threads]
        if params.batch_key:
            args += ["--batch-key", params.batch_key]
        if params.cell_types:
            args += ["--cell-types", params.cell_types]
        if params.signatures_max_epochs:
            args += ["--max-epochs", params.signatures_max_epochs]
        _invoke(signatures_cli.command, args + params.extra_signatures_args, "signatures")
        signatures = out / "signatures" / "signatures.csv"

    # 3. Map, once per restart seed (and per sample in per_sample mode)
    groups = ([("", qc_files)] if mapping_mode == "joint"
              else [(f.stem, [f]) for f in qc_files])
    consensus_dirs = []
    for group, files in groups:
        base = out / "mapping" / group if group else out / "mapping"
        restart_dirs = []
        for seed in params.seeds():
            rdir = base / f"restart_{seed}"
            args = [a for f in files for a in ("--spatial", f)] + [
                "--signatures", signatures, "--outdir", rdir, "--seed", seed, "--device", params.device,
                "--detection-alpha", params.detection_alpha, *threads,
                "--name", f"{group + '_' if group else ''}restart_{seed}"]
            n_cells = cells_per_sample.get(group, params.n_cells_per_location)
            if n_cells is not None:  # else spotmap map's default for the input's platform
                args += ["--n-cells-per-location", n_cells]
            if params.map_max_epochs:
                args += ["--max-epochs", params.map_max_epochs]
            if batches and mapping_mode == "joint":  # samples sharing a batch label share y_e, s_eg, alpha_eg
                args += ["--batch-key", "batch"]
            _invoke(map_cli.command, args + params.extra_map_args, f"map {group or 'all'} seed {seed}")
            restart_dirs.append(rdir)
        # 4. Aggregate restarts
        _invoke(aggregate_cli.command, [a for d in restart_dirs for a in ("--restart", d)]
                + ["--outdir", base / "consensus"], f"aggregate {group or 'all'}")
        consensus_dirs.append(base / "consensus")

    # 5. Report
    _invoke(report_cli.command, ["--results", out, "--outdir", out / "multiqc"], "report")
    report = out / "multiqc" / "multiqc_report.html"
    log.info("report: %s", report)
    return report
