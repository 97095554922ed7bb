"""User-facing reference regression model: data checks, training and posterior export.

Mirrors cell2location's ``RegressionModel`` (``train`` then ``export_posterior``), on top of the
pyro module in :mod:`spotmap.reference._module` and the shared SVI loop in :mod:`spotmap.training`.
"""

from __future__ import annotations

import datetime
from typing import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import pyro
import scipy.sparse as sp
import torch
from scipy.special import gammaln, ndtri

from spotmap.errors import SpotmapError, input_error
from spotmap.reference._module import RegressionModule, RegressionPriors
from spotmap.reference.settings import SignatureSettings
from spotmap.training import TrainConfig, train_svi
from spotmap.utils import log, resolve_device, seed_everything

SUMMARIES = ("means", "stds", "q05", "q95")


_T = SignatureSettings()


def default_max_epochs(n_cells: int) -> int:
    """scvi-tools' heuristic that cell2location's reference model uses: min(round(20000 / cells · 400), 400)."""
    return int(min(round(20000 / max(n_cells, 1) * 400), 400))


def counts_matrix(adata: ad.AnnData, layer: str | None = None, source: str | None = None) -> sp.csr_matrix:
    """The raw counts (cells × genes) as float32 CSR; non-integer or negative values are an input error."""
    X = adata.X if layer is None else adata.layers[layer]
    field = "X" if layer is None else f"layers/{layer}"
    X = sp.csr_matrix(X, dtype=np.float32)
    X.sum_duplicates()
    data = X.data
    if data.size:
        if not np.all(np.isfinite(data)):
            raise input_error(source, "counts must be finite", field, float(data[~np.isfinite(data)][0]))
        if data.min() < 0:
            raise input_error(source, "counts must be non-negative raw counts", field, float(data.min()))
        frac = data != np.round(data)
        if frac.any():
            raise input_error(source, "signatures need raw integer counts (not normalised or log values)",
                              field, float(data[frac][0]))
    X.eliminate_zeros()
    return X


def _categories(adata: ad.AnnData, key: str, source: str | None, what: str) -> pd.Categorical:
    if key not in adata.obs.columns:
        columns = ", ".join(map(str, adata.obs.columns[:20]))
        raise input_error(source, f"{what} column not found in obs (columns: {columns})", key)
    col = adata.obs[key]
    if col.isna().any():
        bad = adata.obs_names[col.isna().to_numpy()][0]
        raise input_error(source, f"{what} column has missing values, e.g. cell {bad!r}", key)
    return pd.Categorical(col.astype(str))


