"""The GitHub Actions workflows that run the pipeline on a real Nextflow and build the images.

Nextflow and Docker cannot run where spotmap is developed, so CI on a hosted runner does it
(.github/workflows/nextflow.yml, images.yml). Here: both files validate against the GitHub workflow schema
(check-jsonschema's vendored copy of SchemaStore's; a broken workflow fails it), the Nextflow matrix holds
the oldest version manifest.nextflowVersion allows and the newest release, the jobs run lint, the stub run
and the real run of the test profile, and the image tags are read from nextflow.config by the same shell
lines the workflows run (run here with bash on the repository's nextflow.config).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nextflow_helpers as nfh  # noqa: E402

REPO = nfh.REPO
WORKFLOWS = REPO / ".github" / "workflows"
CONFIG = nfh.config_params(REPO / "nextflow.config")


def _load(name: str) -> dict:
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as true
    return doc


def _check_jsonschema() -> list[str]:
    if importlib.util.find_spec("check_jsonschema"):
        return [sys.executable, "-m", "check_jsonschema"]
    exe = shutil.which("check-jsonschema")
    assert exe, "check-jsonschema is not installed (it is in the test extra: pip install -e '.[test]')"
    return [exe]


def _validate(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*_check_jsonschema(), "--builtin-schema", "vendor.github-workflows", *map(str, paths)],
                          capture_output=True, text=True, timeout=300)


def test_workflows_validate_against_the_github_schema():
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} == {"nextflow.yml", "images.yml"}
    r = _validate(*files)
    assert r.returncode == 0, r.stdout + r.stderr


def test_schema_check_rejects_a_broken_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("name: bad\non: push\njobs:\n  x:\n    steps:\n      - run: echo\n        uses: actions/checkout@v4\n"
                   "    strategy: {matrix: 3}\n")
    r = _validate(bad)
    assert r.returncode != 0 and "bad.yml" in (r.stdout + r.stderr)


def _steps(doc: dict, job: str) -> list[dict]:
    return doc["jobs"][job]["steps"]


def _run_step(step: dict, tmp_path: Path, subst: dict[str, str]) -> dict[str, str]:
    """Run a step's shell lines (GitHub expressions replaced by ``subst``) in the repository; return what
    it wrote to $GITHUB_OUTPUT."""
    script = step["run"]
    for expr, value in subst.items():
        script = script.replace("${{ " + expr + " }}", value)
    assert "${{" not in script, script
    out = tmp_path / "github_output"
    out.write_text("")
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=REPO, capture_output=True, text=True,
                       env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "GITHUB_OUTPUT": str(out)},
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)


def test_nextflow_workflow_runs_lint_stub_and_test_on_the_oldest_and_newest_nextflow(tmp_path):
    doc = _load("nextflow.yml")
    assert {"push", "pull_request"} <= set(doc["on"])
    minimum = re.search(r"nextflowVersion\s*=\s*'!?>=([\d.]+)'", (REPO / "nextflow.config").read_text()).group(1)
    job = doc["jobs"]["nextflow"]
    assert job["needs"] == "cpu-image"
    assert job["strategy"]["matrix"]["nxf_ver"] == [minimum, "latest-stable"]
    steps = _steps(doc, "nextflow")
    setup = next(s for s in steps if s.get("uses", "").startswith("nf-core/setup-nextflow@"))
    assert setup["with"]["version"] == "${{ matrix.nxf_ver }}"
    runs = [s.get("run", "") for s in steps]
    order = [next(i for i, r in enumerate(runs) if re.search(p, r)) for p in
             [r"^docker load", r"^nextflow lint\b.* \.$", r"nextflow run \. -profile test,docker -stub\b",
              r"nextflow run \. -profile test,docker --outdir results$"]]
    assert order == sorted(order), "load the image, lint, stub run, then the real run"
    assert steps.index(setup) < order[1]
    check = next(r for r in runs if "test -s" in r)
    for f in ["mapping/consensus/stability.tsv", "mapping/consensus/summary.txt", "mapping/colocation/regions.csv",
              "multiqc/multiqc_report.html"]:
        assert f in check
    # the CPU image is built from containers/ with the tag nextflow.config names, so the tasks use it as built
    build = _steps(doc, "cpu-image")
    tag = _run_step(next(s for s in build if s.get("id") == "image"), tmp_path, {})
    assert tag == {"tag": CONFIG["container_cpu"]}
    image = next(s for s in build if s.get("uses", "").startswith("docker/build-push-action@"))
    assert image["with"]["file"] == "containers/Dockerfile.cpu" and image["with"]["tags"] == "${{ steps.image.outputs.tag }}"


@pytest.mark.parametrize("param", ["container_cpu", "container_gpu"])
def test_images_workflow_pushes_the_tags_nextflow_config_names(param, tmp_path):
    doc = _load("images.yml")
    assert doc["permissions"]["packages"] == "write" and "v*" in doc["on"]["push"]["tags"]
    entry = next(e for e in doc["jobs"]["image"]["strategy"]["matrix"]["include"] if e["param"] == param)
    assert (REPO / entry["dockerfile"]).is_file()
    assert entry["dockerfile"].endswith("Dockerfile.cpu" if param == "container_cpu" else "Dockerfile.cuda")
    steps = _steps(doc, "image")
    read = next(s for s in steps if s.get("id") == "image")
    out = _run_step(read, tmp_path, {"matrix.param": param, "github.ref_type": "branch", "github.ref_name": "main"})
    version = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert out == {"tag": CONFIG[param], "registry": CONFIG[param].split("/")[0], "version": version}
    # a release tag that is not v<version> stops the push
    with pytest.raises(AssertionError):
        _run_step(read, tmp_path, {"matrix.param": param, "github.ref_type": "tag", "github.ref_name": "v9.9.9"})
    build = next(s for s in steps if s.get("uses", "").startswith("docker/build-push-action@"))
    assert build["with"]["tags"] == "${{ steps.image.outputs.tag }}"
    assert build["with"]["push"] == "${{ github.event_name != 'pull_request' }}"
    login = next(s for s in steps if s.get("uses", "").startswith("docker/login-action@"))
    assert login["with"]["registry"] == "${{ steps.image.outputs.registry }}"
