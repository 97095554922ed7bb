"""Hyperparameters of the spatial mapping model, in one typed dataclass.

Every default is cell2location 0.1.5's (``LocationModelLinearDependentWMultiExperimentLocationBackground
NormLevelGeneAlphaPyroModel``), except ``N_cells_per_location`` whose default (8) follows the seed
tutorial's mouse-brain advice; users should set it from histology (cells per 55 µm Visium spot). cell2location
has one more, ``detection_mean_alpha`` (the shape of the batch detection means), which spotmap fixes instead
(:mod:`spotmap.mapping.detection`). Visium HD
bins get their own default (:func:`default_cells_per_location`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from spotmap.errors import SpotmapError

#: expected cells per 8 µm Visium HD bin when none is given: the published cell2location protocol on 8 µm
#: HD bins uses N_cells_per_location = 2 (FlashDeconv's cell2location baseline; 8 µm bins hold 0–3 cells)
HD_CELLS_PER_8UM_BIN = 2.0


@dataclass(frozen=True)
class MappingPriors:
    """Priors of the cell2location spatial model (see :mod:`spotmap.mapping.module` for the maths).

    Cell abundance w_sf (cells per spot):

    * ``N_cells_per_location`` — expected cells per spot, the prior mean of ``n_s_cells_per_location``;
    * ``N_cells_mean_var_ratio`` — its mean/variance ratio (1: a broad prior);
    * ``A_factors_per_location`` — expected cell types per spot; ``B_groups_per_location`` — expected
      co-located groups per spot; ``n_groups`` — number of co-located groups r in the factorisation
      ``w_sf ~ Gamma(mean = Σ_r z_sr x_fr)``;
    * ``w_sf_mean_var_ratio`` — mean/variance ratio of w_sf around that mean.

    Detection efficiency y_s (dimensionless; observed / expected mRNA):

    * ``detection_alpha`` — shape of y_s around its batch's level (20: strong within-slide technical
      variability; 200: little). The level d_e itself is fixed from the data and ``N_cells_per_location``
      (:mod:`spotmap.mapping.detection`), where cell2location gives it a prior (``Gamma(10, 10 / detection_mean)``).

    Gene sensitivity m_g: ``m_g_mean`` (1), ``m_g_mean_var_ratio`` (1), ``m_g_alpha_mean`` (3).
    Additive background s_eg (counts per spot before detection): ``gene_add_alpha_hyp`` (9, 3),
    ``gene_add_mean_hyp`` (1, 100) as Gamma (shape, rate). Overdispersion alpha_eg:
    ``alpha_g_phi_hyp`` (9, 3) as Gamma (shape, rate).
    """

    N_cells_per_location: float = 8.0
    N_cells_mean_var_ratio: float = 1.0
    A_factors_per_location: float = 7.0
    B_groups_per_location: float = 7.0
    n_groups: int = 50
    w_sf_mean_var_ratio: float = 5.0
    detection_alpha: float = 20.0
    m_g_mean: float = 1.0
    m_g_mean_var_ratio: float = 1.0
    m_g_alpha_mean: float = 3.0
    gene_add_alpha_hyp: tuple[float, float] = (9.0, 3.0)
    gene_add_mean_hyp: tuple[float, float] = (1.0, 100.0)
    alpha_g_phi_hyp: tuple[float, float] = (9.0, 3.0)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, tuple) else (value,)
            if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values):
                raise SpotmapError(f"prior '{f.name}' must be a positive finite number (got {value!r})")
        if int(self.n_groups) != self.n_groups or self.n_groups < 1:
            raise SpotmapError(f"prior 'n_groups' must be a positive integer (got {self.n_groups!r})")

    def as_dict(self) -> dict:
        """JSON-safe dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def default_cells_per_location(platform: str, bin_size_um: float | None = None) -> float:
    """Default ``N_cells_per_location`` of a platform (cells per spot).

    ``visium-hd``: ``HD_CELLS_PER_8UM_BIN × (bin_size / 8)²`` — 2 cells per 8 µm bin, scaled with the bin's
    area (16 µm → 8, 2 µm → 0.125); every other platform: :class:`MappingPriors`' default, 8 per 55 µm spot.
    """
    if platform == "visium-hd":
        return HD_CELLS_PER_8UM_BIN * (float(bin_size_um or 8) / 8.0) ** 2
    return MappingPriors.N_cells_per_location
