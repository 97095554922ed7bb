"""Plotting: every figure spotmap draws, as in scanpy's ``sc.pl``. Each function returns a matplotlib Figure
and leaves the backend alone (the ``spotmap`` command draws off-screen; a notebook keeps its own).

* QC (:mod:`.qc`): :func:`qc_histograms`, :func:`qc_spatial`, :func:`batch_umap`
* reference signatures (:mod:`.reference`): :func:`signatures_history`, :func:`signatures_vs_average`,
  :func:`reference_umap`
* mapping (:mod:`.mapping`): :func:`mapping_history`, :func:`reconstruction`, :func:`spatial_qc`
* cell abundance (:mod:`.abundance`): :func:`abundance_maps`, :func:`abundance_grid`, :func:`abundance_overlay`
* values over the tissue (:mod:`.spatial`): :func:`spatial_scatter`, :func:`grid_layout`
"""

from spotmap.pl.abundance import abundance_grid, abundance_maps, abundance_overlay
from spotmap.pl.mapping import history_tail, mapping_history, reconstruction, spatial_qc
from spotmap.pl.qc import batch_umap, qc_histograms, qc_spatial
from spotmap.pl.reference import reference_umap, signatures_history, signatures_vs_average
from spotmap.pl.spatial import grid_layout, spatial_layout, spatial_scatter

__all__ = ["abundance_grid", "abundance_maps", "abundance_overlay", "batch_umap", "grid_layout", "history_tail",
           "mapping_history", "qc_histograms", "qc_spatial", "reconstruction", "reference_umap",
           "signatures_history", "signatures_vs_average", "spatial_layout", "spatial_qc", "spatial_scatter"]
