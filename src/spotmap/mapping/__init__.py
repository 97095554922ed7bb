"""Spatial mapping: the cell2location model in pyro (``spotmap map``).

* :mod:`~spotmap.mapping.priors` — :class:`MappingPriors`, every hyperparameter and its default;
* :mod:`~spotmap.mapping.likelihood` — the NB log-likelihood that exploits zero counts (fused, chunked);
* :mod:`~spotmap.mapping.module` — the pyro model and mean-field guide;
* :mod:`~spotmap.mapping.model` — :class:`SpatialMapper` (initialise, train, export) and :func:`map_cell_types`;
* :mod:`~spotmap.mapping.plots` — QC figures.
"""

import os

# Threads that wait passively: on a CPU shared with other jobs, OpenMP's default spin-waiting made two torch
# threads 5-8x slower than one (measured); passive waiting costs little on an idle machine. Only effective
# when set before torch is first imported (the CLI imports torch earlier; see docs/mapping.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from spotmap.mapping.model import MappingSettings, SpatialMapper, map_cell_types  # noqa: E402
from spotmap.mapping.priors import MappingPriors  # noqa: E402

__all__ = ["MappingPriors", "MappingSettings", "SpatialMapper", "map_cell_types"]
