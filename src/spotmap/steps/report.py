"""``spotmap report``: one MultiQC report of a results folder."""

from __future__ import annotations

import os
from pathlib import Path

from spotmap.utils import log


def run(*, results: str | os.PathLike, outdir: str | os.PathLike, config: str | os.PathLike | None = None,
        title: str | None = None, dpi: int = 90) -> Path:
    """Build ``outdir/multiqc_report.html`` from the results folder ``results``
    (:func:`spotmap.report.build_report`); return its path."""
    from spotmap.report.build import build_report

    report = build_report(results, outdir, config=config, title=title, dpi=dpi)
    log.info("report: %s (%.1f MB)", report, report.stat().st_size / 1e6)
    return report
