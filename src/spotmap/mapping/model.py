"""The user-facing mapping model: prepare the data, initialise, train, export the posterior.

:func:`map_cell_types` is the one-call API (used by ``spotmap map`` and the benchmarks);
:class:`SpatialMapper` exposes the steps.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pyro
import scipy.sparse as sp
import torch

from spotmap.errors import SpotmapError, input_error
from spotmap.io.genes import match_genes
from spotmap.mapping.data import _counts_matrix, gpu_memory_bytes, validate_signatures  # noqa: F401
from spotmap.mapping.detection import fix_detection_level, relative_sensitivity
from spotmap.mapping.likelihood import CountHistogram, SpotCounts
from spotmap.mapping.module import GLOBAL_SITES, LOCAL_SITES, MappingModule
from spotmap.mapping.priors import MappingPriors, default_cells_per_location
from spotmap.mapping.settings import (GPU_BYTES_PER_NONZERO, GPU_MEMORY_FRACTION, LIKELIHOODS, SPARSE_AUTO_BATCH,
                                      SPARSE_DENSITY, MappingSettings)
from spotmap.mapping.sparse import SparseLikelihood, sparse_nmf
from spotmap.mapping.sparse_bound import approximation_check, choose_exact_genes, split_at
from spotmap.mapping.start import start_abundance
from spotmap.io.platform import platform_of
from spotmap.results import add_posterior
from spotmap.training import TrainConfig, fingerprint_of, train_svi
from spotmap.utils import log, resolve_device

NAN_HINT = ("the learning rate is too high (lower --lr), or the input has spots with (almost) no counts, "
            "genes whose signature is zero for every cell type, or counts that are not raw integers")


# ------------------------------------------------------------------------------------------------------------
# data preparation
# ------------------------------------------------------------------------------------------------------------
def detection_mean_from_data(X: sp.csr_matrix, g_fg: np.ndarray, n_cells_per_location: float) -> float:
    """cell2location's prior mean of detection efficiency, from the data.

    ``(mean total counts per spot / N_cells_per_location) / mean over types of Σ_g g_fg``: the fraction of
    a cell's expected mRNA that a spot detects if it holds N average cells.
    """
    spot_totals = np.asarray(X.sum(1)).ravel()
    return float(spot_totals.mean() / n_cells_per_location / g_fg.sum(1).mean())


def initial_values(X: sp.csr_matrix, g_fg: np.ndarray, detection_mean: float, priors: MappingPriors,
                   iterations: int = 30, max_genes: int = 2000,
                   batch: np.ndarray | None = None, sparse: bool = False,
                   device: torch.device | None = None, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Initial values of w_sf, m_g and n_s: a quick Poisson NMF of the counts on the fixed signatures.

    The factorisation's detection is per batch, ``detection_mean · (mean total counts of the batch / mean over
    all spots)`` (so a shallower sample starts with a lower detection, not with fewer cells), and y_s its
    batch's; :func:`spotmap.mapping.detection.fix_detection_level` then turns it into d_e and relative y_s. With m_g = 1, ``iterations`` multiplicative (Lee–Seung, KL) updates
    ``w ← w · ((D / (y (w g))) gᵀ) / (1 gᵀ)`` on the ``max_genes`` genes that best separate cell types, from
    :func:`~spotmap.mapping.start.start_abundance` (random with ``rng``: SpatialMapper's is the seed's);
    then m_g by the ratio of observed to fitted totals per gene, and a second round with ``m_g · g``.
    w_sf is floored at 0.01 cells so that no type starts "dead" in log space. ``w_sf_scale``, the guide's
    initial sd of log w_sf, is that of the Gamma posterior of w_sf whose shape is the prior's plus the UMIs
    the NMF gives type f in spot s (u_sf = y_s w_sf Σ_g m_g g_fg): ``sqrt(trigamma(shape + u_sf))`` ≈
    1/sqrt(u_sf) for a type with many UMIs, ~2 for an absent one (the guide starts it at 1.5 at most). With
    every sd at 0.1 instead, absent types needed hundreds of steps to widen, and with minibatches (each spot
    moves once per epoch) a whole Visium HD sample was still far from it at the end of training
    (benchmarks/RESULTS_hd.md). Deterministic given ``rng``, and cheap next to training. With ``sparse=True`` the same updates run
    on the same genes with the ratio evaluated at the non-zero counts only
    (:func:`spotmap.mapping.sparse.sparse_nmf`: cost grows with the non-zeros; for Visium HD), on ``device``
    (default: the CPU), so that both likelihoods start from the same values (up to float rounding): started
    from an NMF over every gene, a sparse fit's maps differed from the dense fit's by more than the likelihood
    explains (BENCHMARKS.md, "Sparse likelihood: bound during training").
    """
    S, G = X.shape
    F = g_fg.shape[0]
    g_fg = g_fg.astype(np.float64)
    # genes separating types: largest log ratio of the top type to the mean, among expressed genes
    mean_g = g_fg.mean(0)
    score = np.log((g_fg.max(0) + 1e-12) / (mean_g + 1e-12)) + 0.25 * np.log(mean_g + 1e-12)
    genes = np.arange(G) if G <= max_genes else np.sort(np.argsort(-score, kind="stable")[:max_genes])
    X_genes = X if len(genes) == G else X[:, genes].tocsr()
    D = None if sparse else torch.as_tensor(X_genes.toarray(), dtype=torch.float32)
    col_total = torch.as_tensor(np.asarray(X.sum(0, dtype=np.float64)).ravel(), dtype=torch.float32)
    g = torch.as_tensor(g_fg, dtype=torch.float32)
    w = torch.as_tensor(start_abundance(S, F, priors.N_cells_per_location, rng), dtype=torch.float32)
    batch = np.zeros(S, dtype=np.int64) if batch is None else np.asarray(batch, dtype=np.int64)
    totals = np.asarray(X.sum(1, dtype=np.float64)).ravel()
    E = int(batch.max()) + 1 if S else 1
    y_e = np.array([detection_mean * totals[batch == e].mean() / totals.mean() if (batch == e).any()
                    else detection_mean for e in range(E)])
    y = torch.as_tensor(y_e[batch], dtype=torch.float32)[:, None]                      # (S, 1)

    def nmf(h: torch.Tensor, w: torch.Tensor, n: int) -> torch.Tensor:
        if sparse:
            return sparse_nmf(X_genes, h, w, y, n, device=device)
        denom = h.sum(1)[None, :]
        ratio = torch.empty_like(D)
        for _ in range(n):
            torch.mm(w, h, out=ratio)
            torch.div(D, ratio.mul_(y).clamp_min_(1e-10), out=ratio)
            w = w * (ratio @ h.T) / denom
        return w

    w = nmf(g[:, genes], w, iterations // 2)
    fitted = ((y * w).sum(0) @ g).clamp_min(1e-10)
    m = (col_total / fitted).clamp(0.05, 20.0)
    w = nmf(m[genes] * g[:, genes], w, iterations - iterations // 2)
    umis = (y * w * (m * g).sum(1)[None, :]).double()                                     # (S, F) u_sf
    shape = priors.w_sf_mean_var_ratio * priors.N_cells_per_location / F
    w_scale = torch.special.polygamma(1, umis + shape).sqrt().numpy()
    w = w.clamp_min(0.01).double().numpy()
    return {"w_sf": w, "m_g": m.double().numpy()[None, :], "n_s_cells_per_location": w.sum(1, keepdims=True),
            "y_s": y_e[batch][:, None], "w_sf_scale": w_scale}


# ------------------------------------------------------------------------------------------------------------
# the model class
# ------------------------------------------------------------------------------------------------------------
class SpatialMapper:
    """cell2location's spatial mapping model on one AnnData (several samples = batches).

    Parameters
    ----------
    adata
        Spots × genes raw counts (X), with ``obs[batch_key]``; genes already matched to ``signatures``.
    signatures
        Genes × types reference signatures g_fg (expected mRNA counts per cell), same genes, same order.
    priors, settings
        :class:`MappingPriors`, :class:`MappingSettings`.
    """

    def __init__(self, adata: ad.AnnData, signatures: pd.DataFrame, priors: MappingPriors | None = None,
                 settings: MappingSettings | None = None, source: str = "spatial data") -> None:
        self.priors = priors or MappingPriors()
        self.settings = settings or MappingSettings()
        if list(adata.var_names) != list(signatures.index):
            raise SpotmapError("SpatialMapper: adata.var_names and signatures.index must be the same genes in the "
                               "same order (use spotmap.io.genes.match_genes)")
        key = self.settings.batch_key
        if key not in adata.obs:
            raise input_error(source, "no batch column in obs (set --batch-key)", field=f"obs['{key}']")
        self.adata = adata
        self.factor_names = [str(c) for c in signatures.columns]
        self.g_fg = signatures.to_numpy(dtype=np.float64).T                        # (F, G)
        self.X = _counts_matrix(adata, source)
        totals = np.asarray(self.X.sum(1)).ravel()
        if (totals <= 0).any():
            bad = adata.obs_names[totals <= 0]
            raise input_error(source, f"{len(bad)} spot(s) have no counts over the genes shared with the signatures "
                                      "(remove them, e.g. with spotmap qc)", field="obs_names", value=bad[0])
        batch = pd.Categorical(adata.obs[key].astype(str))
        self.batch_names = [str(c) for c in batch.categories]
        self.batch_codes = np.asarray(batch.codes, dtype=np.int64)
        self.detection_mean = detection_mean_from_data(self.X, self.g_fg, self.priors.N_cells_per_location)
        self.detection: np.ndarray | None = None           #: (E,) detection level d_e, set with the start
        self.device = resolve_device(self.settings.device)
        self.history: pd.DataFrame | None = None
        self.params: dict[str, torch.Tensor] = {}
        self._module: MappingModule | None = None
        self.gpu_memory_gb: dict[str, float] = {}        #: peak GPU memory of training (GB; CUDA only)

    # -- building ----------------------------------------------------------------------------------------------
    @property
    def sparse(self) -> bool:
        """Whether the sparse likelihood (:mod:`spotmap.mapping.sparse`) is used."""
        choice = self.settings.likelihood
        if choice == "auto":
            S, G = self.X.shape
            return self.X.nnz < SPARSE_DENSITY * S * G
        return choice == "sparse"

    @property
    def batch_size(self) -> int | None:
        """Spots per step: ``settings.batch_size``; when that is None, all spots (full batch) — except with the
        sparse likelihood on more than ``SPARSE_AUTO_BATCH`` spots, which train in minibatches of that size
        unless a full batch fits the GPU (``GPU_BYTES_PER_NONZERO`` per non-zero within ``GPU_MEMORY_FRACTION``
        of its memory). Full batch is the more accurate fit: every spot moves at every step (the accuracy of
        both on a whole Visium HD sample: BENCHMARKS.md)."""
        S = self.X.shape[0]
        size = self.settings.batch_size
        if size is None and self.sparse and S > SPARSE_AUTO_BATCH:
            fits = self.X.nnz * GPU_BYTES_PER_NONZERO <= GPU_MEMORY_FRACTION * gpu_memory_bytes(self.device)
            size = None if fits else SPARSE_AUTO_BATCH
        return size if size and size < S else None

    @property
    def local_lr(self) -> float:
        """Learning rate of the spot-level parameters: ``settings.local_lr`` (default 3 × lr) in minibatch
        training, where each spot moves once per epoch; ``lr`` in full-batch training."""
        s = self.settings
        return (s.local_lr or 3.0 * s.lr) if self.batch_size else s.lr

    def module(self) -> MappingModule:
        if self._module is None:
            init = initial_values(self.X, self.g_fg, self.detection_mean, self.priors,
                                  iterations=self.settings.init_iterations, batch=self.batch_codes,
                                  sparse=self.sparse, device=self.device, rng=np.random.default_rng(self.settings.seed))
            self.detection, init = fix_detection_level(init, self.X, self.g_fg, self.batch_codes,
                                                       self.priors.N_cells_per_location)
            if self.sparse:
                counts = self._sparse_likelihood(init)
            else:
                counts = SpotCounts(self.X, self.batch_codes, self.device)
            hist = CountHistogram(self.X, self.batch_codes, len(self.batch_names), self.device)
            g = torch.as_tensor(self.g_fg, dtype=torch.float32, device=self.device)
            self._module = MappingModule(counts, hist, g, len(self.batch_names), self.detection, self.priors,
                                         init, init_scale=self.settings.init_scale,
                                         max_scale=self.settings.max_scale)
        return self._module

    def _sparse_likelihood(self, init: dict[str, np.ndarray]) -> SparseLikelihood:
        """The sparse likelihood: genes always exact where twice the bound on their expected count at the initial
        values exceeds ``sparse_mu_max``; at every step also those over ``sparse_u_max`` or ``sparse_mu_max`` there."""
        st = self.settings
        s_g = self.priors.gene_add_mean_hyp[0] / self.priors.gene_add_mean_hyp[1]    # prior mean of s_eg
        floor = choose_exact_genes(init["w_sf"], self.detection[self.batch_codes], init["m_g"] * self.g_fg,
                                   mu_max=st.sparse_mu_max, s_g=s_g)
        log.info("sparse likelihood: %d of %d genes always exact (expected count may exceed %g); at every step "
                 "also those whose |u| may exceed %g", len(floor), self.X.shape[1], st.sparse_mu_max, st.sparse_u_max)
        return SparseLikelihood(self.X, self.batch_codes, floor, self.device, u_max=st.sparse_u_max,
                                mu_max=st.sparse_mu_max)

    @property
    def exact_genes(self) -> np.ndarray:
        """Genes whose zero term the sparse likelihood computed exactly at the last step."""
        counts = self._module.counts if self._module is not None else None
        return counts.exact_genes() if isinstance(counts, SparseLikelihood) else np.zeros(0, dtype=np.int64)

    def fingerprint(self) -> dict:
        X = self.X
        return {
            "settings": self.settings.fingerprint(), "priors": self.priors.as_dict(),
            "shape": list(X.shape), "nnz": int(X.nnz), "total": float(X.data.sum(dtype=np.float64)),
            "rowsum_hash": fingerprint_of(rows=np.asarray(X.sum(1)).ravel().round(3).tolist()),
            "obs_hash": fingerprint_of(obs=list(map(str, self.adata.obs_names)), batch=self.batch_codes.tolist()),
            "genes_hash": fingerprint_of(genes=list(map(str, self.adata.var_names))),
            "signature_total": float(self.g_fg.sum()), "factors": self.factor_names,
        }

    # -- training ----------------------------------------------------------------------------------------------
    def train(self) -> pd.DataFrame:
        """Fit the guide by SVI (:func:`spotmap.training.train_svi`); returns the training history."""
        s = self.settings
        mod = self.module()
        S = mod.dims.S
        config = TrainConfig(
            max_epochs=s.max_epochs, lr=s.lr, clip_norm=s.clip_norm, scale_global_clip=True,
            local_lr=self.local_lr,
            local_params=tuple(f"{site}_{part}" for site in LOCAL_SITES for part in ("loc", "scale")),
            batch_size=self.batch_size, seed=s.seed,
            min_epochs=s.min_epochs, window=s.window, tol=s.tol, checkpoint_every=s.checkpoint_every,
            checkpoint_path=Path(s.checkpoint_path) if s.checkpoint_path else None, progress=s.progress,
            nan_hint=NAN_HINT, fingerprint=self.fingerprint())
        log.info("mapping %d spots × %d genes × %d cell types (%d batch(es)) on %s; detection level %s; %s",
                 S, mod.dims.G, mod.dims.F, mod.dims.E, self.device, " ".join(f"{d:.4g}" for d in self.detection),
                 f"minibatches of {self.batch_size} spots" if self.batch_size else "full batch")
        try:
            with pyro.validation_enabled(False):  # NaN/inf are caught by train_svi's non-finite check instead
                self.history = train_svi(mod.model, mod.guide, S, mod.batch_kwargs, config, loss=mod.elbo_loss)
        except torch.cuda.OutOfMemoryError as exc:
            raise SpotmapError(f"the GPU ran out of memory training {self.batch_size or S} spots per step; rerun "
                               f"with a smaller --batch-size (e.g. {min(SPARSE_AUTO_BATCH, max(1, S // 4))}) "
                               "or on a GPU with more memory") from exc
        store = pyro.get_param_store()
        self.params = {name: store[name].detach().clone() for name in store.keys()}
        if self.device.type == "cuda":   # since the process started: data, model and training together
            self.gpu_memory_gb = {"peak_allocated": torch.cuda.max_memory_allocated(self.device) / 1e9,
                                  "peak_reserved": torch.cuda.max_memory_reserved(self.device) / 1e9}
            log.info("GPU memory: peak %.1f GB allocated, %.1f GB reserved by torch",
                     self.gpu_memory_gb["peak_allocated"], self.gpu_memory_gb["peak_reserved"])
        return self.history

    # -- posterior ---------------------------------------------------------------------------------------------
    def loc_scale(self, site: str) -> tuple[np.ndarray, np.ndarray]:
        """(loc, scale) of ``log site`` under the fitted guide (float64)."""
        if not self.params:
            raise SpotmapError("the model is not trained yet")
        return (self.params[f"{site}_loc"].cpu().double().numpy(),
                self.params[f"{site}_scale"].cpu().double().numpy())

    def posterior_mean(self, site: str) -> np.ndarray:
        """Posterior mean ``exp(loc + scale²/2)`` of a site; ``y_s`` and ``m_g`` as the likelihood sees them: the
        absolute detection ``d_e · y_s / geometric mean of its batch`` and the relative sensitivity."""
        loc, scale = self.loc_scale(site)
        if site == "y_s":
            b = self.batch_codes
            mean_log = np.bincount(b, weights=loc.ravel()) / np.maximum(np.bincount(b), 1)       # (E,)
            loc = loc + (np.log(self.detection)[b] - mean_log[b])[:, None]
        mean = np.exp(loc + 0.5 * scale**2)
        return relative_sensitivity(mean, self.g_fg)[0] if site == "m_g" else mean

    def mrna_per_cell(self) -> np.ndarray:
        """(F,) Σ_g m̃_g g_fg at the posterior mean of the relative sensitivity: mRNA per cell of each type."""
        return (self.g_fg * self.posterior_mean("m_g")).sum(1)

    def expected_counts(self, spots: np.ndarray, chunk: int = 1024) -> np.ndarray:
        """(len(spots), G) posterior expected counts mu_sg at the posterior means (for the QC plot)."""
        w, y = self.posterior_mean("w_sf"), self.posterior_mean("y_s")
        mg = self.posterior_mean("m_g") * self.g_fg
        s_eg = self.posterior_mean("s_eg")
        out = np.empty((len(spots), self.g_fg.shape[1]), dtype=np.float32)
        for i in range(0, len(spots), chunk):
            idx = spots[i:i + chunk]
            out[i:i + chunk] = (w[idx] @ mg + s_eg[self.batch_codes[idx]]) * y[idx]
        return out

    def global_summary(self) -> dict:
        """JSON-safe summary of the global parameters (posterior means; per-gene ones as quantiles)."""
        pm = {site: self.posterior_mean(site) for site in GLOBAL_SITES}
        alpha = 1.0 / np.exp(2 * self.loc_scale("alpha_eg_inv")[0])  # alpha at the posterior median of its inverse
        q = (0.05, 0.5, 0.95)

        def quant(x: np.ndarray) -> dict:
            return {f"q{int(p * 100):02d}": float(np.quantile(x, p)) for p in q}

        return {
            # cell2location's prior mean of y_e (unweighted mean over types) and spotmap's fixed level per batch
            "detection_mean_cell2location": self.detection_mean,
            "y_e": {b: float(v) for b, v in zip(self.batch_names, self.detection)},
            "m_g_alpha_e": float(pm["m_g_alpha_e_inv"].ravel()[0] ** -2),
            "m_g": quant(pm["m_g"].ravel()),
            "s_e_mean": {b: float(v) for b, v in zip(self.batch_names, pm["s_e_mean"].ravel())},
            "s_eg": {b: quant(pm["s_eg"][i]) for i, b in enumerate(self.batch_names)},
            "alpha_eg": {b: quant(alpha[i]) for i, b in enumerate(self.batch_names)},
            "alpha_eg_phi_hyp": float(pm["alpha_eg_phi_hyp"].ravel()[0]),
            "k_r": quant(pm["k_r"].ravel()),
        }

    def sparse_check(self, max_spots: int = 5_000) -> dict:
        """How much the sparse likelihood's expanded zero term differs from the exact one at the posterior means
        (:func:`spotmap.mapping.sparse_bound.approximation_check` on up to ``max_spots`` spots, the genes split
        as a step at these values would split them), with what the checks during training saw
        (:meth:`SparseLikelihood.check_summary`)."""
        st = self.settings
        w, y, mg = self.posterior_mean("w_sf"), self.posterior_mean("y_s"), self.posterior_mean("m_g") * self.g_fg
        s_eg, alpha = self.posterior_mean("s_eg"), 1.0 / np.exp(2 * self.loc_scale("alpha_eg_inv")[0])
        counts = self.module().counts
        exact = np.union1d(counts.floor_idx.cpu().numpy(),
                           split_at(w, y, mg, s_eg, alpha, self.batch_codes, st.sparse_u_max, st.sparse_mu_max))
        check = approximation_check(self.X, w, mg, s_eg, y, alpha, self.batch_codes, exact, u_max=st.sparse_u_max,
                                    max_spots=max_spots, seed=st.seed)
        check.update({"mu_max": float(st.sparse_mu_max), **counts.check_summary()})
        if check["bound_relative_error"] > check["bound"]:
            log.warning("sparse likelihood: at the posterior the expanded zero term is off by %.2g of its size, "
                        "above its bound %.2g (largest |u| at a zero count %.2f, --sparse-u-max %g)",
                        check["bound_relative_error"], check["bound"], check["max_u_at_zeros"], st.sparse_u_max)
        return check

    def export_posterior(self, adata: ad.AnnData | None = None) -> ad.AnnData:
        """Write every result into ``adata`` (default: a copy of the training data) and return it.

        obsm: the w_sf / u_sf summaries of :func:`spotmap.results.add_posterior` (means, stds, q05, q50, q95,
        computed in spot chunks), ``w_sf_loc`` / ``w_sf_scale``; obs: ``detection_y_s`` (posterior mean),
        ``total_counts``, ``total_cell_abundance``; var: ``m_g`` (posterior mean); varm: ``s_eg``,
        ``alpha_eg`` (genes × batches); uns['mod']: factor_names, mrna_per_cell, elbo, seed, settings, priors,
        batch names and the global summary.
        """
        out = adata if adata is not None else self.adata.copy()
        w_loc, w_scale = self.loc_scale("w_sf")
        add_posterior(out, w_loc, w_scale, self.factor_names, self.mrna_per_cell())
        out.obs["detection_y_s"] = self.posterior_mean("y_s").ravel().astype(np.float32)
        out.obs["total_counts"] = np.asarray(self.X.sum(1)).ravel().astype(np.float32)
        out.var["m_g"] = self.posterior_mean("m_g").ravel().astype(np.float32)
        out.varm["s_eg"] = self.posterior_mean("s_eg").T.astype(np.float32)
        out.varm["alpha_eg"] = (1.0 / np.exp(2 * self.loc_scale("alpha_eg_inv")[0])).T.astype(np.float32)
        mod = dict(out.uns.get("mod", {}))
        hist = self.history
        mod.update({
            "model_name": "spotmap.mapping (cell2location spatial model)",
            "elbo": float(hist["elbo_smoothed"].iloc[-1]) if hist is not None and len(hist) else float("nan"),
            "epochs": int(hist["epoch"].iloc[-1]) if hist is not None and len(hist) else 0,
            "converged": bool(hist.attrs.get("converged", False)) if hist is not None else False,
            "seed": int(self.settings.seed),
            "settings": _json_safe(asdict(self.settings)),
            "priors": self.priors.as_dict(),
            "batch_key": self.settings.batch_key,
            "batch_names": list(self.batch_names),
            "var_names": [str(v) for v in out.var_names],
            "globals": self.global_summary(),
            "likelihood": "sparse" if self.sparse else "dense",
            "batch_size_used": int(self.batch_size or self.X.shape[0]),
            "local_lr_used": float(self.local_lr),
        })
        if self.gpu_memory_gb:
            mod["gpu_memory_gb"] = {k: round(v, 2) for k, v in self.gpu_memory_gb.items()}
        if self.sparse:
            mod["sparse_likelihood"] = self.sparse_check()
        out.uns["mod"] = mod
        return out


def _json_safe(d: dict) -> dict:
    return {k: (None if v is None else v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in d.items()}


# ------------------------------------------------------------------------------------------------------------
# the one-call API
# ------------------------------------------------------------------------------------------------------------
def map_cell_types(adata: ad.AnnData, signatures: pd.DataFrame, *, n_cells_per_location: float | None = None,
                   detection_alpha: float = MappingPriors.detection_alpha, n_groups: int = MappingPriors.n_groups,
                   priors: MappingPriors | None = None,
                   signature_ids: pd.Series | None = None, return_mapper: bool = False,
                   **settings) -> tuple[ad.AnnData, pd.DataFrame]:
    """Map cell types onto spatial data with the cell2location model; return ``(result AnnData, history)``.

    Parameters
    ----------
    adata
        Spots × genes raw counts (several samples concatenated; ``obs[batch_key]`` names each spot's batch).
    signatures
        Genes × cell types reference signatures (expected mRNA counts per cell), e.g. from ``spotmap signatures``.
    n_cells_per_location, detection_alpha, n_groups
        The priors users set most (see :class:`MappingPriors`); ``priors`` overrides all of them.
        ``n_cells_per_location`` None: the default of ``adata``'s platform as ``spotmap qc`` recorded it
        (:func:`spotmap.mapping.priors.default_cells_per_location`: 8; 2 per 8 µm Visium HD bin).
    signature_ids
        Gene ids of the signature rows, to match genes by id (else by symbol).
    **settings
        Any field of :class:`MappingSettings` (max_epochs, lr, batch_size, seed, device, batch_key,
        checkpoint_every, checkpoint_path, progress, min_epochs, window, tol, ...).

    Returns
    -------
    The matched spatial AnnData with every result (see :meth:`SpatialMapper.export_posterior`) and the
    training history (epoch, elbo, elbo_smoothed, rel_change, seconds). With ``return_mapper=True`` a third
    item, the trained :class:`SpatialMapper`.
    """
    unknown = set(settings) - {f for f in MappingSettings.__dataclass_fields__}
    if unknown:
        raise SpotmapError(f"map_cell_types: unknown setting(s) {sorted(unknown)}")
    if priors is None:
        if n_cells_per_location is None:
            n_cells_per_location = default_cells_per_location(*platform_of(adata))
        priors = MappingPriors(N_cells_per_location=float(n_cells_per_location),
                               detection_alpha=float(detection_alpha), n_groups=int(n_groups))
    cfg = MappingSettings(**settings)
    if cfg.max_epochs < 1:
        raise SpotmapError(f"max_epochs must be at least 1 (got {cfg.max_epochs})")
    for name, rate in (("lr", cfg.lr), ("local_lr", cfg.local_lr)):
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise SpotmapError(f"{name} must be a positive number (got {rate})")
    if cfg.likelihood not in LIKELIHOODS:
        raise SpotmapError(f"likelihood must be one of {', '.join(LIKELIHOODS)} (got {cfg.likelihood!r})")
    if not (cfg.sparse_mu_max > 0 and math.isfinite(cfg.sparse_mu_max)):
        raise SpotmapError(f"sparse_mu_max must be a positive number (got {cfg.sparse_mu_max})")
    if not 0 < cfg.sparse_u_max < 1:
        raise SpotmapError(f"sparse_u_max must be between 0 and 1 (got {cfg.sparse_u_max})")
    if cfg.init_iterations < 0:
        raise SpotmapError(f"init_iterations must be 0 or more (got {cfg.init_iterations})")
    if cfg.batch_size is not None and cfg.batch_size < 1:
        raise SpotmapError(f"batch_size must be at least 1 (got {cfg.batch_size})")
    sig = validate_signatures(signatures)
    if signature_ids is not None:
        signature_ids = pd.Series(np.asarray(signature_ids), index=signatures.index).loc[sig.index]
    sp_sub, sig_sub = match_genes(adata, sig, min_genes=cfg.min_genes, signature_ids=signature_ids)
    mapper = SpatialMapper(sp_sub, sig_sub, priors, cfg)
    history = mapper.train()
    result = mapper.export_posterior(sp_sub)
    return (result, history, mapper) if return_mapper else (result, history)


__all__ = ["MappingSettings", "SpatialMapper", "map_cell_types", "detection_mean_from_data", "initial_values",
           "validate_signatures"]
