"""The MultiQC report: custom-content writers (:mod:`.mqc`), shared plots (:mod:`.plots`) and
the report builder (:mod:`.build`: :func:`build_report`, :func:`abundance_maps`).

The builder is imported lazily so steps that only write ``*_mqc.*`` files stay light.
"""

from __future__ import annotations

__all__ = ["build_report", "abundance_maps", "REPORT_SECTION_IDS"]


def __getattr__(name: str):
    if name in __all__:
        from spotmap.report import build

        return getattr(build, name)
    raise AttributeError(f"module 'spotmap.report' has no attribute {name!r}")
