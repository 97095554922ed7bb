"""Spot QC (``spotmap qc``, ``spotmap qc-batch``): metrics, thresholds, the spot filter and the batch-effect view.

- :class:`QCThresholds`, :func:`default_thresholds`, :func:`resolve_thresholds` — thresholds and their
  defaults by platform (:mod:`spotmap.qc.thresholds`)
- :func:`compute_qc_metrics`, :func:`qc_pass`, :func:`filter_spots`, :func:`remove_mt_genes`, :func:`run_qc` —
  one sample (:mod:`spotmap.qc.metrics`)
- :func:`batch_embedding` — every sample's spots in one UMAP (:mod:`spotmap.qc.batch`)

The files of the steps are written by :mod:`spotmap.steps.qc` and :mod:`spotmap.steps.qc_batch`; the figures
are in :mod:`spotmap.pl`.
"""

from spotmap.io.platform import platform_of
from spotmap.qc.batch import BATCH_UMAP_MAX_SPOTS, batch_embedding
from spotmap.qc.metrics import (MT_PREFIXES, QC_COLUMNS, compute_qc_metrics, filter_spots, mt_gene_mask,
                                qc_metrics_table, qc_pass, read_mt_genes, remove_mt_genes, run_qc,
                                shared_gene_report)
from spotmap.qc.thresholds import (DEFAULT_MAX_MT_FRACTION, DEFAULT_MIN_COUNTS, DEFAULT_MIN_GENES, HD_8UM,
                                   HD_MAX_MT_FRACTION, HD_MIN_COUNTS_8UM, HD_MIN_GENES_8UM, QCThresholds,
                                   default_thresholds, resolve_thresholds)

__all__ = ["BATCH_UMAP_MAX_SPOTS", "DEFAULT_MAX_MT_FRACTION", "DEFAULT_MIN_COUNTS", "DEFAULT_MIN_GENES", "HD_8UM",
           "HD_MAX_MT_FRACTION", "HD_MIN_COUNTS_8UM", "HD_MIN_GENES_8UM", "MT_PREFIXES", "QCThresholds",
           "QC_COLUMNS", "batch_embedding", "compute_qc_metrics", "default_thresholds", "filter_spots",
           "mt_gene_mask", "platform_of", "qc_metrics_table", "qc_pass", "read_mt_genes", "remove_mt_genes",
           "resolve_thresholds", "run_qc", "shared_gene_report"]
