"""``spotmap colocation``: co-located cell types and tissue regions of one mapping result."""

from __future__ import annotations

from pathlib import Path

import click

from spotmap.colocation.settings import QUANTITIES, ColocationSettings, range_text

_C = ColocationSettings()


@click.command("colocation")
@click.option("--mapping", required=True, type=click.Path(path_type=Path),
              help="A mapping result folder holding sp.h5ad: the consensus/ of `spotmap aggregate` or a "
                   "restart_<seed>/ of `spotmap map`.")
@click.option("--outdir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write (replaced atomically if it is an earlier co-location result).")
@click.option("--n-factors", type=click.IntRange(min=1), default=None,
              help="Fit this many co-location factors (instead of choosing from --n-factors-range).")
@click.option("--n-factors-range", default=None, metavar="LO-HI",
              help="Fit every number of factors from LO to HI (numbers above the number of cell types are "
                   "dropped) and keep the smallest past which one more factor explains less than "
                   f"{_C.gain_threshold:g} cell types' worth of variance.  [default: {range_text(_C.factor_range)}]")
@click.option("--n-regions", default=None, metavar="K|LO-HI",
              help="Number of tissue regions, or a range to choose from by silhouette.  "
                   f"[default: {range_text(_C.region_range)}, chosen]")
@click.option("--quantity", type=click.Choice(QUANTITIES), default=_C.quantity, show_default=True,
              help="Posterior summary of the cell abundance to analyse (q05: 'at least this many cells', as "
                   "cell2location recommends).")
@click.option("--seed", type=int, default=_C.seed, show_default=True,
              help="Seed of the factorisation starts, the subsamples and k-means (same seed, same result).")
@click.option("--threads", type=click.IntRange(min=0), default=None,
              help="CPU threads for BLAS and OpenMP (NMF, k-means; 0: all cores); a pipeline task passes its "
                   "CPUs.  [default: all cores]")
def command(mapping: Path, outdir: Path, n_factors: int | None, n_factors_range: str | None,
            n_regions: str | None, quantity: str, seed: int, threads: int | None) -> None:
    """Find co-located cell types (co-location factors) and tissue regions in a mapping result.

    Writes OUTDIR/colocation_factors.csv (cell types × factors, rows sum to 1), factor_abundance.csv
    (spots × factors, cells per spot), regions.csv (spot,region), region_composition.csv (regions ×
    cell types, mean cells per spot), factor_fits.csv and region_fits.csv (every number tried, the chosen
    one marked), colocation_summary.json (the choices and why) and MultiQC content (*_mqc.*).
    See docs/colocation.md.
    """
    from spotmap.utils import set_threads

    set_threads(threads, torch_threads=False)  # before scikit-learn's BLAS and OpenMP pools start
    from spotmap.steps import colocation

    colocation.run(mapping=mapping, outdir=outdir, n_factors=n_factors, n_factors_range=n_factors_range,
                   n_regions=_number(n_regions), quantity=quantity, seed=seed)


def _number(value: str | None) -> int | str | None:
    """``'8'`` → 8; a range (``'2-15'``) or anything else is passed on as text (the step checks it)."""
    return int(value) if value is not None and value.strip().isdigit() else value
