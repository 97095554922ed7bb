"""Visium HD samples: square 8 µm bins holding 0-3 cells each, written as Space Ranger HD
``outs/binned_outputs/square_008um/`` and ``square_016um/`` (2 × 2 sums), with parquet positions and truth.
The counts are drawn sparse and exactly NB, in time and memory that grow with the number of UMIs
(:func:`_hd_counts`), never with bins × genes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from spotmap.io.spaceranger import write_image, write_scalefactors
from spotmap.io.tenx import write_10x_h5
from spotmap.simulate.common import Case, _zone_rates
from spotmap.simulate.params import (HD_BIN_SIZES, HD_BIN_UM, HD_BLOCK_BINS, HD_CHUNK_BINS, HD_MAX_CELLS_PER_BIN,
                                     HD_OFFSET_PX, HD_TISSUE_FRACTION, HD_UM_PER_PX, SimulationParams)
from spotmap.utils import atomic_dir, log


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
    n_bins = n_sf.shape[0]
    c = _Components.of(W, s_eg, mt, mt_profile, n_sf)
    indptrs, indices, datas, nnz = [np.zeros(1, dtype=np.int64)], [], [], 0
    for start in range(0, n_bins, HD_CHUNK_BINS):
        stop = min(n_bins, start + HD_CHUNK_BINS)
        row_nnz, idx, vals = _hd_chunk(rng, c, slice(start, stop), n_sf, y_eff, mt_share, alpha_g)
        indptrs.append(np.cumsum(row_nnz, dtype=np.int64) + nnz)
        indices.append(idx)
        datas.append(vals)
        nnz += len(idx)
    indptr = np.concatenate(indptrs)
    del indptrs
    data = np.concatenate(datas)
    del datas
    idx = np.concatenate(indices)
    del indices
    return sp.csr_matrix((data, idx, indptr), shape=(n_bins, W.shape[1])), {"chunk_bins": HD_CHUNK_BINS}


@dataclass
class _Components:
    """The sources of a bin's UMIs for :func:`_hd_counts`: each cell type, ambient, mitochondrial."""

    Wx: np.ndarray          #: (F + 1, G) W_fg without mitochondrial genes; row F: "no cell"
    sn: np.ndarray          #: (G,) ambient s_g without mitochondrial genes
    mtp: np.ndarray         #: (G,) mitochondrial profile, 0 elsewhere
    tables: list            #: alias table of each component's gene profile
    genes_of: list          #: the genes each component's table draws from
    comp_total: np.ndarray  #: (F + 1,) expected non-mitochondrial counts per cell / of ambient
    order: np.ndarray       #: (bins, 3) the types of each bin's up to 3 cells (F: none)
    cnt: np.ndarray         #: (bins, 3) how many cells of each

    @classmethod
    def of(cls, W, s_eg, mt, mt_profile, n_sf) -> "_Components":
        F, G = W.shape
        nonmt, mt_idx = np.flatnonzero(~mt), np.flatnonzero(mt)
        Wn = W.copy()
        Wn[:, mt] = 0.0
        sn = np.where(mt, 0.0, s_eg)
        mtp = np.zeros(G)
        mtp[mt_idx] = mt_profile
        comps = [Wn[f, nonmt] for f in range(F)] + [sn[nonmt]]
        # each bin holds at most 3 cells: its types and numbers as 3 (type, count) slots
        order = np.argsort(-n_sf, axis=1, kind="stable")[:, :HD_MAX_CELLS_PER_BIN]
        cnt = np.take_along_axis(n_sf, order, axis=1).astype(np.float64)
        return cls(Wx=np.vstack([Wn, np.zeros((1, G))]), sn=sn, mtp=mtp,
                   tables=[_alias_table(x) for x in comps] + [_alias_table(mt_profile)],
                   genes_of=[nonmt] * (F + 1) + [mt_idx], comp_total=np.array([x.sum() for x in comps]),
                   order=np.where(cnt > 0, order, F), cnt=cnt)


