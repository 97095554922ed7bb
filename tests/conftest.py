"""Shared fixtures: small simulated cases (session-scoped) and the real data in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """``$SPOTMAP_SHARED_DATA`` or ``../shared/data`` beside the checkout, if present."""
    env = os.environ.get("SPOTMAP_SHARED_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("real data not found: set SPOTMAP_SHARED_DATA or place ../shared/data beside the checkout")
    return d


@pytest.fixture(scope="session")
def sim_small(tmp_path_factory) -> Path:
    """A small simulated case: 2 samples × 150 spots, 300 genes, 6 types, 600 reference cells."""
    from spotmap.simulate import SimulationParams, simulate

    out = tmp_path_factory.mktemp("sim") / "small"
    simulate(out, SimulationParams(n_cells=600, n_spots=150, n_genes=300, n_cell_types=6, n_samples=2, seed=1))
    return out


@pytest.fixture(scope="session")
def sim_single(tmp_path_factory) -> Path:
    """One sample, old headerless positions file (Space Ranger 1.x layout)."""
    from spotmap.simulate import SimulationParams, simulate

    out = tmp_path_factory.mktemp("sim") / "single"
    simulate(out, SimulationParams(n_cells=300, n_spots=100, n_genes=200, n_cell_types=4, n_samples=1, seed=2,
                                   positions="list"))
    return out
