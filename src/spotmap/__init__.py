"""spotmap: map cell types onto spatial transcriptomics with the cell2location model.

Where things are (each layer imports only those below it):

* :mod:`spotmap.cli` — the ``spotmap`` command: options only, each subcommand one step's ``run`` call;
* :mod:`spotmap.steps` — one module per pipeline step (qc, qc_batch, signatures, map, aggregate,
  report): reads the inputs, calls the cores, writes every file and the MultiQC content;
  :mod:`spotmap.workflow` runs them all on one machine (``spotmap run``);
* cores — :mod:`spotmap.io` (readers, samplesheet, platform), :mod:`spotmap.qc`, :mod:`spotmap.reference`
  (signatures), :mod:`spotmap.mapping` (the spatial model), :mod:`spotmap.aggregate` (restarts),
  :mod:`spotmap.report`, :mod:`spotmap.pl` (figures), :mod:`spotmap.simulate`, :mod:`spotmap.results`,
  :mod:`spotmap.metrics`; functions take and return AnnData / DataFrames;
* ground — :mod:`spotmap.errors`, :mod:`spotmap.utils`, :mod:`spotmap.training`, :mod:`spotmap.optim`,
  :mod:`spotmap.embedding`.

Importing spotmap changes nothing in the process (no environment variables, no matplotlib backend).
"""

__version__ = "0.1.0"

from spotmap.errors import SpotmapError  # noqa: E402

__all__ = ["SpotmapError", "__version__"]
