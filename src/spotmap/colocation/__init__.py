"""Co-location analysis after mapping: which cell types live together, and the tissue regions they make.

cell2location's third part ("results and downstream analysis"), on the spots × types abundance of a
mapping (q05 by default):

* **co-location factors** — a non-negative factorisation of the abundance (cell2location's
  ``CoLocatedGroupsSklearnNMF``), over a range of factor numbers with the number chosen from the data
  (:mod:`~spotmap.colocation.nmf`);
* **tissue regions** — spots clustered by composition, the number of regions chosen by silhouette
  (:mod:`~spotmap.colocation.clustering`);
* figures in :mod:`spotmap.colocation.plots` (imported on its own: it loads matplotlib).

Table API (what a pipeline step calls)::

    from spotmap.colocation import run_colocation
    res = run_colocation(abundance_df, coords, samples, n_factors=(5, 30), seed=0)
    for name, table in res.tables().items():   # colocation_factors.csv, factor_abundance.csv, ...
        table.to_csv(outdir / name)

AnnData API (scanpy's manner)::

    from spotmap import colocation
    colocation.factors(adata, n_factors=(5, 30), quantity="q05")   # obsm/uns['colocation']
    colocation.regions(adata)                                       # obs/uns['region']

See docs/colocation.md for the method, its choices and the outputs.
"""

from spotmap.colocation.annotate import abundance_table, colocation, factors, regions
from spotmap.colocation.run import (ColocationResult, FactorResult, RegionResult, find_factors, find_regions,
                                    run_colocation)
from spotmap.colocation.settings import OUTPUT_FILES, ColocationSettings

__all__ = ["ColocationResult", "ColocationSettings", "FactorResult", "OUTPUT_FILES", "RegionResult",
           "abundance_table", "colocation", "factors", "find_factors", "find_regions", "regions",
           "run_colocation"]
