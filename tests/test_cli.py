"""The command line: help, version, error paths."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from spotmap.cli import cli

STEPS = ["qc", "signatures", "map", "aggregate", "colocation", "report", "run", "simulate", "demo"]


def test_version():
    r = CliRunner().invoke(cli, ["--version"])
    assert r.exit_code == 0 and "spotmap, version" in r.output


@pytest.mark.parametrize("step", STEPS)
def test_every_step_has_help(step):
    r = CliRunner().invoke(cli, [step, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage: cli " + step in r.output or f"Usage: spotmap {step}" in r.output or step in r.output


def test_simulate_writes_files(tmp_path):
    r = CliRunner().invoke(cli, ["simulate", "--outdir", str(tmp_path / "s"), "--n-cells", "60", "--n-spots", "20",
                                 "--n-genes", "50", "--n-cell-types", "3", "--n-samples", "1"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s" / "samples" / "sample1" / "outs" / "filtered_feature_bc_matrix.h5").exists()


def test_bad_option_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "spotmap.cli", "simulate", "--outdir", str(tmp_path / "s"),
                        "--n-spots", "999999"], capture_output=True, text=True)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("spotmap: error")]
    assert len(lines) == 1 and "--n-spots" in lines[0]
    assert not (tmp_path / "s").exists()


def test_bin_wrapper_runs():
    from pathlib import Path

    wrapper = Path(__file__).resolve().parents[1] / "bin" / "spotmap"
    r = subprocess.run([sys.executable, str(wrapper), "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "spotmap, version" in r.stdout


def test_command_keeps_freed_memory_for_reuse():
    """The spotmap command asks glibc to reuse freed memory (large tensors would otherwise be mmapped and
    page-faulted in again at every training step); the call must succeed on glibc and be a no-op elsewhere."""
    import platform

    from spotmap.utils import reuse_freed_memory

    assert reuse_freed_memory() is (platform.libc_ver()[0] == "glibc")
