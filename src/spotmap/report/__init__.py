"""The MultiQC report: the registry of its sections (:mod:`.sections`), custom-content writers for the steps
(:mod:`.mqc`) and the report builder (:func:`build_report`: :mod:`.build`, :mod:`.collect`, :mod:`.content`,
:mod:`.generated`, :mod:`.pipeline_info`).

The builder is imported lazily so steps that only write ``*_mqc.*`` files stay light.
"""

from __future__ import annotations

from spotmap.report.sections import REPORT_SECTION_IDS

__all__ = ["build_report", "abundance_maps", "REPORT_SECTION_IDS"]


def __getattr__(name: str):
    if name == "build_report":
        from spotmap.report.build import build_report

        return build_report
    if name == "abundance_maps":  # it moved to the plotting namespace
        from spotmap.pl.abundance import abundance_maps

        return abundance_maps
    raise AttributeError(f"module 'spotmap.report' has no attribute {name!r}")
