"""Build the MultiQC report of a results folder (``spotmap report``).

The report is made by the real MultiQC from custom-content files, in three stages:

1. **Collect** (:mod:`.collect`) every ``*_mqc.*`` file the steps wrote under the results folder
   (recursively, by file name, so a flat folder of files staged by Nextflow works too), plus
   ``pipeline_info/params.json``, versions files and the consensus ``summary.txt``.
2. **Normalise** (:mod:`.content`) them into ``<outdir>/report_content/``: each file is rewritten with a
   complete custom-content header that places it in its section of the registry
   (:mod:`.sections`), and each PNG is wrapped in a small YAML file (``plot_type: image``) so it gets a
   title and a legend. Sections with no files get a note that the step did not run.
3. **Generate** (:mod:`.generated`, :mod:`.pipeline_info`) the report-time content (cell abundance maps,
   software versions, workflow summary, methods description) and run ``python -m multiqc`` on the
   content folder with ``assets/multiqc_config.yml`` plus a generated file that fixes the order of every
   section.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from spotmap.errors import SpotmapError, input_error
from spotmap.report import sections
from spotmap.report.collect import collect, consensus_labels
from spotmap.report.content import Collected, ContentWriter, _write_yaml
from spotmap.report.generated import abundance_content, input_notes, missing_notes, stability_summary
from spotmap.utils import log


def assets_dir() -> Path:
    """The pipeline's ``assets/`` folder (``$SPOTMAP_ASSETS``, the package's or the checkout's)."""
    env = os.environ.get("SPOTMAP_ASSETS")
    here = Path(__file__).resolve()
    for cand in ([Path(env)] if env else []) + [here.parents[1] / "assets", here.parents[3] / "assets"]:
        if (cand / "multiqc_config.yml").is_file():
            return cand
    raise SpotmapError("assets/multiqc_config.yml not found: set SPOTMAP_ASSETS to the pipeline's assets folder")


def order_config(found: Collected) -> dict:
    """``report_section_order`` for every module (parent) and every section inside it."""
    order: dict[str, dict] = {}
    keys = list(sections.PARENTS)
    # modules: larger 'order' comes first in MultiQC
    for i, key in enumerate(keys):
        order[sections.PARENTS[key].id] = {"order": 1000 - 10 * i}
    order[sections.METHODS_ID] = {"order": -1000}
    order[sections.VERSIONS_ANCHOR] = {"order": -1001}
    order[sections.SUMMARY_ID] = {"order": -1002}
    # sections inside a module: smaller 'order' comes first
    for key in keys:
        secs = sorted((s for s in found.sections if s.parent == key),
                      key=lambda s: tuple((0, x, "") if isinstance(x, (int, float)) else (1, 0, str(x))
                                          for x in s.rank))
        for j, s in enumerate(secs):
            order[s.section_id] = {"order": 10 * (j + 1)}
    return {"report_section_order": order,
            "custom_content": {"order": [sections.PARENTS[k].id for k in keys]
                               + [sections.METHODS_ID, sections.SUMMARY_ID]}}


