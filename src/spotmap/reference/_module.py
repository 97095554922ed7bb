"""The pyro module of the reference regression: priors, model and guide (no data handling here).

Indices: c = cell, g = gene, f = cell type (factor), e = batch, t = level of a categorical
technology covariate, k = *group* (one combination of type, batch and covariate levels).

Generative model (the cell2location ``RegressionBackgroundDetectionTechPyroModel`` family)::

    mu_fg                       ~ Gamma(1, 1)                         (F, G)  expression of type f [counts per cell]
    y_e                         ~ Gamma(1, 1)                         (E, 1)  detection efficiency of batch e
    y_tg                        ~ Gamma(200, 200 / 1)                 (T, G)  multiplicative technology effect
    s_g_gene_add_alpha_hyp      ~ Gamma(9, 3)                         (1, 1)
    s_g_gene_add_mean           ~ Gamma(1, 100)                       (E, 1)
    s_g_gene_add_alpha_e_inv    ~ Exponential(s_g_gene_add_alpha_hyp) (E, 1)
    s_eg                        ~ Gamma(a_e, a_e / s_g_gene_add_mean) (E, G)  ambient counts, a_e = 1 / inv²
    alpha_g_phi_hyp             ~ Gamma(9, 3)                         (1, 1)
    alpha_g_inverse             ~ Exponential(alpha_g_phi_hyp)        (1, G)  alpha_g = 1 / inverse²
    D_cg ~ NB(mean = (mu_fg[f_c] + s_eg[e_c]) · y_e[e_c] · Π_t y_tg[t_c], overdispersion alpha_g)

The mean depends on a cell only through its group k = (f_c, e_c, t_c): there is no per-cell latent
variable. The log-likelihood of any set of cells therefore depends on the data only through

* ``cells_k``   (K,)    number of cells of group k,
* ``counts_kg`` (K, G)  summed counts of gene g over the cells of group k,
* the (gene, count value) multiplicities, entering only ``lgamma(x + alpha_g) − lgamma(alpha_g)``.

:meth:`RegressionModule.model` uses this exactly (no approximation): per step it costs O(K·G)
instead of O(cells·G), so 50,000 cells × 10,000 genes train in minutes on a CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoNormal
from pyro.infer.autoguide.initialization import init_to_mean, init_to_value

#: sample sites of the model, in the order the model draws them
SITES = ("alpha_g_phi_hyp", "alpha_g_inverse", "per_cluster_mu_fg", "detection_mean_y_e",
         "detection_tech_gene_tg", "s_g_gene_add_alpha_hyp", "s_g_gene_add_mean",
         "s_g_gene_add_alpha_e_inv", "s_g_gene_add")


@dataclass(frozen=True)
class RegressionPriors:
    """Hyperparameters of the regression model; the defaults are cell2location's.

    ``(shape, rate)`` pairs are Gamma parameters.
    """

    mu_fg: tuple[float, float] = (1.0, 1.0)            #: per-type expression mu_fg ~ Gamma(1, 1) [counts/cell]
    detection_mean: tuple[float, float] = (1.0, 1.0)   #: batch detection y_e ~ Gamma(1, 1) (mean 1)
    gene_tech_mean: float = 1.0                        #: y_tg ~ Gamma(alpha, alpha / mean): mean 1 ...
    gene_tech_alpha: float = 200.0                     #: ... and shape 200 (sd 0.07: small effects a priori)
    gene_add_alpha_hyp: tuple[float, float] = (9.0, 3.0)  #: shape of s_eg: 1/Exponential(Gamma(9, 3))²
    gene_add_mean_hyp: tuple[float, float] = (1.0, 100.0)  #: mean of s_eg per batch ~ Gamma(1, 100) (0.01 counts)
    alpha_g_phi_hyp: tuple[float, float] = (9.0, 3.0)  #: overdispersion: 1/alpha_g^½ ~ Exponential(Gamma(9, 3))

    def as_dict(self) -> dict:
        return asdict(self)


class RegressionModule:
    """Pyro model and AutoNormal guide of the reference regression for fixed group structure.

    Parameters
    ----------
    group_type, group_batch
        (K,) int tensors: cell type f and batch e of each group k.
    group_levels
        (K, n_covariates) int tensor: index of each group's level in the concatenated
        technology table y_tg (T rows in all); ``n_covariates`` may be 0.
    n_types, n_batches, n_levels, n_genes
        F, E, T, G.
    lgamma_gene, lgamma_value, lgamma_mult
        (U,) the distinct (gene, non-zero count) pairs of the whole reference and how often each occurs.
    lgamma_const
        Σ over all non-zero counts of lgamma(x + 1) (a constant: it only makes the ELBO a true NB ELBO).
    init_mu_fg
        (F, G) initial value of mu_fg, usually the cluster averages.
    """

    def __init__(self, group_type: torch.Tensor, group_batch: torch.Tensor, group_levels: torch.Tensor,
                 n_types: int, n_batches: int, n_levels: int, n_genes: int,
                 lgamma_gene: torch.Tensor, lgamma_value: torch.Tensor, lgamma_mult: torch.Tensor,
                 lgamma_const: float, init_mu_fg: torch.Tensor | None = None,
                 priors: RegressionPriors | None = None):
        self.priors = priors or RegressionPriors()
        self.F, self.E, self.T, self.G = n_types, n_batches, n_levels, n_genes
        self.group_type, self.group_batch, self.group_levels = group_type, group_batch, group_levels
        self.lgamma_gene, self.lgamma_value, self.lgamma_mult = lgamma_gene, lgamma_value, lgamma_mult
        self.lgamma_const = float(lgamma_const)
        self.device = group_type.device
        init = {} if init_mu_fg is None else {"per_cluster_mu_fg": init_mu_fg.to(self.device)}
        self.guide = AutoNormal(self.model, init_loc_fn=init_to_value(values=init, fallback=init_to_mean))

    def _t(self, value: float) -> torch.Tensor:
        return torch.tensor(float(value), device=self.device)

    def model(self, counts_kg: torch.Tensor, cells_k: torch.Tensor, scale: float = 1.0) -> None:
        """Joint density of the parameters and a minibatch summarised as ``counts_kg`` (K, G) and ``cells_k`` (K,).

        ``scale`` = cells in the data / cells in the minibatch makes the minibatch term an unbiased
        estimate of the full-data log-likelihood.
        """
        p, t = self.priors, self._t
        F, E, T, G = self.F, self.E, self.T, self.G
        # overdispersion, shared by all batches (as in cell2location's reference model)
        alpha_g_phi_hyp = pyro.sample("alpha_g_phi_hyp", dist.Gamma(t(p.alpha_g_phi_hyp[0]), t(p.alpha_g_phi_hyp[1]))
                                      .expand([1, 1]).to_event(2))  # (1, 1)
        alpha_g_inverse = pyro.sample("alpha_g_inverse", dist.Exponential(alpha_g_phi_hyp)
                                      .expand([1, G]).to_event(2))  # (1, G)
        mu_fg = pyro.sample("per_cluster_mu_fg", dist.Gamma(t(p.mu_fg[0]), t(p.mu_fg[1]))
                            .expand([F, G]).to_event(2))  # (F, G) counts per cell
        y_e = pyro.sample("detection_mean_y_e", dist.Gamma(t(p.detection_mean[0]), t(p.detection_mean[1]))
                          .expand([E, 1]).to_event(2))  # (E, 1)
        if T > 0:  # only with technology covariates
            y_tg = pyro.sample("detection_tech_gene_tg",
                               dist.Gamma(t(p.gene_tech_alpha), t(p.gene_tech_alpha / p.gene_tech_mean))
                               .expand([T, G]).to_event(2))  # (T, G)
        add_alpha_hyp = pyro.sample("s_g_gene_add_alpha_hyp",
                                    dist.Gamma(t(p.gene_add_alpha_hyp[0]), t(p.gene_add_alpha_hyp[1]))
                                    .expand([1, 1]).to_event(2))  # (1, 1)
        add_mean = pyro.sample("s_g_gene_add_mean", dist.Gamma(t(p.gene_add_mean_hyp[0]), t(p.gene_add_mean_hyp[1]))
                               .expand([E, 1]).to_event(2))  # (E, 1)
        add_alpha_e_inv = pyro.sample("s_g_gene_add_alpha_e_inv", dist.Exponential(add_alpha_hyp)
                                      .expand([E, 1]).to_event(2))  # (E, 1)
        add_alpha_e = add_alpha_e_inv.pow(-2)
        s_eg = pyro.sample("s_g_gene_add", dist.Gamma(add_alpha_e, add_alpha_e / add_mean)
                           .expand([E, G]).to_event(2))  # (E, G) ambient counts per cell

        # expected counts of each group (K, G)
        mu_kg = (mu_fg[self.group_type] + s_eg[self.group_batch]) * y_e[self.group_batch]
        if T > 0:
            mu_kg = mu_kg * y_tg[self.group_levels].prod(dim=1)  # Π over covariates
        alpha_g = alpha_g_inverse.pow(-2)  # (1, G)
        log_alpha_mu = torch.log(alpha_g + mu_kg)  # (K, G)
        # NB log-pmf summed over cells: zeros need no lgamma; see the module docstring
        dense = (cells_k[:, None] * alpha_g * (torch.log(alpha_g) - log_alpha_mu)).sum()
        sparse = (counts_kg * (torch.log(mu_kg) - log_alpha_mu)).sum()
        with pyro.poutine.scale(scale=scale):
            pyro.factor("obs_loglik", dense + sparse)
        # count-value terms over the whole reference: exact every step, hence not scaled
        a = alpha_g[0, self.lgamma_gene]
        lg = (self.lgamma_mult * (torch.lgamma(self.lgamma_value + a) - torch.lgamma(a))).sum() - self.lgamma_const
        pyro.factor("obs_loglik_lgamma", lg)
