"""The Groovy helper functions of main.nf and workflows/spotmap.nf, run with a plain ``groovy``.

Nextflow cannot run here, but its helper functions are plain Groovy: this test cuts every top-level
``def name(...) { ... }`` out of the two files, runs them with stand-ins for Nextflow's ``file()``,
``error()``, ``params``, ``workflow`` and ``projectDir``, and checks what they return: the
samplesheet columns in schema order (samplesheetToList's order), the QC input per samplesheet row,
the merged versions YAML and params.json; and ``isVisiumHd`` and the samplesheet's batch default on the
tables of cases (``tests/data/``) that the Python rules are tested against too.

Needs a ``groovy`` binary and SnakeYAML (Debian: ``apt-get install groovy libyaml-snake-java``);
without them the test is skipped and says so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nextflow_helpers as nfh  # noqa: E402
import nextflow_strict as strict  # noqa: E402

REPO = nfh.REPO
SNAKEYAML = [p for p in ("/usr/share/java/snakeyaml.jar",) if Path(p).exists()]

CHECKS = r'''
def cols = samplesheetColumns("${projectDir}/assets/schema_input.json")
assert cols.containsAll(['spaceranger_dir', 'h5ad', 'counts', 'coordinates'])
assert !cols.contains('sample') && !cols.contains('batch')
def order = schemaOrder
assert cols == order.findAll { it in cols } : "columns ${cols} not in schema order ${order}"

def meta = [id: 's1', batch: 'b1']
def row = { Map v -> [meta] + cols.collect { c -> v.containsKey(c) ? Paths.get(v[c]) : [] } }
assert sampleFromRow(row(spaceranger_dir: '/x/outs'), cols) == [meta, Paths.get('/x/outs'), []]
assert sampleFromRow(row(h5ad: '/x/a.h5ad'), cols) == [meta, Paths.get('/x/a.h5ad'), []]
assert sampleFromRow(row(counts: '/x/c.csv', coordinates: '/x/xy.csv'), cols) ==
    [meta, Paths.get('/x/c.csv'), Paths.get('/x/xy.csv')]
// a batch in some row: a row without one gets its sample id as its batch; one with a batch keeps it
def bare = { Map v -> [[id: 's2']] + cols.collect { c -> v.containsKey(c) ? Paths.get(v[c]) : [] } }
assert sampleFromRow(bare(h5ad: '/x/a.h5ad'), cols, true)[0] == [id: 's2', batch: 's2']
assert sampleFromRow(bare(h5ad: '/x/a.h5ad'), cols)[0] == [id: 's2']
assert sampleFromRow(row(h5ad: '/x/a.h5ad'), cols, true)[0] == meta
for (bad in [row(spaceranger_dir: '/x/outs', h5ad: '/x/a.h5ad'), row([:])]) {
    try { sampleFromRow(bad, cols); assert false : "accepted ${bad}" }
    catch (IllegalStateException e) { assert e.message.startsWith("spotmap: samplesheet row 's1'") }
}

// Visium HD samples (isVisiumHd): tests/data/hd_detection_cases.json, test_groovy_rules_follow_the_shared_tables

def v = File.createTempFile('versions', '.yml')
v.text = '"SPOTMAP:QC":\n    spotmap: "0.1.0"\n    torch: "2.13.0+cpu"\n'
def y = new org.yaml.snakeyaml.Yaml().load(processVersionsFromYAML(v.toPath()))
assert y == [QC: [spotmap: '0.1.0', torch: '2.13.0+cpu']]
def w = new org.yaml.snakeyaml.Yaml().load(workflowVersionToYAML())
assert w == [Workflow: [spotmap: '0.1.0', Nextflow: '26.04.0']]  // the name of `spotmap run`'s versions

def doc = new groovy.json.JsonSlurper().parseText(paramsJson())
assert doc.params.keySet() == doc.defaults.keySet()
assert doc.params.restarts == 2 && doc.defaults.restarts == 3
assert doc.params.reference == '/data/ref.h5ad' && doc.defaults.reference == null
// command-line text (the strict parser passes '5', 'false') is written as the schema's type
assert doc.params.seed == 4 && doc.params.skip_multiqc == false && doc.params.detection_alpha == 200

// booleans as Nextflow passes them: values from configs, text from the command line under the strict parser
assert isTrue(true) && isTrue('true') && !isTrue(false) && !isTrue('false') && !isTrue(null) && !isTrue('')
assert helpTopic(null) == null && helpTopic(false) == null && helpTopic('false') == null
assert helpTopic(true) == '' && helpTopic('true') == '' && helpTopic('outdir') == 'outdir'
assert schemaTyped('5', 'integer') == 5 && schemaTyped('false', 'boolean') == false && schemaTyped('x', 'boolean') == 'x'
assert schemaTyped('0.5', 'number') == 0.5 && schemaTyped(3, 'integer') == 3 && schemaTyped(null, 'string') == null

// -profile gpu needs a container engine; another profile's name containing 'gpu' is not the gpu profile
checkGpuProfile('gpu,docker', 'docker'); checkGpuProfile('singularity,gpu', 'singularity'); checkGpuProfile('nogpu', null)
try { checkGpuProfile('test,gpu', null); assert false : 'gpu without an engine accepted' }
catch (IllegalStateException e) { assert e.message.startsWith('spotmap: -profile gpu needs a container engine') }

// --checkpoint_dir: an absolute POSIX path; an object store fails with one clear line
params.input = 'sheet.csv'; params.mapping_mode = 'auto'
params.checkpoint_dir = '/shared/ckpt'; checkInputParams()
for (bad in [ 's3://bucket/ckpt', 'gs://b/c', 'relative/dir', '/with space' ]) {
    params.checkpoint_dir = bad
    try { checkInputParams(); assert false : "accepted checkpoint_dir ${bad}" }
    catch (IllegalStateException e) { assert e.message.startsWith('spotmap: --checkpoint_dir must be an absolute path') }
}
params.checkpoint_dir = null
println "GROOVY CHECKS OK"
'''


def _functions() -> str:
    out = []
    for f in [REPO / "main.nf", REPO / "workflows" / "spotmap.nf"]:
        text = f.read_text()
        for m in re.finditer(r"^def\s+\w+\s*\([^)]*\)\s*\{", text, re.M):
            out.append(text[m.start():nfh._matching_brace_code(text, m.end() - 1) + 1])
    return "\n\n".join(out)


def _groovy_missing() -> bool:
    """True when the test cannot run; with SPOTMAP_REQUIRE_GROOVY=1 (set by .ci/run) that is a failure."""
    missing = not (shutil.which("groovy") and SNAKEYAML and _java_home())
    if missing and os.environ.get("SPOTMAP_REQUIRE_GROOVY") == "1":
        pytest.fail("SPOTMAP_REQUIRE_GROOVY=1 but groovy/java/SnakeYAML are missing (apt-get install groovy "
                    "libyaml-snake-java)")
    return missing


def _java_home() -> str | None:
    if os.environ.get("JAVA_HOME") and Path(os.environ["JAVA_HOME"], "bin", "java").exists():
        return os.environ["JAVA_HOME"]
    java = shutil.which("java")
    return str(Path(java).resolve().parents[1]) if java else None


def _run_groovy(tmp_path: Path, checks: str) -> subprocess.CompletedProcess:
    """The helper functions of main.nf and workflows/spotmap.nf with Nextflow's stand-ins, then ``checks``."""
    props = json.loads((REPO / "assets" / "schema_input.json").read_text())["items"]["properties"]
    order = ", ".join(f"'{k}'" for k in props)  # Python keeps the file's order
    funcs = _functions()
    for name in ["samplesheetColumns", "sampleFromRow", "processVersionsFromYAML", "workflowVersionToYAML",
                 "paramsJson", "checkInputParams", "isVisiumHd", "isTrue", "helpTopic", "schemaTyped", "checkGpuProfile"]:
        assert f"def {name}(" in funcs, name
    script = "\n".join([
        "import java.nio.file.Path", "import java.nio.file.Paths",
        "def file(p) { Paths.get(p.toString()) }",
        "def error(String msg) { throw new IllegalStateException(msg) }",
        f"projectDir = '{REPO}'",
        "params = [input: 'sheet.csv', reference: Paths.get('/data/ref.h5ad'), restarts: 2, outdir: 'r', seed: '4',"
        " skip_multiqc: 'false', detection_alpha: '200', signatures: null]",
        "workflow = [manifest: [name: 'spotmap/spotmap', version: '0.1.0'], nextflow: [version: '26.04.0']]",
        f"schemaOrder = [{order}]",
        funcs, checks])
    (tmp_path / "check.groovy").write_text(script)
    env = dict(os.environ, JAVA_HOME=_java_home())
    return subprocess.run(["groovy", "-cp", SNAKEYAML[0], str(tmp_path / "check.groovy")], capture_output=True,
                          text=True, env=env, timeout=300)


