"""Training settings of the mapping step (pure Python: the CLI reads its defaults without importing torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

#: ``likelihood="auto"`` uses the sparse likelihood when fewer than this fraction of counts are non-zero
#: (Visium HD 8 µm bins: ~2 %; Slide-seq beads: a few %; Visium spots: 10–40 %)
SPARSE_DENSITY = 0.05
LIKELIHOODS = ("auto", "dense", "sparse")
#: with the sparse likelihood and no --batch-size, data with more spots than this train in minibatches of
#: SPARSE_AUTO_BATCH spots: a full-batch step over a whole Visium HD sample would hold every non-zero's
#: indices and autograd values at once, more than a CPU machine's memory; 20,000-bin steps fit (peak memory
#: in benchmarks/RESULTS_hd.md)
SPARSE_AUTO_BATCH = 20_000
#: on a GPU that many spots train in one full batch instead when it fits: a full-batch step holds about this
#: many bytes per non-zero count (the GPU run of benchmarks/RESULTS_hd.md, rounded up)
GPU_BYTES_PER_NONZERO = 100
#: ... within this fraction of the GPU's memory
GPU_MEMORY_FRACTION = 0.8
#: default bound on the expected count of an expanded gene in any bin: genes whose expected count may exceed it at
#: the initial values (twice a bound on it) are always exact, and at each step those whose expected count does
#: (spotmap.mapping.sparse)
SPARSE_MU_MAX = 5.0
#: default bound on |u| = |mu - mu0| / (alpha + mu0) of an expanded gene, checked at every step: a spot's expanded
#: zero terms are then within ε(0.25) = 2.8 % of the exact ones' change from mu0
#: (spotmap.mapping.sparse_bound.relative_error_bound)
SPARSE_U_MAX = 0.25


@dataclass
class MappingSettings:
    """Training settings of :func:`map_cell_types` (units in brackets); priors are in :class:`MappingPriors`.

    Convergence rule (:func:`spotmap.training.relative_change`): after ``min_epochs``, stop when
    ``|mean(L[-w:]) - mean(L[-2w:-w])| / (L[0] - mean(L[-w:])) < tol`` with ``w = window`` epochs and ``L`` the
    -ELBO per epoch: the last window's change relative to the decrease since the first epoch.
    """

    max_epochs: int = 3000            #: upper bound on passes over all spots
    lr: float = 0.02                  #: Adam learning rate (spotmap.optim.LazyClippedAdam)
    #: learning rate of the spot-level parameters (w_sf, n_s, b_s, z_sr, y_s) in minibatch training, where each
    #: spot's row moves once per epoch while global parameters move once per step (None: 3 × lr)
    local_lr: float | None = None
    clip_norm: float = 10.0           #: gradients clipped to ±clip_norm elementwise
    batch_size: int | None = None     #: spots per step; None = all spots (full batch), or SPARSE_AUTO_BATCH for large sparse data that does not fit a GPU
    seed: int = 0
    min_epochs: int = 200             #: the convergence rule is not checked before this epoch
    window: int = 100                 #: epochs per smoothing window of the convergence rule
    tol: float = 5e-3                 #: change of the smoothed -ELBO per window / its decrease since epoch 1
    device: str = "auto"              #: auto | cpu | cuda
    batch_key: str = "sample"         #: obs column whose levels are the batches e
    init_scale: float = 0.1           #: initial sd (log scale) of every guide factor but w_sf (set from the counts)
    max_scale: float = 2.0            #: upper bound of every guide sd (log scale); see MappingModule
    init_iterations: int = 30         #: Poisson-NMF iterations of the w_sf initialisation
    checkpoint_every: int | None = None  #: epochs between checkpoints (None: none)
    checkpoint_path: str | None = None
    progress: bool = True
    min_genes: int = 100              #: fewest shared genes accepted
    likelihood: str = "auto"          #: dense | sparse | auto (sparse when under SPARSE_DENSITY of counts are non-zero)
    sparse_mu_max: float = SPARSE_MU_MAX  #: sparse likelihood: genes whose expected count may exceed this are exact
    #: sparse likelihood: genes whose |u| = |mu - mu0|/(alpha + mu0) exceeds this at a step are exact for that step
    sparse_u_max: float = SPARSE_U_MAX

    def fingerprint(self) -> dict:
        """Settings that change the result (checkpoints must match them); max_epochs excluded."""
        skip = {"max_epochs", "checkpoint_every", "checkpoint_path", "progress", "device"}
        return {k: v for k, v in asdict(self).items() if k not in skip}
