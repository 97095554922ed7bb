"""Spatial mapping: the cell2location model in pyro (``spotmap map``).

* :mod:`~spotmap.mapping.priors` — :class:`MappingPriors`, every hyperparameter and its default;
* :mod:`~spotmap.mapping.likelihood` — the NB log-likelihood that exploits zero counts (fused, chunked);
* :mod:`~spotmap.mapping.module` — the pyro model and mean-field guide;
* :mod:`~spotmap.mapping.model` — :class:`SpatialMapper` (initialise, train, export) and :func:`map_cell_types`.

The ``spotmap map`` step (reading the inputs, writing the result folder) is :mod:`spotmap.steps.map`; its
figures are in :mod:`spotmap.pl`.
"""

from spotmap.mapping.priors import MappingPriors
from spotmap.mapping.settings import MappingSettings


def __getattr__(name: str):
    # torch and pyro load on first use, so `spotmap --help` and the light subcommands start fast
    if name in {"SpatialMapper", "map_cell_types"}:
        from spotmap.mapping import model

        return getattr(model, name)
    raise AttributeError(f"module 'spotmap.mapping' has no attribute {name!r}")


__all__ = ["MappingPriors", "MappingSettings", "SpatialMapper", "map_cell_types"]
