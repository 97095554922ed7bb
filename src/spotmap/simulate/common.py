"""What Visium and Visium HD cases share: genes, true signatures, the labelled reference, zone rates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from spotmap.simulate.params import MT_GENES, SimulationParams
from spotmap.utils import write_h5ad, write_table


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


@dataclass
class Case:
    """What every sample of one simulation shares: the knobs, true signatures ``sig`` (genes × types), the
    labelled reference, gene symbols and ids, overdispersion ``alpha_g`` and sensitivity ``m_g`` (per gene)."""

    p: SimulationParams
    sig: pd.DataFrame
    ref: ad.AnnData
    symbols: list[str]
    ids: list[str]
    alpha_g: np.ndarray
    m_g: np.ndarray

    @property
    def mt(self) -> np.ndarray:
        """Mitochondrial genes (the first ``n_mt_genes``)."""
        return np.arange(self.p.n_genes) < self.p.n_mt_genes

    def write_shared(self, folder: Path, sheet: list[dict]) -> Path:
        """``reference.h5ad``, ``samplesheet.csv``, ``truth/signatures.csv`` and ``truth/genes.csv``; returns
        the truth folder."""
        write_h5ad(self.ref, folder / "reference.h5ad")
        write_table(pd.DataFrame(sheet), folder / "samplesheet.csv", index=False)
        truth = folder / "truth"
        truth.mkdir(exist_ok=True)
        write_table(self.sig.rename_axis("gene"), truth / "signatures.csv")
        write_table(pd.DataFrame({"gene_ids": self.ids, "m_g": self.m_g, "alpha_g": self.alpha_g, "is_mt": self.mt},
                                 index=pd.Index(self.symbols, name="gene")), truth / "genes.csv")
        return truth
