"""``spotmap qc``: read one spatial sample, QC its spots and write the QC folder."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import anndata as ad
import pandas as pd

from spotmap.errors import SpotmapError
from spotmap.io.genes import MIN_SHARED_GENES
from spotmap.report import sections

Threshold = float | int | str | None  #: a number, or None / 'auto' for the platform's default

SUMMARY_HEADERS = {
    "spots_before": {"title": "Spots", "description": "In-tissue spots before QC", "format": "{:,.0f}"},
    "spots_after": {"title": "Spots kept", "description": "Spots passing QC", "format": "{:,.0f}"},
    "spots_low_counts": {"title": "Low counts", "description": "Spots under --min-counts", "format": "{:,.0f}",
                         "hidden": True},
    "spots_low_genes": {"title": "Low genes", "description": "Spots under --min-genes", "format": "{:,.0f}",
                        "hidden": True},
    "spots_high_mt": {"title": "High mt", "description": "Spots over --max-mt-fraction", "format": "{:,.0f}",
                      "hidden": True},
    "median_counts": {"title": "Median UMI", "description": "Median UMI counts per kept spot", "format": "{:,.0f}"},
    "median_genes": {"title": "Median genes", "description": "Median genes detected per kept spot",
                     "format": "{:,.0f}"},
    "median_mt_frac": {"title": "Median mt", "description": "Median mitochondrial fraction of kept spots (0-1)",
                       "format": "{:,.3f}", "min": 0, "max": 1},
    "genes_before": {"title": "Genes", "description": "Genes in the input", "format": "{:,.0f}"},
    "genes_after": {"title": "Genes kept", "description": "Genes kept for mapping (mitochondrial removed)",
                    "format": "{:,.0f}"},
    "mt_genes": {"title": "mt genes", "description": "Mitochondrial genes removed from the counts",
                 "format": "{:,.0f}"},
    "genes_shared_with_reference": {"title": "Shared genes", "description": "Kept genes also in the reference "
                                    "(with --reference)", "format": "{:,.0f}"},
    "genes_matched_by": {"title": "Matched by", "description": "Genes matched by Ensembl-style id or by symbol"},
}


def run(*, sample: str, input: str | os.PathLike, outdir: str | os.PathLike, coordinates: str | os.PathLike | None = None,
        orientation: str = "auto", counts_layer: str = "auto", bin_size: int | None = None, batch: str | None = None,
        min_counts: Threshold = None, min_genes: Threshold = None, max_mt_fraction: Threshold = None,
        mt_genes: str | os.PathLike | None = None, reference: str | os.PathLike | None = None,
        cell_types: str | os.PathLike | None = None, labels_key: str = "cell_type", min_shared_genes: int = MIN_SHARED_GENES,
        plots: bool = True) -> Path:
    """QC one spatial sample and write ``outdir`` (:func:`write_qc_outputs`); return ``<outdir>/<sample>.h5ad``.

    ``input``: a Space Ranger folder, ``.h5ad``, 10x ``.h5`` or count table (:func:`spotmap.io.read_spatial`,
    with ``coordinates``, ``orientation``, ``counts_layer``, ``bin_size``). Thresholds left None or
    ``'auto'`` take the input platform's defaults (:func:`spotmap.qc.default_thresholds`). ``batch`` is
    written to every spot as ``obs['batch']``. With ``reference`` the genes shared with it are counted
    (and fewer than ``min_shared_genes`` is an error) before anything is written.
    """
    from spotmap.io import read_reference, read_spatial
    from spotmap.qc import read_mt_genes, resolve_thresholds, run_qc, shared_gene_report

    # thresholds and every input checked before reading or writing anything big
    check_sample(sample)
    check_batch(batch)
    check_thresholds(*(1 if _auto(v) else v for v in (min_counts, min_genes)),
                     0.5 if _auto(max_mt_fraction) else max_mt_fraction)
    mt = read_mt_genes(mt_genes) if mt_genes is not None else None
    adata = read_spatial(input, sample=sample, counts_layer=counts_layer, coordinates=coordinates,
                         orientation=orientation, bin_size=bin_size)
    t = resolve_thresholds(adata, min_counts, min_genes, max_mt_fraction)
    filtered, summary = run_qc(adata, sample, mt_genes=mt, batch=batch, **t)
    if reference is not None:
        ref = read_reference(reference, labels_key=labels_key, cell_types=cell_types)
        summary.update(shared_gene_report(filtered, ref, min_genes=min_shared_genes, source=str(reference)))
    return write_qc_outputs(adata, filtered, summary, outdir, sample, plots=plots, **t)["h5ad"]


def _auto(value: Threshold) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() == "auto")


def check_thresholds(min_counts: float, min_genes: int, max_mt_fraction: float) -> None:
    if min_counts < 0:
        raise SpotmapError(f"--min-counts must be ≥ 0 (got {min_counts:g})")
    if min_genes < 0:
        raise SpotmapError(f"--min-genes must be ≥ 0 (got {min_genes})")
    if not 0 < max_mt_fraction <= 1:
        raise SpotmapError(f"--max-mt-fraction must be in (0, 1], a fraction not a percentage (got {max_mt_fraction:g})")


def check_sample(sample: str) -> None:
    """The sample id names files: the samplesheet schema's rule (letters, digits, . _ -)."""
    _check_label("--sample", "sample", sample,
                 "must start with a letter or digit and hold only letters, digits, '.', '_' or '-'")


