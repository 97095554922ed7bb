"""spotmap: map cell types onto spatial transcriptomics with the cell2location model.

The package is laid out by pipeline step: :mod:`spotmap.io` (readers and writers),
:mod:`spotmap.qc`, :mod:`spotmap.reference` (signatures), :mod:`spotmap.mapping`
(the spatial model), :mod:`spotmap.aggregate` (restarts), :mod:`spotmap.report`,
:mod:`spotmap.simulate` and :mod:`spotmap.cli`. Every step is a function that takes
and returns AnnData / DataFrames, so the CLI and Python users run the same code.
"""

import os

# Torch threads that wait passively: on a CPU shared with other jobs, OpenMP's default spin-waiting made two
# threads 5-8x slower than one (measured); passive waiting costs little on an idle machine. It only takes
# effect before torch is first imported, hence here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from spotmap.errors import SpotmapError  # noqa: E402

__all__ = ["SpotmapError", "__version__"]