#: the cases of tests/data/hd_detection_cases.json, through isVisiumHd (workflows/spotmap.nf)
HD_CHECKS = r'''
def table = new groovy.json.JsonSlurper().parse(new File(casesFile))
def tmp = java.nio.file.Files.createTempDirectory('hd')
def n = 0
for (c in table.cases) {
    (c.dirs ?: []).each { d -> java.nio.file.Files.createDirectories(tmp.resolve(d)) }
    def meta = c.bin_size != null ? [id: 's1', bin_size: c.bin_size] : [id: 's1']
    def input = Paths.get(c.path.replace('{tmp}', tmp.toString()))
    assert isVisiumHd(meta, input) == c.expected : "isVisiumHd: ${c.why}: ${c.path} bin_size ${c.bin_size}"
    n++
}
println "HD CASES OK ${n}"
'''

#: the cases of tests/data/batch_default_cases.json, through sampleFromRow (main.nf) as main.nf calls it
BATCH_CHECKS = r'''
def table = new groovy.json.JsonSlurper().parse(new File(casesFile))
def cols = samplesheetColumns("${projectDir}/assets/schema_input.json")
def n = 0
for (c in table.cases) {
    def rows = c.rows.collect { r ->
        def meta = [id: r.sample] + (r.batch ? [batch: r.batch] : [:])
        [meta] + cols.collect { col -> col == 'h5ad' ? Paths.get('/x/a.h5ad') : [] }
    }
    def any_batch = rows.any { row -> row[0].batch }
    def got = rows.collect { row -> sampleFromRow(row, cols, any_batch)[0].batch }
    assert got == c.expected : "batches ${got} != ${c.expected} for ${c.rows}"
    n++
}
println "BATCH CASES OK ${n}"
'''


