process AGGREGATE {
    tag "${meta.id}"
    label 'process_medium'

    input:
    tuple val(meta), path(restarts, stageAs: 'restarts/*')

    output:
    tuple val(meta), path("consensus", type: 'dir')              , emit: consensus
    tuple val(meta), path("consensus/sp.h5ad")                   , emit: h5ad
    tuple val(meta), path("consensus/W_cell_density.csv")        , emit: density
    tuple val(meta), path("consensus/W_cell_density_q05.csv")    , emit: density_q05
    tuple val(meta), path("consensus/stability.tsv")             , emit: stability
    tuple val(meta), path("consensus/restarts.tsv")              , emit: restarts
    tuple val(meta), path("consensus/summary.txt")               , emit: summary
    tuple val(meta), path("consensus/*")                         , emit: files   // published one by one (tower.yml)
    path "consensus/*_mqc.*"                                     , emit: mqc
    path "versions.yml"                                          , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    # the task's CPUs for OpenMP/BLAS (numpy, scanpy, torch), not every core of the host
    export OMP_NUM_THREADS=${task.cpus}
    export MKL_NUM_THREADS=${task.cpus}

    inputs=()
    for d in restarts/*; do inputs+=(--restart "\$d"); done

    spotmap aggregate \\
        "\${inputs[@]}" \\
        --outdir consensus \\
        ${args}

    spotmap versions --process "${task.process}" > versions.yml
    """

    stub:
    """
    mkdir -p consensus
    cd consensus
    touch sp.h5ad W_cell_density.csv W_cell_density_q05.csv stability.tsv restarts.tsv summary.txt stability_mqc.tsv
    cd ..
    spotmap versions --process "${task.process}" > versions.yml
    """
}
