process MAP {
    tag "${meta.id}:restart_${seed}"
    label 'process_high'
    label 'process_gpu'

    input:
    tuple val(meta), path(spatial, stageAs: 'spatial/*')
    path signatures
    each seed

    output:
    tuple val(meta), path("restart_${seed}", type: 'dir')                  , emit: restart
    tuple val(meta), path("restart_${seed}/sp.h5ad")                       , emit: h5ad
    tuple val(meta), path("restart_${seed}/W_cell_density.csv")            , emit: density
    tuple val(meta), path("restart_${seed}/W_cell_density_q05.csv")        , emit: density_q05
    tuple val(meta), path("restart_${seed}/W_mRNA_count.csv")              , emit: mrna
    tuple val(meta), path("restart_${seed}/W_mRNA_count_q05.csv")          , emit: mrna_q05
    tuple val(meta), path("restart_${seed}/training_history.tsv")          , emit: history
    path "restart_${seed}/*_mqc.*"                                         , emit: mqc
    path "versions.yml"                                                    , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args   = task.ext.args ?: ''
    def device = task.ext.use_gpu ? 'cuda' : 'cpu'
    def name   = meta.joint ? "restart_${seed}" : "${meta.id}_restart_${seed}"
    // joint mapping with samplesheet batches: obs['batch'] (written by QC) names each spot's batch
    def batch_key = meta.batch_key ? "--batch-key ${meta.batch_key}" : ''
    // checkpoints outside the task's work folder (--checkpoint_dir): a retried or resumed task continues
    def checkpoint = task.ext.checkpoint_dir ? "--checkpoint ${task.ext.checkpoint_dir}/${name}.pt" : ''
    // per-sample mapping: the samplesheet's n_cells_per_location (after ext.args, so it wins)
    def n_cells = meta.n_cells_per_location ? "--n-cells-per-location ${meta.n_cells_per_location}" : ''
    """
    # the task's CPUs for OpenMP/BLAS (numpy, scanpy, torch), not every core of the host
    export OMP_NUM_THREADS=${task.cpus}
    export MKL_NUM_THREADS=${task.cpus}

    inputs=()
    for f in spatial/*; do inputs+=(--spatial "\$f"); done

    spotmap map \\
        "\${inputs[@]}" \\
        --signatures ${signatures} \\
        --seed ${seed} \\
        --device ${device} \\
        --threads ${task.cpus} \\
        --outdir restart_${seed} \\
        --name ${name} \\
        ${checkpoint} \\
        ${batch_key} \\
        ${args} \\
        ${n_cells}

    spotmap versions --process "${task.process}" > versions.yml
    """

    stub:
    """
    mkdir -p restart_${seed}
    cd restart_${seed}
    touch sp.h5ad W_cell_density.csv W_cell_density_q05.csv W_mRNA_count.csv W_mRNA_count_q05.csv
    touch training_history.tsv map_history_mqc.tsv
    cd ..
    spotmap versions --process "${task.process}" > versions.yml
    """
}
