"""``spotmap map``: map cell types onto one or more QC-filtered spatial samples (jointly)."""

from __future__ import annotations

from pathlib import Path

import click

from spotmap.mapping.settings import LIKELIHOODS, SPARSE_DENSITY, MappingSettings
from spotmap.mapping.priors import HD_CELLS_PER_8UM_BIN, MappingPriors

_S, _P = MappingSettings(), MappingPriors()


@click.command("map")
@click.option("--spatial", "spatial", multiple=True, required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="QC-filtered spatial .h5ad (raw counts; obs_names '<sample>_<barcode>'); repeat for several "
                   "samples, which are modelled jointly.")
@click.option("--signatures", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Reference signatures: CSV/TSV genes × cell types (expected counts per cell), or a reference "
                   ".h5ad with varm['means_per_cluster_mu_fg'].")
@click.option("--outdir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Result folder.")
@click.option("--n-cells-per-location", default=None, type=float,
              help="Expected cells per spot (prior mean of n_s); set it from histology. [default: "
                   f"{_P.N_cells_per_location:g}; Visium HD inputs: {HD_CELLS_PER_8UM_BIN:g} per 8 µm bin, scaled with "
                   "the bin's area]")
@click.option("--detection-alpha", default=_P.detection_alpha, show_default=True, type=float,
              help="Shape of the per-spot detection efficiency y_s around its sample mean (20: strong "
                   "within-slide technical variability; 200: little).")
@click.option("--n-groups", default=_P.n_groups, show_default=True, type=int,
              help="Co-located cell-type groups r of the w_sf prior factorisation.")
@click.option("--max-epochs", default=_S.max_epochs, show_default=True, type=int,
              help="Upper bound on passes over all spots (training usually stops earlier by the convergence rule).")
@click.option("--lr", default=_S.lr, show_default=True, type=float,
              help="Adam learning rate (gradients clipped at ±10; in minibatches at ±10 × spots / batch).")
@click.option("--local-lr", default=None, type=float,
              help="Learning rate of the spot-level parameters in minibatch training (each spot moves once per "
                   "epoch, global parameters once per step) [default: 3 × --lr].")
@click.option("--batch-size", default=None, type=int,
              help="Spots per training step (minibatches for data that does not fit) [default: all spots; "
                   "20,000 with the sparse likelihood on more than 20,000 spots].")
@click.option("--seed", default=_S.seed, show_default=True, type=int,
              help="Random seed: the same seed on the CPU gives bit-identical results.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where to train (auto: CUDA if torch sees a GPU).")
@click.option("--threads", type=click.IntRange(min=0), default=None,
              help="CPU threads for torch and BLAS (0: all cores); a pipeline task passes its CPUs. "
                   "[default: all cores]")
@click.option("--checkpoint-every", default=None, type=int,
              help="Epochs between checkpoints (OUTDIR/checkpoint.pt; 0: none); rerunning the same command resumes. "
                   "[default: every 200 epochs]")
@click.option("--checkpoint", "checkpoint", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint file [default: OUTDIR/checkpoint.pt]. A path outside a pipeline task's work folder "
                   "(Nextflow: --checkpoint_dir) lets a retried or resumed task continue where the killed one "
                   "stopped; a checkpoint of other inputs or settings is ignored and overwritten.")
@click.option("--batch-key", default=_S.batch_key, show_default=True,
              help="obs column naming each spot's batch (s_eg, alpha_eg and y_e are per batch).")
@click.option("--name", default=None, help="Run name for the MultiQC files [default: restart_<seed>].")
@click.option("--min-epochs", default=_S.min_epochs, show_default=True, type=int,
              help="The convergence rule is not checked before this epoch.")
@click.option("--tol", default=_S.tol, show_default=True, type=float,
              help="Convergence: change of the smoothed -ELBO between the last two windows, relative to its "
                   "decrease since the first epoch.")
@click.option("--window", default=_S.window, show_default=True, type=int, help="Convergence: epochs per window.")
@click.option("--likelihood", type=click.Choice(list(LIKELIHOODS)), default=_S.likelihood, show_default=True,
              help="dense: exact NB over every spot × gene; sparse: cost grows with the non-zero counts (Visium "
                   "HD; zero counts of low-expressed genes by a checked second-order expansion); auto: sparse "
                   f"when under {SPARSE_DENSITY:.0%} of counts are non-zero.")
@click.option("--sparse-mu-max", default=_S.sparse_mu_max, show_default=True, type=float,
              help="Sparse likelihood: genes whose expected count may exceed this in some spot are computed exactly "
                   "(always: those that may at the initial values, with a factor 2; at each step: those that do).")
@click.option("--sparse-u-max", default=_S.sparse_u_max, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Sparse likelihood: at each step, genes whose |u| = |mu - mu0|/(alpha + mu0) exceeds this in some "
                   "spot are computed exactly for that step; the others' expanded zero terms are then within "
                   "u²/(3(1-u)) + u⁵(1+u)/8 (2.8 % at 0.25) of the exact ones' change from mu0, per spot.")
@click.option("--init-iterations", default=_S.init_iterations, show_default=True, type=int,
              help="Poisson-NMF iterations of the w_sf initialisation on the fixed signatures (cheap next to an "
                   "epoch; more bring the start closer to the fit).")
def command(spatial: tuple[Path, ...], signatures: Path, outdir: Path, n_cells_per_location: float | None,
            detection_alpha: float, n_groups: int, max_epochs: int, lr: float, local_lr: float | None,
            batch_size: int | None, seed: int, device: str, threads: int | None, checkpoint_every: int | None,
            checkpoint: Path | None,
            batch_key: str, name: str | None, min_epochs: int, tol: float, window: int, likelihood: str,
            sparse_mu_max: float, sparse_u_max: float, init_iterations: int) -> None:
    """Map cell types onto spatial data with the cell2location model (one restart = one seed).

    Writes OUTDIR/sp.h5ad (all results, cell2location names), W_cell_density.csv, W_cell_density_q05.csv,
    W_mRNA_count.csv, W_mRNA_count_q05.csv, training_history.tsv, training_history.png, checkpoint.pt and
    the MultiQC files <name>_training_mqc.yaml, <name>_reconstruction_mqc.png, <name>_spatial_qc_mqc.png.
    """
    from spotmap.steps import map as map_step
    from spotmap.utils import set_threads

    set_threads(threads)
    map_step.run(spatial=list(spatial), signatures=signatures, outdir=outdir, name=name,
                 n_cells_per_location=n_cells_per_location, detection_alpha=detection_alpha, n_groups=n_groups,
                 max_epochs=max_epochs, lr=lr, local_lr=local_lr, batch_size=batch_size, seed=seed, device=device,
                 checkpoint_every=checkpoint_every, checkpoint=checkpoint, batch_key=batch_key, min_epochs=min_epochs,
                 tol=tol, window=window, likelihood=likelihood, sparse_mu_max=sparse_mu_max,
                 sparse_u_max=sparse_u_max, init_iterations=init_iterations)
