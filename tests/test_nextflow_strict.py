"""Every .nf and .config file of the pipeline follows Nextflow's strict syntax (tests/nextflow_strict.py:
the rules of the strict-syntax page of Nextflow's docs that can be checked statically), and each rule
fires on a small counter-example, so the next top-level statement or config `def` fails here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nextflow_helpers as nfh  # noqa: E402
import nextflow_strict as strict  # noqa: E402

REPO = nfh.REPO


def pipeline_files() -> list[Path]:
    configs = [REPO / "nextflow.config", *sorted((REPO / "conf").glob("*.config"))]
    return nfh.nf_files() + configs


def test_every_pipeline_file_is_checked():
    names = {str(p.relative_to(REPO)) for p in pipeline_files()}
    assert {"main.nf", "workflows/spotmap.nf", "nextflow.config", "conf/base.config", "conf/modules.config",
            "modules/local/map/main.nf"} <= names
    assert len(names) >= 14


@pytest.mark.parametrize("path", pipeline_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_file_follows_the_strict_syntax(path):
    findings = strict.check_file(path)
    assert not findings, f"{path.relative_to(REPO)}:\n" + "\n".join(map(str, findings))


# --------------------------------------------------------------------------------------------------
# Each rule on a counter-example (and what it must leave alone)
# --------------------------------------------------------------------------------------------------

PROCESS = 'process P {\n    input:\n    val x\n\n    script:\n    """\n    echo ${x} \\$HOME\n    """\n}\n'

SCRIPT_CASES = {
    "top-level-statement": PROCESS + "workflow { P(1) }\nworkflow.onComplete {\n    log.info 'done'\n}\n",
    "dsl-flag": "nextflow.enable.dsl = 2\nworkflow { }\n",
    "Channel": "workflow {\n    ch = Channel.of(1, 2)\n}\n",
    "import": "import groovy.json.JsonSlurper\nworkflow { }\n",
    "class": "class Helper {\n}\nworkflow { }\n",
    "loop-switch": "def f(xs) {\n    for (x in xs) {\n        println x\n    }\n}\nworkflow { }\n",
    "spread": "workflow {\n    channel.of([1, [2, 3]]).map { a, bs -> [a, *bs] }\n}\n",
    "increment": "def f(x) {\n    x++\n    return x\n}\nworkflow { }\n",
    "assignment-expression": "def f(x) {\n    return g(y = 1)\n}\nworkflow { }\n",
    "soft-cast": "def f(x) {\n    def m = (Map) x\n    return m\n}\nworkflow { }\n",
    "typed-declaration": "def f(x) {\n    String s = x\n    return s\n}\nworkflow { }\n",
    "multiple-declaration": "def f() {\n    def a = 1, b = 2\n    return a + b\n}\nworkflow { }\n",
    "implicit-it": "workflow {\n    channel.of(1).map { it * 2 }\n}\n",
    "implicit-env": 'workflow {\n    log.info "home: ${HOME}"\n}\n',
    "dollar-slashy": "def f() {\n    return $/a b/$\n}\nworkflow { }\n",
    "slashy": "def f(id) {\n    return 'x' ==~ /${id}\\.fq/\n}\nworkflow { }\n",
    "include-params": "include { P } from './p' addParams(a: 1)\nworkflow { P() }\n",
    "shell-section": "process P {\n    input:\n    val x\n\n    shell:\n    '''\n    echo !{x}\n    '''\n}\nworkflow { }\n",
    "script-label": 'process P {\n    input:\n    val x\n\n    """\n    echo ${x}\n    """\n}\nworkflow { }\n',
    "env-quotes": 'process P {\n    input:\n    env FOO\n\n    script:\n    """\n    echo \\$FOO\n    """\n}\nworkflow { }\n',
    "already-declared": "def f(xs) {\n    def n = 1\n    return xs.collect { n -> n + 1 }\n}\nworkflow { }\n",
    "undeclared-assignment": "def f(x) {\n    y = x + 1\n    return y\n}\nworkflow { }\n",
    "closure-assignment": "workflow {\n    channel.of(1).map { v ->\n        w = v + 1\n        w\n    }\n}\n",
}

CONFIG_CASES = {
    "config-variable": "def stamp = new java.util.Date().format('yyyy')\ntrace.file = \"t_${stamp}.txt\"\n",
    "config-if": "if (params.big) {\n    process.cpus = 8\n}\n",
    "config-try": "try {\n    process.cpus = 8\n} catch (e) {\n}\n",
    "config-function": "def host() {\n    return 'x'\n}\nprocess.cpus = 1\n",
    "config-include": "process {\n    includeConfig 'x.config'\n}\n",
    "config-reference": "google.location = 'us'\ngoogle.batch.subnetwork = \"regions/${google.location}/x\"\n",
    "config-handler": "workflow.onComplete = { println 'done' }\n",
    "config-statement": "process.cpus = 1\nprintln 'hello'\n",
    "implicit-it": "process.ext.args = { [1, 2].collect { it * 2 }.join(' ') }\n",
    "implicit-env": "params.base = System.getenv('BASE')\n",
    "import": "import java.util.Date\nprocess.cpus = 1\n",
}


@pytest.mark.parametrize("rule", sorted(SCRIPT_CASES))
def test_script_rule_fires(rule):
    rules = {f.rule for f in strict.check_script(SCRIPT_CASES[rule])}
    assert rule in rules, f"{rule} not reported; got {rules}"


@pytest.mark.parametrize("rule", sorted(CONFIG_CASES))
def test_config_rule_fires(rule):
    rules = {f.rule for f in strict.check_config(CONFIG_CASES[rule])}
    assert rule in rules, f"{rule} not reported; got {rules}"


def test_findings_name_the_line():
    findings = strict.check_script(SCRIPT_CASES["top-level-statement"])
    assert [f.line for f in findings if f.rule == "top-level-statement"] == [11]


ALLOWED_SCRIPT = '''#!/usr/bin/env nextflow
nextflow.preview.output = true
include { P } from './p'
params.greeting = 'hi'

workflow {
    main:
    def n = 2
    ch = channel.of(1, 2).map { v -> [v, v * n] }.collect { it -> it }
    files = [file('a'), file('b')]
    names = files*.name
    counts = [a: 1].collectEntries { k, v -> [(k): v + 1] }
    ok = 'x.fq' ==~ /.*\\.fq/
    workflow.onComplete = {
        log.info "done: ${workflow.success} ${params.greeting}"
    }
    P(ch)
}

def withDefault(x, y = false) {
    def (a, b) = [x, y]
    return a ?: b
}

process P {
    input:
    tuple val(meta), path(reads, stageAs: 'in/*')
    env 'FOO'

    script:
    def args = task.ext.args ?: ''
    """
    for f in in/*; do echo "\\$f" \\${FOO}; done
    tool ${args} --threads ${task.cpus}
    """
}
'''

ALLOWED_CONFIG = '''params {
    outdir = null
    stamp  = new java.util.Date().format('yyyy-MM-dd')
    base   = "https://example.org/${params.outdir}"
}
process {
    cpus   = { 2 * task.attempt }
    memory = { 6.GB * task.attempt }
    resourceLimits = [ cpus: 4, memory: 8.GB, time: 1.h ]
    containerOptions = {
        def engine = workflow.containerEngine
        [ engine == 'docker' ? '--gpus all' : '' ].findAll { opt -> opt }.join(' ')
    }
    withLabel: 'big' {
        memory = 30.GB
    }
}
profiles {
    test {
        includeConfig 'conf/test.config'
        process.ext.dir = "${projectDir}/src"
    }
}
includeConfig params.base && !env('NXF_OFFLINE') ? "${params.base}/custom.config" : '/dev/null'
plugins {
    id 'nf-schema@2.8.0'
}
docker.runOptions = '-u $(id -u):$(id -g)'
trace.file = "${params.outdir}/trace_${params.stamp}.txt"
'''


def test_what_the_strict_syntax_allows_is_not_reported():
    assert strict.check_script(ALLOWED_SCRIPT) == []
    assert strict.check_config(ALLOWED_CONFIG) == []
