#!/usr/bin/env nextflow
/*
 * spotmap: map cell types onto spatial transcriptomics with the cell2location model.
 *
 *   nextflow run . -profile test,docker --outdir results
 *   nextflow run . -profile docker --input samplesheet.csv --reference reference.h5ad --outdir results
 *
 * Docs: docs/nextflow.md. Parameters: nextflow_schema.json (nextflow run . --help).
 * Written for Nextflow's strict syntax (the strict-syntax page of Nextflow's docs; tests/test_nextflow_strict.py).
 */

include { validateParameters; paramsSummaryLog; paramsHelp; samplesheetToList } from 'plugin/nf-schema'
include { SIMULATE } from './modules/local/simulate/main'
include { SPOTMAP  } from './workflows/spotmap'

workflow {

    main:
    def help_topic = helpTopic(params.help)
    if (help_topic != null || isTrue(params.help_full)) {
        // --help, --help <parameter>, --help_full (with --show_hidden): print the parameters, run nothing
        log.info paramsHelp(
            [
                command   : 'nextflow run spotmap/spotmap -profile docker --input samplesheet.csv --reference reference.h5ad --outdir results',
                fullHelp  : isTrue(params.help_full),
                showHidden: isTrue(params.show_hidden),
            ],
            help_topic ?: ''
        )
    } else if (isTrue(params.version)) {
        log.info "${workflow.manifest.name} ${workflow.manifest.version}"
    } else {
        // The completion handler lives in the entry workflow: the strict parser allows no top-level statement.
        // This form (the strict-syntax page's) runs with both parsers of every Nextflow manifest.nextflowVersion
        // allows; the `onComplete:` section is a 25.10 feature, and those exist only in the strict parser.
        // Registered first, so a failed parameter check still gets its closing line.
        workflow.onComplete = {
            if (workflow.success) {
                log.info "spotmap: done, results in ${params.outdir}"
            } else {
                log.error "spotmap: failed; see ${params.outdir}/pipeline_info and .nextflow.log, then rerun with -resume"
            }
        }

        if (isTrue(params.validate_params)) {
            validateParameters()
        }
        log.info paramsSummaryLog(workflow)
        checkInputParams()
        checkGpuProfile(workflow.profile, workflow.containerEngine)
        if (params.checkpoint_dir) {
            // made before any task: a container engine bind-mounts it (Docker would create a missing one as
            // root, Singularity/Apptainer refuse one)
            file(params.checkpoint_dir).mkdirs()
        }

        // Restart seeds: params.seed, params.seed + 1, ... (one MAP task each)
        def seeds = (0..<(params.restarts as int)).collect { i -> (params.seed as int) + i }

        ch_versions = channel.empty()
        if (isTrue(params.simulate)) {
            // Test profile: a tiny simulated case made by the pipeline itself (no downloads)
            SIMULATE()
            ch_versions  = ch_versions.mix(SIMULATE.out.versions)
            ch_samples   = SIMULATE.out.samples
                .flatten()
                .map { outs -> [ [ id: outs.parent.name ], outs, [] ] }
            ch_reference = SIMULATE.out.reference
        } else {
            def schema_input = "${projectDir}/assets/schema_input.json"
            def columns      = samplesheetColumns(schema_input)
            def rows         = samplesheetToList(params.input, schema_input)
            // a batch given to any row: every row gets one (its own sample id where empty), as `spotmap run` does
            def any_batch    = rows.any { row -> row[0].batch }
            ch_samples = channel
                .fromList(rows)
                .map { row -> sampleFromRow(row, columns, any_batch) }
            ch_reference = params.reference ? channel.fromPath(params.reference, checkIfExists: true) : channel.empty()
        }
        ch_reference = ch_reference.map { ref ->
            [
                [ id: 'reference', labels_key: params.labels_key, batch_key: params.batch_key ],
                ref,
                params.cell_types ? file(params.cell_types, checkIfExists: true) : []
            ]
        }
        ch_signatures = params.signatures ? channel.fromPath(params.signatures, checkIfExists: true) : channel.empty()

        SPOTMAP(ch_samples, ch_reference, ch_signatures, seeds, ch_versions, isTrue(params.skip_multiqc), isTrue(params.skip_colocation))
    }
}

