"""spotmap: map cell types onto spatial transcriptomics with the cell2location model.

The package is laid out by pipeline step: :mod:`spotmap.io` (readers and writers),
:mod:`spotmap.qc`, :mod:`spotmap.reference` (signatures), :mod:`spotmap.mapping`
(the spatial model), :mod:`spotmap.aggregate` (restarts), :mod:`spotmap.report`,
:mod:`spotmap.simulate` and :mod:`spotmap.cli`. Every step is a function that takes
and returns AnnData / DataFrames, so the CLI and Python users run the same code.
"""

__version__ = "0.1.0"

from spotmap.errors import SpotmapError  # noqa: E402

__all__ = ["SpotmapError", "__version__"]
