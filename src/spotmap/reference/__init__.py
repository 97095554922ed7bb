"""Reference cell-type signatures (``spotmap signatures``).

- :func:`estimate_signatures` — gene filter, then the NB regression or cluster averages
- :class:`RegressionModel` — cell2location's reference regression in pyro (train / export_posterior)
- :class:`RegressionPriors` — its hyperparameters (cell2location defaults)
- :func:`filter_genes` — cell2location's permissive gene filter
- :func:`cluster_averages` — mean counts per cell of each type
- :func:`read_signatures` — signatures made elsewhere (CSV/TSV, cell2location .h5ad)
- :func:`compute_umap` — the reference cells' UMAP (``obsm['X_umap']``)
- :class:`SignatureSettings` — training settings and their defaults

The ``spotmap signatures`` step, which writes the files (tables, h5ad, MultiQC content), is
:mod:`spotmap.steps.signatures`; its figures are in :mod:`spotmap.pl`.

Names are imported on first use, so ``spotmap --help`` does not load torch and pyro.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "RegressionModule": "_module", "RegressionPriors": "_module", "filter_genes": "filtering",
    "RegressionModel": "model", "SignatureSettings": "settings", "cluster_averages": "signatures",
    "compute_umap": "signatures",
    "estimate_signatures": "signatures", "load_reference": "signatures", "read_signatures": "signatures",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"spotmap.reference.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'spotmap.reference' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
