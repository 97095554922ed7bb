/*
 * SPOTMAP: QC per sample -> SIGNATURES once per reference -> MAP once per restart seed
 * (all samples jointly, or each on its own with --mapping_mode per_sample, and by default when any
 * sample is Visium HD) -> AGGREGATE -> COLOCATION (per consensus) -> MULTIQC.
 * Every step is one `spotmap` CLI call (modules/local/<step>/main.nf).
 */

include { QC         } from '../modules/local/qc/main'
include { QC_BATCH   } from '../modules/local/qc_batch/main'
include { SIGNATURES } from '../modules/local/signatures/main'
include { MAP        } from '../modules/local/map/main'
include { AGGREGATE  } from '../modules/local/aggregate/main'
include { COLOCATION } from '../modules/local/colocation/main'
include { MULTIQC    } from '../modules/local/multiqc/main'

workflow SPOTMAP {

    take:
    ch_samples      // channel: [ val(meta), path(spaceranger_dir, h5ad or counts), path(coordinates) or [] ]; meta.bin_size for Visium HD, meta.batch
    ch_reference    // channel: [ val(meta), path(reference), path(cell_types) or [] ]; empty with --signatures
    ch_signatures   // channel: path(signatures.csv); empty unless --signatures is given
    seeds           // list of restart seeds, one MAP task per seed (and per sample in per_sample mode)
    ch_versions     // channel: versions.yml files of steps run before this workflow
    skip_multiqc    // boolean: do not build the MultiQC report (--skip_multiqc, read by main.nf as a boolean)
    skip_colocation // boolean: do not run COLOCATION (--skip_colocation, read by main.nf as a boolean)

    main:
    ch_mqc = channel.empty()

    //
    // QC, one task per sample, in parallel
    //
    QC(ch_samples)
    ch_versions = ch_versions.mix(QC.out.versions)
    ch_mqc      = ch_mqc.mix(QC.out.mqc.flatten())

    ch_qc_files = QC.out.h5ad.map { _meta, h5ad -> h5ad }.collect(sort: true)
    QC_BATCH(ch_qc_files.filter { files -> files.size() > 1 }.map { files -> [ [ id: 'all_samples' ], files ] })
    ch_versions = ch_versions.mix(QC_BATCH.out.versions)
    ch_mqc      = ch_mqc.mix(QC_BATCH.out.mqc.flatten())

    //
    // Reference signatures, once (skipped with --signatures)
    //
    if (params.signatures) {
        ch_sig = ch_signatures.first()
    } else {
        SIGNATURES(ch_reference)
        ch_versions = ch_versions.mix(SIGNATURES.out.versions)
        ch_mqc      = ch_mqc.mix(SIGNATURES.out.mqc.flatten())
        ch_sig      = SIGNATURES.out.signatures.map { _meta, csv -> csv }.first()
    }

    //
    // Mapping, one task per restart seed: all samples in one model (joint, as cell2location does)
    // or each sample on its own (per_sample); auto: per_sample when any sample is Visium HD
    // (100,000s of bins each), joint otherwise
    //
    // joint: samples sharing a samplesheet batch label share its batch-level parameters (--batch-key batch)
    ch_batch_key  = QC.out.h5ad.map { meta, _h5ad -> meta.batch ? 'batch' : '' }.collect().map { keys -> keys.any() ? 'batch' : '' }
    ch_per_sample = QC.out.h5ad.map { meta, h5ad -> [ meta, [ h5ad ] ] }
    ch_joint      = ch_qc_files
        .map { files -> [ [ id: 'joint', joint: true ], files ] }
        .combine(ch_batch_key)
        .map { meta, files, key -> [ key ? meta + [ batch_key: key ] : meta, files ] }
    if (params.mapping_mode == 'per_sample') {
        ch_map_in = ch_per_sample
    } else if (params.mapping_mode == 'joint') {
        ch_map_in = ch_joint
    } else {
        ch_any_hd = ch_samples
            .map { meta, input, _coordinates -> isVisiumHd(meta, input) }
            .collect()
            .map { flags -> flags.any() }
        ch_map_in = ch_per_sample
            .combine(ch_any_hd)
            .filter { _meta, _files, any_hd -> any_hd }
            .map { meta, files, _any_hd -> [ meta, files ] }
            .mix(
                ch_joint
                    .combine(ch_any_hd)
                    .filter { _meta, _files, any_hd -> !any_hd }
                    .map { meta, files, _any_hd -> [ meta, files ] }
            )
    }
    MAP(ch_map_in, ch_sig, seeds)
    ch_versions = ch_versions.mix(MAP.out.versions)
    ch_mqc      = ch_mqc.mix(MAP.out.mqc.flatten())

    //
    // Consensus over restarts and their stability
    //
    AGGREGATE(MAP.out.restart.groupTuple(size: seeds.size(), sort: true))
    ch_versions = ch_versions.mix(AGGREGATE.out.versions)  // its *_mqc files reach the report with consensus/

    //
    // Co-located cell types and tissue regions of each consensus
    //
    ch_colocation = channel.empty()
    if (!skip_colocation) {
        COLOCATION(AGGREGATE.out.consensus)
        ch_versions   = ch_versions.mix(COLOCATION.out.versions)
        ch_colocation = COLOCATION.out.colocation  // its *_mqc files reach the report with colocation/
    }

    //
    // Software versions (pipeline_info/) and the MultiQC report
    //
    ch_versions_yml = softwareVersionsToYAML(ch_versions)
        .collectFile(storeDir: "${params.outdir}/pipeline_info", name: 'spotmap_software_mqc_versions.yml', sort: true, newLine: true)

    // params.json as `spotmap run` writes it ({params, defaults}); the report's workflow summary reads it
    ch_params_json = channel.value(paramsJson())
        .collectFile(storeDir: "${params.outdir}/pipeline_info", name: 'params.json')

    ch_report = channel.empty()
    if (!skip_multiqc) {
        // spotmap report collects *_mqc.* files, params.json, *_mqc_versions.yml, the consensus folder(s)
        // (for the cell abundance maps) and the co-location folder(s) from its staged inputs; folders, so
        // that per-sample mappings keep their sections apart
        MULTIQC(
            ch_mqc
                .mix(AGGREGATE.out.consensus.map { _meta, dir -> dir })
                .mix(ch_colocation.map { _meta, dir -> dir })
                .mix(ch_versions_yml, ch_params_json)
                .collect()
        )
        ch_report = MULTIQC.out.report
    }

    emit:
    consensus  = AGGREGATE.out.consensus  // channel: [ val(meta), path(consensus/) ]
    colocation = ch_colocation            // channel: [ val(meta), path(colocation/) ]; empty with --skip_colocation
    restarts   = MAP.out.restart          // channel: [ val(meta), path(restart_<seed>/) ]
    report     = ch_report                // channel: path(multiqc_report.html)
    versions   = ch_versions_yml          // channel: path(spotmap_software_mqc_versions.yml)
}

