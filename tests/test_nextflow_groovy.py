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
assert w == [Workflow: [spotmap: '0.1.0', Nextflow: '24.04.0']]

def doc = new groovy.json.JsonSlurper().parseText(paramsJson())
assert doc.params.keySet() == doc.defaults.keySet()
assert doc.params.restarts == 2 && doc.defaults.restarts == 3
assert doc.params.reference == '/data/ref.h5ad' && doc.defaults.reference == null
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
    script = "\n".join([
        "import java.nio.file.Path", "import java.nio.file.Paths",
        "def file(p) { Paths.get(p.toString()) }",
        "def error(String msg) { throw new IllegalStateException(msg) }",
        f"projectDir = '{REPO}'",
        "params = [input: 'sheet.csv', reference: Paths.get('/data/ref.h5ad'), restarts: 2, outdir: 'r', seed: 0]",
        "workflow = [manifest: [name: 'spotmap', version: '0.1.0'], nextflow: [version: '24.04.0']]",
        f"schemaOrder = [{order}]",
        _functions(), checks])
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