@pytest.mark.skipif("_groovy_missing()",
                    reason="needs groovy, java and SnakeYAML (apt-get install groovy libyaml-snake-java)")
@pytest.mark.parametrize("table,checks,done", [("hd_detection_cases.json", HD_CHECKS, "HD CASES OK"),
                                               ("batch_default_cases.json", BATCH_CHECKS, "BATCH CASES OK")])
def test_groovy_rules_follow_the_shared_tables(tmp_path, table, checks, done):
    """isVisiumHd and the samplesheet's batch default, on the tables the Python rules are tested against
    (tests/test_rules.py): one table of cases, two implementations."""
    cases = REPO / "tests" / "data" / table
    n = len(json.loads(cases.read_text())["cases"])
    r = _run_groovy(tmp_path, f"casesFile = '{cases}'\n" + checks)
    assert r.returncode == 0 and f"{done} {n}" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.mark.skipif("_groovy_missing()",
                    reason="needs groovy, java and SnakeYAML (apt-get install groovy libyaml-snake-java)")
def test_groovy_helpers(tmp_path):
    funcs = _functions()
    for name in ["samplesheetColumns", "sampleFromRow", "processVersionsFromYAML", "workflowVersionToYAML",
                 "paramsJson", "checkInputParams", "isVisiumHd"]:
        assert f"def {name}(" in funcs, name
    r = _run_groovy(tmp_path, CHECKS)
    assert r.returncode == 0 and "GROOVY CHECKS OK" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