/*
 * A boolean parameter as given: true/false from a config or params file, or the text the strict parser
 * passes from the command line ('true' for a bare `--flag`, 'false' for `--flag false`), which nf-schema
 * casts only in its own validation copy. Anything else that Groovy's toBoolean() reads as false is false.
 */
def isTrue(value) {
    return value != null && value.toString().toBoolean()
}

/*
 * What `--help` asks for: null (no help), '' (every top-level parameter) or the name of one parameter.
 */
def helpTopic(value) {
    if (value == null || value.toString() == 'false') {
        return null
    }
    return value.toString() == 'true' ? '' : value.toString()
}

/*
 * One clear line for inputs that nf-schema cannot check on its own.
 */
def checkInputParams() {
    if (!isTrue(params.simulate) && !params.input) {
        error("spotmap: --input <samplesheet.csv> is required (or use -profile test for simulated data)")
    }
    if (!isTrue(params.simulate) && !params.reference && !params.signatures) {
        error("spotmap: give --reference <reference.h5ad> (signatures are estimated) or --signatures <signatures.csv>")
    }
    if (!(params.mapping_mode in [ 'auto', 'joint', 'per_sample' ])) {
        error("spotmap: --mapping_mode must be 'auto', 'joint' or 'per_sample' (got '${params.mapping_mode}')")
    }
    if ((params.restarts as int) < 1) {
        error("spotmap: --restarts must be at least 1 (got ${params.restarts})")
    }
    if (params.checkpoint_dir && !(params.checkpoint_dir.toString() ==~ /\/[^\s:,]*/)) {
        error("spotmap: --checkpoint_dir must be an absolute path on a filesystem shared by the MAP tasks, without spaces, ':' or ',' (got '${params.checkpoint_dir}'); object stores (s3://, gs://, az://) cannot hold checkpoints, as a killed task uploads nothing: see docs/nextflow.md#checkpoints")
    }
}

/*
 * -profile gpu runs SIGNATURES and MAP with --device cuda: only the CUDA image has CUDA (not the conda
 * environment, nor a task without a container).
 */
def checkGpuProfile(profile, engine) {
    if (profile.tokenize(',').contains('gpu') && !(engine in [ 'docker', 'podman', 'singularity', 'apptainer' ])) {
        error("spotmap: -profile gpu needs a container engine (docker, podman, singularity or apptainer) to run the CUDA image; got '${engine ?: 'none'}' (conda has no CUDA build of torch)")
    }
}

/*
 * The non-meta columns of the samplesheet schema, in the order samplesheetToList returns them after
 * the meta map: the order of the schema's properties in the file (JSON maps do not keep it).
 */
def samplesheetColumns(schema_path) {
    def text   = file(schema_path).text
    def schema = new groovy.json.JsonSlurper().parseText(text)
    def names  = schema['items']['properties'].findAll { _name, spec -> !spec.containsKey('meta') }.collect { name, _spec -> name }
    return names.sort { name ->
        def key = (text =~ "\"${name}\"\\s*:\\s*\\{")
        key.find() ? key.start() : Integer.MAX_VALUE
    }
}

/*
 * A samplesheet row from samplesheetToList ([ meta, <one value per non-meta column> ], empty cells as [])
 * as the QC input [ meta, input, coordinates or [] ]. The input is the one of spaceranger_dir, h5ad or
 * counts that is set (the schema makes sure there is exactly one). With any_batch (some row has a
 * batch), a row without one gets its sample id as meta.batch: its own batch.
 */
def sampleFromRow(row, columns, any_batch = false) {
    def meta   = any_batch && !row[0].batch ? row[0] + [ batch: row[0].id ] : row[0]
    def values = [ columns, row[1..-1] ].transpose().collectEntries { name, value -> [ name, value ] }
    def inputs = [ 'spaceranger_dir', 'h5ad', 'counts' ].collect { name -> values[name] }.findAll { value -> value }
    if (inputs.size() != 1) {
        error("spotmap: samplesheet row '${meta.id}': give exactly one of spaceranger_dir, h5ad or counts")
    }
    return [ meta, inputs[0], values['coordinates'] ?: [] ]
}
