"""Writers for MultiQC custom content (``*_mqc.tsv|yaml|png``), used by every step.

Conventions (MultiQC docs, "Custom content"): a TSV carries its config as ``# key: value``
YAML header lines; a YAML file carries ``id``, ``section_name``, ``plot_type``, ``pconfig``
and ``data``; files that share an ``id`` are merged into one section (so every restart's
training curve becomes one series of the same linegraph). Every file is written for a
:class:`~spotmap.report.sections.Section` of the report's registry, which gives its id, title,
description and parent section.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from spotmap.report.sections import Section
from spotmap.utils import atomic_path


def write_mqc_table(df: pd.DataFrame, path: str | Path, section: Section, plot_type: str = "table",
                    pconfig: dict | None = None, headers: dict | None = None, **fields) -> Path:
    """Write ``df`` (index = row/sample names) as a MultiQC ``*_mqc.tsv`` table of ``section`` with a YAML
    header; ``fields`` fill the section's description."""
    path = Path(path)
    header = {**section.header(**fields), "plot_type": plot_type, "format": "tsv"}
    if pconfig:
        header["pconfig"] = pconfig
    if headers:
        header["headers"] = headers
    lines = yaml.safe_dump(header, sort_keys=False, width=10_000).splitlines()
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            for ln in lines:
                fh.write(f"# {ln}\n")
            df.to_csv(fh, sep="\t", index=True, index_label=df.index.name or "Sample")
    return path


def plain(obj):
    """``obj`` with numpy scalars/arrays turned into Python numbers and lists, keys included."""
    import numpy as np

    if isinstance(obj, dict):
        return {plain(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [plain(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if obj is None or isinstance(obj, str):
        return obj
    try:
        return float(obj)
    except (TypeError, ValueError):
        return json.loads(json.dumps(obj, default=str))


def write_mqc_yaml(path: str | Path, section: Section, plot_type: str, data: dict, pconfig: dict | None = None,
                   extra: dict | None = None, **fields) -> Path:
    """Write a MultiQC ``*_mqc.yaml`` custom-content file of ``section`` (linegraph, heatmap, bargraph, ...);
    ``extra``: more top-level keys (e.g. ``xcats``), ``fields`` fill the section's description."""
    content = {**section.header(**fields), "plot_type": plot_type}
    if pconfig:
        content["pconfig"] = pconfig
    content.update(extra or {})
    # plain floats/ints/strings only (no numpy scalars in the YAML); numeric keys stay numbers, so
    # MultiQC draws line-graph x values on a numeric axis (string keys become unordered categories)
    content["data"] = plain(data)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(yaml.safe_dump(content, sort_keys=False, width=10_000))
    return Path(path)


def write_mqc_linegraph(path: str | Path, section: Section, series: dict[str, dict[float, float]],
                        xlab: str = "epoch", ylab: str = "", title: str | None = None, logy: bool = False) -> Path:
    """One or more series ``{name: {x: y}}`` as a MultiQC linegraph of ``section``."""
    pconfig = {"id": f"{section.id}_plot", "title": title or section.title, "xlab": xlab, "ylab": ylab,
               "logswitch": True}
    if logy:
        pconfig["logswitch_active"] = True
    data = {name: {float(x): float(y) for x, y in pts.items()} for name, pts in series.items()}
    return write_mqc_yaml(path, section, "linegraph", data, pconfig)


def write_mqc_html(path: str | Path, section: Section, body: str, **fields) -> Path:
    """An HTML fragment of ``section`` with its header in a leading comment, as MultiQC reads ``*_mqc.html``."""
    header = yaml.safe_dump(section.header(**fields), sort_keys=False, width=10_000)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(f"<!--\n{header}-->\n{body}\n")
    return Path(path)


def save_mqc_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically (``*_mqc.png`` files are embedded by MultiQC)."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return Path(path)
