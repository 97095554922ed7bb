"""Pipeline information sections, as nf-core pipelines publish them: software versions,
workflow summary (the parameters that differ from the defaults) and a methods description."""

from __future__ import annotations

import html
import json
import string
from pathlib import Path

import yaml

from spotmap.report.sections import METHODS_ID, SUMMARY_ID, SUMMARY_TITLE
from spotmap.utils import atomic_path, log

#: (short citation used in the text, bibliography entry) per tool, in the order they are cited
CITATIONS: dict[str, tuple[str, str]] = {
    "cell2location": (
        "Kleshchevnikov et al. 2022",
        "Kleshchevnikov V, Shmatko A, Dann E, Aivazidis A, King HW, Li T, Elmentaite R, Lomakin A, Kedlian V, "
        "Gayoso A, Jain MS, Park JS, Ramona L, Tuck E, Arutyunyan A, Vento-Tormo R, Gerstung M, James L, "
        "Stegle O, Bayraktar OA. Cell2location maps fine-grained cell types in spatial transcriptomics. "
        "<em>Nat Biotechnol</em> 40, 661–671 (2022). "
        "<a href='https://doi.org/10.1038/s41587-021-01139-4'>doi:10.1038/s41587-021-01139-4</a>"),
    "pyro": (
        "Bingham et al. 2019",
        "Bingham E, Chen JP, Jankowiak M, Obermeyer F, Pradhan N, Karaletsos T, Singh R, Szerlip P, Horsfall P, "
        "Goodman ND. Pyro: Deep Universal Probabilistic Programming. <em>J Mach Learn Res</em> 20(28), 1–6 "
        "(2019). <a href='https://jmlr.org/papers/v20/18-403.html'>jmlr.org/papers/v20/18-403</a>"),
    "pytorch": (
        "Paszke et al. 2019",
        "Paszke A, Gross S, Massa F, et al. PyTorch: An Imperative Style, High-Performance Deep Learning "
        "Library. <em>Advances in Neural Information Processing Systems</em> 32, 8024–8035 (2019). "
        "<a href='https://doi.org/10.48550/arXiv.1912.01703'>doi:10.48550/arXiv.1912.01703</a>"),
    "scanpy": (
        "Wolf et al. 2018",
        "Wolf FA, Angerer P, Theis FJ. SCANPY: large-scale single-cell gene expression data analysis. "
        "<em>Genome Biol</em> 19, 15 (2018). "
        "<a href='https://doi.org/10.1186/s13059-017-1382-0'>doi:10.1186/s13059-017-1382-0</a>"),
    "anndata": (
        "Virshup et al. 2024",
        "Virshup I, Rybakov S, Theis FJ, Angerer P, Wolf FA. anndata: Access and store annotated data "
        "matrices. <em>J Open Source Softw</em> 9(101), 4371 (2024). "
        "<a href='https://doi.org/10.21105/joss.04371'>doi:10.21105/joss.04371</a>"),
    "scikit-learn": (
        "Pedregosa et al. 2011",
        "Pedregosa F, Varoquaux G, Gramfort A, et al. Scikit-learn: Machine Learning in Python. <em>J Mach Learn "
        "Res</em> 12, 2825–2830 (2011). <a href='https://jmlr.org/papers/v12/pedregosa11a.html'>"
        "jmlr.org/papers/v12/pedregosa11a</a>"),
    "multiqc": (
        "Ewels et al. 2016",
        "Ewels P, Magnusson M, Lundin S, Käller M. MultiQC: summarize analysis results for multiple tools and "
        "samples in a single report. <em>Bioinformatics</em> 32(19), 3047–3048 (2016). "
        "<a href='https://doi.org/10.1093/bioinformatics/btw354'>doi:10.1093/bioinformatics/btw354</a>"),
    "nextflow": (
        "Di Tommaso et al. 2017",
        "Di Tommaso P, Chatzou M, Floden EW, Barja PP, Palumbo E, Notredame C. Nextflow enables reproducible "
        "computational workflows. <em>Nat Biotechnol</em> 35, 316–319 (2017). "
        "<a href='https://doi.org/10.1038/nbt.3820'>doi:10.1038/nbt.3820</a>"),
    "nf-core": (
        "Ewels et al. 2020",
        "Ewels PA, Peltzer A, Fillinger S, Patel H, Alneberg J, Wilm A, Garcia MU, Di Tommaso P, Nahnsen S. "
        "The nf-core framework for community-curated bioinformatics pipelines. <em>Nat Biotechnol</em> 38, "
        "276–278 (2020). <a href='https://doi.org/10.1038/s41587-020-0439-x'>doi:10.1038/s41587-020-0439-x</a>"),
}


def _fmt(value) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _write_yaml(path: Path, doc: dict) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False, width=10_000, allow_unicode=True))
    return path