def run_multiqc(content: Path, outdir: Path, configs: list[Path], title: str | None = None) -> Path:
    """Run the real MultiQC (``python -m multiqc``) on ``content``; returns the report path."""
    outdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".multiqc.", dir=outdir))
    try:
        cmd = [sys.executable, "-m", "multiqc", str(content), "--outdir", str(tmp), "--force", "--no-ansi",
               "--filename", "multiqc_report.html"]
        for c in configs:
            cmd += ["--config", str(c)]
        if title:
            cmd += ["--title", title]
        env = dict(os.environ, MULTIQC_NO_VERSION_CHECK="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        report = tmp / "multiqc_report.html"
        if proc.returncode != 0 or not report.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
            raise RuntimeError("multiqc failed (exit %d):\n%s" % (proc.returncode, "\n".join(tail)))
        for line in proc.stderr.splitlines():
            if re.search(r"WARNING|ERROR", line):
                log.warning("multiqc: %s", line.strip())
        data = outdir / "multiqc_data"
        if data.exists():
            shutil.rmtree(data)
        made = [d for d in ("multiqc_data", "multiqc_report_data") if (tmp / d).is_dir()]
        if made:
            os.replace(tmp / made[0], data)
        os.replace(report, outdir / "multiqc_report.html")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return outdir / "multiqc_report.html"


def build_report(results_dir: str | os.PathLike, outdir: str | os.PathLike, config: str | os.PathLike | None = None,
                 title: str | None = None, dpi: int = 90) -> Path:
    """Build ``outdir/multiqc_report.html`` (and ``outdir/multiqc_data/``) from a results folder.

    Parameters
    ----------
    results_dir
        The results folder of ``spotmap run`` or the Nextflow pipeline (or any folder holding the
        steps' ``*_mqc.*`` files, e.g. staged flat by Nextflow).
    outdir
        Where to write the report; the generated content goes to ``outdir/report_content/``.
    config
        MultiQC config; default ``assets/multiqc_config.yml``.
    title
        Report title (overrides the config's).
    dpi
        Resolution of the report-time maps (moderate keeps the report small).
    """
    from spotmap.report.pipeline_info import write_methods, write_versions, write_workflow_summary

    results = Path(results_dir)
    outdir = Path(outdir)
    if not results.is_dir():
        raise input_error(results, "results folder not found")
    files = collect(results, exclude=outdir)
    n_found = sum(len(v) for v in files.values())
    if n_found == 0:
        raise input_error(results, "no spotmap results found (no *_mqc.* files, params.json or sp.h5ad); "
                                   "is this the --outdir of a spotmap run?")
    base_config = Path(config) if config else assets_dir() / "multiqc_config.yml"
    if not base_config.is_file():
        raise input_error(base_config, "MultiQC config not found")

    content = outdir / "report_content"
    if content.exists():
        shutil.rmtree(content)
    content.mkdir(parents=True)
    w = _write_content(ContentWriter(results, content), files, dpi)

    gen = content / "generated"
    params = write_workflow_summary(files["params"], files["workflow_summary"], gen / "workflow_summary_mqc.yaml")
    write_versions(files["versions"], gen)
    tpl_dir = base_config.parent if (base_config.parent / "methods_description_template.yml").is_file() \
        else assets_dir()
    write_methods(tpl_dir, gen / "methods_description_mqc.yaml", params, w.found)

    order_path = outdir / "report_content_order.yml"
    _write_yaml(order_path, order_config(w.found))
    log.info("report: %d sections from %d files; running MultiQC", len(w.found.sections), n_found)
    return run_multiqc(content, outdir, [base_config, order_path], title=title)


def _write_content(w: ContentWriter, files: dict[str, list[Path]], dpi: int) -> ContentWriter:
    """Stages 2 and 3: every collected file into the content folder, then the report's own content."""
    for name in ("consensus", "colocation"):  # per-sample mapping: one set of sections per consensus
        folders = sorted({p.parent for kind in files.values() for p in kind if p.parent.name == name})
        if len(folders) > 1:
            w.groups.update(consensus_labels(folders))
    for p in files["table"]:
        w.table(p)
    for p in files["structured"]:
        w.structured(p)
    skip = set()
    if any(s.section_id.startswith(sections.SIGNATURES_HISTORY.id) for s in w.found.sections):
        skip.add(sections.SIGNATURES_HISTORY_IMAGE.id)  # the interactive line graph shows the same
    for p in files["image"]:
        w.image(p, skip)
    # the consensus summary in words: summary.txt, or the aggregate step's own HTML when there is none
    txt_dirs = {p.parent for p in files["summary_txt"]}
    for p in files["html"]:
        if not (p.parent in txt_dirs and "summary" in p.name):
            w.html_file(p)
    stability_summary(w, files["summary_txt"])
    if files["h5ad"]:
        abundance_content(w, files["h5ad"], dpi)
    missing_notes(w)
    input_notes(w)
    return w
