"""Reference cell-type signatures (``spotmap signatures``).

- :func:`estimate_signatures` — gene filter, then the NB regression or cluster averages
- :class:`RegressionModel` — cell2location's reference regression in pyro (train / export_posterior)
- :class:`RegressionPriors` — its hyperparameters (cell2location defaults)
- :func:`filter_genes` — cell2location's permissive gene filter
- :func:`cluster_averages` — mean counts per cell of each type
- :func:`read_signatures` — signatures made elsewhere (CSV/TSV, cell2location .h5ad)
- :func:`write_signature_outputs` — the files of ``spotmap signatures`` (tables, h5ad, MultiQC, plots)

Names are imported on first use, so ``spotmap --help`` does not load torch and pyro.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "RegressionModule": "_module", "RegressionPriors": "_module", "filter_genes": "filtering",
    "RegressionModel": "model", "write_signature_outputs": "outputs", "cluster_averages": "signatures",
    "estimate_signatures": "signatures", "load_reference": "signatures", "read_signatures": "signatures",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"spotmap.reference.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'spotmap.reference' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
