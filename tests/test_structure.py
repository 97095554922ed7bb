"""The package's layout holds: layers import only downwards, importing spotmap changes nothing, modules and
functions stay small enough to read.

Layers (each may import those below it, never above)::

    cli          the spotmap command: options only           spotmap.cli, spotmap.__main__
    workflow     the one-machine pipeline                     spotmap.workflow (spotmap.pipeline: its old name)
    steps        one run() per pipeline step                  spotmap.steps
    cores        io, qc, reference, mapping, aggregate,       everything else
                 report, pl, simulate, results, metrics
    ground       errors, utils, training, optim, embedding
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "spotmap"
GROUND = {"spotmap", "spotmap.errors", "spotmap.utils", "spotmap.training", "spotmap.optim", "spotmap.embedding"}
MODEL_PACKAGES = ("spotmap.mapping", "spotmap.reference")
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80
#: functions allowed to be longer, and why
LONG_FUNCTIONS = {("spotmap/mapping/likelihood.py", "forward"): "the fused NB kernel: one pass per chunk of counts, "
                  "with its buffers and gradient accumulators; kept whole (90 lines)"}


def _module_name(path: Path) -> str:
    parts = list(path.with_suffix("").parts)
    parts = parts[len(parts) - 1 - parts[::-1].index("spotmap"):]  # from the (last) spotmap folder on
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every spotmap module ``path`` imports, at the top or inside a function (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}  # `from spotmap import steps` imports spotmap.steps
    return {m for m in out if m == "spotmap" or m.startswith("spotmap.")}


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _layer(module: str) -> str:
    if module in ("spotmap.__main__",) or module == "spotmap.cli" or module.startswith("spotmap.cli."):
        return "cli"
    if module in ("spotmap.workflow", "spotmap.pipeline"):
        return "workflow"
    if module == "spotmap.steps" or module.startswith("spotmap.steps."):
        return "steps"
    if module in GROUND:
        return "ground"
    return "cores"


RANK = {"ground": 0, "cores": 1, "steps": 2, "workflow": 3, "cli": 4}


def _known(name: str) -> str | None:
    """The module of ``name`` (a module, or a name inside one)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _violations() -> list[str]:
    problems = []
    for module, path in MODULES.items():
        layer = _layer(module)
        for imp in sorted(_imports(path)):
            target = _known(imp)
            if target is None or target == module:
                continue
            if target == "spotmap" and module != "spotmap":
                continue  # the package root holds only __version__ and SpotmapError
            t_layer = _layer(target)
            if RANK[t_layer] > RANK[layer]:
                problems.append(f"{module} ({layer}) imports {target} ({t_layer})")
            if layer == "workflow" and t_layer == "cli":
                problems.append(f"{module} imports the CLI")
            if module.startswith(MODEL_PACKAGES) and target.split(".")[1] in ("qc", "report", "steps", "cli", "pl"):
                problems.append(f"{module} (a model package) imports {target}")
            if layer == "ground" and t_layer != "ground":
                problems.append(f"{module} (ground) imports {target}")
    return problems


def test_layers_import_only_downwards():
    assert not _violations(), "\n".join(_violations())


def test_the_import_check_catches_a_forbidden_import(tmp_path, monkeypatch):
    """The check reads function-level and relative imports too: planted ones are reported."""
    fake = tmp_path / "spotmap" / "mapping"
    fake.mkdir(parents=True)
    (fake / "planted.py").write_text("def f():\n    from spotmap.qc import run_qc\n    from ..steps import qc\n")
    imports = _imports(fake / "planted.py")
    assert {"spotmap.qc", "spotmap.steps.qc"} <= imports
    monkeypatch.setitem(MODULES, "spotmap.mapping.planted", fake / "planted.py")
    assert any("spotmap.mapping.planted (a model package) imports spotmap.qc" in v for v in _violations())
    assert any("spotmap.mapping.planted (cores) imports spotmap.steps" in v for v in _violations())


def test_workflow_uses_no_click():
    assert "click" not in {n.split(".")[0] for n in _all_imports(MODULES["spotmap.workflow"])}


def _all_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


IMPORT_ALL = r"""
import importlib, json, os, pkgutil, sys
import matplotlib
backend = matplotlib.get_backend()
# the libraries spotmap imports first: some set variables of their own at import (threadpoolctl, through
# scipy.io, sets KMP_DUPLICATE_LIB_OK), which is theirs, not spotmap's
for dep in ("numpy", "scipy.io", "scipy.sparse", "scipy.special", "scipy.optimize", "pandas", "anndata", "h5py",
            "yaml", "click", "jsonschema", "torch", "pyro", "matplotlib.pyplot"):
    importlib.import_module(dep)
before = dict(os.environ)
import spotmap
names = sorted(m.name for m in pkgutil.walk_packages(spotmap.__path__, "spotmap."))
for name in names:
    if name.endswith("__main__"):
        continue
    importlib.import_module(name)
changed = {k: os.environ.get(k) for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)}
print(json.dumps({"modules": len(names), "env": changed, "backend": matplotlib.get_backend(), "was": backend}))
"""


def test_importing_spotmap_changes_nothing(tmp_path):
    """Importing spotmap and every module of it leaves the environment and matplotlib's backend alone (a
    notebook keeps its own); only the `spotmap` command sets them, for its own process. (Before, importing
    spotmap set OMP_WAIT_POLICY and switched the backend to Agg.)"""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "MPLBACKEND")}
    env["MPLBACKEND"] = "svg"  # a backend the package must not switch away from
    r = subprocess.run([sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True, env=env, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["modules"] > 40
    assert got["env"] == {}, f"importing spotmap changed the environment: {got['env']}"
    assert got["backend"] == got["was"] == "svg"


def test_the_command_sets_its_process_up(tmp_path):
    """`spotmap` itself waits passively and draws off-screen (set before torch and matplotlib load)."""
    code = ("import os, sys; from spotmap.cli import main; sys.argv = ['spotmap', '--version']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('MPLBACKEND'))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "MPLBACKEND")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.stdout.strip().splitlines()[-1] == "PASSIVE Agg", r.stdout + r.stderr


def _long_functions(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES and (str(path.relative_to(SRC)), node.name) not in LONG_FUNCTIONS:
                out.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}() is {n} lines")
    return out


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_functions_stay_readable(module):
    path = MODULES[module]
    n = len(path.read_text().splitlines())
    assert n <= MAX_FILE_LINES, f"{path.relative_to(SRC)} is {n} lines (at most {MAX_FILE_LINES})"
    assert not _long_functions(path), _long_functions(path)
