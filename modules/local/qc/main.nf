process QC {
    tag "${meta.id}"
    label 'process_low'

    input:
    tuple val(meta), path(input)

    output:
    tuple val(meta), path("qc/${meta.id}.h5ad")  , emit: h5ad
    tuple val(meta), path("qc/*_qc_metrics.tsv") , emit: metrics
    path "qc/*_mqc.*"                            , emit: mqc
    path "versions.yml"                          , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    spotmap qc \\
        --sample ${meta.id} \\
        --input ${input} \\
        --outdir qc \\
        ${args}

    spotmap versions --process "${task.process}" > versions.yml
    """

    stub:
    """
    mkdir -p qc
    touch qc/${meta.id}.h5ad qc/${meta.id}_qc_metrics.tsv qc/${meta.id}_qc_summary_mqc.tsv
    spotmap versions --process "${task.process}" > versions.yml
    """
}