PARSE = r'''
import org.codehaus.groovy.control.CompilerConfiguration
def failed = []
args.each { f ->
    try { new GroovyShell(new CompilerConfiguration()).parse(new File(f)) }
    catch (Throwable e) { failed << "${f}: ${e.message.readLines().take(3).join(' | ')}" }
}
println(failed ? "FAILED\n" + failed.join('\n') : "ALL PARSED")
'''


@pytest.mark.skipif("_groovy_missing()",
                    reason="needs groovy, java and SnakeYAML (apt-get install groovy libyaml-snake-java)")
def test_nf_and_config_files_compile_as_groovy(tmp_path):
    """Nextflow scripts and configs are Groovy syntax: Groovy's own compiler must accept each file
    (a second parser beside reftrace), and must reject a broken one."""
    files = nfh.nf_files() + [REPO / "nextflow.config", *sorted((REPO / "conf").glob("*.config"))]
    (tmp_path / "broken.nf").write_text("workflow {\n    def x = [1, 2\n}\n")
    (tmp_path / "parse.groovy").write_text(PARSE)
    env = dict(os.environ, JAVA_HOME=_java_home())
    r = subprocess.run(["groovy", "-cp", SNAKEYAML[0], str(tmp_path / "parse.groovy"), *map(str, files),
                        str(tmp_path / "broken.nf")], capture_output=True, text=True, env=env, timeout=300)
    out = r.stdout
    assert "FAILED" in out and out.count("\n") >= 2, out + r.stderr
    failures = [ln for ln in out.splitlines()[1:] if ln.strip()]
    assert len(failures) == 1 and failures[0].startswith(str(tmp_path / "broken.nf")), out