def read_params(params_files: list[Path]) -> tuple[dict, dict | None, Path | None]:
    """``(params, defaults or None, file)`` from ``params.json`` ({"params", "defaults"} or flat)."""
    ranked = sorted(params_files, key=lambda p: (p.parent.name != "pipeline_info", p.name != "params.json", str(p)))
    for p in ranked:
        try:
            doc = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("report: %s is not valid JSON (%s); ignored", p, exc)
            continue
        if not isinstance(doc, dict):
            continue
        if isinstance(doc.get("params"), dict):
            defaults = doc.get("defaults") if isinstance(doc.get("defaults"), dict) else None
            return doc["params"], defaults, p
        return doc, None, p
    return {}, None, None


def changed_params(params: dict, defaults: dict | None) -> dict:
    """Parameters whose value differs from the default (all of them when defaults are unknown)."""
    if defaults is None:
        return {k: v for k, v in params.items() if v is not None and v != ""}
    return {k: v for k, v in params.items() if k not in defaults or defaults[k] != v}


def write_workflow_summary(params_files: list[Path], nextflow_summaries: list[Path], target: Path,
                           section_id: str = SUMMARY_ID) -> dict:
    """The workflow-summary section; returns the parameters of the run (empty when unknown)."""
    params, defaults, src = read_params(params_files)
    if src is not None:
        changed = changed_params(params, defaults)
        if defaults is None:
            head = (f"<p>All parameters of this run (from <code>{html.escape(src.name)}</code>; the defaults "
                    "were not recorded, so unchanged ones are listed too).</p>")
        elif changed:
            head = ("<p>Parameters of this run that differ from their defaults; every other parameter had its "
                    "default value.</p>")
        else:
            head = "<p>Every parameter had its default value.</p>"
        rows = "\n".join(f"<dt>{html.escape(str(k))}</dt><dd><samp>{html.escape(_fmt(v))}</samp></dd>"
                         for k, v in sorted(changed.items()))
        if defaults is not None and changed:
            rows = "\n".join(
                f"<dt>{html.escape(str(k))}</dt><dd><samp>{html.escape(_fmt(v))}</samp>"
                f"{'' if k not in defaults else ' <small class=text-muted>(default: ' + html.escape(_fmt(defaults[k])) + ')</small>'}"
                f"</dd>" for k, v in sorted(changed.items()))
        body = f'{head}<dl class="dl-horizontal">\n{rows}\n</dl>' if rows else head
        _write_yaml(target, {"id": section_id, "section_name": SUMMARY_TITLE,
                             "description": "Parameters of this run that differ from the defaults.",
                             "plot_type": "html", "data": body})
        return params
    for p in nextflow_summaries:  # the pipeline's own workflow_summary_mqc.yaml
        try:
            doc = yaml.safe_load(p.read_text())
        except yaml.YAMLError:
            continue
        if isinstance(doc, dict) and doc.get("data"):
            doc["id"] = section_id
            doc.setdefault("section_name", SUMMARY_TITLE)
            doc["plot_type"] = "html"
            _write_yaml(target, doc)
            return {}
    _write_yaml(target, {"id": section_id, "section_name": SUMMARY_TITLE, "plot_type": "html",
                         "data": "<div class='alert alert-warning'>No <code>params.json</code> was found in the "
                                 "results folder: the parameters of this run are unknown.</div>"})
    return {}


def write_versions(version_files: list[Path], outdir: Path) -> list[Path]:
    """Copy the pipeline's ``*_mqc_versions.yml`` (nf-core format), or write spotmap's own.

    The nf-core format is ``{process: {tool: version}}``; MultiQC shows it as "Software Versions".
    """
    from importlib.metadata import version

    from spotmap.utils import software_versions

    out = []
    for i, p in enumerate(version_files):
        try:
            doc = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            log.warning("report: %s is not valid YAML (%s); ignored", p, exc)
            continue
        if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
            log.warning("report: %s is not in nf-core's versions format ({process: {tool: version}}); ignored", p)
            continue
        clean = {str(k): {str(t): str(v) for t, v in tools.items()} for k, tools in doc.items()}
        out.append(_write_yaml(outdir / f"{i:02d}_{p.stem.removesuffix('_mqc_versions')}_mqc_versions.yml", clean))
    report_versions = {"spotmap": software_versions(cuda=False)["spotmap"], "multiqc": version("multiqc")}
    if not out:
        sw = {k: str(v) for k, v in software_versions().items()}
        python = sw.pop("python", None)
        doc = {"SPOTMAP": sw, "Workflow": {"spotmap": sw["spotmap"], **({"Python": python} if python else {})}}
        out.append(_write_yaml(outdir / "spotmap_software_mqc_versions.yml", doc))
    out.append(_write_yaml(outdir / "spotmap_report_mqc_versions.yml", {"SPOTMAP_REPORT": report_versions}))
    return out