def _count_value_table(X: sp.csr_matrix, chunk: int = 20_000_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (gene, non-zero count) pairs of ``X`` and their multiplicities (each (U,))."""
    G = X.shape[1]
    vmax = int(X.data.max()) if X.nnz else 0
    width = vmax + 1
    if G * width <= 50_000_000:  # a dense bincount is cheapest
        tally = np.zeros(G * width, dtype=np.int64)
        for i in range(0, X.nnz, chunk):
            keys = X.indices[i:i + chunk].astype(np.int64) * width + X.data[i:i + chunk].astype(np.int64)
            tally += np.bincount(keys, minlength=G * width)
        keys = np.flatnonzero(tally)
        mult = tally[keys]
    else:  # very large counts: sort instead
        keys, mult = np.unique(X.indices.astype(np.int64) * width + X.data.astype(np.int64), return_counts=True)
    return (keys // width).astype(np.int64), (keys % width).astype(np.float64), mult.astype(np.float64)


class RegressionModel:
    """Negative binomial regression of a labelled single-cell reference (cell2location's ``RegressionModel``).

    Estimates each cell type's expression signature ``mu_fg`` while accounting for per-batch
    detection ``y_e``, per-batch ambient counts ``s_eg``, multiplicative technology effects ``y_tg``
    of optional categorical covariates and gene overdispersion ``alpha_g``; see
    :mod:`spotmap.reference._module` for the model and :class:`RegressionPriors` for the priors.

    Parameters
    ----------
    adata
        Reference cells × genes with raw integer counts in ``X`` (or ``layer``).
    labels_key
        obs column with the cell type of each cell (≥ 2 types).
    batch_key
        obs column with the batch (sample / experiment) of each cell; None = one batch.
    covariate_keys
        obs columns of categorical technology covariates (3'/5' chemistry, platform, donor...).
    priors
        :class:`RegressionPriors`; cell2location's defaults when None.
    layer
        Layer with the raw counts instead of ``X``.
    source
        File name used in error messages.
    """

    def __init__(self, adata: ad.AnnData, labels_key: str, batch_key: str | None = None,
                 covariate_keys: Sequence[str] = (), priors: RegressionPriors | None = None,
                 layer: str | None = None, source: str | None = None):
        self.adata, self.source, self.layer = adata, source, layer
        self.labels_key, self.batch_key = labels_key, batch_key
        self.covariate_keys = list(covariate_keys)
        self.priors = priors or RegressionPriors()
        if adata.n_obs == 0 or adata.n_vars == 0:
            raise input_error(source, "the reference has no cells or no genes", "X", adata.shape)
        labels = _categories(adata, labels_key, source, "cell type")
        if len(labels.categories) < 2:
            raise input_error(source, "the reference needs at least 2 cell types", labels_key,
                              list(labels.categories))
        self.factor_names = [str(c) for c in labels.categories]
        batches = (_categories(adata, batch_key, source, "batch") if batch_key
                   else pd.Categorical(np.zeros(adata.n_obs, dtype=int).astype(str)))
        self.batch_names = [str(c) for c in batches.categories]
        covs = [_categories(adata, k, source, "covariate") for k in self.covariate_keys]
        self.covariate_levels = {k: [str(c) for c in cv.categories] for k, cv in zip(self.covariate_keys, covs)}
        self.X = counts_matrix(adata, layer, source)

        # groups k = distinct (type, batch, covariate levels); the likelihood only needs group sums
        offsets = np.cumsum([0] + [len(cv.categories) for cv in covs])
        codes = np.column_stack([labels.codes, batches.codes] + [cv.codes + off for cv, off in zip(covs, offsets)])
        uniq, group = np.unique(codes, axis=0, return_inverse=True)
        self.group = group.reshape(-1).astype(np.int64)          # (N,) group of each cell
        self.group_codes = uniq                                  # (K, 2 + n_covariates)
        self.n_levels = int(offsets[-1])
        self.labels = np.asarray(labels.codes, dtype=np.int64)   # (N,)
        self.batches = np.asarray(batches.codes, dtype=np.int64)  # (N,)
        self.lgamma_table = _count_value_table(self.X)
        # the counts again, with each non-zero's column replaced by group × G + gene: summing a minibatch's
        # rows into (K, G) is then one row gather and one bincount (shares the data array with X)
        K, G = len(uniq), self.X.shape[1]
        keys = np.repeat(self.group, np.diff(self.X.indptr)) * G + self.X.indices
        self._keyed = sp.csr_matrix((self.X.data, keys.astype(np.int32 if K * G < 2 ** 31 else np.int64),
                                     self.X.indptr), shape=(self.X.shape[0], K * G))
        self.history: pd.DataFrame | None = None
        self.module: RegressionModule | None = None
        self.train_settings: dict = {}
        log.info("reference: %d cells × %d genes, %d types, %d batches, %d covariate levels, %d groups",
                 adata.n_obs, adata.n_vars, len(self.factor_names), len(self.batch_names), self.n_levels, len(uniq))

    # ------------------------------------------------------------------ data
    def group_sums(self, idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Summed counts (K, G) and cell numbers (K,) of each group over cells ``idx`` (all when None)."""
        K, G = len(self.group_codes), self.X.shape[1]
        if idx is None:
            sub, groups = self._keyed, self.group
        else:
            rows = np.asarray(idx, dtype=np.int64)
            sub, groups = self._keyed[rows], self.group[rows]
        counts = np.bincount(sub.indices, weights=sub.data, minlength=K * G).reshape(K, G).astype(np.float32)
        cells = np.bincount(groups, minlength=K).astype(np.float32)
        return counts, cells

    def cluster_averages(self) -> np.ndarray:
        """Mean counts per cell of each type (F, G)."""
        F = len(self.factor_names)
        onehot = sp.csr_matrix((np.ones(len(self.labels)), (self.labels, np.arange(len(self.labels)))),
                               shape=(F, len(self.labels)))
        sums = np.asarray((onehot @ self.X).todense(), dtype=np.float64)
        return sums / np.bincount(self.labels, minlength=F)[:, None]

    def _module(self, device: torch.device) -> RegressionModule:
        gene, value, mult = self.lgamma_table
        t = lambda a, dt=torch.float32: torch.as_tensor(np.ascontiguousarray(a), dtype=dt, device=device)  # noqa: E731
        levels = self.group_codes[:, 2:]
        return RegressionModule(
            group_type=t(self.group_codes[:, 0], torch.long), group_batch=t(self.group_codes[:, 1], torch.long),
            group_levels=t(levels, torch.long), n_types=len(self.factor_names), n_batches=len(self.batch_names),
            n_levels=self.n_levels, n_genes=self.X.shape[1], lgamma_gene=t(gene, torch.long), lgamma_value=t(value),
            lgamma_mult=t(mult), lgamma_const=float((mult * gammaln(value + 1)).sum()),
            init_mu_fg=t(self.cluster_averages() + 1e-4), priors=self.priors)

    # ------------------------------------------------------------------ training
    def train(self, max_epochs: int | None = None, batch_size: int | None = _T.batch_size, lr: float = _T.lr,
              seed: int = _T.seed, device: str = "auto", progress: bool = True, threads: int | None = _T.threads,
              **config) -> pd.DataFrame:
        """Fit the model by minibatch SVI (clipped Adam, :mod:`spotmap.optim`); return the history (one row per epoch).

        Parameters
        ----------
        max_epochs
            Passes over the cells; None = ``default_max_epochs(n_cells)`` (as cell2location).
        batch_size
            Cells per step (default 2,500 as cell2location); None or ≥ cells = full data per step.
        lr
            Adam learning rate.
        seed
            Fixes initialisation, minibatch order and guide draws: a CPU run is bit-for-bit repeatable.
        device
            ``auto`` | ``cpu`` | ``cuda``.
        threads
            CPU threads for torch during training (restored afterwards); None = torch's default. The
            tensors here are small (groups × genes), so one thread is fastest, and it avoids OpenMP
            spin-waits, which slow a shared machine down many times over.
        config
            Further :class:`~spotmap.training.TrainConfig` fields (checkpoint_path, min_epochs, tol, ...).
        """
        N = self.X.shape[0]
        if max_epochs is None:
            max_epochs = default_max_epochs(N)
        if max_epochs < 1:
            raise SpotmapError(f"--max-epochs must be at least 1 (got {max_epochs})")
        if batch_size is not None and batch_size < 1:
            raise SpotmapError(f"--batch-size must be at least 1 (got {batch_size})")
        if not lr > 0:
            raise SpotmapError(f"--lr must be positive (got {lr})")
        dev = resolve_device(device)
        seed_everything(seed)
        self.module = module = self._module(dev)
        full = batch_size is None or batch_size >= N
        cached = None
        if full:
            counts, cells = self.group_sums()
            cached = {"counts_kg": torch.as_tensor(counts, device=dev), "cells_k": torch.as_tensor(cells, device=dev),
                      "scale": 1.0}

        def batch_kwargs(idx: torch.Tensor | None) -> dict:
            if full or idx is None:
                return cached if cached is not None else batch_kwargs(torch.arange(N))
            counts, cells = self.group_sums(idx.numpy())
            return {"counts_kg": torch.as_tensor(counts, device=dev), "cells_k": torch.as_tensor(cells, device=dev),
                    "scale": N / len(idx)}

        fingerprint = {"model": "reference-regression", "shape": list(self.X.shape), "sum": float(self.X.sum()),
                       "types": self.factor_names, "batches": self.batch_names, "levels": self.covariate_levels,
                       "priors": self.priors.as_dict(), "lr": lr, "batch_size": batch_size, "seed": seed,
                       "max_epochs": max_epochs}
        cfg = TrainConfig(max_epochs=max_epochs, lr=lr, batch_size=None if full else batch_size, seed=seed,
                          progress=progress, fingerprint=fingerprint,
                          nan_hint="lower --lr, or check that the reference holds raw counts "
                                   "(not normalised or log values)", **config)
        log.info("training the reference regression: %d epochs max, %s, lr %g, device %s", max_epochs,
                 "full data per step" if full else f"batch size {batch_size}", lr, dev)
        before = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            # no distribution argument checks: a NaN then reaches the loss, where train_svi stops with a
            # clear message naming the epoch (instead of a ValueError from deep inside pyro); also faster
            with pyro.validation_enabled(False):
                self.history = train_svi(module.model, module.guide, N, batch_kwargs, cfg)
        finally:
            torch.set_num_threads(before)
        self.train_settings = {"max_epochs": max_epochs, "epochs": int(len(self.history)),
                               "batch_size": batch_size if not full else N, "lr": lr, "seed": seed,
                               "device": str(dev), "converged": bool(self.history.attrs.get("converged", False))}
        return self.history

    # ------------------------------------------------------------------ export
    def _loc_scale(self, site: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.module is None:
            raise SpotmapError("the model is not trained yet: call train() first")
        guide = self.module.guide
        return getattr(guide.locs, site).detach().cpu(), getattr(guide.scales, site).detach().cpu()

    def posterior_median(self, site: str) -> np.ndarray:
        """Posterior median of a positive site (the guide is log-normal for all of them)."""
        loc, _ = self._loc_scale(site)
        return torch.exp(loc).double().numpy()

    def average_detection(self) -> float:
        """Cell-weighted average of the batch detection y_e (posterior medians)."""
        y_e = self.posterior_median("detection_mean_y_e")[:, 0]
        return float((y_e[self.batches]).mean())

    def signature_summaries(self, scale_average_detection: bool = True) -> dict[str, pd.DataFrame]:
        """Posterior means, stds, q05, q95 of mu_fg (genes × types), in counts per cell at average detection.

        The guide's marginal of mu_fg is log-normal, so the summaries are exact (no sampling).
        """
        loc, scale = (a.double().numpy().T for a in self._loc_scale("per_cluster_mu_fg"))  # (G, F)
        k = self.average_detection() if scale_average_detection else 1.0
        out = {"means": np.exp(loc + scale ** 2 / 2) * k}
        out["stds"] = out["means"] * np.sqrt(np.expm1(scale ** 2))
        out["q05"] = np.exp(loc + scale * ndtri(0.05)) * k
        out["q95"] = np.exp(loc + scale * ndtri(0.95)) * k
        return {name: pd.DataFrame(v, index=self.adata.var_names.copy(), columns=list(self.factor_names))
                for name, v in out.items()}

    def export_posterior(self, adata: ad.AnnData | None = None, add_to_varm: Sequence[str] = SUMMARIES,
                         scale_average_detection: bool = True, export_slot: str = "mod") -> ad.AnnData:
        """Write ``varm['{k}_per_cluster_mu_fg']`` (columns ``'{k}_per_cluster_mu_fg_{type}'``), ``uns[export_slot]``.

        As cell2location, mu_fg is multiplied by the average detection efficiency
        (``scale_average_detection``) so signatures are expected counts per cell of an average batch.
        """
        adata = self.adata if adata is None else adata
        summaries = self.signature_summaries(scale_average_detection)
        for k in add_to_varm:
            if k not in summaries:
                raise SpotmapError(f"add_to_varm: unknown summary {k!r} (choose from {', '.join(SUMMARIES)})")
            df = summaries[k].copy()
            df.columns = [f"{k}_per_cluster_mu_fg_{c}" for c in df.columns]
            adata.varm[f"{k}_per_cluster_mu_fg"] = df
        post = {"detection_mean_y_e": self.posterior_median("detection_mean_y_e")[:, 0],
                "alpha_g": self.posterior_median("alpha_g_inverse")[0] ** -2.0,
                "s_g_gene_add": self.posterior_median("s_g_gene_add")}
        if self.n_levels:
            post["detection_tech_gene_tg"] = self.posterior_median("detection_tech_gene_tg")
        from spotmap import __version__

        adata.uns[export_slot] = {
            "model_name": "RegressionModel (spotmap)", "spotmap_version": __version__,
            "date": datetime.date.today().isoformat(), "factor_names": list(self.factor_names),
            "var_names": list(map(str, adata.var_names)), "labels_key": self.labels_key,
            "batch_key": self.batch_key or "", "batch_names": list(self.batch_names),
            "covariate_keys": list(self.covariate_keys),
            "covariate_levels": {k: list(v) for k, v in self.covariate_levels.items()},
            "average_detection": self.average_detection() if scale_average_detection else 1.0,
            "priors": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.priors.as_dict().items()},
            "train": dict(self.train_settings), "post_sample_medians": post,
        }
        return adata

    def signatures(self) -> pd.DataFrame:
        """Estimated signatures: posterior means of mu_fg at average detection (genes × types, counts per cell)."""
        return self.signature_summaries()["means"]
