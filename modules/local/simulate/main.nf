process SIMULATE {
    tag "simulated"
    label 'process_low'

    output:
    path "simulated/reference.h5ad"            , emit: reference
    path "simulated/samples/*/outs", type: 'dir', emit: samples
    path "simulated/truth/cell_abundance.*"    , emit: truth   // .csv (Visium) or .parquet (Visium HD)
    path "versions.yml"                        , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    # the task's CPUs for OpenMP/BLAS (numpy, scanpy, torch), not every core of the host
    export OMP_NUM_THREADS=${task.cpus}
    export MKL_NUM_THREADS=${task.cpus}

    spotmap simulate \\
        --outdir simulated \\
        ${args}

    spotmap versions --process "${task.process}" > versions.yml
    """

    stub:
    """
    mkdir -p simulated/samples/sample1/outs simulated/truth
    touch simulated/reference.h5ad simulated/truth/cell_abundance.csv
    spotmap versions --process "${task.process}" > versions.yml
    """
}
