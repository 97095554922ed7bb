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


def _check(p: SimulationParams) -> None:
    problems = []
    if p.n_spots < 10 or p.n_spots > VISIUM_ROWS * VISIUM_COLS // 2:
        problems.append(f"--n-spots must be between 10 and {VISIUM_ROWS * VISIUM_COLS // 2} (got {p.n_spots})")
    if p.n_genes < p.n_mt_genes + 20:
        problems.append(f"--n-genes must be at least {p.n_mt_genes + 20} (got {p.n_genes})")
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
                       alpha_g: np.ndarray) -> ad.AnnData:
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
    mean = (g[labels] + ambient[batch]) * (depth[batch] * cell_size)[:, None] * tech[batch]
    X = _nb(rng, mean, np.broadcast_to(alpha_g * 0.5, mean.shape))
    obs = pd.DataFrame({
        "cell_type": pd.Categorical([types[i] for i in labels], categories=types),
        "batch": pd.Categorical([f"batch{b + 1}" for b in batch]),
    }, index=[f"cell{i:06d}" for i in range(p.n_cells)])
    var = pd.DataFrame({"gene_ids": gene_ids}, index=sig.index)
    adata = ad.AnnData(X=sp.csr_matrix(X.astype(np.float32)), obs=obs, var=var)
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
    m_g /= np.exp(np.log(m_g).mean())  # geometric mean 1: sensitivity is relative
    ref = simulate_reference(p, rng, sig, ids, alpha_g)
    missing = [t for t in p.missing_types_in_reference if t in sig.columns]
    if missing:
        ref = ref[~ref.obs["cell_type"].isin(missing)].copy()
        ref.obs["cell_type"] = ref.obs["cell_type"].cat.remove_unused_categories()

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
