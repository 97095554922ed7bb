"""``spotmap aggregate``: pool mapping restarts into one consensus result and score their stability."""

from __future__ import annotations

from pathlib import Path

import click

from spotmap.aggregate.core import DEFAULT_ELBO_GAP, DEFAULT_THRESHOLD, DEFAULT_TOTAL_RATIO
from spotmap.errors import SpotmapError


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
@click.option("--total-ratio", default=DEFAULT_TOTAL_RATIO, show_default=True, type=float,
              help="Cell types whose total cells differ between restarts by more than this factor (median over "
                   "restart pairs) are flagged, and restarts whose totals differ from the median restart's by more "
                   "than it (median over cell types).")
@click.option("--keep-flagged", is_flag=True, default=False,
              help="Pool flagged restarts into the consensus and the cell-type stability too (by default they are "
                   "left out; when every restart is flagged the best by final -ELBO is kept alone).")
@click.option("--exclude-flagged", is_flag=True,
              help="Leave flagged restarts out of the consensus and the cell-type stability: the default (kept for "
                   "compatibility).")
def command(restarts: tuple[Path, ...], outdir: Path, threshold: float, statistic: str,
            agreement_threshold: float | None, elbo_gap: float, total_ratio: float, keep_flagged: bool,
            exclude_flagged: bool) -> None:
    """Combine the restarts of one mapping: consensus posterior, stability and flags.

    Writes OUTDIR/sp.h5ad and W_*.csv (same files and keys as one restart: the exact
    equal-weight mixture of the restarts' posteriors, flagged restarts left out unless
    --keep-flagged), stability.tsv, stability_pairs.tsv, restarts.tsv, summary.txt and MultiQC
    content (*_mqc.*). With a single --restart the consensus is that restart and stability is
    reported as NA. See docs/aggregate.md.
    """
    from spotmap.steps import aggregate

    if keep_flagged and exclude_flagged:
        raise SpotmapError("--keep-flagged and --exclude-flagged contradict each other; give one of them")
    aggregate.run(restarts=list(restarts), outdir=outdir, threshold=threshold, stability=statistic,
                  agreement_threshold=agreement_threshold, elbo_gap=elbo_gap, total_ratio=total_ratio,
                  keep_flagged=keep_flagged)
