"""Every section of the report, in one registry: the steps write their MultiQC files with these ids,
titles and parents, and the report builder places and orders them by it.

A :class:`Parent` is a top-level section of the report (one per pipeline step, in report order); a
:class:`Section` is one block inside it: a table, line graph or heatmap a step writes (identified by the
``id`` in the file's header), an image a step writes (identified by its published file name, ``file``:
PNGs carry no header), or content the report generates itself (abundance maps, summaries, notes).
``{label}`` in a title or description is the sample or run the file belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Parent:
    """A top-level section of the report; ``step`` names the pipeline step whose files fill it."""

    key: str
    id: str
    title: str
    description: str
    step: str


@dataclass(frozen=True)
class Section:
    """One block of the report. ``order``: rank inside its parent (smaller first). ``file``: the ending of the
    published file name that identifies an image (``<label><file>``), or None for content that names its id."""

    id: str
    parent: str
    title: str
    description: str = ""
    order: int = 5
    file: str | None = None

    def header(self, **fields) -> dict:
        """The custom-content header of a file of this section: id, title, description (``fields`` fill the
        ``{...}`` of the description) and parent."""
        return {"id": self.id, "section_name": self.title, "description": self.description.format(**fields),
                **parent_fields(self.parent)}

    def label_of(self, filename: str) -> str | None:
        """The ``{label}`` of a file of this section (its name before :attr:`file`), or None when the name
        does not end with it."""
        if self.file is None:
            return None
        stem, suffix = filename.rsplit(".", 1)[0], self.file.rsplit(".", 1)[0]
        return stem[: -len(suffix)].strip("_") if stem.endswith(suffix) else None


PARENTS: dict[str, Parent] = {p.key: p for p in [
    Parent("qc", "spotmap_qc_section", "Samples and QC",
           "Spots of each sample before and after quality filtering, and the distributions the filter used.", "qc"),
    Parent("signatures", "spotmap_signatures_section", "Reference signatures",
           "Cell-type expression signatures estimated from the single-cell reference "
           "(negative-binomial regression, as cell2location's RegressionModel).", "signatures"),
    Parent("mapping", "spotmap_mapping_section", "Mapping",
           "Training and fit of the cell2location mapping model: one run per restart (random seed).", "map"),
    Parent("stability", "spotmap_stability_section", "Restart stability",
           "Do independent restarts of the mapping agree? Cell types whose maps change between "
           "restarts are flagged and should be interpreted with care.", "aggregate"),
    Parent("abundance", "spotmap_abundance_section", "Cell abundance maps",
           "Where each cell type is: estimated number of cells per spot over the tissue image.", "map / aggregate"),
    Parent("colocation", "spotmap_colocation_section", "Co-location",
           "Which cell types live together, and the tissue regions their abundances define: a non-negative "
           "factorisation of the spots × types abundance into co-location factors (as cell2location's "
           "CoLocatedGroupsSklearnNMF), and spots clustered by composition into regions.", "colocation"),
    Parent("other", "spotmap_other_section", "Other outputs", "Other MultiQC files found in the results folder.", ""),
]}
STEP_KEYS = [k for k in PARENTS if k != "other"]  #: the parents a complete run fills


def parent_fields(key: str) -> dict:
    """MultiQC's ``parent_id``, ``parent_name`` and ``parent_description`` of parent ``key``."""
    p = PARENTS[key]
    return {"parent_id": p.id, "parent_name": p.title, "parent_description": p.description}


# ---------------------------------------------------------------------------------------------- spotmap qc
QC_SUMMARY = Section(
    "spotmap_qc", "qc", "QC summary per sample",
    "Spot QC per sample: spots with fewer than min_counts UMI or min_genes genes, or a mitochondrial fraction "
    "above max_mt_fraction, are removed (this sample: {thresholds}); mitochondrial genes are removed from the "
    "counts used for mapping.", 0, "_qc_summary_mqc.tsv")
QC_HISTOGRAMS = Section(
    "qc_histograms", "qc", "QC distributions: {label}",
    "Distributions of per-spot QC metrics in sample {label} (total UMI counts, genes detected, "
    "mitochondrial fraction), with the thresholds used to filter spots.", 1, "_qc_histograms_mqc.png")
QC_SPATIAL = Section(
    "qc_spatial", "qc", "QC metrics over the tissue: {label}",
    "Per-spot QC metrics of sample {label} drawn over the tissue image; spots removed by the filter stand out.",
    2, "_qc_spatial_mqc.png")
QC_BATCH_UMAP = Section(
    "qc_batch_umap", "qc", "Samples in a joint embedding (UMAP)",
    "Spots of all samples in one UMAP, coloured by sample: strong separation by sample points to batch effects.",
    3, "qc_batch_umap_mqc.png")

# ---------------------------------------------------------------------------------------------- spotmap signatures
SIGNATURES_HISTORY = Section(
    "spotmap_signatures_history", "signatures", "Reference signatures: training",
    "Negative ELBO of the reference regression per epoch (whole reference); it should fall and level off.",
    0, "signatures_training_mqc.yaml")
