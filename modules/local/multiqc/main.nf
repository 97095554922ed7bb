/*
 * The MultiQC report through `spotmap report`, not a bare `multiqc` call: the report's sections, order,
 * config (assets/multiqc_config.yml), cell abundance maps, versions and workflow summary are built in
 * one place, the same for `spotmap run` and this pipeline. Inputs are staged one per numbered folder
 * (nf-core's `?/*`), so files of the same name from different tasks do not collide.
 */
process MULTIQC {
    tag "report"
    label 'process_single'

    input:
    path mqc_files, stageAs: '?/*'

    output:
    path "multiqc/multiqc_report.html"       , emit: report
    path "multiqc/multiqc_data", type: 'dir', optional: true, emit: data
    path "versions.yml"                      , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    # the task's CPUs for OpenMP/BLAS (numpy, scanpy, torch), not every core of the host
    export OMP_NUM_THREADS=${task.cpus}
    export MKL_NUM_THREADS=${task.cpus}

    spotmap report \\
        --results . \\
        --outdir multiqc \\
        ${args}

    spotmap versions --process "${task.process}" > versions.yml
    """

    stub:
    """
    mkdir -p multiqc
    touch multiqc/multiqc_report.html
    spotmap versions --process "${task.process}" > versions.yml
    """
}
