"""The knobs of the simulator (:class:`SimulationParams`) and the geometry of the platforms it writes."""

from __future__ import annotations

from dataclasses import dataclass, field

from spotmap.errors import SpotmapError

MT_GENES = ["mt-Nd1", "mt-Nd2", "mt-Co1", "mt-Co2", "mt-Atp8", "mt-Atp6", "mt-Co3", "mt-Nd3",
            "mt-Nd4l", "mt-Nd4", "mt-Nd5", "mt-Nd6", "mt-Cytb"]

# Visium geometry: 78 rows × 128 columns (hexagonal: row r holds columns with (r + c) even),
# 100 µm between neighbouring spot centres, 55 µm spots.
VISIUM_ROWS, VISIUM_COLS = 78, 128
SPOT_SPACING_UM = 100.0
FULLRES_UM_PER_PX = 0.65

PLATFORMS = ("visium", "visium-hd")
# Visium HD geometry: a square grid of 8 µm bins (Space Ranger also writes 2 µm and 16 µm; here 8 and
# 16, the 16 µm bins being 2 × 2 sums of the 8 µm ones), a ~0.27 µm/pixel full-resolution image.
HD_BIN_UM = 8
HD_BIN_SIZES = (8, 16)
HD_UM_PER_PX = 0.2738
HD_OFFSET_PX = 600.0
HD_TISSUE_FRACTION = 0.7            #: share of the square capture grid under the tissue
HD_MAX_CELLS_PER_BIN = 3
HD_MIN_BINS, HD_MAX_BINS = 100, 4_000_000
HD_CHUNK_BINS = 10_000              #: bins per sampling chunk (memory: ~100 B per UMI of a chunk)
HD_BLOCK_BINS = 25                  #: side (in 8 µm bins) of the blocks of the smooth abundance field


@dataclass
class SimulationParams:
    """Every knob of :func:`simulate`; defaults give a small, quick case (seconds)."""

    n_cells: int = 2000                 #: reference cells
    n_spots: int = 400                  #: in-tissue spots per sample (≤ 4,992 for Visium)
    n_genes: int = 1000                 #: genes, mitochondrial ones included
    n_cell_types: int = 10
    n_samples: int = 2
    seed: int = 0
    n_batches: int = 2                  #: reference batches (≥ 2: depth and technology differ)
    n_zones: int = 5                    #: tissue zones
    cells_per_spot: float = 8.0         #: mean true cells per spot
    cell_counts_per_type: float = 2500.0  #: mean total expected mRNA counts per cell, over all genes
    detection_mean: float = 0.4         #: mean spatial detection efficiency y_e
    detection_alpha: float = 20.0       #: shape of y_s around its sample mean (smaller: more variable)
    gene_sensitivity_sd: float = 0.4    #: log-sd of m_g (platform effect, spatial vs single cell)
    gene_sensitivity_mean: float = 1.0  #: geometric mean of m_g (spatial vs single-cell mRNA capture)
    overdispersion: float = 10.0        #: median NB alpha_g (larger: closer to Poisson)
    ambient_fraction: float = 0.03      #: ambient counts as a fraction of a spot's signal
    batch_depth_ratio: float = 0.4      #: depth of the last reference batch relative to the first
    tech_effect_sd: float = 0.3         #: log-sd of the per-gene technology effect between batches
    n_mt_genes: int = 13
    mt_fraction: float = 0.04           #: share of mitochondrial counts in healthy spots
    frac_damaged_spots: float = 0.02    #: spots with a high mitochondrial share (QC removes)
    frac_empty_spots: float = 0.02      #: spots with almost no counts (QC removes)
    frac_rare_types: float = 0.2
    frac_widespread_types: float = 0.4
    marker_fraction: float = 0.05       #: share of genes that mark each cell type
    positions: str = "csv"              #: "csv" (Space Ranger ≥2.0) or "list" (1.x, headerless)
    missing_types_in_reference: list[str] = field(default_factory=list)  #: tissue types left out of the reference
    platform: str = "visium"            #: "visium" (55 µm spots) or "visium-hd" (square 8 µm bins, 16 µm sums)
    n_bins: int = 5000                  #: Visium HD: in-tissue 8 µm bins per sample
    cells_per_bin: float = 1.5          #: Visium HD: mean true cells per 8 µm bin (each bin holds 0-3)
    bin_detection_mean: float = 0.10    #: Visium HD: mean detection efficiency y_e (a few hundred UMIs per bin)


def _check(p: SimulationParams) -> None:
    problems = []
    if p.platform not in PLATFORMS:
        problems.append(f"--platform must be one of {', '.join(PLATFORMS)} (got {p.platform!r})")
    if p.platform == "visium" and (p.n_spots < 10 or p.n_spots > VISIUM_ROWS * VISIUM_COLS // 2):
        problems.append(f"--n-spots must be between 10 and {VISIUM_ROWS * VISIUM_COLS // 2} (got {p.n_spots})")
    if p.platform == "visium-hd":
        if not HD_MIN_BINS <= p.n_bins <= HD_MAX_BINS:
            problems.append(f"--n-bins must be between {HD_MIN_BINS} and {HD_MAX_BINS:,} (got {p.n_bins})")
        if not 0 < p.cells_per_bin <= HD_MAX_CELLS_PER_BIN:
            problems.append(f"--cells-per-bin must be in (0, {HD_MAX_CELLS_PER_BIN}] (got {p.cells_per_bin:g})")
        if not 0 < p.bin_detection_mean <= 1:
            problems.append(f"bin_detection_mean must be in (0, 1] (got {p.bin_detection_mean:g})")
    if p.n_genes < p.n_mt_genes + 20:
        problems.append(f"--n-genes must be at least {p.n_mt_genes + 20} (got {p.n_genes})")
    if not p.gene_sensitivity_mean > 0:
        problems.append(f"gene_sensitivity_mean must be positive (got {p.gene_sensitivity_mean:g})")
    if p.n_cell_types < 2:
        problems.append(f"--n-cell-types must be at least 2 (got {p.n_cell_types})")
    if p.n_cells < 5 * p.n_cell_types:
        problems.append(f"--n-cells must be at least 5 per cell type (got {p.n_cells})")
    if p.n_samples < 1 or p.n_batches < 1:
        problems.append("--n-samples and --n-batches must be at least 1")
    if p.positions not in {"csv", "list"}:
        problems.append(f"positions must be 'csv' or 'list' (got {p.positions!r})")
    if problems:
        raise SpotmapError("; ".join(problems))