class _Template(string.Template):
    """``${workflow.manifest.version}``-style placeholders, as nf-core's Groovy templates use."""

    idpattern = r"(?a:[_a-z][_a-z0-9.]*)"
    flags = 0


def methods_values(params: dict, found=None, used_nextflow: bool = False) -> dict[str, str]:
    """Values for the placeholders of ``methods_description_template.yml``."""
    import spotmap

    coloc = found is not None and "colocation" in found.parents()
    tools = ["cell2location", "pyro", "pytorch", "scanpy", "anndata", *(["scikit-learn"] if coloc else []),
             "multiqc", "nextflow", "nf-core"]
    citations = {t: CITATIONS[t][0] for t in tools}
    bib = "".join(f"<li>{CITATIONS[t][1]}</li>" for t in tools)
    settings = []
    for key, label in (("restarts", "restarts"), ("n_restarts", "restarts"), ("seeds", "restart seeds"),
                       ("map_max_epochs", "mapping epochs"), ("signatures_max_epochs", "reference epochs"), ("n_cells_per_location", "expected cells per spot (N)"),
                       ("N_cells_per_location", "expected cells per spot (N)"),
                       ("detection_alpha", "detection_alpha"), ("mapping_mode", "mapping mode")):
        if key in params and params[key] not in (None, ""):
            value = _fmt(params[key])
            if key == "mapping_mode" and params[key] == "auto":
                value = "auto (one model per sample when any sample is Visium HD, otherwise all samples jointly)"
            settings.append(f"{label} = {html.escape(value)}")
    settings_text = (" Key settings of this run: " + "; ".join(settings) + ".") if settings else ""
    keep = str(params.get("keep_flagged", False)).lower() == "true"
    consensus_text = ("all restarts, flagged ones included, were pooled into a consensus (the equal-weight mixture "
                      "of their posteriors)." if keep else
                      "the other restarts were pooled into a consensus (the equal-weight mixture of their "
                      "posteriors; when every restart was flagged, the one with the best final loss alone).")
    return {
        "workflow.manifest.name": "spotmap",
        "workflow.manifest.version": spotmap.__version__,
        "doi_text": "",
        "nodoi_text": "",
        "settings_text": settings_text,
        "consensus_text": consensus_text,
        "colocation_text": colocation_text(params) if coloc else "",
        "tool_citations": "; ".join(f"{t} ({c})" for t, c in citations.items()),
        "tool_bibliography": bib,
        **{f"cite.{t.replace('-', '_')}": c for t, c in citations.items()},
    }


def colocation_text(params: dict) -> str:
    """The methods' sentences on co-location (cell2location's third part), with this run's numbers if set."""
    from spotmap.colocation.settings import ColocationSettings, range_text

    s = ColocationSettings()
    n_f = params.get("colocation_n_factors")
    numbers = html.escape(str(params.get("colocation_n_factors_range") or range_text(s.factor_range)))
    factors = (f"with {int(n_f)} factors" if n_f not in (None, "") else
               f"with the number of factors chosen in {numbers} as the smallest past which one more factor "
               f"explains less than {s.gain_threshold:g} cell types' worth of variance")
    n_r = params.get("colocation_n_regions")
    regions = (f"{int(n_r)} regions" if n_r not in (None, "") else
               "the number of regions chosen by the largest mean silhouette")
    return (" Co-located cell types were found by a non-negative matrix factorisation of the spots × cell types "
            f"abundance (scikit-learn, {CITATIONS['scikit-learn'][0]}; as cell2location's "
            f"CoLocatedGroupsSklearnNMF, each cell type scaled to unit variance) {factors}, and tissue regions by "
            f"k-means clustering of the spots' shares of cells in each co-location factor, {regions}.")


def write_methods(assets: Path, target: Path, params: dict, found=None,
                  section_id: str = METHODS_ID) -> Path:
    """Fill ``assets/methods_description_template.yml`` and write it as a custom-content section."""
    from spotmap.errors import input_error

    tpl_path = assets / "methods_description_template.yml"
    if not tpl_path.is_file():
        raise input_error(tpl_path, "methods description template not found")
    doc = yaml.safe_load(tpl_path.read_text())
    if not isinstance(doc, dict) or "data" not in doc:
        raise input_error(tpl_path, "not a MultiQC custom-content YAML with a 'data' block")
    values = methods_values(params, found)
    try:
        doc["data"] = _Template(str(doc["data"])).substitute(values)
    except (KeyError, ValueError) as exc:
        raise input_error(tpl_path, f"unknown or malformed placeholder {exc}") from None
    doc["id"] = section_id
    return _write_yaml(target, doc)
