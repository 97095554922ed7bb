process SIGNATURES {
    tag "${meta.id}"
    label 'process_medium'
    label 'process_gpu'

    input:
    tuple val(meta), path(reference), path(cell_types)

    output:
    tuple val(meta), path("signatures/signatures.csv")      , emit: signatures
    tuple val(meta), path("signatures/reference.h5ad")      , emit: h5ad
    tuple val(meta), path("signatures/training_history.tsv"), emit: history
    path "signatures/*_mqc.*"                               , emit: mqc
    path "versions.yml"                                     , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args      = task.ext.args ?: ''
    def batch_key = meta.batch_key ? "--batch-key ${meta.batch_key}" : ''
    def types     = cell_types ? "--cell-types ${cell_types}" : ''
    def device    = task.ext.use_gpu ? 'cuda' : 'cpu'
    """
    # the task's CPUs for OpenMP/BLAS (numpy, scanpy, torch), not every core of the host
    export OMP_NUM_THREADS=${task.cpus}
    export MKL_NUM_THREADS=${task.cpus}

    spotmap signatures \\
        --reference ${reference} \\
        --labels-key ${meta.labels_key} \\
        ${batch_key} \\
        ${types} \\
        --device ${device} \\
        --threads ${task.cpus} \\
        --outdir signatures \\
        ${args}

    spotmap versions --process "${task.process}" > versions.yml
    """

    stub:
    """
    mkdir -p signatures
    touch signatures/signatures.csv signatures/reference.h5ad signatures/training_history.tsv
    touch signatures/signatures_history_mqc.tsv
    spotmap versions --process "${task.process}" > versions.yml
    """
}