SIGNATURES_VS_AVERAGE = Section(
    "signatures_vs_average", "signatures", "Signatures vs cluster averages",
    "Estimated signature of each cell type against the plain average expression of its cells, every "
    "gene and type one point; points near the diagonal mean the model agrees with the data, a "
    "systematic offset shows the batch, technology and background corrections.", 1, "signatures_vs_average_mqc.png")
GENE_FILTER = Section(
    "spotmap_gene_filter", "signatures", "Reference signatures: gene filter",
    "cell2location's gene filter: a gene is kept when detected in more than cell_percentage_cutoff2 of cells, "
    "or in more than cell_count_cutoff cells with a mean non-zero count above nonz_mean_cutoff.",
    2, "signatures_gene_filter_mqc.tsv")
SIGNATURES_UMAP = Section(
    "signatures_umap", "signatures", "Reference cells (UMAP)",
    "Reference cells coloured by annotated cell type and by batch.", 3, "signatures_umap_mqc.png")
SIGNATURES_HISTORY_IMAGE = Section(  # not shown when the interactive line graph is there
    "signatures_history", "signatures", "Reference training curve (image)",
    "Loss (-ELBO) of the reference model against training epoch.", 4, "signatures_history_mqc.png")

# ---------------------------------------------------------------------------------------------- spotmap map
MAPPING_HISTORY = Section(
    "spotmap_mapping_history", "mapping", "Mapping: training",
    "-ELBO per epoch of each mapping restart (first 20 % of epochs not shown; the constant Σ log d! is omitted).",
    0, "_training_mqc.yaml")
RECONSTRUCTION = Section(
    "reconstruction", "mapping", "Reconstruction accuracy: {label}",
    "Observed counts against the counts expected by the fitted model, as a 2-D histogram over "
    "spots × genes (colour: number of entries, log scale). A tight cloud along the diagonal means the "
    "cell types and their abundances explain the data; a broad or bent cloud points to missing cell "
    "types or a poor fit.", 1, "_reconstruction_mqc.png")
SPATIAL_QC = Section(
    "spatial_qc", "mapping", "Detection efficiency and total cell abundance: {label}",
    "Per spot: detection efficiency y_s (how much of a spot's RNA was captured) and total estimated "
    "cell abundance, over the tissue for each sample. Total abundance should follow tissue density, "
    "detection should look like technical variation rather than anatomy.", 2, "_spatial_qc_mqc.png")

# ---------------------------------------------------------------------------------------------- spotmap aggregate
STABILITY_SUMMARY = Section(  # the report's own, from summary.txt
    "spotmap_stability_summary", "stability", "In words", "From {folder}/summary.txt.", 0)
AGGREGATE_SUMMARY = Section(  # the aggregate step's HTML, shown when there is no summary.txt
    "spotmap_aggregate_summary", "stability", "Restart stability: summary",
    "Plain-language findings of the restart aggregation.", 0, "aggregate_summary_mqc.html")
STABILITY_HEATMAP = Section(
    "spotmap_stability_heatmap", "stability", "Restart stability: pairwise correlations",
    "Correlation across spots of each cell type's abundance between every pair of restarts.",
    1, "stability_heatmap_mqc.yaml")
STABILITY = Section(
    "spotmap_stability", "stability", "Stability per cell type",
    "Agreement of the cell-type maps between {n_used} mapping restart(s): the {statistic} over restart pairs of "
    "the correlation across spots of each cell type's abundance, and of the factor between their total cells "
    "(total ratio); a type is flagged when the correlation is below {threshold:g} or the ratio above {total_ratio:g}.",
    2, "stability_mqc.tsv")
RESTARTS = Section(
    "spotmap_restarts", "stability", "Mapping restarts",
    "Final -ELBO (lower is better; best: {best}), agreement with the other restarts (median over cell types of the "
    "correlation; total ratio: median over cell types of the factor between its total cells and the median "
    "restart's) and flags (agreement < {agreement_threshold:g}, total ratio > {total_ratio:g}, or final -ELBO above "
    "the best by more than {elbo_gap_percent:g}% of the best restart's training improvement). Flagged restarts are "
    "left out of the consensus (In consensus) unless --keep-flagged was given.", 3, "restarts_mqc.tsv")

# ---------------------------------------------------------------------------------------------- spotmap colocation
COLOCATION_SUMMARY = Section(
    "spotmap_colocation_summary", "colocation", "Co-location: the choices and what they show",
    "The numbers of factors and regions, why they were chosen, and the main cell types of each factor and "
    "region.", 0, "colocation_summary_mqc.html")
COLOCATION_DOTPLOT = Section(
    "colocation_dotplot", "colocation", "Co-location factors: cell types × factors",
    "Dot area and colour: the share of each cell type's cells that falls in each factor (each row sums to 1). "
    "Types are grouped by the factor holding most of their cells, so types found together sit together.",
    1, "colocation_dotplot_mqc.png")
