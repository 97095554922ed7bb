"""The pipeline's steps, one module each, each a ``run(..., outdir) -> Path`` with typed keyword arguments.

A step reads its inputs, calls the core packages (:mod:`spotmap.qc`, :mod:`spotmap.reference`,
:mod:`spotmap.mapping`, :mod:`spotmap.aggregate`, :mod:`spotmap.colocation`, :mod:`spotmap.report`) and
writes every file of its output folder, MultiQC content included, all or nothing. ``spotmap <step>`` (:mod:`spotmap.cli`) turns its
options into one ``run`` call; the one-machine workflow (:mod:`spotmap.workflow`) calls them in turn.

=========================  ===========================================  =====================================
module                     command                                      returns
=========================  ===========================================  =====================================
:mod:`.qc`                 ``spotmap qc``                               ``<outdir>/<sample>.h5ad``
:mod:`.qc_batch`           ``spotmap qc-batch``                         ``<outdir>/qc_batch_umap_mqc.png``
:mod:`.signatures`         ``spotmap signatures``                       ``<outdir>/signatures.csv``
:mod:`.map`                ``spotmap map`` (one restart)                ``outdir`` (a result folder)
:mod:`.aggregate`          ``spotmap aggregate``                        ``outdir`` (the consensus folder)
:mod:`.colocation`         ``spotmap colocation``                       ``outdir`` (factors, regions, figures)
:mod:`.report`             ``spotmap report``                           ``<outdir>/multiqc_report.html``
=========================  ===========================================  =====================================
"""

import importlib

STEPS = ("qc", "qc_batch", "signatures", "map", "aggregate", "colocation", "report")
__all__ = list(STEPS)


def __getattr__(name: str):
    # `from spotmap import steps; steps.map.run(...)` without loading every step (and torch) up front
    if name in STEPS:
        return importlib.import_module(f"spotmap.steps.{name}")
    raise AttributeError(f"module 'spotmap.steps' has no attribute {name!r}")
