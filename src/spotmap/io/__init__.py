"""Readers and writers for every format spotmap users bring.

- :func:`read_spaceranger` — Space Ranger ``outs/`` folders (h5 or mtx, old and new positions)
- :func:`read_10x_h5` / :func:`write_10x_h5` — 10x HDF5 matrices
- :func:`read_10x_mtx` — 10x matrix-market folders
"""

from spotmap.io.mtx import read_10x_mtx
from spotmap.io.spaceranger import read_spaceranger
from spotmap.io.tenx import read_10x_h5, write_10x_h5

__all__ = ["read_10x_h5", "read_10x_mtx", "read_spaceranger", "write_10x_h5"]