COLOCATION_FACTOR_MAPS = Section(
    "colocation_factor_maps", "colocation", "Co-location factors over the tissue: {label}",
    "Cells per spot in each co-location factor in sample {label}, over the tissue image where the mapping "
    "holds one (else on the spot coordinates). Colour scale per factor, saturated at the 99.2% quantile.",
    2, "_colocation_factor_maps_mqc.png")
COLOCATION_REGION_MAP = Section(
    "colocation_region_map", "colocation", "Tissue regions: {label}",
    "The region of each spot of sample {label} (spots clustered by their share of cells in each factor; "
    "region 0 is the largest), over the tissue image where the mapping holds one.", 3,
    "_colocation_regions_mqc.png")
COLOCATION_COMPOSITION = Section(
    "spotmap_colocation_composition", "colocation", "Composition of each region",
    "Mean cells per spot of each cell type in each region (from the mapped abundance itself); switch to "
    "percentages to compare the regions' make-up.", 4, "colocation_region_composition_mqc.yaml")
COLOCATION_FACTOR_FITS = Section(
    "spotmap_colocation_factor_fits", "colocation", "Number of factors: the fit of each",
    "One row per number of factors tried: relative reconstruction error, explained variance, the variance one "
    "more factor explains in cell types' worth (gain), and the agreement of random starts (stability). "
    "Chosen: {reason}", 5, "colocation_factor_fits_mqc.tsv")
COLOCATION_REGION_FITS = Section(
    "spotmap_colocation_region_fits", "colocation", "Number of regions: the fit of each",
    "One row per number of regions tried: mean silhouette (how much closer a spot is to its own region than to "
    "the next, -1 to 1) and k-means inertia. Chosen: {reason}", 6, "colocation_region_fits_mqc.tsv")

# ---------------------------------------------------------------------------------------------- the report's own
ABUNDANCE_GRID = Section(
    "abundance_grid", "abundance", "Cell abundance per type: {label}",
    "Sample {sample}, {origin}: for each cell type, the 5% quantile of the posterior of w_sf (q05, the number of "
    "cells the model is confident are present) in each {unit}, over the tissue image. Each panel has its own "
    "colour scale (saturated at the 99.2% quantile).{hd_note}", 0)
ABUNDANCE_GRID_HD_NOTE = (" Visium HD bins are drawn as an image on the bin grid (a pixel is the mean of a block of "
                          "bins when the grid is larger than the panel).")
ABUNDANCE_OVERLAY = Section(
    "abundance_overlay", "abundance", "Most abundant types together: {label}",
    "Sample {sample}, {origin}: the most abundant cell types in one map, one colour each (as cell2location's "
    "plot_spatial). A {unit}'s colour mixes the types present; brightness follows abundance relative to each "
    "type's own maximum.", 1)
STEP_MISSING = Section("spotmap_{key}_missing", "", "Step did not run", "", 99)
INPUT_NOTES = Section("spotmap_report_notes", "other", "Notes on the input files", "", 99)

#: the sections the steps write (placed by the id in a file's header, or by :attr:`Section.file`)
STEP_SECTIONS: list[Section] = [
    QC_SUMMARY, QC_HISTOGRAMS, QC_SPATIAL, QC_BATCH_UMAP,
    SIGNATURES_HISTORY, SIGNATURES_VS_AVERAGE, GENE_FILTER, SIGNATURES_UMAP, SIGNATURES_HISTORY_IMAGE,
    MAPPING_HISTORY, RECONSTRUCTION, SPATIAL_QC,
    AGGREGATE_SUMMARY, STABILITY_HEATMAP, STABILITY, RESTARTS,
    COLOCATION_SUMMARY, COLOCATION_DOTPLOT, COLOCATION_FACTOR_MAPS, COLOCATION_REGION_MAP, COLOCATION_COMPOSITION,
    COLOCATION_FACTOR_FITS, COLOCATION_REGION_FITS,
]
BY_ID: dict[str, Section] = {s.id: s for s in STEP_SECTIONS + [STABILITY_SUMMARY, ABUNDANCE_GRID, ABUNDANCE_OVERLAY]}


def by_file(filename: str) -> tuple[Section, str] | None:
    """The step section whose published file name ``filename`` is, and its ``{label}``; else None."""
    for s in STEP_SECTIONS:
        label = s.label_of(filename)
        if label is not None:
            return s, label
    return None


# ---------------------------------------------------------------------------------------------- pipeline information
SUMMARY_ID = "spotmap-summary"                        #: workflow summary (nf-core style)
SUMMARY_TITLE = "spotmap workflow summary"
METHODS_ID = "spotmap-methods-description"
VERSIONS_ANCHOR = "multiqc_software_versions"         #: MultiQC's own software-versions section
#: every section (MultiQC anchor) a complete report shows, in order
REPORT_SECTION_IDS = [PARENTS[k].id for k in STEP_KEYS] + [METHODS_ID, VERSIONS_ANCHOR, SUMMARY_ID]
