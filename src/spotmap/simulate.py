"""Ground-truth simulator: a labelled single-cell reference and Visium samples with known cell counts.

The generative story mirrors the cell2location model, so every later step can be measured
against a known answer:

* signatures ``g_fg`` — expected counts per cell of type f for gene g (a log-normal gene
  baseline, cell-type markers, per-type cell size);
* reference cell c of type f in batch b — ``NB(mean=(g_fg + s_bg) · y_b · t_bg · l_c, alpha_g)``
  with batch depth ``y_b``, multiplicative technology effect ``t_bg`` and ambient ``s_bg``;
* spatial spot s of sample e — true cell numbers ``n_sf`` from zone-dependent rates
  (widespread, zone-restricted and rare types), then
  ``D_sg ~ NB(mean=(m_g · Σ_f n_sf g_fg + s_eg) · y_s, alpha_g)`` with gene sensitivity ``m_g``,
  per-spot detection ``y_s ~ Gamma(detection_alpha, detection_alpha / y_e)`` and ambient ``s_eg``;
* mitochondrial genes (``mt-`` prefix) and a few damaged / empty spots for QC to remove.

Files written under ``outdir``::

    reference.h5ad                         cells × genes, raw counts, obs cell_type / batch
    samples/<sample>/outs/...              Space Ranger outs/ (10x h5, spatial/ positions, scale factors, PNGs)
    samplesheet.csv                        sample,spaceranger_dir
    truth/cell_abundance.csv               spot × type true cell numbers (index '<sample>_<barcode>')
    truth/signatures.csv                   gene × type true g_fg
    truth/spots.csv                        per spot: sample, barcode, zone, y_s, n_cells, qc_fail
    truth/genes.csv                        per gene: m_g, alpha_g, is_mt
    truth/params.json                      every knob used

Visium HD (``platform="visium-hd"``, ``spotmap simulate --platform visium-hd``): square 8 µm bins holding
0-3 cells each, written as Space Ranger HD ``outs/binned_outputs/square_008um/`` and ``square_016um/``
(2 × 2 sums), parquet positions and truth; the counts are drawn sparse and exactly NB, in time and memory
proportional to the number of UMIs (see :func:`_simulate_hd` and :func:`_hd_counts`). Measured at
400,000 bins × 18,000 genes × 40 types, one sample (``/usr/bin/time -v``, 2 shared cores):
2 min 25 s wall (89 s CPU, 61 % of a core, load ~4) and 5 min 34 s wall (101 s CPU, 30 % of a core,
load 6-7) for two runs on the same inputs, peak RSS 3.3 GB (4.1 GB before the 16 µm sums were taken
by blocks); 400,000 bins, 156.9 M non-zero counts (97.8 % zeros), 663 MB written.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from spotmap.errors import SpotmapError
from spotmap.io.spaceranger import POSITION_COLUMNS, write_image, write_positions, write_scalefactors
from spotmap.io.tenx import write_10x_h5
from spotmap.utils import atomic_dir, log, write_h5ad, write_table

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


def _gene_names(n_genes: int, n_mt: int) -> tuple[list[str], list[str]]:
    symbols = MT_GENES[:n_mt] + [f"mt-Sim{i}" for i in range(max(0, n_mt - len(MT_GENES)))]
    symbols += [f"Gene{i:05d}" for i in range(n_genes - len(symbols))]
    ids = [f"ENSSIMG{i:011d}" for i in range(n_genes)]
    return symbols, ids


def _barcodes(rng: np.random.Generator, n: int) -> list[str]:
    out, seen = [], set()
    letters = np.array(list("ACGT"))
    while len(out) < n:
        bc = "".join(rng.choice(letters, 16)) + "-1"
        if bc not in seen:
            seen.add(bc)
            out.append(bc)
    return out


def simulate_signatures(p: SimulationParams, rng: np.random.Generator, symbols: list[str]) -> pd.DataFrame:
    """True signatures g_fg (genes × types): expected counts per cell."""
    G, F = p.n_genes, p.n_cell_types
    baseline = rng.lognormal(0.0, 1.2, size=G)
    profile = baseline[:, None] * rng.lognormal(0.0, 0.35, size=(G, F))
    n_markers = max(3, int(p.marker_fraction * G))
    for f in range(F):
        markers = rng.choice(np.arange(p.n_mt_genes, G), n_markers, replace=False)
        profile[markers, f] *= rng.uniform(4.0, 16.0, size=n_markers)
    # mitochondrial genes are high everywhere
    profile[: p.n_mt_genes] = baseline[: p.n_mt_genes, None] * 8.0
    size = rng.uniform(0.6, 1.6, size=F) * p.cell_counts_per_type
    profile = profile / profile.sum(0, keepdims=True) * size[None, :]
    types = [f"type_{chr(65 + f)}" if F <= 26 else f"type_{f:03d}" for f in range(F)]
    return pd.DataFrame(profile, index=symbols, columns=types)


def _nb(rng: np.random.Generator, mean: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Negative binomial draws with mean ``mean`` and inverse-dispersion ``alpha`` (Gamma–Poisson)."""
    lam = rng.gamma(shape=alpha, scale=mean / alpha)
    return rng.poisson(lam)


