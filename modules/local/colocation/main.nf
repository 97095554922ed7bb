/*
 * Co-located cell types (co-location factors) and tissue regions of one consensus: `spotmap colocation`.
 * NMF and k-means run on BLAS and OpenMP, so the task's CPUs are passed as --threads.
 */
process COLOCATION {
    tag "${meta.id}"
    label 'process_medium'

    input:
    tuple val(meta), path(mapping)   // a consensus/ (or restart_<seed>/) folder holding sp.h5ad

    output:
    tuple val(meta), path("colocation", type: 'dir')                 , emit: colocation
    tuple val(meta), path("colocation/colocation_factors.csv")      , emit: factors
    tuple val(meta), path("colocation/factor_abundance.csv")        , emit: factor_abundance
    tuple val(meta), path("colocation/regions.csv")                 , emit: regions
    tuple val(meta), path("colocation/region_composition.csv")      , emit: composition
    tuple val(meta), path("colocation/factor_fits.csv")             , emit: factor_fits
    tuple val(meta), path("colocation/colocation_summary.json")     , emit: summary
    tuple val(meta), path("colocation/*")                           , emit: files   // published one by one (tower.yml)
    path "colocation/*_mqc.*"                                       , emit: mqc
    path "versions.yml"                                             , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    # the task's CPUs for OpenMP/BLAS (numpy, scikit-learn), not every core of the host
    export OMP_NUM_THREADS=${task.cpus}
    export MKL_NUM_THREADS=${task.cpus}

    spotmap colocation \\
        --mapping ${mapping} \\
        --outdir colocation \\
        --threads ${task.cpus} \\
        ${args}

    spotmap versions --process "${task.process}" > versions.yml
    """

    stub:
    """
    mkdir -p colocation
    cd colocation
    touch colocation_factors.csv factor_abundance.csv regions.csv region_composition.csv factor_fits.csv
    touch region_fits.csv colocation_summary.json colocation_summary_mqc.html
    cd ..
    spotmap versions --process "${task.process}" > versions.yml
    """
}
