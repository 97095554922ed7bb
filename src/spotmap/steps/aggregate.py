"""``spotmap aggregate``: pool the restarts of one mapping and write the consensus folder."""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np
import pandas as pd

from spotmap.aggregate import DEFAULT_ELBO_GAP, DEFAULT_THRESHOLD, DEFAULT_TOTAL_RATIO, AggregateResult
from spotmap.errors import input_error
from spotmap.report import sections
from spotmap.utils import atomic_dir, atomic_path, log, write_table

AGGREGATE_FILES = ("stability.tsv", "restarts.tsv", "stability_pairs.tsv", "summary.txt", sections.STABILITY.file,
                   sections.STABILITY_HEATMAP.file, sections.RESTARTS.file, sections.AGGREGATE_SUMMARY.file)


def run(*, restarts: list[str | os.PathLike], outdir: str | os.PathLike, threshold: float = DEFAULT_THRESHOLD,
        stability: str = "median", agreement_threshold: float | None = None, elbo_gap: float = DEFAULT_ELBO_GAP,
        total_ratio: float = DEFAULT_TOTAL_RATIO, keep_flagged: bool = False,
        exclude_flagged: bool | None = None) -> Path:
    """Pool the restart folders ``restarts`` (:func:`spotmap.aggregate.aggregate`) and write ``outdir``
    (:func:`write_aggregate`); return ``outdir``. ``outdir`` is checked before any work: it may not be one of
    the restarts, nor a non-empty folder other than an earlier aggregate result. Flagged restarts are left out
    of the consensus unless ``keep_flagged``; ``exclude_flagged`` is the former switch (overrides it when given)."""
    from spotmap.aggregate import aggregate, load_restarts

    outdir = Path(outdir)
    check_outdir(outdir, restarts)  # before the work: never replace an input or a foreign folder
    adatas, sources = load_restarts(restarts)
    res = aggregate(adatas, threshold=threshold, stability=stability, agreement_threshold=agreement_threshold,
                    elbo_gap=elbo_gap, total_ratio=total_ratio, keep_flagged=keep_flagged,
                    exclude_flagged=exclude_flagged, sources=sources)
    write_aggregate(res, outdir, restarts)
    for line in res.summary:
        log.info("%s", line)
    log.info("consensus of %d of %d restart(s) written to %s (%d cell type(s) and %d restart(s) flagged)",
             int(res.restarts["used"].sum()), len(adatas), outdir, int(res.stability["flagged"].sum()),
             int(res.restarts["flagged"].sum()))
    return outdir


