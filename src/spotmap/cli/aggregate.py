"""``spotmap aggregate``: pool mapping restarts into one consensus result and score their stability."""

from __future__ import annotations

from pathlib import Path

import click

from spotmap.aggregate.core import DEFAULT_ELBO_GAP, DEFAULT_THRESHOLD


@click.command("aggregate")
@click.option("--restart", "restarts", multiple=True, required=True,
              type=click.Path(exists=True, path_type=Path),
              help="A restart's result folder (from `spotmap map`); repeat for each. Restarts are named by their "
                   "folder (e.g. restart_3). The first also gives the consensus its counts and metadata.")
@click.option("--outdir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Consensus folder to write (replaced atomically if it is an earlier aggregate result).")
@click.option("--threshold", default=DEFAULT_THRESHOLD, show_default=True, type=float,
              help="Cell types whose stability (correlation across spots between restarts) is below it are flagged.")
@click.option("--stability", "statistic", type=click.Choice(["median", "min"]), default="median", show_default=True,
              help="Statistic over restart pairs that makes a cell type's stability score.")
@click.option("--agreement-threshold", type=float, default=None,
              help="Restarts whose agreement with the others is below it are flagged  [default: --threshold]")
@click.option("--elbo-gap", default=DEFAULT_ELBO_GAP, show_default=True, type=float,
              help="Restarts whose final -ELBO exceeds the best one by more than this fraction of the best "
                   "restart's training improvement (first-epoch minus final -ELBO, from training_history.tsv) "
                   "are flagged.")
@click.option("--exclude-flagged", is_flag=True,
              help="Leave flagged restarts out of the consensus and the cell-type stability.")
def command(restarts: tuple[Path, ...], outdir: Path, threshold: float, statistic: str,
            agreement_threshold: float | None, elbo_gap: float, exclude_flagged: bool) -> None:
    """Combine the restarts of one mapping: consensus posterior, stability and flags.

    Writes OUTDIR/sp.h5ad and W_*.csv (same files and keys as one restart: the exact
    equal-weight mixture of the restarts' posteriors), stability.tsv, stability_pairs.tsv,
    restarts.tsv, summary.txt and MultiQC content (*_mqc.*). With a single --restart the
    consensus is that restart and stability is reported as NA. See docs/aggregate.md.
    """
    from spotmap.steps import aggregate

    aggregate.run(restarts=list(restarts), outdir=outdir, threshold=threshold, stability=statistic,
                  agreement_threshold=agreement_threshold, elbo_gap=elbo_gap, exclude_flagged=exclude_flagged)
