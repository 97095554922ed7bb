"""QC thresholds of a spot, and their defaults by platform (one definition: :class:`QCThresholds`)."""

from __future__ import annotations

from dataclasses import dataclass

from spotmap.io.platform import VISIUM_HD, platform_of


@dataclass(frozen=True)
class QCThresholds:
    """A spot passes QC with at least ``min_counts`` UMIs and ``min_genes`` genes detected, and at most
    ``max_mt_fraction`` (0–1) of its counts from mitochondrial genes.

    The defaults are nf-core/spatialvi's for Visium spots (``qc_min_counts=500``, ``qc_min_genes=250``,
    ``qc_mito_threshold=20`` %); :data:`HD_8UM` holds those of 8 µm Visium HD bins.
    """

    min_counts: float = 500.0
    min_genes: int = 250
    max_mt_fraction: float = 0.20

    def as_dict(self) -> dict:
        return {"min_counts": float(self.min_counts), "min_genes": int(self.min_genes),
                "max_mt_fraction": float(self.max_mt_fraction)}


VISIUM = QCThresholds()
#: Visium HD, 8 µm bins: a few hundred UMIs each (a bin with no cell holds a few tens of ambient UMIs).
#: Other bin sizes scale the count thresholds with the bin's area, (bin / 8)².
HD_8UM = QCThresholds(min_counts=50.0, min_genes=30, max_mt_fraction=0.20)

# the same numbers under their former names
DEFAULT_MIN_COUNTS = VISIUM.min_counts
DEFAULT_MIN_GENES = VISIUM.min_genes
DEFAULT_MAX_MT_FRACTION = VISIUM.max_mt_fraction
HD_MIN_COUNTS_8UM = HD_8UM.min_counts
HD_MIN_GENES_8UM = HD_8UM.min_genes
HD_MAX_MT_FRACTION = HD_8UM.max_mt_fraction


def default_thresholds(platform: str = "visium", bin_size_um: float | None = None) -> dict:
    """Default QC thresholds of a platform: ``min_counts``, ``min_genes``, ``max_mt_fraction``.

    * ``visium`` (and any non-HD input): :data:`VISIUM` (nf-core/spatialvi).
    * ``visium-hd``: :data:`HD_8UM` at 8 µm. Bins of another size scale the count thresholds with their area,
      ``(bin_size / 8)²``, rounded and at least 1: 16 µm → 4 × the 8 µm thresholds, 2 µm → 1/16 of them.
    """
    if platform != VISIUM_HD:
        return VISIUM.as_dict()
    area = (float(bin_size_um or 8) / 8.0) ** 2
    return {"min_counts": float(max(1, round(HD_8UM.min_counts * area))),
            "min_genes": int(max(1, round(HD_8UM.min_genes * area))),
            "max_mt_fraction": float(HD_8UM.max_mt_fraction)}


def resolve_thresholds(adata, min_counts=None, min_genes=None, max_mt_fraction=None) -> dict:
    """The thresholds to use for ``adata``: each ``None`` or ``'auto'`` replaced by the platform's default."""
    defaults = default_thresholds(*platform_of(adata))
    given = {"min_counts": min_counts, "min_genes": min_genes, "max_mt_fraction": max_mt_fraction}
    out = {}
    for key, value in given.items():
        if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
            out[key] = defaults[key]
        else:
            out[key] = int(value) if key == "min_genes" else float(value)
    return out


__all__ = ["QCThresholds", "VISIUM", "HD_8UM", "default_thresholds", "resolve_thresholds"]
