"""Every default of the co-location analysis, in one dataclass, and the names of its output files."""

from __future__ import annotations

from dataclasses import dataclass, replace

#: platform names (``uns['spotmap']['platform']``) whose observations are bins of a square grid
HD_PLATFORMS = ("visium-hd", "visiumhd")

#: file name → what it holds; the step layer writes :meth:`ColocationResult.tables` under these names
OUTPUT_FILES = {
    "colocation_factors.csv": "cell types × factors: share of each type's cells in each factor (rows sum to 1)",
    "factor_abundance.csv": "spots × factors: cells per spot in each factor",
    "regions.csv": "spot,region: the tissue region of each spot",
    "region_composition.csv": "regions × cell types: mean cells per spot",
    "factor_fits.csv": "per factor number: reconstruction error, explained variance, stability across seeds",
    "region_fits.csv": "per number of regions: silhouette",
}

#: the posterior summaries of w_sf in a mapping result that co-location can read (``obsm['{q}_cell_abundance_w_sf']``)
QUANTITIES = ("q05", "means", "q50", "q95")


def range_text(numbers: tuple[int, int]) -> str:
    """``(5, 30)`` → ``'5-30'``: a range as the command line and the pipeline's parameters spell it."""
    return f"{numbers[0]}-{numbers[1]}"


@dataclass(frozen=True)
class ColocationSettings:
    """Knobs of :func:`spotmap.colocation.run_colocation`; the defaults are the recommended values.

    Factors (a non-negative factorisation ``X ≈ W H`` of the spots × types abundance ``X``):

    * ``factor_range`` — factor numbers tried when none is given (inclusive);
    * ``scale_types`` — divide each type by its standard deviation over spots before factorising (and
      multiply H back), so every type weighs the same and abundant types do not dominate the fit;
    * ``n_restarts`` — random initialisations per factor number: the best reconstruction is kept and the
      others measure the stability of its factors;
    * ``gain_threshold`` — the chosen factor number is the smallest past which one more factor explains
      less than ``gain_threshold`` / n_types of the (scaled) variance, i.e. less than
      ``gain_threshold`` cell types' worth: such a factor holds no group of co-located types;
    * ``alpha``, ``l1_ratio`` — scikit-learn NMF's elastic-net penalty on W and H (cell2location's
      ``run_colocation`` defaults);
    * ``max_iter``, ``tol`` — coordinate-descent iterations and scikit-learn's stopping tolerance;
    * ``range_fit_spots`` — above this many spots, the factor numbers of the range are compared on a
      seeded random subsample of this size (the fit measures are averages over spots; the range is most
      of the cost);
    * ``max_fit_spots`` — above this many spots, the chosen factor number (and the regions) is fitted on
      a seeded random subsample of this size and every spot is then projected onto the factors
      (non-negative least squares with H fixed) and assigned to the nearest region centre.

    Regions (k-means on each spot's composition):

    * ``region_range`` — numbers of regions tried when none is given (inclusive);
    * ``region_features`` — ``'factors'`` (each spot's share of cells in each factor) or ``'types'``
      (each spot's share of cells of each type);
    * ``silhouette_spots`` — spots (a seeded subsample) on which the silhouette of each K is measured;
    * ``kmeans_n_init`` — k-means initialisations per K.

    Both: ``n_neighbours`` — when set, each spot's abundance is first replaced by the mean over itself and
    its nearest ``n_neighbours`` spots of the same sample; ``hd_n_neighbours`` — the value
    :meth:`for_platform` sets for Visium HD bins, which hold one or two cells each, so that co-location
    shows only across neighbouring bins (24: a 5 × 5 block of 8 µm bins, about one Visium spot);
    ``quantity`` — the posterior summary read from a mapping (``q05``, ``means``, …); ``seed``.
    """

    quantity: str = "q05"
    factor_range: tuple[int, int] = (5, 30)
    scale_types: bool = True
    n_restarts: int = 3
    gain_threshold: float = 1.5
    alpha: float = 0.01
    l1_ratio: float = 0.5
    max_iter: int = 1000
    tol: float = 1e-4
    range_fit_spots: int = 5_000
    max_fit_spots: int = 20_000
    region_range: tuple[int, int] = (2, 15)
    region_features: str = "factors"
    silhouette_spots: int = 5_000
    kmeans_n_init: int = 10
    n_neighbours: int | None = None
    hd_n_neighbours: int = 24
    seed: int = 0

    def for_platform(self, platform: str | None) -> ColocationSettings:
        """These settings for data of ``platform``: Visium HD bins get ``n_neighbours = hd_n_neighbours``
        unless ``n_neighbours`` is set."""
        is_bins = platform is not None and str(platform).lower().replace("_", "-") in HD_PLATFORMS
        return replace(self, n_neighbours=self.hd_n_neighbours) if is_bins and self.n_neighbours is None else self
