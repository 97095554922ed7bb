"""The pyro module of the spatial mapping model: the generative model and its mean-field guide.

Indices: s spot (location), g gene, f cell type (factor), e batch (sample), r co-located group.
Sizes: S spots, G genes, F types, E batches, R = ``n_groups``. Shapes are written beside every site.

Model (cell2location's ``LocationModelLinearDependentWMultiExperimentLocationBackgroundNormLevelGeneAlpha``;
every default from :class:`~spotmap.mapping.priors.MappingPriors`)::

    D_sg ~ NB(mu_sg, alpha_eg)                       counts; GammaPoisson(alpha, alpha / mu)
    mu_sg = (m̃_g · Σ_f w_sf g_fg + s_eg) · d_e · ỹ_s  g_fg: fixed reference signatures (mRNA per cell)
    m̃_g = m_g / Σ_g' m_g' ḡ_g'                       relative sensitivity; ḡ: mean signature profile, Σ ḡ = 1
    ỹ_s = y_s / exp(mean_{s' in e} log y_s')          relative detection: geometric mean 1 in each batch
    d_e                                              fixed detection level of batch e (spotmap.mapping.detection)

    gene sensitivity (technology effect between reference and spatial data)
      m_g_mean        ~ Gamma(m_g_mean_var_ratio · m_g_mean, m_g_mean_var_ratio)           (1, 1)
      m_g_alpha_e_inv ~ Exponential(m_g_alpha_mean)                                         (1, 1)
      m_g             ~ Gamma(1/m_g_alpha_e_inv², 1/m_g_alpha_e_inv² / m_g_mean)             (1, G)
    cell abundance, factorised into co-located groups
      n_s_cells_per_location ~ Gamma(N · N_cells_mean_var_ratio, N_cells_mean_var_ratio)    (S, 1)
      b_s_groups_per_location ~ Gamma(B_groups_per_location, 1)                             (S, 1)
      z_sr  ~ Gamma(b_s / R, b_s / n_s)                                                      (S, R)
      k_r   ~ Gamma(A_factors_per_location / B_groups_per_location, 1)                       (R, 1)
      x_fr  ~ Gamma(k_r / F, k_r)                                                            (R, F)
      w_sf  ~ Gamma(w_sf_mean_var_ratio · Σ_r z_sr x_fr, w_sf_mean_var_ratio)                (S, F)
    detection efficiency within a batch (relative to d_e)
      y_s ~ Gamma(detection_alpha, detection_alpha)                                          (S, 1)
    additive background (ambient RNA), per batch and gene
      s_eg_alpha_hyp ~ Gamma(*gene_add_alpha_hyp)                                            (1, 1)
      s_e_mean       ~ Gamma(*gene_add_mean_hyp)                                             (E, 1)
      s_e_alpha_inv  ~ Exponential(s_eg_alpha_hyp)                                           (E, 1)
      s_eg           ~ Gamma(1/s_e_alpha_inv², 1/s_e_alpha_inv² / s_e_mean)                  (E, G)
    overdispersion, per batch and gene
      alpha_eg_phi_hyp ~ Gamma(*alpha_g_phi_hyp)                                             (1, 1)
      alpha_eg_inv     ~ Exponential(alpha_eg_phi_hyp)                                       (E, G)
      alpha_eg = 1 / alpha_eg_inv²

Departure from cell2location: there, detection has batch means ``y_e ~ Gamma(10, 10 / detection_mean)`` and
m_g an overall level, so the product y · m · w has a direction the data cannot see, held only by weak priors
along which the shrinkage priors of w_sf move the absolute cell numbers as training goes on. Here the levels
of y_s and m_g are divided out and the batch level d_e is fixed from the data and N (see
:mod:`spotmap.mapping.detection`); the relative sites keep cell2location's priors.

Guide: mean-field log-normal for every site (``log x ~ Normal(loc, scale)``, what cell2location's AutoNormal
does), parameters ``<site>_loc`` / ``<site>_scale``. Training uses :meth:`MappingModule.elbo_loss`, the same
-ELBO evaluated without pyro's tracing overhead and with the guide's exact entropy. Spot-level sites (n_s, b_s, z_sr, w_sf, y_s) live in the
plate ``spots`` (dim -2), which subsamples for minibatches; their likelihood share is scaled by S / B.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from spotmap.mapping.likelihood import CountBatch, CountHistogram, SpotCounts, nb_mean_loglik
from spotmap.mapping.priors import MappingPriors
from spotmap.mapping.sparse import SparseCountBatch, SparseLikelihood

#: global sites in model order, with their shapes as functions of (G, E, R, F)
GLOBAL_SITES = ("m_g_mean", "m_g_alpha_e_inv", "m_g", "k_r", "x_fr", "s_eg_alpha_hyp", "s_e_mean",
                "s_e_alpha_inv", "s_eg", "alpha_eg_phi_hyp", "alpha_eg_inv")
#: spot-level sites (plate ``spots``), shapes (S, k)
LOCAL_SITES = ("n_s_cells_per_location", "b_s_groups_per_location", "z_sr", "w_sf", "y_s")


@dataclass
class Dims:
    S: int  #: spots
    G: int  #: genes
    F: int  #: cell types
    E: int  #: batches
    R: int  #: co-located groups

    def shape(self, site: str) -> tuple[int, int]:
        return {
            "m_g_mean": (1, 1), "m_g_alpha_e_inv": (1, 1), "m_g": (1, self.G),
            "k_r": (self.R, 1), "x_fr": (self.R, self.F),
            "s_eg_alpha_hyp": (1, 1), "s_e_mean": (self.E, 1), "s_e_alpha_inv": (self.E, 1), "s_eg": (self.E, self.G),
            "alpha_eg_phi_hyp": (1, 1), "alpha_eg_inv": (self.E, self.G),
            "n_s_cells_per_location": (self.S, 1), "b_s_groups_per_location": (self.S, 1),
            "z_sr": (self.S, self.R), "w_sf": (self.S, self.F), "y_s": (self.S, 1),
        }[site]


class MappingModule:
    """Model + guide of the spatial mapping model (see the module docstring).

    Parameters
    ----------
    counts
        :class:`SpotCounts` (sparse counts on the device, batch index per spot, dense likelihood) or
        :class:`~spotmap.mapping.sparse.SparseLikelihood` (likelihood whose cost grows with the non-zeros).
    hist
        :class:`CountHistogram` of the same counts (the count-only likelihood terms).
    g_fg
        (F, G) reference signatures, expected mRNA counts per cell of each type, on the device.
    n_batches
        E.
    detection
        (E,) detection level d_e of each batch (fixed; :func:`spotmap.mapping.detection.detection_level`).
    priors
        :class:`MappingPriors`.
    init
        Initial values of the guide's *mean* on the natural scale, per site (arrays of the site's shape);
        sites not given start at their prior mean. ``init['<site>_scale']``, where given, is that site's
        initial guide ``scale`` (sd of log x) per element.
    init_scale
        Initial guide ``scale`` of every other site.
    max_scale
        Upper bound of every guide ``scale``. Sites whose posterior is close to a very flat log-space prior
        (z_sr and x_fr of unused groups: Gamma shapes ≪ 1) otherwise widen without end, and draws such as
        ``exp(loc + 30 ε)`` overflow the ELBO; sd 2 of log x (a factor 7 per sd) loses nothing a user reads.
    """

    def __init__(self, counts: SpotCounts | SparseLikelihood, hist: CountHistogram, g_fg: torch.Tensor, n_batches: int,
                 detection: np.ndarray, priors: MappingPriors, init: dict[str, np.ndarray],
                 init_scale: float = 0.1, max_scale: float = 2.0) -> None:
        self.counts = counts
        self.hist = hist
        self.g_fg = g_fg
        self.priors = priors
        self.dims = Dims(S=counts.n_obs, G=counts.n_genes, F=g_fg.shape[0], E=n_batches, R=int(priors.n_groups))
        self.device = g_fg.device
        self.detection = torch.as_tensor(np.asarray(detection, dtype=np.float64).reshape(-1), dtype=torch.float32,
                                         device=self.device)                                    # (E,) d_e
        gbar = g_fg.mean(0)
        self.gbar = gbar / gbar.sum()                                                           # (G,) ḡ
        self.init = init
        self.init_scale = float(init_scale)
        self.max_scale = float(max_scale)
        self._consts: dict[float, torch.Tensor] = {}

    # -- helpers -------------------------------------------------------------------------------------------
    def _c(self, x: float) -> torch.Tensor:
        """A constant scalar tensor on the device (cached)."""
        t = self._consts.get(x)
        if t is None:
            t = self._consts[x] = torch.tensor(float(x), device=self.device)
        return t

    def relative_sensitivity(self, m_g: torch.Tensor) -> torch.Tensor:
        """m̃_g = m_g / Σ_g m_g ḡ_g: (1, G)."""
        return m_g / (m_g * self.gbar).sum()

    def absolute_detection(self, y_s: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        """d_e · y_s / geometric mean of y_s over the (mini)batch's spots of batch e: (B, 1). In minibatch
        training the geometric mean is the minibatch's (an estimate; tens of thousands of spots per step)."""
        E = self.dims.E
        logy = torch.log(y_s).reshape(-1)
        n = torch.bincount(batch, minlength=E).clamp_min(1).to(logy.dtype)
        mean_log = torch.zeros(E, dtype=logy.dtype, device=logy.device).index_add_(0, batch, logy) / n   # (E,)
        return (self.detection[batch] * torch.exp(logy - mean_log[batch])).reshape(-1, 1)

    def prior_mean(self, site: str) -> float:
        """Prior mean of a site at the hyperparameters' prior means (used for initialisation)."""
        p, d = self.priors, self.dims
        mean_inv_s = p.gene_add_alpha_hyp[1] / p.gene_add_alpha_hyp[0]   # E[s_e_alpha_inv] ≈ 1 / E[hyp]
        mean_inv_a = p.alpha_g_phi_hyp[1] / p.alpha_g_phi_hyp[0]
        return {
            "m_g_mean": p.m_g_mean, "m_g_alpha_e_inv": 1.0 / p.m_g_alpha_mean, "m_g": p.m_g_mean,
            "k_r": p.A_factors_per_location / p.B_groups_per_location, "x_fr": 1.0 / d.F,
            "s_eg_alpha_hyp": p.gene_add_alpha_hyp[0] / p.gene_add_alpha_hyp[1],
            "s_e_mean": p.gene_add_mean_hyp[0] / p.gene_add_mean_hyp[1], "s_e_alpha_inv": mean_inv_s,
            "s_eg": p.gene_add_mean_hyp[0] / p.gene_add_mean_hyp[1],
            "alpha_eg_phi_hyp": p.alpha_g_phi_hyp[0] / p.alpha_g_phi_hyp[1], "alpha_eg_inv": mean_inv_a,
            "n_s_cells_per_location": p.N_cells_per_location, "b_s_groups_per_location": p.B_groups_per_location,
            "z_sr": p.N_cells_per_location / d.R, "w_sf": p.N_cells_per_location / d.F,
            "y_s": 1.0,
        }[site]

    def _init_loc(self, site: str) -> torch.Tensor:
        shape = self.dims.shape(site)
        value = self.init.get(site)
        if value is None:
            value = np.full(shape, self.prior_mean(site))
        value = np.broadcast_to(np.asarray(value, dtype=np.float64), shape)
        # the guide's mean exp(loc + scale²/2), not its median, starts at the initial value: with a wide
        # initial sd (absent cell types) the median would put phantom cells in every spot
        loc = np.log(np.maximum(value, 1e-8)) - 0.5 * self._init_scale(site) ** 2
        return torch.as_tensor(loc, dtype=torch.float32, device=self.device)

    def _init_scale(self, site: str) -> np.ndarray:
        """Initial guide sd of ``log site`` (float64, the site's shape): ``init['<site>_scale']`` where given
        (w_sf: from the counts, see :func:`spotmap.mapping.model.initial_values`), within [0.01, 0.75 ·
        max_scale]; else ``init_scale``."""
        value = self.init.get(f"{site}_scale")
        if value is None:
            return np.full(self.dims.shape(site), self.init_scale)
        return np.clip(np.broadcast_to(np.asarray(value, dtype=np.float64), self.dims.shape(site)),
                       0.01, 0.75 * self.max_scale)

    def _params(self, site: str) -> tuple[torch.Tensor, torch.Tensor]:
        loc = pyro.param(f"{site}_loc", lambda: self._init_loc(site))
        scale = pyro.param(f"{site}_scale",
                           lambda: torch.as_tensor(self._init_scale(site), dtype=torch.float32, device=self.device),
                           constraint=constraints.interval(0.0, self.max_scale))
        return loc, scale

    def batch_kwargs(self, idx: torch.Tensor | None) -> dict:
        """Model/guide arguments for spots ``idx`` (None: all spots), for :func:`spotmap.training.train_svi`."""
        if idx is None:
            return {"idx": self.counts.order, "batch": self.counts.full()}
        idx = self.counts.sort_by_batch(idx.to(self.device))
        return {"idx": idx, "batch": self.counts.batch_rows(idx)}

    # -- model ---------------------------------------------------------------------------------------------
    def model(self, idx: torch.Tensor, batch: CountBatch | SparseCountBatch) -> None:
        """The generative model as a pyro program (sites as in the module docstring)."""
        with_plate = pyro.plate("spots", self.dims.S, subsample=idx, dim=-2)
        self._generative(idx, batch, lambda name, fn, local: pyro.sample(name, fn), with_plate, pyro.factor)

    def _generative(self, idx: torch.Tensor, batch: CountBatch | SparseCountBatch, site, spots_plate, factor) -> None:
        """The model body, shared by the pyro program and the fast ELBO: ``site(name, distribution, local)``
        draws or looks up a site, ``spots_plate`` is the context of the spot-level sites, ``factor(name,
        log_factor)`` adds the likelihood."""
        p, d, c = self.priors, self.dims, self._c
        G, E, R, F, S = d.G, d.E, d.R, d.F, d.S

        # gene-level technology sensitivity m_g
        m_g_mean = site("m_g_mean", dist.Gamma(c(p.m_g_mean_var_ratio * p.m_g_mean), c(p.m_g_mean_var_ratio))
                        .expand([1, 1]).to_event(2), False)                                      # (1, 1)
        m_g_alpha_e_inv = site("m_g_alpha_e_inv", dist.Exponential(c(p.m_g_alpha_mean))
                               .expand([1, 1]).to_event(2), False)                               # (1, 1)
        m_g_alpha_e = m_g_alpha_e_inv.pow(-2)
        m_g = site("m_g", dist.Gamma(m_g_alpha_e, m_g_alpha_e / m_g_mean).expand([1, G]).to_event(2), False)  # (1, G)

        # co-located groups r: how cell types f combine
        k_r = site("k_r", dist.Gamma(c(p.A_factors_per_location / p.B_groups_per_location), c(1.0))
                   .expand([R, 1]).to_event(2), False)                                           # (R, 1)
        x_fr = site("x_fr", dist.Gamma(k_r / F, k_r).expand([R, F]).to_event(2), False)          # (R, F)

        # additive background s_eg
        s_hyp = site("s_eg_alpha_hyp", dist.Gamma(c(p.gene_add_alpha_hyp[0]), c(p.gene_add_alpha_hyp[1]))
                     .expand([1, 1]).to_event(2), False)                                         # (1, 1)
        s_e_mean = site("s_e_mean", dist.Gamma(c(p.gene_add_mean_hyp[0]), c(p.gene_add_mean_hyp[1]))
                        .expand([E, 1]).to_event(2), False)                                      # (E, 1)
        s_e_alpha_inv = site("s_e_alpha_inv", dist.Exponential(s_hyp).expand([E, 1]).to_event(2), False)  # (E, 1)
        s_e_alpha = s_e_alpha_inv.pow(-2)
        s_eg = site("s_eg", dist.Gamma(s_e_alpha, s_e_alpha / s_e_mean).expand([E, G]).to_event(2), False)  # (E, G)

        # overdispersion alpha_eg
        phi = site("alpha_eg_phi_hyp", dist.Gamma(c(p.alpha_g_phi_hyp[0]), c(p.alpha_g_phi_hyp[1]))
                   .expand([1, 1]).to_event(2), False)                                           # (1, 1)
        alpha_eg_inv = site("alpha_eg_inv", dist.Exponential(phi).expand([E, G]).to_event(2), False)  # (E, G)
        alpha_eg = alpha_eg_inv.pow(-2)

        B = idx.shape[0]
        with spots_plate:
            n_s = site("n_s_cells_per_location",
                       dist.Gamma(c(p.N_cells_per_location * p.N_cells_mean_var_ratio),
                                  c(p.N_cells_mean_var_ratio)).expand([B, 1]), True)            # (B, 1)
            b_s = site("b_s_groups_per_location", dist.Gamma(c(p.B_groups_per_location), c(1.0)).expand([B, 1]),
                       True)                                                                     # (B, 1)
            z_sr = site("z_sr", dist.Gamma(b_s / R, b_s / n_s).expand([B, R]), True)            # (B, R)
            w_sf = site("w_sf", dist.Gamma(p.w_sf_mean_var_ratio * (z_sr @ x_fr), c(p.w_sf_mean_var_ratio)),
                        True)                                                                    # (B, F)
            y_s = site("y_s", dist.Gamma(c(p.detection_alpha), c(p.detection_alpha)).expand([B, 1]), True)  # (B, 1)

        # likelihood: the mu-dependent terms of this (mini)batch scaled to all S spots, plus the exact
        # count-only terms of the full data
        y_s = self.absolute_detection(y_s, self.counts.batch[idx])                              # (B, 1)
        mg_fg = self.relative_sensitivity(m_g) * self.g_fg                                      # (F, G)
        if isinstance(batch, SparseCountBatch):
            ll = self.counts.loglik(w_sf, mg_fg, s_eg, y_s, alpha_eg, batch)
        else:
            ll = nb_mean_loglik(w_sf, mg_fg, s_eg, y_s, alpha_eg, batch)
        ll = ll * (S / B) + self.hist.loglik(alpha_eg)
        factor("D_sg", ll)

    # -- guide ---------------------------------------------------------------------------------------------
    def guide(self, idx: torch.Tensor, batch: CountBatch | SparseCountBatch) -> None:
        """Mean-field log-normal guide as a pyro program."""
        for site in GLOBAL_SITES:
            loc, scale = self._params(site)
            pyro.sample(site, dist.LogNormal(loc, scale).to_event(2))
        with pyro.plate("spots", self.dims.S, subsample=idx, dim=-2):
            for site in LOCAL_SITES:
                loc, scale = self._params(site)
                pyro.sample(site, dist.LogNormal(loc[idx], scale[idx]))                        # (B, k)

    # -- fast ELBO -----------------------------------------------------------------------------------------
    def elbo_loss(self, model, guide, idx: torch.Tensor, batch: CountBatch | SparseCountBatch,
                  eps: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """-ELBO of ``model`` / ``guide`` without pyro's tracing machinery (a loss callable for ``pyro.infer.SVI``).

        Draws every site by reparameterisation (``x = exp(loc + scale · ε)``), evaluates the model body
        (:meth:`_generative`, the same code as the pyro program) at those values, and uses the exact entropy
        of the log-normal guide, ``Σ (loc + log scale + ½ log 2πe)``, instead of ``-log q`` at the sample:
        the same expectation as ``Trace_ELBO`` with less variance and a fraction of its per-step overhead.
        Spot-level terms of a minibatch are scaled by S / B. ``eps`` fixes the standard-normal draws (tests).
        """
        S, B = self.dims.S, idx.shape[0]
        values: dict[str, torch.Tensor] = {}
        entropy = torch.zeros((), device=self.device)
        half_log_2pi_e = 0.5 * math.log(2 * math.pi * math.e)
        for site in GLOBAL_SITES + LOCAL_SITES:
            loc, scale = self._params(site)
            local = site in LOCAL_SITES
            if local:
                loc, scale = loc[idx], scale[idx]
            e = eps[site] if eps is not None else torch.randn(loc.shape, device=self.device)
            z = loc + scale * e
            values[site] = torch.exp(z)
            h = (loc + torch.log(scale)).sum() + half_log_2pi_e * loc.numel()
            entropy = entropy + (h * (S / B) if local else h)
        log_joint = [torch.zeros((), device=self.device)]

        def site(name, fn, local):
            lp = fn.log_prob(values[name]).sum()
            log_joint[0] = log_joint[0] + (lp * (S / B) if local else lp)
            return values[name]

        def factor(name, value):
            log_joint[0] = log_joint[0] + value

        self._generative(idx, batch, site, contextlib.nullcontext(), factor)
        return -(log_joint[0] + entropy)

    # -- posterior -----------------------------------------------------------------------------------------
    def posterior_loc_scale(self, site: str) -> tuple[np.ndarray, np.ndarray]:
        """(loc, scale) of ``log site`` in the fitted guide, as float64 numpy arrays."""
        store = pyro.get_param_store()
        return (store[f"{site}_loc"].detach().cpu().double().numpy(),
                store[f"{site}_scale"].detach().cpu().double().numpy())

    def posterior_mean(self, site: str) -> np.ndarray:
        """Posterior mean ``exp(loc + scale²/2)`` of a site."""
        loc, scale = self.posterior_loc_scale(site)
        return np.exp(loc + 0.5 * scale**2)