def _na(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in out.columns:
        if out[c].dtype.kind == "f":
            out[c] = out[c].map(lambda x: "NA" if not np.isfinite(x) else f"{x:.6g}")
    return out


def check_outdir(outdir: Path, sources=()) -> None:
    """Refuse an --outdir that is an input restart or a non-empty folder other than an earlier aggregate result."""
    if any(outdir.resolve() == Path(src).resolve() for src in sources):
        raise input_error(outdir, "is one of the --restart folders; choose another --outdir")
    if outdir.exists() and (not outdir.is_dir() or (any(outdir.iterdir()) and not (outdir / "stability.tsv").exists())):
        raise input_error(outdir, "exists and is not an aggregate result folder; refusing to replace it "
                          "(choose a new --outdir)")


def write_aggregate(res: AggregateResult, outdir: str | os.PathLike, sources=()) -> Path:
    """Write the consensus folder: the restart files, stability/restart tables, summary and MultiQC content.

    The folder is assembled beside ``outdir`` and moved into place only when complete. ``outdir`` may
    not be one of ``sources`` (the restart folders), nor a non-empty folder that is not an earlier
    aggregate result (one holding ``stability.tsv``).
    """
    from spotmap.results import RESULT_FILES, write_results

    outdir = Path(outdir)
    check_outdir(outdir, sources)
    with atomic_dir(outdir) as tmp:
        write_table(_na(res.stability), tmp / "stability.tsv", index=False)
        write_table(_na(res.restarts), tmp / "restarts.tsv", index=False)
        write_table(_na(res.pairs), tmp / "stability_pairs.tsv", index=False)
        with atomic_path(tmp / "summary.txt") as t:
            Path(t).write_text("".join(f"{ln}\n" for ln in res.summary))
        write_mqc_content(res, tmp)
        write_results(res.consensus, tmp)  # sp.h5ad + W_*.csv, the files of a restart folder
    for f in RESULT_FILES:
        assert (outdir / f).exists(), f
    return outdir


def write_mqc_content(res: AggregateResult, folder: Path) -> None:
    """The MultiQC files of an aggregation: stability and restarts tables, the pairwise heatmap, the summary."""
    from spotmap.report.mqc import write_mqc_html, write_mqc_table, write_mqc_yaml

    s = res.settings
    stat = s["stability"]
    used = res.consensus.uns["mod"]["consensus"]["used"]
    st = res.stability.set_index("cell_type").rename_axis("Cell type")
    write_mqc_table(_na(st), folder / sections.STABILITY.file, sections.STABILITY, headers={
        "stability": {"title": "Stability", "min": -1, "max": 1, "scale": "RdYlGn",
                      "description": f"{stat} pairwise correlation across spots"},
        "flagged": {"title": "Flagged", "description": f"stability < {s['threshold']:g} or total ratio > "
                                                       f"{s['total_ratio']:g}"},
        "total_ratio": {"title": "Total ratio", "min": 1, "scale": "RdYlGn-rev", "format": "{:,.3f}",
                        "description": f"{'median' if stat == 'median' else 'largest'} over restart pairs of the "
                                       "factor between their total cells of the type"},
        "total_cells": {"title": "Total cells", "format": "{:,.1f}",
                        "description": "total posterior-mean cells over all spots (mean over the pooled restarts)"},
        "flagged_by": {"title": "Flagged by", "description": "the rules that flag it (correlation, total_ratio)"}},
        n_used=len(used), statistic=stat, threshold=s["threshold"], total_ratio=s["total_ratio"])
    rt = res.restarts.set_index("restart").rename_axis("Restart")
    best = res.consensus.uns["mod"]["consensus"]["best_restart"]
    write_mqc_table(_na(rt), folder / sections.RESTARTS.file, sections.RESTARTS,
                    headers={"elbo": {"title": "-ELBO", "format": "{:,.6g}"},
                             "agreement": {"title": "Agreement", "min": -1, "max": 1, "scale": "RdYlGn"},
                             "flagged": {"title": "Flagged"},
                             "total_ratio": {"title": "Total ratio", "min": 1, "scale": "RdYlGn-rev",
                                             "format": "{:,.3f}"},
                             "total_cells": {"title": "Total cells", "format": "{:,.1f}"},
                             "used": {"title": "In consensus"},
                             "flagged_by": {"title": "Flagged by"}},
                    best=best or "NA", agreement_threshold=s["agreement_threshold"],
                    elbo_gap_percent=100 * s["elbo_gap"], total_ratio=s["total_ratio"])
    pair_labels = [f"{a} vs {b}" for a, b in res.pairs[["restart_a", "restart_b"]].drop_duplicates()
                   .itertuples(index=False)]
    data = {ct: {} for ct in res.stability["cell_type"]}
    for row in res.pairs.itertuples(index=False):
        data[row.cell_type][f"{row.restart_a} vs {row.restart_b}"] = round(float(row.correlation), 4)
    if pair_labels:
        write_mqc_yaml(folder / sections.STABILITY_HEATMAP.file, sections.STABILITY_HEATMAP, "heatmap", data,
                       pconfig={"id": "spotmap_stability_heatmap_plot", "title": "spotmap: restart agreement",
                                "xlab": "restart pair", "ylab": "cell type", "zlab": "correlation",
                                "min": -1, "max": 1, "square": False, "xcats_samples": False,
                                "ycats_samples": False, "cluster_rows": False, "cluster_cols": False},
                       extra={"xcats": pair_labels, "ycats": list(res.stability["cell_type"])})
    body = "".join(f"<li>{html.escape(ln)}</li>" for ln in res.summary)
    write_mqc_html(folder / sections.AGGREGATE_SUMMARY.file, sections.AGGREGATE_SUMMARY, f"<ul>{body}</ul>")
