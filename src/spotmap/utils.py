"""Small shared helpers: atomic output, logging, devices and seeds."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

log = logging.getLogger("spotmap")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def setup_logging(verbose: bool = False) -> None:
    """Send spotmap's log to stderr (results always go to files)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("spotmap")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def reuse_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the system (Linux only).

    glibc serves every allocation above 32 MB with its own ``mmap`` and unmaps it on free, so each training
    step of a large model (tensors of tens of MB per operation) faults in and zeroes fresh pages again;
    keeping them makes large Visium HD steps markedly faster for a little more peak memory (figures in
    BENCHMARKS.md and benchmarks/RESULTS_hd.md). The catch: the process keeps its peak footprint until it
    exits, so this is called by the ``spotmap`` command (one step per process), not on import. Returns
    whether the setting took effect (False off glibc).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4                                       # from glibc's malloc.h
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success.

    A crash or an exception never leaves a half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are shared files
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_h5ad(adata, path: str | os.PathLike) -> Path:
    """Write an AnnData atomically (compressed)."""
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp, compression="gzip")
    return Path(path)


def write_table(df, path: str | os.PathLike, sep: str | None = None, index: bool = True,
                header_lines: list[str] | None = None) -> Path:
    """Write a DataFrame as CSV/TSV atomically; ``header_lines`` are written first as ``# ...``."""
    path = Path(path)
    if sep is None:
        sep = "\t" if path.suffix in {".tsv", ".txt"} else ","
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            for line in header_lines or []:
                fh.write(f"# {line}\n" if not line.startswith("#") else f"{line}\n")
            df.to_csv(fh, sep=sep, index=index)
    return path


def write_matrix_csv(df, path: str | os.PathLike) -> Path:
    """Write a numeric DataFrame (e.g. spots × cell types) with its index as the first column, atomically.

    The CSV ``df.to_csv`` writes (header: index name, then the columns; floats in their shortest round-trip
    form; names quoted only where they need it), but by pyarrow's C++ writer, several times faster on the
    spots × types table of a whole Visium HD sample (benchmarks/RESULTS_hd.md). Values read back identically; small numbers
    may be spelled differently (``0.0000237`` or ``5.7e-7`` where pandas writes ``2.37e-05``, ``5.7e-07``), and
    where some name needs quotes arrow quotes every string.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    path = Path(path)
    table = pa.Table.from_pandas(df.reset_index(), preserve_index=False)
    names = [str(x) for x in (df.index.name, *df.columns, *df.index)]
    # arrow's "needed" quotes every string; unquoted is pandas' output whenever no name needs quotes
    plain = not any(c in x for x in names for c in ',"\r\n')
    header = io.StringIO()
    csv.writer(header, lineterminator="\n").writerow(names[:1 + df.shape[1]])   # as pandas: minimal quoting
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(header.getvalue().encode())
            pacsv.write_csv(table, fh, pacsv.WriteOptions(include_header=False,
                                                          quoting_style="none" if plain else "needed"))
    return path


def resolve_device(device: str = "auto"):
    """Return a ``torch.device`` for ``auto|cpu|cuda``; ``cuda`` without a GPU is an error."""
    import torch

    from spotmap.errors import SpotmapError

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SpotmapError("--device cuda was requested but torch sees no CUDA GPU; use --device cpu or auto")
    if device not in {"cpu", "cuda"}:
        raise SpotmapError(f"--device must be auto, cpu or cuda (got {device!r})")
    return torch.device(device)


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's or a batch job's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None = None, torch_threads: bool = True) -> int:
    """Use ``threads`` CPU threads in this process (None or 0: every core it may run on); return that number.

    The ``--threads`` option of the computing commands: a pipeline task passes its CPU allocation
    (Nextflow's ``task.cpus``), so restarts that share a node do not each start a thread per core of the host.
    Sets torch's intra-op threads (with ``torch_threads``; importing torch if needed) and, for the thread
    pools that have not started yet, ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and
    ``NUMBA_NUM_THREADS`` (at most the available cores, which numba requires); the BLAS and OpenMP pools
    already loaded (numpy's) are limited through threadpoolctl where it is installed (scikit-learn brings it).
    Called by the commands, never on import.
    """
    n = int(threads) if threads else available_cpus()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    os.environ["NUMBA_NUM_THREADS"] = str(min(n, available_cpus()))
    try:  # the BLAS / OpenMP pools already loaded (numpy's): threadpoolctl comes with scikit-learn
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:
        pass
    if torch_threads:
        import torch

        torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> np.random.Generator:
    """Seed torch, pyro and numpy; return a numpy Generator for data-side randomness."""
    import pyro
    import torch

    pyro.set_rng_seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def software_versions(cuda: bool | None = None) -> dict[str, str]:
    """Versions of spotmap and its main dependencies, as written to ``versions.yml``."""
    from importlib.metadata import PackageNotFoundError, version

    import spotmap

    def _v(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    out = {
        "spotmap": spotmap.__version__,
        "torch": _v("torch"),
        "pyro-ppl": _v("pyro-ppl"),
        "anndata": _v("anndata"),
        "scanpy": _v("scanpy"),
        "python": ".".join(map(str, __import__("sys").version_info[:3])),
    }
    # importing torch costs seconds: only do it where a GPU may be present (or when asked)
    if cuda is None:
        cuda = os.path.exists("/proc/driver/nvidia") or bool(shutil.which("nvidia-smi"))
    if cuda:
        import torch

        if torch.cuda.is_available() and torch.version.cuda:
            out["cuda"] = torch.version.cuda
    return out
