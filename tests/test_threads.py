"""`--threads`: one helper (spotmap.utils.set_threads) behind the option of every computing command, and
`spotmap run` passing it to its steps (a pipeline task gives its task.cpus; see tests/test_nextflow.py)."""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest

from spotmap.utils import available_cpus, set_threads

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


@pytest.fixture
def restore_threads(monkeypatch):
    import torch

    before = torch.get_num_threads()
    for var in THREAD_VARS:  # monkeypatch puts the variables back as they were
        monkeypatch.setenv(var, os.environ.get(var, "1"))
    yield
    torch.set_num_threads(before)
    from threadpoolctl import threadpool_limits

    threadpool_limits(int(os.environ.get("OMP_NUM_THREADS", "1")))


def test_set_threads_sets_torch_and_the_environment(restore_threads):
    import torch

    assert set_threads(2) == 2
    assert torch.get_num_threads() == 2
    assert all(os.environ[v] == "2" for v in THREAD_VARS[:3])
    assert os.environ["NUMBA_NUM_THREADS"] == str(min(2, available_cpus()))  # numba refuses more than the cores
    # None and 0: every core this process may run on (its affinity mask)
    assert set_threads(None) == available_cpus() == set_threads(0)
    assert torch.get_num_threads() == available_cpus()


def test_set_threads_without_torch_does_not_import_it():
    """qc-batch limits BLAS and numba without paying for a torch import (seconds)."""
    import subprocess
    import sys

    code = ("import os, sys; from spotmap.utils import set_threads; assert set_threads(3, torch_threads=False) == 3; "
            "assert 'torch' not in sys.modules; print(os.environ['OMP_NUM_THREADS'], os.environ['MKL_NUM_THREADS'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["3", "3"], r.stderr[-2000:]


@pytest.mark.parametrize("step,default", [("map", None), ("qc-batch", None), ("run", None), ("signatures", 1)])
def test_computing_commands_have_threads(step, default):
    from spotmap.cli import cli

    opt = next(p for p in cli.commands[step].params if p.name == "threads")
    assert isinstance(opt.type, click.IntRange) and opt.type.min == 0
    assert opt.default == default  # None: all cores; signatures keeps its measured default of 1 thread


def test_run_passes_threads_to_its_steps(tmp_path, monkeypatch, fake_steps):
    """`spotmap run --threads N` limits the one process it runs in to N threads (torch, BLAS, OpenMP) before
    any step, and gives the signatures step N (it otherwise keeps its own default of 1); without it nothing is
    set and no step gets a thread count."""
    import spotmap.utils
    from spotmap.workflow import RunParams, run_pipeline

    for s in ("a", "b"):
        (tmp_path / f"{s}.h5ad").touch()
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(f"sample,h5ad\na,{tmp_path / 'a.h5ad'}\nb,{tmp_path / 'b.h5ad'}\n")
    calls = fake_steps
    monkeypatch.setattr(spotmap.utils, "set_threads", lambda n=None, torch_threads=True: calls.append(("set", n)))
    for threads in (3, None):
        calls.clear()
        run_pipeline(RunParams(samplesheet=str(sheet), reference=str(tmp_path / "ref.h5ad"), restarts=2,
                               outdir=str(tmp_path / "out"), threads=threads))
        names = [name for name, _ in calls]
        assert names.count("map") == 2 and "qc_batch" in names and "signatures" in names
        sig = next(kw for name, kw in calls if name == "signatures")
        if threads is None:
            assert "set" not in names and "threads" not in sig
        else:
            assert names[0] == "set" and calls[0][1] == 3 and sig["threads"] == 3


def test_bin_wrapper_imports_the_checkout_when_spotmap_is_not_installed(tmp_path):
    """The conda and wave profiles install only the dependencies: the pipeline's bin/spotmap then imports the
    package from the checkout's src/ (so a task always runs the pipeline's own code)."""
    import shutil
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "bin").mkdir()
    shutil.copy(repo / "bin" / "spotmap", tmp_path / "bin" / "spotmap")
    shutil.copytree(repo / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    # a Python that cannot see any installed spotmap: no site-packages .pth of an editable install
    site = subprocess.run([sys.executable, "-c", "import numpy, os; print(os.path.dirname(os.path.dirname(numpy.__file__)))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    deps = tmp_path / "deps"
    deps.mkdir()
    for entry in Path(site).iterdir():
        if "spotmap" not in entry.name.lower() and not entry.name.endswith(".pth"):
            (deps / entry.name).symlink_to(entry)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(deps)}
    r = subprocess.run([sys.executable, "-S", str(tmp_path / "bin" / "spotmap"), "versions", "--process", "X"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-S", "-c", "import spotmap"], capture_output=True, text=True, env=env)
    assert r.returncode != 0  # really not installed: the wrapper found ../src
