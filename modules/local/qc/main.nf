process QC {
    tag "${meta.id}"
    label 'process_low'

    input:
    tuple val(meta), path(input), path(coordinates)

    output:
    tuple val(meta), path("qc/${meta.id}/${meta.id}.h5ad") , emit: h5ad
    tuple val(meta), path("qc/${meta.id}/*_qc_metrics.tsv"), emit: metrics
    path "qc/${meta.id}/*_mqc.*"                           , emit: mqc
    path "versions.yml"                                    , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args        = task.ext.args ?: ''
    def coords      = coordinates ? "--coordinates ${coordinates}" : ''
    def bin_size    = meta.bin_size ? "--bin-size ${meta.bin_size}" : ''
    // quoted: the schema allows any label without spaces
    def batch       = meta.batch ? "--batch '${meta.batch}'" : ''
    """
    # the task's CPUs for OpenMP/BLAS (numpy, scanpy, torch), not every core of the host
    export OMP_NUM_THREADS=${task.cpus}
    export MKL_NUM_THREADS=${task.cpus}

    spotmap qc \\
        --sample ${meta.id} \\
        --input ${input} \\
        ${coords} \\
        ${bin_size} \\
        ${batch} \\
        --outdir qc/${meta.id} \\
        ${args}

    spotmap versions --process "${task.process}" > versions.yml
    """

    stub:
    """
    mkdir -p qc/${meta.id}
    touch qc/${meta.id}/${meta.id}.h5ad qc/${meta.id}/${meta.id}_qc_metrics.tsv qc/${meta.id}/${meta.id}_qc_summary_mqc.tsv
    spotmap versions --process "${task.process}" > versions.yml
    """
}