def check_batch(batch: str | None) -> None:
    """The batch label: the samplesheet schema's rule (not empty, no whitespace)."""
    if batch is not None:
        _check_label("--batch", "batch", batch, "must be a label without spaces")


def _check_label(option: str, column: str, value: str, rule: str) -> None:
    """``value`` matches the samplesheet schema's pattern of ``column``, or one line naming ``option``."""
    from spotmap.io.samplesheet import load_schema

    if not re.match(load_schema()["items"]["properties"][column]["pattern"], value):
        raise SpotmapError(f"{option} {rule} (got {value!r})")


def write_qc_outputs(adata: ad.AnnData, filtered: ad.AnnData, summary: dict, outdir: str | os.PathLike, sample: str,
                     min_counts: float, min_genes: int, max_mt_fraction: float, plots: bool = True) -> dict[str, Path]:
    """Write the QC outputs of one sample into ``outdir``, all or none.

    Files: ``<sample>.h5ad`` (``filtered``), ``<sample>_qc_metrics.tsv`` (every spot of ``adata``),
    ``<sample>_qc_summary_mqc.tsv`` (MultiQC table :data:`~spotmap.report.sections.QC_SUMMARY`),
    ``<sample>_qc_histograms_mqc.png`` and ``<sample>_qc_spatial_mqc.png``. Everything is written to a hidden
    folder first and moved in at the end, so a failure leaves no partial output.
    """
    from spotmap import pl
    from spotmap.qc import qc_metrics_table
    from spotmap.report.mqc import save_mqc_figure, write_mqc_table
    from spotmap.utils import write_h5ad, write_table

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    names = {"h5ad": f"{sample}.h5ad", "metrics": f"{sample}_qc_metrics.tsv",
             "summary": f"{sample}{sections.QC_SUMMARY.file}"}
    if plots:
        names |= {"histograms": f"{sample}{sections.QC_HISTOGRAMS.file}",
                  "spatial": f"{sample}{sections.QC_SPATIAL.file}"}
    stage = Path(tempfile.mkdtemp(prefix=f".{sample}.qc.", dir=outdir))
    try:
        write_h5ad(filtered, stage / names["h5ad"])
        write_table(qc_metrics_table(adata), stage / names["metrics"])
        row = pd.DataFrame([{k: v for k, v in summary.items() if k != "sample"}],
                           index=pd.Index([sample], name="Sample"))
        write_mqc_table(row, stage / names["summary"], sections.QC_SUMMARY,
                        pconfig={"id": f"{sections.QC_SUMMARY.id}_table", "title": "spotmap: samples and QC"},
                        headers=SUMMARY_HEADERS, thresholds=f"{min_counts:g} / {min_genes} / {max_mt_fraction:g}")
        if plots:
            save_mqc_figure(pl.qc_histograms(adata, sample, min_counts, min_genes, max_mt_fraction),
                            stage / names["histograms"])
            save_mqc_figure(pl.qc_spatial(adata, sample), stage / names["spatial"])
        out = {}
        for key, name in names.items():
            os.replace(stage / name, outdir / name)
            out[key] = outdir / name
        return out
    finally:
        shutil.rmtree(stage, ignore_errors=True)
