process QC_BATCH {
    tag "${meta.id}"
    label 'process_low'

    input:
    tuple val(meta), path(spatial, stageAs: 'spatial/*')

    output:
    path "qc_batch/*_mqc.*", emit: mqc
    path "versions.yml"    , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    # the task's CPUs for OpenMP/BLAS (numpy, scanpy, torch), not every core of the host
    export OMP_NUM_THREADS=${task.cpus}
    export MKL_NUM_THREADS=${task.cpus}

    inputs=()
    for f in spatial/*; do inputs+=(--spatial "\$f"); done

    spotmap qc-batch \\
        "\${inputs[@]}" \\
        --threads ${task.cpus} \\
        --outdir qc_batch \\
        ${args}

    spotmap versions --process "${task.process}" > versions.yml
    """

    stub:
    """
    mkdir -p qc_batch
    touch qc_batch/qc_batch_umap_mqc.png
    spotmap versions --process "${task.process}" > versions.yml
    """
}
