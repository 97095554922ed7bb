#!/usr/bin/env nextflow
/*
 * spotmap: map cell types onto spatial transcriptomics with the cell2location model.
 *
 *   nextflow run . -profile test,docker --outdir results
 *   nextflow run . -profile docker --input samplesheet.csv --reference reference.h5ad --outdir results
 *
 * Docs: docs/nextflow.md. Parameters: nextflow_schema.json (nextflow run . --help).
 */

nextflow.enable.dsl = 2

include { validateParameters; paramsSummaryLog; samplesheetToList } from 'plugin/nf-schema'
include { SIMULATE } from './modules/local/simulate/main'
include { SPOTMAP  } from './workflows/spotmap'

workflow {

    if (params.validate_params) {
        validateParameters()
    }
    log.info paramsSummaryLog(workflow)
    checkInputParams()

    // Restart seeds: params.seed, params.seed + 1, ... (one MAP task each)
    def seeds = (0..<(params.restarts as int)).collect { i -> (params.seed as int) + i }

    ch_versions = Channel.empty()
    if (params.simulate) {
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
        ch_samples = Channel
            .fromList(rows)
            .map { row -> sampleFromRow(row, columns, any_batch) }
        ch_reference = params.reference ? Channel.fromPath(params.reference, checkIfExists: true) : Channel.empty()
    }
    ch_reference = ch_reference.map { ref ->
        [
            [ id: 'reference', labels_key: params.labels_key, batch_key: params.batch_key ],
            ref,
            params.cell_types ? file(params.cell_types, checkIfExists: true) : []
        ]
    }
    ch_signatures = params.signatures ? Channel.fromPath(params.signatures, checkIfExists: true) : Channel.empty()

    SPOTMAP(ch_samples, ch_reference, ch_signatures, seeds, ch_versions)
}

workflow.onComplete {
    if (workflow.success) {
        log.info "spotmap: done, results in ${params.outdir}"
    } else {
        log.error "spotmap: failed; see ${params.outdir}/pipeline_info and .nextflow.log, then rerun with -resume"
    }
}

/*
 * One clear line for inputs that nf-schema cannot check on its own.
 */
def checkInputParams() {
    if (!params.simulate && !params.input) {
        error("spotmap: --input <samplesheet.csv> is required (or use -profile test for simulated data)")
    }
    if (!params.simulate && !params.reference && !params.signatures) {
        error("spotmap: give --reference <reference.h5ad> (signatures are estimated) or --signatures <signatures.csv>")
    }
    if (!(params.mapping_mode in [ 'auto', 'joint', 'per_sample' ])) {
        error("spotmap: --mapping_mode must be 'auto', 'joint' or 'per_sample' (got '${params.mapping_mode}')")
    }
    if ((params.restarts as int) < 1) {
        error("spotmap: --restarts must be at least 1 (got ${params.restarts})")
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
