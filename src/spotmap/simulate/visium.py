"""Visium samples: 55 µm spots on the hexagonal grid, written as Space Ranger ``outs/`` folders."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from spotmap.io.spaceranger import POSITION_COLUMNS, write_image, write_positions, write_scalefactors
from spotmap.io.tenx import write_10x_h5
from spotmap.simulate.common import Case, _barcodes, _nb, _zone_rates
from spotmap.simulate.params import FULLRES_UM_PER_PX, SPOT_SPACING_UM, VISIUM_COLS, VISIUM_ROWS
from spotmap.utils import atomic_dir, log, write_table


def _visium_grid() -> pd.DataFrame:
    rows, cols = np.meshgrid(np.arange(VISIUM_ROWS), np.arange(VISIUM_COLS), indexing="ij")
    keep = (rows + cols) % 2 == 0
    df = pd.DataFrame({"array_row": rows[keep], "array_col": cols[keep]})
    df["x_um"] = df["array_col"] * SPOT_SPACING_UM / 2.0
    df["y_um"] = df["array_row"] * SPOT_SPACING_UM * np.sqrt(3) / 2.0
    return df




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


def _draw_sample(case: Case, rng: np.random.Generator, grid: pd.DataFrame, rates: np.ndarray) -> dict:
    """One sample's spots, zones, true cell numbers ``n_sf``, detection ``y_s`` and counts ``D`` (spots × genes)."""
    p, sig = case.p, case.sig
    g = sig.to_numpy().T  # F × G
    mt = case.mt
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
    s_eg = p.ambient_fraction * case.m_g * (rates.mean(0) @ g) * rng.lognormal(0, 0.5, p.n_genes)
    signal = (n_sf @ g) * case.m_g[None, :] + s_eg[None, :]
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
    D = _nb(rng, mu, np.broadcast_to(case.alpha_g, mu.shape))
    barcodes = _barcodes(rng, len(grid))
    return {"in_tissue": in_tissue, "spots": spots, "zone": zone, "n_sf": n_sf, "y_s": y_s, "qc_fail": qc_fail,
            "D": D, "barcodes": barcodes, "spot_bc": pd.Series(barcodes)[in_tissue].to_numpy()}


def _write_outs(outs: Path, sample: str, case: Case, grid: pd.DataFrame, s: dict) -> None:
    """Space Ranger writes every grid spot in positions, and in-tissue spots in the filtered matrix."""
    p = case.p
    (outs / "spatial").mkdir(parents=True)
    write_10x_h5(outs / "filtered_feature_bc_matrix.h5", sp.csr_matrix(s["D"]), s["spot_bc"], case.ids, case.symbols,
                 library_id=sample)
    size_full = int(np.ceil(max(grid["x_um"].max(), grid["y_um"].max()) / FULLRES_UM_PER_PX)) + 200
    hires_px, lowres_px = 2000, 600
    positions = pd.DataFrame({
        "barcode": s["barcodes"],
        "in_tissue": s["in_tissue"].astype(int),
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
    spots = s["spots"]
    spots_px = spots.assign(x_um=spots["x_um"] + 100 * FULLRES_UM_PER_PX, y_um=spots["y_um"] + 100 * FULLRES_UM_PER_PX)
    for key, px, scalef in (("hires", hires_px, hires_scalef), ("lowres", lowres_px, lowres_scalef)):
        img = _tissue_image(grid, spots_px, s["zone"], p.n_zones, px, FULLRES_UM_PER_PX / scalef)
        write_image(outs / "spatial" / f"tissue_{key}_image.png", img)


def simulate_visium(outdir: Path, case: Case, rng: np.random.Generator) -> Path:
    """The Visium case of :func:`spotmap.simulate.simulate`: ``samples/<s>/outs/``, samplesheet, truth."""
    p = case.p
    grid = _visium_grid()
    rates = _zone_rates(p, rng)
    truth_ab, truth_spots, sheet = [], [], []
    log.info("simulating %d sample(s) of %d spots × %d genes × %d types", p.n_samples, p.n_spots, p.n_genes,
             p.n_cell_types)
    with atomic_dir(outdir) as tmp:
        for k in range(p.n_samples):
            sample = f"sample{k + 1}"
            s = _draw_sample(case, rng, grid, rates)
            _write_outs(tmp / "samples" / sample / "outs", sample, case, grid, s)
            spot_ids = [f"{sample}_{b}" for b in s["spot_bc"]]
            truth_ab.append(pd.DataFrame(s["n_sf"], index=spot_ids, columns=case.sig.columns))
            truth_spots.append(pd.DataFrame({
                "sample": sample, "barcode": s["spot_bc"], "zone": s["zone"], "y_s": s["y_s"],
                "n_cells": s["n_sf"].sum(1), "total_counts": s["D"].sum(1), "qc_fail": s["qc_fail"],
            }, index=spot_ids))
            sheet.append({"sample": sample, "spaceranger_dir": str((outdir / "samples" / sample / "outs").resolve())})
        truth = case.write_shared(tmp, sheet)
        abundance = pd.concat(truth_ab)
        abundance.index.name = "spot_id"
        write_table(abundance, truth / "cell_abundance.csv")
        spots_df = pd.concat(truth_spots)
        spots_df.index.name = "spot_id"
        write_table(spots_df, truth / "spots.csv")
        (truth / "params.json").write_text(json.dumps(asdict(p), indent=2))
    log.info("wrote %s", outdir)
    return outdir
