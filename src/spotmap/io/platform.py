"""Which platform a spatial sample comes from: one rule for the QC, the mapping and the report.

Two questions are answered here, each in one place:

* :func:`platform_of` — the platform the reader recorded in ``uns['spotmap']`` of an AnnData (or of an
  ``.h5ad`` file, read without its counts): Visium HD bins (``'visium-hd'`` and the bin size in µm),
  else ``'visium'`` (Visium and every other input). QC thresholds, the mapping's default cells per
  location and the report's drawing follow it.
* :func:`is_visium_hd_input` — whether a samplesheet row is a Visium HD sample, which
  ``--mapping-mode auto`` maps one sample at a time. It is decided from the row alone, before any step
  runs, by the same rule as ``isVisiumHd`` in ``workflows/spotmap.nf`` (``tests/data/hd_detection_cases.json``
  holds the cases both are tested against): a row is Visium HD when it has a ``bin_size``, or when its
  input path is a Space Ranger HD folder. An ``.h5ad`` without ``bin_size`` is not, whatever it holds:
  give such a row a ``bin_size`` (or choose ``--mapping-mode``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

VISIUM = "visium"
VISIUM_HD = "visium-hd"
HD_DEFAULT_BIN_UM = 8  #: bin size of a Visium HD input that does not say its own

_SQUARE_PATH = re.compile(r".*/square_\d+um$")


class Platform(NamedTuple):
    """``(name, bin_size_um)``: ``('visium-hd', 8)`` for 8 µm Visium HD bins, ``('visium', None)`` otherwise."""

    name: str
    bin_size_um: int | None = None

    @property
    def is_hd(self) -> bool:
        return self.name == VISIUM_HD


def _from_meta(meta: dict) -> Platform:
    if meta.get("platform") == VISIUM_HD:
        b = meta.get("bin_size_um")
        return Platform(VISIUM_HD, int(b) if b is not None else HD_DEFAULT_BIN_UM)
    return Platform(VISIUM, None)


def _meta_of_file(h5ad: str | os.PathLike) -> dict:
    import h5py

    meta = {}
    try:
        with h5py.File(h5ad, "r") as f:
            for key in ("platform", "bin_size_um"):
                node = f.get(f"uns/spotmap/{key}")
                if node is not None:
                    value = node[()]
                    meta[key] = value.decode() if isinstance(value, bytes) else value
    except OSError:
        pass
    return meta


def platform_of(data) -> Platform:
    """The :class:`Platform` recorded in ``uns['spotmap']`` of an AnnData, or of an ``.h5ad`` file given by
    its path (e.g. a ``spotmap qc`` output, read without its counts). Nothing recorded: ``('visium', None)``."""
    if isinstance(data, (str, os.PathLike)):
        return _from_meta(_meta_of_file(data))
    meta = data.uns.get("spotmap", {}) if hasattr(data, "uns") else {}
    return _from_meta(meta if isinstance(meta, dict) else {})


def recorded_platform(adata) -> str | None:
    """``uns['spotmap']['platform']`` as recorded (e.g. ``'visium-hd'``), or None when the reader recorded none."""
    meta = adata.uns.get("spotmap", {}) if hasattr(adata, "uns") else {}
    value = meta.get("platform") if isinstance(meta, dict) else None
    return str(value) if value is not None else None


def is_hd_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a Space Ranger Visium HD folder: it lies inside ``binned_outputs/``, is
    ``binned_outputs`` or a ``square_<n>um`` folder, or is a folder holding ``binned_outputs/`` or
    ``outs/binned_outputs/``."""
    text = re.sub(r"/+$", "", str(path))
    if _SQUARE_PATH.match(text) or "/binned_outputs/" in text or text.endswith("/binned_outputs"):
        return True
    folder = Path(text)
    return folder.is_dir() and ((folder / "binned_outputs").is_dir() or (folder / "outs" / "binned_outputs").is_dir())


def is_visium_hd_input(path: str | os.PathLike | None, bin_size=None) -> bool:
    """Whether a samplesheet row (its input ``path`` and ``bin_size``) is a Visium HD sample (module doc)."""
    if bin_size is not None and str(bin_size).strip() not in ("", "nan", "None"):
        return True
    return path is not None and is_hd_path(path)
