"""Reference cell-type signatures (``spotmap signatures``).

- :func:`estimate_signatures` — gene filter, then the NB regression or cluster averages
- :class:`RegressionModel` — cell2location's reference regression in pyro (train / export_posterior)
- :class:`RegressionPriors` — its hyperparameters (cell2location defaults)
- :func:`filter_genes` — cell2location's permissive gene filter
- :func:`cluster_averages` — mean counts per cell of each type
- :func:`read_signatures` — signatures made elsewhere (CSV/TSV, cell2location .h5ad)
- :func:`write_signature_outputs` — the files of ``spotmap signatures`` (tables, h5ad, MultiQC, plots)
"""

from spotmap.reference._module import RegressionModule, RegressionPriors
from spotmap.reference.filtering import filter_genes
from spotmap.reference.model import RegressionModel
from spotmap.reference.outputs import write_signature_outputs
from spotmap.reference.signatures import cluster_averages, estimate_signatures, load_reference, read_signatures

__all__ = ["RegressionModel", "RegressionModule", "RegressionPriors", "cluster_averages", "estimate_signatures",
           "filter_genes", "load_reference", "read_signatures", "write_signature_outputs"]