CONFIG_CHECKS = r'''
import java.nio.file.FileSystems
import java.nio.file.Paths

// the names a config closure sees (params, task, workflow, env()), as an Expando so that env('X') is a call
def bind = { Closure c, Map names -> def k = c.rehydrate(new Expando(names), this, this); k.resolveStrategy = Closure.DELEGATE_FIRST; k }
def run = { Closure c, Map names -> bind(c, names)() }

// conf/base.config's containerOptions, per engine: the GPU flag for ext.use_gpu tasks, bind mounts of
// ext.checkpoint_dir and ext.source_dir (Nextflow's accelerator docs: --gpus all for Docker, --nv for Singularity)
def opts = { engine, ext -> run(containerOptions, [workflow: [containerEngine: engine], task: [ext: ext]]) }
assert opts('docker', [use_gpu: true]) == '--gpus all'
assert opts('podman', [use_gpu: true]) == '--gpus all'
assert opts('singularity', [use_gpu: true]) == '--nv'
assert opts('apptainer', [use_gpu: true]) == '--nv'
assert opts('docker', [:]) == '' && opts('docker', [use_gpu: false]) == '' && opts(null, [use_gpu: true]) == ''
assert opts('docker', [checkpoint_dir: '/ck']) == '-v /ck:/ck'
assert opts('singularity', [checkpoint_dir: '/ck']) == '-B /ck'
assert opts('docker', [use_gpu: true, checkpoint_dir: '/ck', source_dir: '/p/src']) == '--gpus all -v /ck:/ck -v /p/src:/p/src'
assert opts('apptainer', [use_gpu: true, checkpoint_dir: '/ck']) == '--nv -B /ck'
assert opts(null, [checkpoint_dir: '/ck']) == ''
// MAP's ext.checkpoint_dir is --checkpoint_dir
assert run(mapCheckpoint, [params: [checkpoint_dir: '/ck']]) == '/ck' && run(mapCheckpoint, [params: [:]]) == null

// nf-core/configs: included unless offline (NXF_OFFLINE with a web address) or --custom_config_base false
def include = { Map p, Map environment -> run(customInclude, [params: p, env: { String n -> environment[n] }]) }
def base = run(customBase, [params: [custom_config_version: 'master']])
assert base == 'https://raw.githubusercontent.com/nf-core/configs/master'
assert include([custom_config_base: base], [:]) == base + '/nfcore_custom.config'
assert include([custom_config_base: base], [NXF_OFFLINE: 'true']) == '/dev/null'
assert include([custom_config_base: '/opt/configs'], [NXF_OFFLINE: 'true']) == '/opt/configs/nfcore_custom.config'
for (off in [ false, 'false', null, '' ]) { assert include([custom_config_base: off], [:]) == '/dev/null' }
// command-line text for booleans in the config (validation.monochromeLogs) and --email
assert run(monochrome, [params: [monochrome_logs: 'false']]) == false && run(monochrome, [params: [monochrome_logs: 'true']]) == true
assert run(monochrome, [params: [monochrome_logs: false]]) == false
assert run(mailOn, [params: [email: null]]) == false && run(mailOn, [params: [email: 'a@b.org']]) == true

// AGGREGATE publishes each file of consensus/ (joint: mapping/consensus/, per sample: mapping/<id>/consensus/)
def publish = run(aggregatePublish, [params: [outdir: '/out', publish_dir_mode: 'copy']])
def published = { Map meta -> aggregateOutputs.collect { name ->
    def as_name = bind(publish.saveAs, [params: [outdir: '/out'], meta: meta])(name)
    as_name == null ? null : Paths.get(run(publish.path, [params: [outdir: '/out'], meta: meta]).toString(), as_name)
}.findAll { p -> p != null } }
def joint = published([id: 'joint', joint: true])
def sample = published([id: 's1'])
assert Paths.get('/out/mapping/consensus/stability.tsv') in joint && !(Paths.get('/out/mapping/consensus') in joint)
assert Paths.get('/out/mapping/s1/consensus/summary.txt') in sample && joint.size() == aggregateOutputs.size() - 2

// COLOCATION publishes each file of colocation/ beside the consensus
def cpublish = run(colocationPublish, [params: [outdir: '/out', publish_dir_mode: 'copy']])
def cpublished = { Map meta -> colocationOutputs.collect { name ->
    def as_name = bind(cpublish.saveAs, [params: [outdir: '/out'], meta: meta])(name)
    as_name == null ? null : Paths.get(run(cpublish.path, [params: [outdir: '/out'], meta: meta]).toString(), as_name)
}.findAll { p -> p != null } }
def cjoint = cpublished([id: 'joint', joint: true])
def csample = cpublished([id: 's1'])
assert Paths.get('/out/mapping/colocation/regions.csv') in cjoint && !(Paths.get('/out/mapping/colocation') in cjoint)
assert Paths.get('/out/mapping/s1/colocation/region_composition.csv') in csample
assert cjoint.size() == colocationOutputs.size() - 2  // not the folder itself, nor versions.yml

// COLOCATION's ext.args: a fixed number of factors wins over the range; unset regions leave the choice to the step
def cargs = { Map p -> run(colocationArgs, [params: [colocation_n_factors_range: '5-30', colocation_quantity: 'q05', seed: 0] + p]).tokenize().join(' ') }
assert cargs([:]) == '--n-factors-range 5-30 --quantity q05 --seed 0'
assert cargs([colocation_n_factors: 8, colocation_n_regions: 4, seed: 3]) == '--n-factors 8 --n-regions 4 --quantity q05 --seed 3'

// tower.yml, as Nextflow's nf-tower plugin (TowerReports) matches a published file: glob "**/<key>", first key wins
def keys = towerKeys
def matchers = keys.collect { k -> FileSystems.getDefault().getPathMatcher('glob:' + (k.startsWith('**/') ? '' : '**/') + k) }
def report = { p -> def i = matchers.findIndexOf { m -> m.matches(p) }; i < 0 ? null : keys[i] }
def all = joint + sample + cjoint + csample + [ Paths.get('/out/multiqc/multiqc_report.html') ]
keys.each { k -> assert all.any { p -> report(p) == k } : "tower.yml key ${k} matches no published file" }
for (layout in [ joint, sample ]) {
    for (f in [ 'stability.tsv', 'restarts.tsv', 'summary.txt', 'W_cell_density_q05.csv' ]) {
        def p = layout.find { q -> q.fileName.toString() == f }
        assert p != null && report(p) == "consensus/${f}" : "${f} is not reported"
    }
    assert report(layout.find { q -> q.fileName.toString() == 'sp.h5ad' }) == null
}
for (layout in [ cjoint, csample ]) {
    for (f in [ 'region_composition.csv', 'colocation_factors.csv' ]) {
        def p = layout.find { q -> q.fileName.toString() == f }
        assert p != null && report(p) == "colocation/${f}" : "${f} is not reported"
    }
    assert report(layout.find { q -> q.fileName.toString() == 'factor_abundance.csv' }) == null
}
assert report(Paths.get('/out/multiqc/multiqc_report.html')) == 'multiqc_report.html'
println "CONFIG CHECKS OK"
'''


