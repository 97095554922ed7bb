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
proportional to the number of UMIs, so whole slides can be simulated (:mod:`spotmap.simulate.hd`; time and
memory at full scale in docs/inputs_and_qc.md).

Modules: :mod:`.params` (:class:`SimulationParams`), :mod:`.common` (genes, signatures, reference),
:mod:`.visium`, :mod:`.hd`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spotmap.simulate.common import Case, _gene_names, simulate_reference, simulate_signatures
from spotmap.simulate.hd import _hd_counts, hd_barcode
from spotmap.simulate.params import PLATFORMS, SimulationParams, _check

__all__ = ["PLATFORMS", "SimulationParams", "hd_barcode", "simulate", "simulate_reference", "simulate_signatures"]


def simulate(outdir: str | Path, params: SimulationParams | None = None) -> Path:
    """Write a complete simulated case under ``outdir`` (see module docstring); return ``outdir``."""
    from spotmap.simulate.hd import _simulate_hd
    from spotmap.simulate.visium import simulate_visium

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
    case = Case(p, sig, ref, symbols, ids, alpha_g, m_g)
    if p.platform == "visium-hd":
        return _simulate_hd(outdir, case, rng)
    return simulate_visium(outdir, case, rng)