def _hd_chunk(rng: np.random.Generator, cp: _Components, rows: slice, n_sf: np.ndarray, y_eff: np.ndarray,
              mt_share: np.ndarray, alpha_g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The counts of the bins ``rows`` (steps 1 and 2 of :func:`_hd_counts`): ``(non-zeros per bin, their
    genes, their values)``."""
    G = cp.Wx.shape[1]
    c = rows.stop - rows.start
    y = y_eff[rows]
    comp_n = np.c_[n_sf[rows].astype(np.float64), np.ones(c)]            # c × (F+1), ambient = 1
    rate = y[:, None] * comp_n * cp.comp_total[None, :]
    expected_non_mt = rate.sum(1)
    m_b = mt_share[rows] / (1 - mt_share[rows]) * expected_non_mt
    n_umi = rng.poisson(np.c_[rate, m_b])                                   # c × (F+2)
    bins_l, genes_l = [], []
    for k, (prob, alias) in enumerate(cp.tables):
        tot = int(n_umi[:, k].sum())
        if tot:
            bins_l.append(np.repeat(np.arange(c, dtype=np.int32), n_umi[:, k]))
            genes_l.append(cp.genes_of[k][_alias_draw(rng, prob, alias, tot)].astype(np.int32))
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
    o, n = cp.order[rows], cp.cnt[rows]
    mu = cp.sn[gi] + n[r, 0] * cp.Wx[o[r, 0], gi]
    for j in range(1, HD_MAX_CELLS_PER_BIN):
        mu += n[r, j] * cp.Wx[o[r, j], gi]
    mu = y[r] * mu + m_b[r] * cp.mtp[gi]
    a = alpha_g[gi]
    clusters = rng.binomial(cand.data, np.minimum(1.0, a * np.log1p(mu / a) / mu))
    keep = clusters > 0
    pk = (mu / (mu + a))[keep]
    ck = clusters[keep]
    sizes = rng.logseries(np.repeat(pk, ck))
    starts = np.r_[0, np.cumsum(ck)[:-1]]
    vals = np.add.reduceat(sizes, starts) if len(sizes) else np.zeros(0, dtype=np.int64)
    return np.bincount(r[keep], minlength=c), gi[keep].astype(np.int32), vals.astype(np.int32)


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


def _draw_sample(case: Case, rng: np.random.Generator, rates: np.ndarray, W: np.ndarray, mt_profile: np.ndarray
                 ) -> dict:
    """One sample's tissue on its bin grid, zones, true cells ``n_sf``, detection ``y_s`` and 8 µm counts ``X8``."""
    p, mt = case.p, case.mt
    g = case.sig.to_numpy().T                                    # F × G
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
    s_eg = p.ambient_fraction * case.m_g * (rates.mean(0) @ g) * rng.lognormal(0, 0.5, p.n_genes)
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
    X8, info = _hd_counts(p, rng, n_sf, y_eff, mt_share, W, s_eg, case.alpha_g, mt, mt_profile)
    return {"side": side, "tissue": tissue, "rows": rows, "cols": cols, "zone": zone, "n_sf": n_sf, "y_s": y_s,
            "qc_fail": qc_fail, "X8": X8, "total8": np.asarray(X8.sum(1)).ravel(), "info": info}


def _bin_folder(d: Path, sample: str, case: Case, bin_um: int, X, bcs, side: int, in_tissue: np.ndarray,
                images: dict, scalefs: tuple[float, float]) -> None:
    """One ``binned_outputs/square_XXXum`` folder: matrix, parquet positions, scale factors, images."""
    hires_scalef, lowres_scalef = scalefs
    (d / "spatial").mkdir(parents=True)
    write_10x_h5(d / "filtered_feature_bc_matrix.h5", X, bcs, case.ids, case.symbols, library_id=sample,
                 software_version="spaceranger-3.1.1", chemistry="Visium HD v1")
    _write_parquet(_hd_positions(side, bin_um, in_tissue), d / "spatial" / "tissue_positions.parquet")
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


def _write_sample(outs: Path, sample: str, case: Case, s: dict) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """The 8 µm and 16 µm (2 × 2 sums) bin folders of one sample; returns the 16 µm × 8 µm summing matrix and
    the barcodes of both. Takes ``s['X8']`` out of ``s``, so the 8 µm counts are freed once summed."""
    side, tissue, rows, cols = s["side"], s["tissue"], s["rows"], s["cols"]
    bc8 = hd_barcode(8, rows, cols)
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
    scalefs = (hires_px / size_full, lowres_px / size_full)
    zone_grid = np.full(side * side, -1, dtype=np.int64)
    zone_grid[tissue] = s["zone"]
    zone_grid = zone_grid.reshape(side, side)
    images = {key: _hd_image(zone_grid, case.p.n_zones, px, scalef)
              for key, px, scalef in (("hires", hires_px, scalefs[0]), ("lowres", lowres_px, scalefs[1]))}
    binned = outs / "binned_outputs"
    holder = [s.pop("X8")]
    _bin_folder(binned / "square_008um", sample, case, 8, holder[0], bc8, side, in8, images, scalefs)
    X16 = _block_product(A, holder)  # the 8 µm matrix is freed inside, before the 16 µm one is joined
    _bin_folder(binned / "square_016um", sample, case, 16, X16, bc16, side16, in16, images, scalefs)
    return A, bc8, bc16


def _simulate_hd(outdir: str | Path, case: Case, rng: np.random.Generator) -> Path:
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

    Time and memory at full scale: docs/inputs_and_qc.md ("Visium HD").
    """
    import time

    outdir, p = Path(outdir), case.p
    t0 = time.perf_counter()
    rates = _zone_rates(p, rng) / p.cells_per_spot * p.cells_per_bin
    W = case.sig.to_numpy().T * case.m_g[None, :]
    mt_profile = case.sig.to_numpy()[case.mt].mean(1)
    mt_profile = mt_profile / mt_profile.sum()
    log.info("simulating %d Visium HD sample(s) of %d 8 µm bins × %d genes × %d types", p.n_samples, p.n_bins,
             p.n_genes, p.n_cell_types)
    info_all, sheet, truth_ab, truth_ab16, truth_spots = {}, [], [], [], []
    with atomic_dir(outdir) as tmp:
        for k in range(p.n_samples):
            sample = f"sample{k + 1}"
            s = _draw_sample(case, rng, rates, W, mt_profile)
            info_all[sample] = s["info"]
            A, bc8, bc16 = _write_sample(tmp / "samples" / sample / "outs", sample, case, s)
            ids8 = pd.Index([f"{sample}_{b}" for b in bc8], name="spot_id")
            n_sf = s["n_sf"]
            truth_ab.append(pd.DataFrame(n_sf, index=ids8, columns=case.sig.columns))
            truth_ab16.append(pd.DataFrame((A @ sp.csr_matrix(n_sf.astype(np.int32))).toarray().astype(np.int16),
                                           index=pd.Index([f"{sample}_{b}" for b in bc16], name="spot_id"),
                                           columns=case.sig.columns))
            truth_spots.append(pd.DataFrame({
                "sample": sample, "barcode": bc8, "array_row": s["rows"].astype(np.int32),
                "array_col": s["cols"].astype(np.int32), "zone": s["zone"].astype(np.int16), "y_s": s["y_s"],
                "n_cells": n_sf.sum(1, dtype=np.int16), "total_counts": s["total8"].astype(np.int64),
                "qc_fail": s["qc_fail"].astype(str)}, index=ids8))
            sheet.append({"sample": sample, "spaceranger_dir": str((outdir / "samples" / sample / "outs").resolve()),
                          "bin_size": HD_BIN_UM})
            log.info("%s: %d bins in tissue (grid %d × %d), median %d UMIs per bin, %.1f s", sample, len(s["tissue"]),
                     s["side"], s["side"], int(np.median(s["total8"])), time.perf_counter() - t0)
        truth = case.write_shared(tmp, sheet)
        _write_parquet(pd.concat(truth_ab), truth / "cell_abundance.parquet")
        _write_parquet(pd.concat(truth_ab16), truth / "cell_abundance_016um.parquet")
        _write_parquet(pd.concat(truth_spots), truth / "spots.parquet")
        (truth / "params.json").write_text(json.dumps({**asdict(p), "bin_sizes_um": list(HD_BIN_SIZES),
                                                       "microns_per_pixel": HD_UM_PER_PX,
                                                       "sampling": info_all}, indent=2))
    log.info("wrote %s in %.1f s", outdir, time.perf_counter() - t0)
    return outdir