def _value(rel: str, path: tuple[str, ...]) -> str:
    values = [v for p, v in strict.config_assignments((REPO / rel).read_text()) if p == path]
    assert len(values) == 1, f"{rel}: {path} set {len(values)} times"
    return values[0]


@pytest.mark.skipif("_groovy_missing()",
                    reason="needs groovy, java and SnakeYAML (apt-get install groovy libyaml-snake-java)")
def test_config_logic(tmp_path):
    """The config's own logic, cut out of the config files and run with Groovy: containerOptions per engine
    (GPU flag, bind mounts), the nf-core/configs include, command-line booleans in the config, AGGREGATE's and
    COLOCATION's publishDir, COLOCATION's ext.args, and tower.yml's keys matched against the published paths as Nextflow's nf-tower plugin does."""
    import yaml

    cfg = (REPO / "nextflow.config").read_text()
    include = re.search(r"^includeConfig (params\.custom_config_base .*)$", cfg, re.M).group(1)
    names = [o.pattern for o in nfh.parse_processes(REPO / "modules/local/aggregate/main.nf")[0].outputs]
    from spotmap.steps.aggregate import AGGREGATE_FILES

    outputs = sorted({n for n in names if "*" not in n} | {f"consensus/{f}" for f in AGGREGATE_FILES})
    from spotmap.steps.colocation import COLOCATION_FILES

    cnames = [o.pattern for o in nfh.parse_processes(REPO / "modules/local/colocation/main.nf")[0].outputs]
    coutputs = sorted({n for n in cnames if "*" not in n} | {f"colocation/{f}" for f in COLOCATION_FILES})
    keys = list(yaml.safe_load((REPO / "tower.yml").read_text())["reports"])
    script = "\n".join([
        f"containerOptions = {_value('conf/base.config', ('process', 'containerOptions'))}",
        f"mapCheckpoint = {_value('conf/modules.config', ('process', 'withName:MAP', 'ext', 'checkpoint_dir'))}",
        f"customInclude = {{ -> {include} }}",
        f"customBase = {{ -> {_value('nextflow.config', ('params', 'custom_config_base'))} }}",
        f"monochrome = {{ -> {_value('nextflow.config', ('validation', 'monochromeLogs'))} }}",
        f"mailOn = {{ -> {_value('nextflow.config', ('notification', 'enabled'))} }}",
        f"aggregatePublish = {{ -> {_value('conf/modules.config', ('process', 'withName:AGGREGATE', 'publishDir'))} }}",
        "aggregateOutputs = [" + ", ".join(f"'{n}'" for n in outputs) + "]",
        f"colocationPublish = {{ -> {_value('conf/modules.config', ('process', 'withName:COLOCATION', 'publishDir'))} }}",
        f"colocationArgs = {_value('conf/modules.config', ('process', 'withName:COLOCATION', 'ext', 'args'))}",
        "colocationOutputs = [" + ", ".join(f"'{n}'" for n in coutputs) + "]",
        "towerKeys = [" + ", ".join(f"'{k}'" for k in keys) + "]",
        CONFIG_CHECKS])
    (tmp_path / "config.groovy").write_text(script)
    env = dict(os.environ, JAVA_HOME=_java_home())
    r = subprocess.run(["groovy", str(tmp_path / "config.groovy")], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0 and "CONFIG CHECKS OK" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:] + script[-1500:]