def simulate_reference(p: SimulationParams, rng: np.random.Generator, sig: pd.DataFrame, gene_ids: list[str],
                       alpha_g: np.ndarray, chunk_cells: int | None = None) -> ad.AnnData:
    """The labelled reference (cells × genes, sparse raw counts).

    ``chunk_cells`` draws the counts that many cells at a time (sparse per chunk), so that memory
    stays small with many genes; ``None`` draws them all at once (the Visium default, whose random
    stream must not change).
    """
    G, F = sig.shape
    types = list(sig.columns)
    # Rare types get fewer cells, but at least 20 (or 5 for tiny runs).
    weights = rng.uniform(0.5, 1.5, size=F)
    weights[: max(1, int(F * p.frac_rare_types))] *= 0.3
    weights /= weights.sum()
    min_cells = min(20, p.n_cells // F)
    counts_per_type = np.maximum(min_cells, np.floor(weights * p.n_cells)).astype(int)
    while counts_per_type.sum() > p.n_cells:
        counts_per_type[np.argmax(counts_per_type)] -= 1
    counts_per_type[np.argmax(counts_per_type)] += p.n_cells - counts_per_type.sum()
    labels = np.repeat(np.arange(F), counts_per_type)
    rng.shuffle(labels)
    batch = rng.integers(0, p.n_batches, size=p.n_cells)
    depth = np.linspace(1.0, p.batch_depth_ratio, p.n_batches) if p.n_batches > 1 else np.ones(1)
    tech = rng.lognormal(0.0, p.tech_effect_sd, size=(p.n_batches, G))
    tech[0] = 1.0  # first batch is the reference technology
    ambient = 0.01 * sig.to_numpy().mean(1)[None, :] * rng.lognormal(0, 0.5, size=(p.n_batches, G))
    cell_size = rng.lognormal(0.0, 0.2, size=p.n_cells)
    g = sig.to_numpy().T  # F × G
    if chunk_cells is None:
        mean = (g[labels] + ambient[batch]) * (depth[batch] * cell_size)[:, None] * tech[batch]
        X = sp.csr_matrix(_nb(rng, mean, np.broadcast_to(alpha_g * 0.5, mean.shape)).astype(np.float32))
    else:
        parts = []
        for start in range(0, p.n_cells, chunk_cells):
            sl = slice(start, start + chunk_cells)
            mean = (g[labels[sl]] + ambient[batch[sl]]) * (depth[batch[sl]] * cell_size[sl])[:, None] * tech[batch[sl]]
            parts.append(sp.csr_matrix(_nb(rng, mean, np.broadcast_to(alpha_g * 0.5, mean.shape)).astype(np.float32)))
        X = sp.vstack(parts, format="csr")
    obs = pd.DataFrame({
        "cell_type": pd.Categorical([types[i] for i in labels], categories=types),
        "batch": pd.Categorical([f"batch{b + 1}" for b in batch]),
    }, index=[f"cell{i:06d}" for i in range(p.n_cells)])
    var = pd.DataFrame({"gene_ids": gene_ids}, index=sig.index)
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.uns["simulation"] = {"batch_depth": depth.tolist()}
    return adata


def _visium_grid() -> pd.DataFrame:
    rows, cols = np.meshgrid(np.arange(VISIUM_ROWS), np.arange(VISIUM_COLS), indexing="ij")
    keep = (rows + cols) % 2 == 0
    df = pd.DataFrame({"array_row": rows[keep], "array_col": cols[keep]})
    df["x_um"] = df["array_col"] * SPOT_SPACING_UM / 2.0
    df["y_um"] = df["array_row"] * SPOT_SPACING_UM * np.sqrt(3) / 2.0
    return df


def _zone_rates(p: SimulationParams, rng: np.random.Generator) -> np.ndarray:
    """Mean cells per spot of each type in each zone (zones × types)."""
    F, Z = p.n_cell_types, p.n_zones
    n_rare = max(1, int(round(F * p.frac_rare_types)))
    n_wide = max(1, int(round(F * p.frac_widespread_types)))
    rates = np.zeros((Z, F))
    for f in range(F):
        if f < n_rare:  # rare: one zone, low numbers
            rates[rng.integers(Z), f] = rng.uniform(0.5, 1.5)
        elif f < n_rare + n_wide:  # abundant everywhere
            rates[:, f] = rng.uniform(1.0, 3.0) * rng.uniform(0.7, 1.3, size=Z)
        else:  # zone-restricted
            zones = rng.choice(Z, size=min(Z, rng.integers(1, 3)), replace=False)
            rates[zones, f] = rng.uniform(2.0, 6.0, size=len(zones))
    # scale so an average spot holds cells_per_spot cells
    return rates * p.cells_per_spot / rates.sum(1).mean()


def _tissue_image(grid: pd.DataFrame, spots: pd.DataFrame, zone: np.ndarray, n_zones: int,
                  size_px: int, um_per_px: float) -> np.ndarray:
    """An H&E-like picture: pale background, pink tissue with a shade per zone."""
    img = np.ones((size_px, size_px, 3), dtype=np.float32) * np.array([0.96, 0.95, 0.97], dtype=np.float32)
    shades = np.linspace(0.0, 1.0, max(n_zones, 2))
    radius = SPOT_SPACING_UM * 0.6 / um_per_px
    yy, xx = np.mgrid[0:size_px, 0:size_px]
    # nearest in-tissue spot per pixel (coarse: only pixels inside the tissue's bounding box)
    xs, ys = spots["x_um"].to_numpy() / um_per_px, spots["y_um"].to_numpy() / um_per_px
    x0, x1 = int(max(0, xs.min() - radius)), int(min(size_px, xs.max() + radius + 1))
    y0, y1 = int(max(0, ys.min() - radius)), int(min(size_px, ys.max() + radius + 1))
    from scipy.spatial import cKDTree

    tree = cKDTree(np.c_[xs, ys])
    sub_x, sub_y = xx[y0:y1, x0:x1].ravel(), yy[y0:y1, x0:x1].ravel()
    dist, idx = tree.query(np.c_[sub_x, sub_y])
    inside = dist <= radius * 1.2
    s = shades[zone[idx[inside]]]
    colour = np.c_[0.85 - 0.25 * s, 0.55 - 0.2 * s, 0.75 - 0.1 * s].astype(np.float32)
    block = img[y0:y1, x0:x1].reshape(-1, 3)
    block[inside] = colour
    img[y0:y1, x0:x1] = block.reshape(y1 - y0, x1 - x0, 3)
    return img


def simulate(outdir: str | Path, params: SimulationParams | None = None) -> Path:
    """Write a complete simulated case under ``outdir`` (see module docstring); return ``outdir``."""
    p = params or SimulationParams()
    _check(p)
    outdir = Path(outdir)
    rng = np.random.default_rng(p.seed)
    symbols, ids = _gene_names(p.n_genes, p.n_mt_genes)
    sig = simulate_signatures(p, rng, symbols)
    alpha_g = rng.lognormal(np.log(p.overdispersion), 0.5, size=p.n_genes)
    m_g = rng.lognormal(0.0, p.gene_sensitivity_sd, size=p.n_genes)
    m_g /= np.exp(np.log(m_g).mean())  # geometric mean 1: sensitivity is relative ...
    m_g *= p.gene_sensitivity_mean     # ... unless a level is given (× 1 is exact: the default is unchanged)
    ref = simulate_reference(p, rng, sig, ids, alpha_g,
                             chunk_cells=max(1, 2_000_000 // p.n_genes) if p.platform == "visium-hd" else None)
    missing = [t for t in p.missing_types_in_reference if t in sig.columns]
    if missing:
        ref = ref[~ref.obs["cell_type"].isin(missing)].copy()
        ref.obs["cell_type"] = ref.obs["cell_type"].cat.remove_unused_categories()
    if p.platform == "visium-hd":
        return _simulate_hd(outdir, p, rng, sig, ref, symbols, ids, alpha_g, m_g)

    grid = _visium_grid()
    rates = _zone_rates(p, rng)
    g = sig.to_numpy().T  # F × G
    mt = np.arange(p.n_genes) < p.n_mt_genes
    truth_ab, truth_spots = [], []
    log.info("simulating %d sample(s) of %d spots × %d genes × %d types", p.n_samples, p.n_spots, p.n_genes,
             p.n_cell_types)
    with atomic_dir(outdir) as tmp:
        sheet = []
        for k in range(p.n_samples):
            sample = f"sample{k + 1}"
            # tissue = the n_spots grid spots nearest a (jittered) centre
            centre = np.array([grid["x_um"].mean(), grid["y_um"].mean()]) + rng.normal(0, 200, size=2)
            d = np.hypot(grid["x_um"] - centre[0], grid["y_um"] - centre[1])
            in_tissue = np.zeros(len(grid), dtype=bool)
            in_tissue[np.argsort(d.to_numpy(), kind="stable")[: p.n_spots]] = True
            spots = grid[in_tissue].reset_index(drop=True)
            # zones: nearest of n_zones random centres within the tissue
            centres = spots.sample(n=p.n_zones, random_state=int(rng.integers(1 << 31)))[["x_um", "y_um"]].to_numpy()
            zone = np.argmin(((spots[["x_um", "y_um"]].to_numpy()[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
            lam = rates[zone] * rng.gamma(5.0, 1 / 5.0, size=(p.n_spots, p.n_cell_types))
            n_sf = rng.poisson(lam)
            y_e = p.detection_mean * rng.uniform(0.7, 1.3)
            y_s = rng.gamma(p.detection_alpha, y_e / p.detection_alpha, size=p.n_spots)
            # ambient: a share of an average spot's expression, per gene (counts per spot before detection)
            s_eg = p.ambient_fraction * m_g * (rates.mean(0) @ g) * rng.lognormal(0, 0.5, p.n_genes)
            signal = (n_sf @ g) * m_g[None, :] + s_eg[None, :]
            # mitochondrial share: a healthy level, a few damaged spots with a high one
            qc_fail = np.zeros(p.n_spots, dtype=object)
            qc_fail[:] = ""
            n_damaged = int(round(p.frac_damaged_spots * p.n_spots))
            n_empty = int(round(p.frac_empty_spots * p.n_spots))
            special = rng.permutation(p.n_spots)
            damaged, empty = special[:n_damaged], special[n_damaged:n_damaged + n_empty]
            mt_share = np.full(p.n_spots, p.mt_fraction)
            mt_share[damaged] = rng.uniform(0.35, 0.6, size=n_damaged)
            qc_fail[damaged] = "high_mt"
            y_eff = y_s.copy()
            y_eff[empty] *= 0.01
            qc_fail[empty] = "low_counts"
            non_mt = signal[:, ~mt].sum(1)
            mt_profile = sig.to_numpy()[mt].mean(1)
            mt_profile = mt_profile / mt_profile.sum()
            signal[:, mt] = (mt_share / (1 - mt_share) * non_mt)[:, None] * mt_profile[None, :]
            mu = signal * y_eff[:, None]
            D = _nb(rng, mu, np.broadcast_to(alpha_g, mu.shape))
            barcodes = _barcodes(rng, len(grid))
            grid_bc = pd.Series(barcodes)
            spot_bc = grid_bc[in_tissue].to_numpy()
            # Space Ranger writes every grid spot in positions, and in-tissue spots in the filtered matrix
            outs = tmp / "samples" / sample / "outs"
            (outs / "spatial").mkdir(parents=True)
            write_10x_h5(outs / "filtered_feature_bc_matrix.h5", sp.csr_matrix(D), spot_bc, ids, symbols,
                         library_id=sample)
            size_full = int(np.ceil(max(grid["x_um"].max(), grid["y_um"].max()) / FULLRES_UM_PER_PX)) + 200
            hires_px, lowres_px = 2000, 600
            positions = pd.DataFrame({
                "barcode": barcodes,
                "in_tissue": in_tissue.astype(int),
                "array_row": grid["array_row"],
                "array_col": grid["array_col"],
                "pxl_row_in_fullres": np.round(grid["y_um"] / FULLRES_UM_PER_PX + 100).astype(int),
                "pxl_col_in_fullres": np.round(grid["x_um"] / FULLRES_UM_PER_PX + 100).astype(int),
            })
            name = "tissue_positions.csv" if p.positions == "csv" else "tissue_positions_list.csv"
            write_positions(outs / "spatial" / name, positions[POSITION_COLUMNS], header=p.positions == "csv")
            hires_scalef, lowres_scalef = hires_px / size_full, lowres_px / size_full
            write_scalefactors(outs / "spatial" / "scalefactors_json.json", {
                "spot_diameter_fullres": 55.0 / FULLRES_UM_PER_PX,
                "tissue_hires_scalef": hires_scalef,
                "fiducial_diameter_fullres": 65.0 / FULLRES_UM_PER_PX * 1.5,
                "tissue_lowres_scalef": lowres_scalef,
                "regist_target_img_scalef": hires_scalef,
            })
            spots_px = spots.assign(x_um=spots["x_um"] + 100 * FULLRES_UM_PER_PX, y_um=spots["y_um"] + 100 * FULLRES_UM_PER_PX)
            for key, px, scalef in (("hires", hires_px, hires_scalef), ("lowres", lowres_px, lowres_scalef)):
                img = _tissue_image(grid, spots_px, zone, p.n_zones, px, FULLRES_UM_PER_PX / scalef)
                write_image(outs / "spatial" / f"tissue_{key}_image.png", img)
            spot_ids = [f"{sample}_{b}" for b in spot_bc]
            truth_ab.append(pd.DataFrame(n_sf, index=spot_ids, columns=sig.columns))
            truth_spots.append(pd.DataFrame({
                "sample": sample, "barcode": spot_bc, "zone": zone, "y_s": y_s, "n_cells": n_sf.sum(1),
                "total_counts": D.sum(1), "qc_fail": qc_fail,
            }, index=spot_ids))
            sheet.append({"sample": sample, "spaceranger_dir": str((outdir / "samples" / sample / "outs").resolve())})

        write_h5ad(ref, tmp / "reference.h5ad")
        write_table(pd.DataFrame(sheet), tmp / "samplesheet.csv", index=False)
        truth = tmp / "truth"
        abundance = pd.concat(truth_ab)
        abundance.index.name = "spot_id"
        write_table(abundance, truth / "cell_abundance.csv")
        write_table(sig.rename_axis("gene"), truth / "signatures.csv")
        spots_df = pd.concat(truth_spots)
        spots_df.index.name = "spot_id"
        write_table(spots_df, truth / "spots.csv")
        write_table(pd.DataFrame({"gene_ids": ids, "m_g": m_g, "alpha_g": alpha_g, "is_mt": mt},
                                 index=pd.Index(symbols, name="gene")), truth / "genes.csv")
        (truth / "params.json").write_text(json.dumps(asdict(p), indent=2))
    log.info("wrote %s", outdir)
    return outdir


# ---------------------------------------------------------------------------- Visium HD
def hd_barcode(bin_um: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Space Ranger HD bin barcodes, e.g. ``s_008um_00012_00345-1``."""
    prefix = f"s_{bin_um:03d}um_"
    return np.array([f"{prefix}{r:05d}_{c:05d}-1" for r, c in zip(rows.tolist(), cols.tolist())], dtype=object)


def _hd_tissue(p: SimulationParams, rng: np.random.Generator) -> tuple[int, np.ndarray]:
    """A square grid of side × side 8 µm bins (side even) and the flat indices of the n_bins under the tissue.

    The tissue is a blob with a wavy outline around a jittered centre: the n_bins bins nearest the
    centre in a direction-dependent metric, so exactly ``n_bins`` bins are in tissue.
    """
    side = int(np.ceil(np.sqrt(p.n_bins / HD_TISSUE_FRACTION)))
    side += side % 2
    rows, cols = np.divmod(np.arange(side * side, dtype=np.int64), side)
    c0, c1 = side / 2 + rng.normal(0, side * 0.02, size=2)
    dy, dx = rows - c0, cols - c1
    theta = np.arctan2(dy, dx)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    wobble = 1 + 0.10 * np.sin(2 * theta + phase[0]) + 0.06 * np.sin(3 * theta + phase[1]) \
        + 0.04 * np.sin(5 * theta + phase[2])
    r = np.hypot(dy, dx) / wobble
    tissue = np.sort(np.argsort(r, kind="stable")[: p.n_bins])
    return side, tissue


def _hd_cells(p: SimulationParams, rng: np.random.Generator, rates: np.ndarray, zone: np.ndarray,
              rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """True cell numbers per 8 µm bin and type (bins × types, int8, 0-3 cells per bin).

    Rate of type f in bin b: the zone's rate times a smooth field (gamma noise on blocks of
    HD_BLOCK_BINS × HD_BLOCK_BINS bins), so types form patches within zones. The number of cells is
    Poisson with the summed rate, capped at 3; each cell's type is drawn in proportion to the rates.
    """
    F = rates.shape[1]
    br, bc = rows // HD_BLOCK_BINS, cols // HD_BLOCK_BINS
    field = rng.gamma(4.0, 1 / 4.0, size=(int(br.max()) + 1, int(bc.max()) + 1, F))
    lam = rates[zone] * field[br, bc]                       # bins × F
    total = lam.sum(1)
    n_tot = np.minimum(rng.poisson(total), HD_MAX_CELLS_PER_BIN)
    cum = np.cumsum(lam, axis=1)
    cum /= np.where(total > 0, total, 1.0)[:, None]
    cell_bin = np.repeat(np.arange(len(zone)), n_tot)
    u = rng.random(len(cell_bin))
    cell_type = np.minimum((cum[cell_bin] <= u[:, None]).sum(1), F - 1)
    n_sf = np.bincount(cell_bin * F + cell_type, minlength=len(zone) * F).reshape(len(zone), F)
    return n_sf.astype(np.int8)


def _alias_table(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker/Vose alias table of a discrete distribution (O(1) draws: one bucket, one coin)."""
    n = len(weights)
    prob = weights / weights.sum() * n
    alias = np.arange(n, dtype=np.int64)
    small = list(np.flatnonzero(prob < 1.0)[::-1])
    large = list(np.flatnonzero(prob >= 1.0)[::-1])
    prob = prob.tolist()
    while small and large:
        s_, l_ = small.pop(), large.pop()
        alias[s_] = l_
        prob[l_] = prob[l_] + prob[s_] - 1.0
        (small if prob[l_] < 1.0 else large).append(l_)
    out = np.asarray(prob)
    out[large] = 1.0
    out[small] = 1.0
    return np.minimum(out, 1.0), alias


def _alias_draw(rng: np.random.Generator, prob: np.ndarray, alias: np.ndarray, n: int) -> np.ndarray:
    i = rng.integers(0, len(prob), size=n)
    return np.where(rng.random(n) < prob[i], i, alias[i])


def _hd_counts(p: SimulationParams, rng: np.random.Generator, n_sf: np.ndarray, y_eff: np.ndarray,
               mt_share: np.ndarray, W: np.ndarray, s_eg: np.ndarray, alpha_g: np.ndarray, mt: np.ndarray,
               mt_profile: np.ndarray) -> tuple[sp.csr_matrix, dict]:
    """Counts of every bin, sparse from the start (never bins × genes dense), exact NB.

    Model: ``D_bg ~ NB(mean=mu_bg, alpha_g)`` with ``mu_bg = y_b (Σ_f n_bf W_fg + s_g)`` (``W_fg = m_g g_fg``)
    for the non-mitochondrial genes and ``mu_bg = M_b · mt_profile_g`` for the mitochondrial ones, ``M_b``
    giving the bin its mitochondrial share of the expected counts.

    Sampling, in chunks of bins, in time proportional to the number of UMIs:

    1. candidates ``K_bg ~ Poisson(mu_bg)``: a Poisson number of UMIs per bin and component (each cell
       type, ambient, mitochondrial), each UMI's gene drawn from the component's profile with an alias
       table; duplicates summed (superposed Poissons split over genes are independent Poissons);
    2. NB as a compound Poisson: thinning ``K_bg`` with probability ``alpha ln(1 + mu/alpha) / mu`` gives
       ``C_bg ~ Poisson(alpha ln(1 + mu/alpha))`` clusters, each of logarithmic size with
       ``p = mu / (mu + alpha)``; their sum is ``NB(mean mu, alpha)`` exactly.
    """
    n_bins, F = n_sf.shape
    G = W.shape[1]
    nonmt, mt_idx = np.flatnonzero(~mt), np.flatnonzero(mt)
    Wn = W.copy()
    Wn[:, mt] = 0.0
    sn = np.where(mt, 0.0, s_eg)
    mtp = np.zeros(G)
    mtp[mt_idx] = mt_profile
    Wx = np.vstack([Wn, np.zeros((1, G))])              # row F: "no cell"
    comps = [Wn[f, nonmt] for f in range(F)] + [sn[nonmt]]
    tables = [_alias_table(c) for c in comps] + [_alias_table(mt_profile)]
    genes_of = [nonmt] * (F + 1) + [mt_idx]
    comp_total = np.array([c.sum() for c in comps])          # expected counts per cell / ambient, non-mt
    # each bin holds at most 3 cells: its types and numbers as 3 (type, count) slots
    order = np.argsort(-n_sf, axis=1, kind="stable")[:, :HD_MAX_CELLS_PER_BIN]
    cnt = np.take_along_axis(n_sf, order, axis=1).astype(np.float64)
    order = np.where(cnt > 0, order, F)
    chunk = HD_CHUNK_BINS
    indptrs, indices, datas, nnz = [np.zeros(1, dtype=np.int64)], [], [], 0
    for start in range(0, n_bins, chunk):
        stop = min(n_bins, start + chunk)
        c = stop - start
        y = y_eff[start:stop]
        comp_n = np.c_[n_sf[start:stop].astype(np.float64), np.ones(c)]            # c × (F+1), ambient = 1
        rate = y[:, None] * comp_n * comp_total[None, :]
        expected_non_mt = rate.sum(1)
        m_b = mt_share[start:stop] / (1 - mt_share[start:stop]) * expected_non_mt
        n_umi = rng.poisson(np.c_[rate, m_b])                                   # c × (F+2)
        bins_l, genes_l = [], []
        for k, (prob, alias) in enumerate(tables):
            tot = int(n_umi[:, k].sum())
            if tot:
                bins_l.append(np.repeat(np.arange(c, dtype=np.int32), n_umi[:, k]))
                genes_l.append(genes_of[k][_alias_draw(rng, prob, alias, tot)].astype(np.int32))
        if bins_l:
            cand = sp.coo_matrix((np.ones(sum(len(b) for b in bins_l), dtype=np.int32),
                                  (np.concatenate(bins_l), np.concatenate(genes_l))), shape=(c, G)).tocsr()
        else:
            cand = sp.csr_matrix((c, G), dtype=np.int32)
        del bins_l, genes_l
        cand.sum_duplicates()
        cand.sort_indices()
        r = np.repeat(np.arange(c), np.diff(cand.indptr))
        gi = cand.indices
        o, n = order[start:stop], cnt[start:stop]
        mu = sn[gi] + n[r, 0] * Wx[o[r, 0], gi]
        for j in range(1, HD_MAX_CELLS_PER_BIN):
            mu += n[r, j] * Wx[o[r, j], gi]
        mu = y[r] * mu + m_b[r] * mtp[gi]
        a = alpha_g[gi]
        clusters = rng.binomial(cand.data, np.minimum(1.0, a * np.log1p(mu / a) / mu))
        keep = clusters > 0
        pk = (mu / (mu + a))[keep]
        ck = clusters[keep]
        sizes = rng.logseries(np.repeat(pk, ck))
        starts = np.r_[0, np.cumsum(ck)[:-1]]
        vals = np.add.reduceat(sizes, starts) if len(sizes) else np.zeros(0, dtype=np.int64)
        row_nnz = np.bincount(r[keep], minlength=c)
        indptrs.append(np.cumsum(row_nnz, dtype=np.int64) + nnz)
        indices.append(gi[keep].astype(np.int32))
        datas.append(vals.astype(np.int32))
        nnz += int(keep.sum())
        del cand, r, gi, mu, a, clusters, keep, pk, ck, sizes, starts, vals
    indptr = np.concatenate(indptrs)
    del indptrs
    data = np.concatenate(datas)
    del datas
    idx = np.concatenate(indices)
    del indices
    return sp.csr_matrix((data, idx, indptr), shape=(n_bins, G)), {"chunk_bins": chunk}


def _block_product(A: sp.csr_matrix, holder: list) -> sp.csr_matrix:
    """``A @ X`` with ``X = holder.pop()``, by blocks of A's rows (small temporaries); ``X`` is freed as
    soon as the blocks are computed, before they are joined (when the caller holds no other reference)."""
    X = holder.pop()
    shape = (A.shape[0], X.shape[1])
    parts = [A[i:i + 20_000] @ X for i in range(0, A.shape[0], 20_000)]
    del X
    offsets = np.cumsum([0] + [b.nnz for b in parts])
    indptr = np.concatenate([np.zeros(1, dtype=np.int64)] + [b.indptr[1:].astype(np.int64) + o
                                                            for b, o in zip(parts, offsets[:-1])])
    datas, idxs = [b.data for b in parts], [b.indices for b in parts]
    del parts
    data = np.concatenate(datas).astype(np.int32, copy=False)
    del datas
    indices = np.concatenate(idxs).astype(np.int32, copy=False)
    del idxs
    return sp.csr_matrix((data, indices, indptr), shape=shape)


def _hd_image(zone_grid: np.ndarray, n_zones: int, size_px: int, scalef: float) -> np.ndarray:
    """H&E-like picture of the bin grid (zone_grid: side × side, -1 outside the tissue)."""
    side = zone_grid.shape[0]
    img = np.ones((size_px, size_px, 3), dtype=np.float32) * np.array([0.96, 0.95, 0.97], dtype=np.float32)
    full = (np.arange(size_px) + 0.5) / scalef                      # full-resolution pixel of each image pixel
    b = np.floor((full - HD_OFFSET_PX) * HD_UM_PER_PX / HD_BIN_UM).astype(np.int64)
    ok = (b >= 0) & (b < side)
    bi = np.clip(b, 0, side - 1)
    z = zone_grid[bi[:, None], bi[None, :]]
    z = np.where(ok[:, None] & ok[None, :], z, -1)
    shades = np.linspace(0.0, 1.0, max(n_zones, 2))
    s = shades[np.clip(z, 0, None)]
    colour = np.stack([0.85 - 0.25 * s, 0.55 - 0.2 * s, 0.75 - 0.1 * s], axis=-1).astype(np.float32)
    return np.where((z >= 0)[..., None], colour, img)


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    from spotmap.utils import atomic_path

    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=True)


def _hd_positions(side: int, bin_um: int, in_tissue: np.ndarray) -> pd.DataFrame:
    rows, cols = np.divmod(np.arange(side * side, dtype=np.int64), side)
    centre = lambda k: HD_OFFSET_PX + (k + 0.5) * bin_um / HD_UM_PER_PX  # noqa: E731
    return pd.DataFrame({
        "barcode": hd_barcode(bin_um, rows, cols),
        "in_tissue": in_tissue.astype(np.int32),
        "array_row": rows.astype(np.int32),
        "array_col": cols.astype(np.int32),
        "pxl_row_in_fullres": centre(rows),
        "pxl_col_in_fullres": centre(cols),
    })


def _simulate_hd(outdir: str | Path, p: SimulationParams, rng: np.random.Generator, sig: pd.DataFrame,
                 ref: ad.AnnData, symbols: list[str], ids: list[str], alpha_g: np.ndarray,
                 m_g: np.ndarray) -> Path:
    """The Visium HD case: Space Ranger HD ``binned_outputs/square_008um`` and ``square_016um`` per sample.

    Files (besides reference.h5ad, truth/signatures.csv, truth/genes.csv)::

        samples/<s>/outs/binned_outputs/square_008um/filtered_feature_bc_matrix.h5
        samples/<s>/outs/binned_outputs/square_008um/spatial/tissue_positions.parquet
        samples/<s>/outs/binned_outputs/square_008um/spatial/scalefactors_json.json
        samples/<s>/outs/binned_outputs/square_008um/spatial/tissue_{hires,lowres}_image.png
        samples/<s>/outs/binned_outputs/square_016um/...      (2 × 2 sums of the 8 µm bins)
        samplesheet.csv                          sample,spaceranger_dir,bin_size (8)
        truth/cell_abundance.parquet             8 µm bin × type true cell numbers (index '<sample>_<barcode>')
        truth/cell_abundance_016um.parquet       the same summed over 16 µm bins
        truth/spots.parquet                      per 8 µm bin: sample, barcode, array_row/col, zone, y_s, n_cells,
                                                 total_counts, qc_fail
        truth/params.json                        every knob, platform 'visium-hd'

    Measured at 400,000 bins × 18,000 genes × 40 types (one sample, seed 0): see
    docs/inputs_and_qc.md ("Visium HD").
    """
    import time

    outdir = Path(outdir)
    t0 = time.perf_counter()
    F, G = p.n_cell_types, p.n_genes
    rates = _zone_rates(p, rng) / p.cells_per_spot * p.cells_per_bin
    g = sig.to_numpy().T                                    # F × G
    W = g * m_g[None, :]
    mt = np.arange(G) < p.n_mt_genes
    mt_profile = sig.to_numpy()[mt].mean(1)
    mt_profile = mt_profile / mt_profile.sum()
    log.info("simulating %d Visium HD sample(s) of %d 8 µm bins × %d genes × %d types", p.n_samples, p.n_bins, G, F)
    info_all = {}
    with atomic_dir(outdir) as tmp:
        sheet, truth_ab, truth_ab16, truth_spots = [], [], [], []
        for k in range(p.n_samples):
            sample = f"sample{k + 1}"
            side, tissue = _hd_tissue(p, rng)
            rows, cols = np.divmod(tissue, side)
            # zones: nearest of n_zones random centres within the tissue
            centres = tissue[rng.choice(len(tissue), size=min(p.n_zones, len(tissue)), replace=False)]
            cr, cc = np.divmod(centres, side)
            zone = np.empty(len(tissue), dtype=np.int64)
            for start in range(0, len(tissue), 200_000):
                sl = slice(start, start + 200_000)
                d = (rows[sl, None] - cr[None]) ** 2 + (cols[sl, None] - cc[None]) ** 2
                zone[sl] = np.argmin(d, axis=1)
            n_sf = _hd_cells(p, rng, rates, zone, rows, cols)
            y_e = p.bin_detection_mean * rng.uniform(0.7, 1.3)
            y_s = rng.gamma(p.detection_alpha, y_e / p.detection_alpha, size=len(tissue))
            s_eg = p.ambient_fraction * m_g * (rates.mean(0) @ g) * rng.lognormal(0, 0.5, G)
            n_damaged = int(round(p.frac_damaged_spots * len(tissue)))
            n_empty = int(round(p.frac_empty_spots * len(tissue)))
            special = rng.permutation(len(tissue))
            damaged, empty = special[:n_damaged], special[n_damaged:n_damaged + n_empty]
            mt_share = np.full(len(tissue), p.mt_fraction)
            mt_share[damaged] = rng.uniform(0.35, 0.6, size=n_damaged)
            y_eff = y_s.copy()
            y_eff[empty] *= 0.01
            qc_fail = np.full(len(tissue), "", dtype=object)
            qc_fail[damaged] = "high_mt"
            qc_fail[empty] = "low_counts"
            X8, info = _hd_counts(p, rng, n_sf, y_eff, mt_share, W, s_eg, alpha_g, mt, mt_profile)
            info_all[sample] = info
            total8 = np.asarray(X8.sum(1)).ravel()
            bc8 = hd_barcode(8, rows, cols)
            outs = tmp / "samples" / sample / "outs"
            in8 = np.zeros(side * side, dtype=bool)
            in8[tissue] = True
            # 16 µm bins: parents of the 8 µm ones; in tissue when any child is
            side16 = side // 2
            parent = (rows // 2) * side16 + cols // 2
            in16_flat = np.unique(parent)
            in16 = np.zeros(side16 * side16, dtype=bool)
            in16[in16_flat] = True
            A = sp.csr_matrix((np.ones(len(parent), dtype=np.int32), (np.searchsorted(in16_flat, parent),
                                                                        np.arange(len(parent)))),
                              shape=(len(in16_flat), len(parent)))
            r16, c16 = np.divmod(in16_flat, side16)
            bc16 = hd_barcode(16, r16, c16)
            size_full = int(np.ceil(2 * HD_OFFSET_PX + side * HD_BIN_UM / HD_UM_PER_PX))
            hires_px, lowres_px = 2000, 600
            hires_scalef, lowres_scalef = hires_px / size_full, lowres_px / size_full
            zone_grid = np.full(side * side, -1, dtype=np.int64)
            zone_grid[tissue] = zone
            zone_grid = zone_grid.reshape(side, side)
            images = {key: _hd_image(zone_grid, p.n_zones, px, scalef)
                      for key, px, scalef in (("hires", hires_px, hires_scalef), ("lowres", lowres_px, lowres_scalef))}
            def write_bin_folder(bin_um: int, X, bcs, s_side: int, in_t: np.ndarray) -> None:
                d = outs / "binned_outputs" / f"square_{bin_um:03d}um"
                (d / "spatial").mkdir(parents=True)
                write_10x_h5(d / "filtered_feature_bc_matrix.h5", X, bcs, ids, symbols, library_id=sample,
                             software_version="spaceranger-3.1.1", chemistry="Visium HD v1")
                _write_parquet(_hd_positions(s_side, bin_um, in_t), d / "spatial" / "tissue_positions.parquet")
                write_scalefactors(d / "spatial" / "scalefactors_json.json", {
                    "spot_diameter_fullres": bin_um / HD_UM_PER_PX,
                    "bin_size_um": float(bin_um),
                    "microns_per_pixel": HD_UM_PER_PX,
                    "regist_target_img_scalef": hires_scalef,
                    "tissue_lowres_scalef": lowres_scalef,
                    "fiducial_diameter_fullres": 10 * bin_um / HD_UM_PER_PX,
                    "tissue_hires_scalef": hires_scalef,
                })
                for key, img in images.items():
                    write_image(d / "spatial" / f"tissue_{key}_image.png", img)

            write_bin_folder(8, X8, bc8, side, in8)
            holder = [X8]
            del X8
            X16 = _block_product(A, holder)  # the 8 µm matrix is freed inside, before the 16 µm one is joined
            write_bin_folder(16, X16, bc16, side16, in16)
            del X16
            ids8 = pd.Index([f"{sample}_{b}" for b in bc8], name="spot_id")
            truth_ab.append(pd.DataFrame(n_sf, index=ids8, columns=sig.columns))
            truth_ab16.append(pd.DataFrame((A @ sp.csr_matrix(n_sf.astype(np.int32))).toarray().astype(np.int16),
                                           index=pd.Index([f"{sample}_{b}" for b in bc16], name="spot_id"),
                                           columns=sig.columns))
            truth_spots.append(pd.DataFrame({
                "sample": sample, "barcode": bc8, "array_row": rows.astype(np.int32), "array_col": cols.astype(np.int32),
                "zone": zone.astype(np.int16), "y_s": y_s, "n_cells": n_sf.sum(1, dtype=np.int16),
                "total_counts": total8.astype(np.int64), "qc_fail": qc_fail.astype(str)}, index=ids8))
            sheet.append({"sample": sample, "spaceranger_dir": str((outdir / "samples" / sample / "outs").resolve()),
                          "bin_size": HD_BIN_UM})
            log.info("%s: %d bins in tissue (grid %d × %d), median %d UMIs per bin, %.1f s", sample, len(tissue),
                     side, side, int(np.median(total8)), time.perf_counter() - t0)

        write_h5ad(ref, tmp / "reference.h5ad")
        write_table(pd.DataFrame(sheet), tmp / "samplesheet.csv", index=False)
        truth = tmp / "truth"
        truth.mkdir()
        _write_parquet(pd.concat(truth_ab), truth / "cell_abundance.parquet")
        _write_parquet(pd.concat(truth_ab16), truth / "cell_abundance_016um.parquet")
        _write_parquet(pd.concat(truth_spots), truth / "spots.parquet")
        write_table(sig.rename_axis("gene"), truth / "signatures.csv")
        write_table(pd.DataFrame({"gene_ids": ids, "m_g": m_g, "alpha_g": alpha_g, "is_mt": mt},
                                 index=pd.Index(symbols, name="gene")), truth / "genes.csv")
        (truth / "params.json").write_text(json.dumps({**asdict(p), "bin_sizes_um": list(HD_BIN_SIZES),
                                                       "microns_per_pixel": HD_UM_PER_PX,
                                                       "sampling": info_all}, indent=2))
    log.info("wrote %s in %.1f s", outdir, time.perf_counter() - t0)
    return outdir