/*
 * A Visium HD sample (mapped on its own with --mapping_mode auto): a bin_size in its samplesheet row, or
 * a Space Ranger folder of binned output (outs/ or its parent holding binned_outputs/, or one of its
 * square_<size>um folders).
 */
def isVisiumHd(meta, input) {
    if (meta.bin_size) {
        return true
    }
    def path = input.toString().replaceAll('/+$', '')
    if (path ==~ /.*\/square_\d+um$/ || path.contains('/binned_outputs/') || path.endsWith('/binned_outputs')) {
        return true
    }
    def dir = input instanceof java.nio.file.Path ? input : file(path)
    return java.nio.file.Files.isDirectory(dir) &&
        (java.nio.file.Files.isDirectory(dir.resolve('binned_outputs')) || java.nio.file.Files.isDirectory(dir.resolve('outs/binned_outputs')))
}

/*
 * Software versions: deduplicate the versions.yml of every task, strip the process path to its
 * last name (as nf-core does) and add the pipeline and Nextflow versions.
 */
def processVersionsFromYAML(yaml_file) {
    def yaml = new org.yaml.snakeyaml.Yaml()
    def versions = yaml.load(yaml_file.text).collectEntries { k, v -> [ k.tokenize(':')[-1], v ] }
    return yaml.dumpAsMap(versions).trim()
}

def workflowVersionToYAML() {
    // the pipeline under its own name ('spotmap' of manifest.name 'spotmap/spotmap'), as `spotmap run` writes it
    return """
    Workflow:
        ${workflow.manifest.name.tokenize('/')[-1]}: ${workflow.manifest.version}
        Nextflow: ${workflow.nextflow.version}
    """.stripIndent().trim()
}

def softwareVersionsToYAML(ch_versions) {
    return ch_versions
        .unique()
        .map { yml -> processVersionsFromYAML(yml) }
        .unique()
        .mix(channel.of(workflowVersionToYAML()))
}

/*
 * The parameters of this run and their defaults (from nextflow_schema.json) as JSON, in the format of
 * `spotmap run`'s pipeline_info/params.json.
 */
def paramsJson() {
    def schema   = new groovy.json.JsonSlurper().parse(file("${projectDir}/nextflow_schema.json").toFile())
    def defaults = [:]
    schema['$defs'].each { _group, spec ->
        spec['properties'].each { name, prop -> defaults[name] = prop.containsKey('default') ? prop['default'] : null }
    }
    def types    = [:]
    schema['$defs'].each { _group, spec ->
        spec['properties'].each { name, prop -> types[name] = prop['type'] }
    }
    def values = defaults.keySet().collectEntries { name -> [ name, schemaTyped(params[name], types[name]) ] }
    return groovy.json.JsonOutput.prettyPrint(groovy.json.JsonOutput.toJson([ params: values, defaults: defaults ]))
}

/*
 * A parameter's value as its schema type: command-line values reach the strict parser's pipeline as text
 * ('5', 'false'); paths as their text.
 */
def schemaTyped(value, type) {
    if (value instanceof java.nio.file.Path) {
        return value.toString()
    }
    if (!(value instanceof String)) {
        return value
    }
    if (type == 'boolean' && value in [ 'true', 'false' ]) {
        return value.toBoolean()
    }
    if (type == 'integer' && value.isLong()) {
        return value.toLong()
    }
    if (type == 'number' && value.isBigDecimal()) {
        return value.toBigDecimal()
    }
    return value
}
