"""Build the MultiQC report of a results folder (``spotmap report``).

The report is made by the real MultiQC from custom-content files, in three stages:

1. **Collect** every ``*_mqc.*`` file the steps wrote under the results folder (recursively, by
   file name, so a flat folder of files staged by Nextflow works too), plus
   ``pipeline_info/params.json``, versions files and the consensus ``summary.txt``.
2. **Normalise** them into ``<outdir>/report_content/``: each file is rewritten with a complete
   custom-content header that places it in one of the report's sections (``parent_id``), and each
   PNG is wrapped in a small YAML file (``plot_type: image``) so it gets a title and a legend.
   Files that deviate from the agreed names are still placed by what they contain. Sections with
   no files get a note that the step did not run.
3. **Generate** the report-time content (cell abundance maps, software versions, workflow
   summary, methods description) and run ``python -m multiqc`` on the content folder with
   ``assets/multiqc_config.yml`` plus a generated file that fixes the order of every section.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from spotmap.errors import SpotmapError, input_error
from spotmap.utils import atomic_path, log

# ---------------------------------------------------------------------------------------------
# The report's sections
# ---------------------------------------------------------------------------------------------

#: key -> (parent id, title, description, where its files come from). The order is the report's.
PARENTS: dict[str, tuple[str, str, str, str]] = {
    "qc": ("spotmap_qc_section", "Samples and QC",
           "Spots of each sample before and after quality filtering, and the distributions the filter used.",
           "qc"),
    "signatures": ("spotmap_signatures_section", "Reference signatures",
                   "Cell-type expression signatures estimated from the single-cell reference "
                   "(negative-binomial regression, as cell2location's RegressionModel).", "signatures"),
    "mapping": ("spotmap_mapping_section", "Mapping",
                "Training and fit of the cell2location mapping model: one run per restart (random seed).",
                "map"),
    "stability": ("spotmap_stability_section", "Restart stability",
                  "Do independent restarts of the mapping agree? Cell types whose maps change between "
                  "restarts are flagged and should be interpreted with care.", "aggregate"),
    "abundance": ("spotmap_abundance_section", "Cell abundance maps",
                  "Where each cell type is: estimated number of cells per spot over the tissue image.",
                  "map / aggregate"),
    "other": ("spotmap_other_section", "Other outputs", "Other MultiQC files found in the results folder.", ""),
}
SECTION_KEYS = [k for k in PARENTS if k != "other"]

#: ids of the pipeline-information sections (nf-core style) and of MultiQC's software versions
SUMMARY_ID = "spotmap-summary"
METHODS_ID = "spotmap-methods-description"
VERSIONS_ANCHOR = "multiqc_software_versions"

#: every section (MultiQC anchor) a complete report shows, in order
REPORT_SECTION_IDS = [PARENTS[k][0] for k in SECTION_KEYS] + [METHODS_ID, VERSIONS_ANCHOR, SUMMARY_ID]

#: known images: file-name suffix -> (kind, title template, legend). ``{label}`` is the sample or run.
IMAGE_KINDS: list[tuple[str, str, str, str]] = [
    ("_qc_histograms_mqc", "qc_histograms", "QC distributions: {label}",
     "Distributions of per-spot QC metrics in sample {label} (total UMI counts, genes detected, "
     "mitochondrial fraction), with the thresholds used to filter spots."),
    ("_qc_spatial_mqc", "qc_spatial", "QC metrics over the tissue: {label}",
     "Per-spot QC metrics of sample {label} drawn over the tissue image; spots removed by the filter stand out."),
    ("qc_batch_umap_mqc", "qc_batch_umap", "Samples in a joint embedding (UMAP)",
     "Spots of all samples in one UMAP, coloured by sample: strong separation by sample points to batch effects."),
    ("signatures_vs_average_mqc", "signatures_vs_average", "Signatures vs cluster averages",
     "Estimated signature of each cell type against the plain average expression of its cells, every "
     "gene and type one point; points near the diagonal mean the model agrees with the data, a "
     "systematic offset shows the batch, technology and background corrections."),
    ("signatures_umap_mqc", "signatures_umap", "Reference cells (UMAP)",
     "Reference cells coloured by annotated cell type and by batch."),
    ("signatures_history_mqc", "signatures_history", "Reference training curve (image)",
     "Loss (-ELBO) of the reference model against training epoch."),
    ("_reconstruction_mqc", "reconstruction", "Reconstruction accuracy: {label}",
     "Observed counts against the counts expected by the fitted model, as a 2-D histogram over "
     "spots × genes (colour: number of entries, log scale). A tight cloud along the diagonal means the "
     "cell types and their abundances explain the data; a broad or bent cloud points to missing cell "
     "types or a poor fit."),
    ("_spatial_qc_mqc", "spatial_qc", "Detection efficiency and total cell abundance: {label}",
     "Per spot: detection efficiency y_s (how much of a spot's RNA was captured) and total estimated "
     "cell abundance, over the tissue for each sample. Total abundance should follow tissue density, "
     "detection should look like technical variation rather than anatomy."),
]

#: plain-language descriptions for the agreed custom-content ids (used when a file has none)
KNOWN_IDS: dict[str, tuple[str, str, str]] = {
    "spotmap_qc": ("qc", "QC summary per sample",
                   "One row per sample: spots before and after filtering, median total counts (UMIs) and "
                   "genes detected per spot, and the mitochondrial fraction."),
    "spotmap_signatures_history": ("signatures", "Reference training curve",
                                   "Loss (-ELBO) of the reference regression model against epoch; it should "
                                   "fall and flatten out (converge)."),
    "spotmap_gene_filter": ("signatures", "Genes kept by the filter",
                            "Genes of the reference kept for the signatures by the permissive gene filter "
                            "(cell2location's filter_genes)."),
    "spotmap_mapping_history": ("mapping", "Mapping training curves",
                                "Loss (-ELBO) of the mapping model against epoch, one line per restart "
                                "(random seed). All restarts should converge to a similar value."),
    "spotmap_restarts": ("stability", "Restarts",
                         "One row per restart: final loss and how well it agrees with the consensus."),
    "spotmap_stability": ("stability", "Stability per cell type",
                          "Agreement of each cell type's abundance map between restarts; low values are flagged."),
    "spotmap_stability_heatmap": ("stability", "Stability heatmap",
                                  "Per cell type (rows) and restart pair (columns): correlation of the abundance "
                                  "maps; light colours mark cell types whose map depends on the restart."),
}

#: rank of a section inside its parent (smaller first); images by kind, then everything else
_RANK = {"spotmap_qc": 0, "qc_histograms": 1, "qc_spatial": 2, "qc_batch_umap": 3,
         "spotmap_signatures_history": 0, "signatures_vs_average": 1, "spotmap_gene_filter": 2,
         "signatures_umap": 3, "signatures_history": 4,
         "spotmap_mapping_history": 0, "reconstruction": 1, "spatial_qc": 2,
         "stability_summary": 0, "spotmap_stability_heatmap": 1, "spotmap_stability": 2, "spotmap_restarts": 3,
         "abundance_grid": 0, "abundance_overlay": 1}


@dataclass
class Section:
    """One custom-content section written into the content folder."""

    parent: str
    section_id: str
    rank: tuple
    source: str = ""


@dataclass
class Collected:
    """What was found in the results folder and how it was placed."""

    sections: list[Section] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # deviations worked around (logged and shown in "Other")

    def parents(self) -> set[str]:
        return {s.parent for s in self.sections}


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_") or "x"


def assets_dir() -> Path:
    """The pipeline's ``assets/`` folder (``$SPOTMAP_ASSETS``, the package's or the checkout's)."""
    env = os.environ.get("SPOTMAP_ASSETS")
    here = Path(__file__).resolve()
    for cand in ([Path(env)] if env else []) + [here.parents[1] / "assets", here.parents[3] / "assets"]:
        if (cand / "multiqc_config.yml").is_file():
            return cand
    raise SpotmapError("assets/multiqc_config.yml not found: set SPOTMAP_ASSETS to the pipeline's assets folder")


def _write_yaml(path: Path, content: dict) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(content, sort_keys=False, width=10_000, allow_unicode=True))
    return path


def _parent_fields(key: str) -> dict:
    pid, name, desc, _ = PARENTS[key]
    return {"parent_id": pid, "parent_name": name, "parent_description": desc}


def _label_from(path: Path, suffix_stem: str) -> str:
    """Sample or run label: the file-name prefix, plus the restart folder it sits in."""
    stem = path.name.split(".")[0]
    label = stem[: stem.find(suffix_stem)] if suffix_stem in stem else stem
    label = label.strip("_")
    restart = next((p for p in reversed(path.parent.parts) if p.startswith("restart")), None)
    if restart and restart not in label:
        label = f"{label}, {restart.replace('_', ' ')}" if label else restart.replace("_", " ")
    if not label and path.parent.name == "consensus":
        label = "consensus"
    return label


def _classify(path: Path, cid: str | None = None) -> str:
    """Which report section a file belongs to, by its id, its name, then its folder."""
    name = path.name.lower()
    cid = (cid or "").lower()
    if cid in KNOWN_IDS:
        return KNOWN_IDS[cid][0]
    if "stability" in name or name.startswith("restarts") or "stability" in cid or "restarts" in cid:
        return "stability"
    if name.startswith("signature") or "signature" in cid or "gene_filter" in cid or "gene_filter" in name:
        return "signatures"
    if any(s in name for s in ("_spatial_qc_mqc", "reconstruction", "_training_mqc")) or "mapping" in cid:
        return "mapping"
    if any(s in name for s in ("_qc_summary", "_qc_histograms", "_qc_spatial", "qc_batch")) or cid.startswith(
            "spotmap_qc"):
        return "qc"
    parts = [p.lower() for p in path.parent.parts]
    if "consensus" in parts:
        return "stability"
    for key, folder in (("qc", "qc"), ("signatures", "signatures"), ("mapping", "mapping")):
        if folder in parts:
            return key
    return "other"


def _numeric_keys(points):
    """``{'1.0': y}`` → ``{1.0: y}``: MultiQC treats string x values as unordered categories."""
    if not isinstance(points, dict):
        return points
    try:
        return {float(x): y for x, y in points.items()}
    except (TypeError, ValueError):
        return points


def _tidy_table(conf: dict, lines: list[str], sep: str) -> list[str]:
    """Readable defaults for a table: decimals for fractional columns without a format, and
    True/False "flag" columns shown as "flagged" (red) / "ok" (green) — MultiQC would colour a
    flagged "True" green."""
    import io

    import pandas as pd

    try:
        df = pd.read_csv(io.StringIO("\n".join(lines)), sep=sep, dtype=str, keep_default_na=False)
    except Exception:  # noqa: BLE001 - leave a table pandas cannot read as it is
        return lines
    if df.shape[1] < 2:
        return lines
    had_headers = isinstance(conf.get("headers"), dict) and bool(conf["headers"])
    headers = dict(conf["headers"]) if had_headers else {}
    changed = False
    for col in df.columns[1:]:
        vals = df[col].str.strip()
        h = headers.setdefault(col, {}) if isinstance(headers.get(col, {}), dict) else {}
        if "flag" in str(col).lower() and set(vals.str.lower()) <= {"true", "false", "", "na"}:
            df[col] = vals.str.lower().map({"true": "flagged", "false": "ok"}).fillna(vals)
            h.setdefault("cond_formatting_rules", {"fail": [{"s_eq": "flagged"}]})
            h.setdefault("cond_formatting_colours", [{"fail": "#d9534f"}])
            changed = True
            continue
        num = pd.to_numeric(vals.replace({"NA": None, "": None}), errors="coerce")
        if num.notna().any() and num.notna().sum() == (vals.str.len() > 0).sum() - (vals == "NA").sum() \
                and "format" not in h and not (num.dropna() % 1 == 0).all():
            h["format"] = "{:,.3f}" if num.abs().max() < 10 else "{:,.1f}"
    headers = {k: v for k, v in headers.items() if v}
    if headers and not had_headers:
        # MultiQC shows only the columns named in `headers`: name them all, in order
        headers = {c: headers.get(c) or {"title": str(c)} for c in df.columns[1:]}
    if headers:
        conf["headers"] = headers
    else:
        conf.pop("headers", None)
    if not changed:
        return lines
    return df.to_csv(sep=sep, index=False).splitlines()


def _read_tsv_header(text: str) -> tuple[dict, list[str]]:
    """MultiQC's convention: leading ``# key: value`` lines are the YAML config."""
    lines = text.splitlines()
    head = []
    while lines and lines[0].startswith("#"):
        head.append(lines.pop(0))
    conf: dict = {}
    if head:
        try:
            loaded = yaml.safe_load("\n".join(h[2:] if h.startswith("# ") else h[1:] for h in head))
            conf = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError:
            conf = {}
    return conf, lines


# ---------------------------------------------------------------------------------------------
# Stage 1 + 2: collect and normalise the steps' files
# ---------------------------------------------------------------------------------------------

class ContentWriter:
    """Writes normalised custom-content files into the content folder and remembers their order."""

    def __init__(self, results: Path, content: Path):
        self.results = results
        self.content = content
        self.found = Collected()
        self._linegraph_series: dict[str, set[str]] = {}
        self._used_ids: set[str] = set()
        #: consensus folder -> its samples, when there are several (per-sample mapping)
        self.groups: dict[Path, str] = {}

    # -- bookkeeping ---------------------------------------------------------------------------
    def _target(self, src: Path, new_name: str | None = None) -> Path:
        try:
            rel = src.relative_to(self.results)
        except ValueError:
            rel = Path(src.name)
        return self.content / "steps" / rel.parent / (new_name or src.name)

    def _unique_id(self, base: str) -> str:
        sid, i = base, 2
        while sid in self._used_ids:
            sid, i = f"{base}_{i}", i + 1
        self._used_ids.add(sid)
        return sid

    def add(self, parent: str, section_id: str, rank: tuple, source: str = "") -> None:
        self.found.sections.append(Section(parent, section_id, rank, source))

    def note(self, msg: str) -> None:
        log.warning("report: %s", msg)
        self.found.notes.append(msg)

    @staticmethod
    def _section_name(conf: dict, key: str, default: str) -> None:
        """Keep the file's section name unless it repeats the section's (MultiQC would then drop the
        sub-heading and its description)."""
        name = str(conf.get("section_name") or "").strip()
        if not name or name.lower() == PARENTS[key][1].lower():
            conf["section_name"] = default

    # -- tables --------------------------------------------------------------------------------
    def table(self, src: Path) -> None:
        conf, lines = _read_tsv_header(src.read_text(errors="replace"))
        if not [ln for ln in lines if ln.strip()]:
            self.note(f"{src.name}: no data rows; left out")
            return
        cid = str(conf.get("id") or "")
        if not cid:
            cid = "spotmap_" + _slug(src.name.split("_mqc")[0]).lower()
            self.note(f"{src.name}: no '# id:' header line; shown as '{cid}'")
        key = self._place(conf, src, cid)
        conf.setdefault("plot_type", "table")
        if src.suffix == ".csv":
            conf.setdefault("format", "csv")
        elif src.suffix == ".tsv":
            conf.setdefault("format", "tsv")
        conf.update(_parent_fields(key))
        if conf.get("plot_type") == "table":
            lines = _tidy_table(conf, lines, "," if conf.get("format") == "csv" else "\t")
        cid, rank = self._grouped(src, conf, cid)
        if cid not in self._used_ids:
            self._used_ids.add(cid)
            self.add(key, cid, rank, str(src))
        body = "\n".join(f"# {ln}" for ln in yaml.safe_dump(conf, sort_keys=False, width=10_000).splitlines())
        with atomic_path(self._target(src)) as tmp:
            tmp.write_text(body + "\n" + "\n".join(lines) + "\n")

    def _grouped(self, src: Path, conf: dict, cid: str) -> tuple[str, tuple]:
        """Id and rank of a section; with several consensus folders (per-sample mapping) each folder's
        files get their own sections, titled with its samples (one id would merge the samples' tables
        row by row, the rows being cell types and restarts in both)."""
        label = self.groups.get(src.parent)
        if label is None:
            return cid, (_RANK.get(cid, 5), conf["section_name"])
        suffix = "_" + _slug(label).lower()
        conf["id"] = cid + suffix
        conf["section_name"] = f"{conf['section_name']}: {label}"
        pc = conf.get("pconfig")
        if isinstance(pc, dict):
            if pc.get("id"):
                pc["id"] = str(pc["id"]) + suffix
            if pc.get("title"):
                pc["title"] = f"{pc['title']}: {label}"
        return cid + suffix, (label, _RANK.get(cid, 5))

    def _place(self, conf: dict, src: Path, cid: str) -> str:
        """Set id, section name and description of a custom-content file; return its report section key."""
        key = _classify(src, cid)
        default = KNOWN_IDS.get(cid, (key, src.name.split("_mqc")[0].replace("_", " "), ""))
        conf["id"] = cid
        self._section_name(conf, key, default[1])
        if not conf.get("description"):
            conf["description"] = default[2]
        return key

    # -- yaml / json ---------------------------------------------------------------------------
    def structured(self, src: Path) -> None:
        try:
            text = src.read_text(errors="replace")
            doc = json.loads(text) if src.suffix == ".json" else yaml.safe_load(text)
        except (yaml.YAMLError, json.JSONDecodeError) as exc:
            self.note(f"{src.name}: not valid YAML/JSON ({str(exc).splitlines()[0]}); left out")
            return
        if not isinstance(doc, dict) or not doc.get("data"):
            self.note(f"{src.name}: no 'data' block; left out")
            return
        cid = str(doc.get("id") or "spotmap_" + _slug(src.name.split("_mqc")[0]).lower())
        key = self._place(doc, src, cid)
        if not doc.get("plot_type"):
            self.note(f"{src.name}: no plot_type; assumed linegraph")
            doc["plot_type"] = "linegraph"
        if doc["plot_type"] == "linegraph" and isinstance(doc["data"], dict):
            # every restart a series: a series name seen in an earlier file gets the restart folder added
            seen = self._linegraph_series.setdefault(cid, set())
            data = {}
            for name, pts in doc["data"].items():
                name = str(name)
                if name in seen:
                    new = f"{name} ({_label_from(src, '_training') or src.parent.name})"
                    self.note(f"{src.name}: series '{name}' also in another file with id '{cid}'; shown as '{new}'")
                    name = new
                seen.add(name)
                data[name] = _numeric_keys(pts)
            doc["data"] = data
            pc = doc.setdefault("pconfig", {}) or {}
            pc.setdefault("id", f"{cid}_plot")
            pc.setdefault("title", f"spotmap: {doc['section_name']}")
            pc.setdefault("xlab", "epoch")
            pc.setdefault("ylab", "-ELBO (loss)")
            doc["pconfig"] = pc
        doc.update(_parent_fields(key))
        cid, rank = self._grouped(src, doc, cid)
        if cid not in self._used_ids:
            self._used_ids.add(cid)
            self.add(key, cid, rank, str(src))
        _write_yaml(self._target(src, src.name.rsplit(".", 1)[0] + ".yaml"), doc)

    # -- html fragments (config in a leading HTML comment) -------------------------------------
    def html_file(self, src: Path) -> None:
        text = src.read_text(errors="replace")
        conf: dict = {}
        m = re.match(r"\s*<!--(.*?)-->", text, re.S)
        if m:
            try:
                loaded = yaml.safe_load(m.group(1))
                conf = loaded if isinstance(loaded, dict) else {}
            except yaml.YAMLError:
                conf = {}
            text = text[m.end():]
        if not text.strip():
            return
        cid = str(conf.get("id") or "spotmap_" + _slug(src.name.split("_mqc")[0]).lower())
        key = _classify(src, cid)
        title = conf.get("section_name") or src.name.split("_mqc")[0].replace("_", " ")
        label = self.groups.get(src.parent)
        title = f"{title}: {label}" if label else title
        sid = self._unique_id(_slug(cid))
        doc = {"id": sid, "section_name": title, "description": conf.get("description", ""), "plot_type": "html",
               **_parent_fields(key), "data": text}
        _write_yaml(self._target(src, f"{sid}_mqc.yaml"), doc)
        rank = _RANK.get("stability_summary", 0) if key == "stability" else 5
        self.add(key, sid, (label, rank) if label else (rank, title), str(src))

    # -- images --------------------------------------------------------------------------------
    def image(self, src: Path, skip_kinds: set[str]) -> None:
        stem = src.name.rsplit(".", 1)[0]
        kind, title, legend = None, None, None
        for suffix, k, t, d in IMAGE_KINDS:
            if stem.endswith(suffix):
                label = _label_from(src, suffix)
                kind, title, legend = k, t.format(label=label), d.format(label=label)
                break
        if kind in skip_kinds:
            return
        if kind is None:
            kind = "image"
            title = stem.replace("_mqc", "").replace("_", " ")
            legend = ""
        key = _classify(src)
        sid = self._unique_id(_slug(f"spotmap_img_{stem.replace('_mqc', '')}_{src.parent.name}").lower())
        self.image_section(key, sid, title, legend, src.read_bytes(), (_RANK.get(kind, 5), title),
                           self._target(src, f"{sid}_mqc.yaml"), str(src))

    def image_section(self, key: str, sid: str, title: str, legend: str, png: bytes, rank: tuple,
                      target: Path, source: str = "", compact: bool = True) -> None:
        b64 = base64.b64encode(compact_png(png) if compact else png).decode("ascii")
        doc = {"id": sid, "section_name": title, "description": legend, "plot_type": "image",
               **_parent_fields(key),
               "data": f'<div class="mqc-custom-content-image"><img src="data:image/png;base64,{b64}" '
                       f'alt="{html.escape(title)}" style="max-width:100%"/></div>'}
        # JSON is YAML, and PyYAML's emitter takes seconds over a long base64 string
        with atomic_path(target) as tmp:
            tmp.write_text(json.dumps(doc, ensure_ascii=False, indent=1))
        self.add(key, sid, rank, source)

    def html_section(self, key: str, sid: str, title: str, body: str, rank: tuple, description: str = "") -> None:
        doc = {"id": sid, "section_name": title, "description": description, "plot_type": "html",
               **_parent_fields(key), "data": body}
        _write_yaml(self.content / "generated" / f"{sid}_mqc.yaml", doc)
        self.add(key, sid, rank)


def compact_png(png: bytes, colors: int = 256) -> bytes:
    """The PNG with a 256-colour palette (no dithering) when that is smaller — about a third of the
    size for plots. MultiQC 1.35 embeds every image twice (section and AI metadata), so this keeps
    the report small. Images that are not PNG, or do not shrink, are returned unchanged."""
    import io

    try:
        from PIL import Image

        with Image.open(io.BytesIO(png)) as im:
            if im.format != "PNG" or im.mode == "P":
                return png
            rgba = im.convert("RGBA")
            rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
        buf = io.BytesIO()
        rgb.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            buf, format="PNG", optimize=True)
    except Exception:  # noqa: BLE001 - any problem: embed the original
        return png
    out = buf.getvalue()
    return out if len(out) < len(png) else png


def collect(results: Path, exclude: Path | None = None) -> dict[str, list[Path]]:
    """Files of the results folder the report uses, by kind (recursive, by file name).

    ``exclude``: a folder to leave out (the report's own output folder when it lies inside).
    """
    excluded = exclude.resolve() if exclude is not None else None
    out: dict[str, list[Path]] = {"table": [], "structured": [], "image": [], "html": [], "versions": [],
                                  "params": [], "summary_txt": [], "workflow_summary": [], "h5ad": []}
    skip_dirs = {"multiqc_data", "report_content", ".nextflow", "work"}
    seen: set[str] = set()
    # followlinks: Nextflow stages inputs as symlinks, folders included; `seen` guards against loops
    for root, dirs, files in os.walk(results, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if d not in skip_dirs and not d.startswith(".")
                         and (excluded is None or (Path(root) / d).resolve() != excluded))
        for fn in sorted(files):
            p = Path(root) / fn
            low = fn.lower()
            if fn.startswith("."):
                continue
            if re.search(r"_mqc_versions\.ya?ml$", low):
                out["versions"].append(p)
            elif low.startswith("workflow_summary") and "_mqc." in low:
                out["workflow_summary"].append(p)
            elif low.startswith("methods_description") and "_mqc." in low:
                continue  # regenerated from assets/methods_description_template.yml
            elif re.search(r"_mqc\.(tsv|csv|txt)$", low):
                out["table"].append(p)
            elif re.search(r"_mqc\.(ya?ml|json)$", low):
                out["structured"].append(p)
            elif re.search(r"_mqc\.(png|jpe?g)$", low):
                out["image"].append(p)
            elif re.search(r"_mqc\.html?$", low):
                out["html"].append(p)
            elif low == "params.json" or re.fullmatch(r"params(_[\w.-]+)?\.json", low):
                out["params"].append(p)
            elif low == "summary.txt":
                out["summary_txt"].append(p)
            elif low == "sp.h5ad":
                out["h5ad"].append(p)
    return out


# ---------------------------------------------------------------------------------------------
# Stage 3: report-time content
# ---------------------------------------------------------------------------------------------

def _elbo_of(h5ad: Path) -> float:
    """Final -ELBO stored in a result's ``uns['mod']['elbo']`` (inf when missing)."""
    try:
        import h5py

        with h5py.File(h5ad, "r") as f:
            return float(f["uns/mod/elbo"][()])
    except Exception:  # noqa: BLE001 - a result without the value simply ranks last
        return float("inf")


def choose_mapping_result(h5ads: list[Path]) -> list[Path]:
    """The consensus result(s); without one, per mapping (the folder holding the restarts: one for
    joint mapping, one per sample in per-sample mode) the restart with the lowest final loss."""
    consensus = [p for p in h5ads if p.parent.name == "consensus"]
    if consensus:
        return consensus
    restarts = [p for p in h5ads if p.parent.name.startswith("restart")] or h5ads
    groups: dict[Path, list[Path]] = {}
    for p in restarts:
        groups.setdefault(p.parent.parent, []).append(p)
    return [min(g, key=lambda p: (_elbo_of(p), str(p))) for _, g in sorted(groups.items(), key=lambda kv: str(kv[0]))]


def read_map_data(h5ad: Path):
    """What the maps need of a result's ``sp.h5ad`` — obs, the q05 abundances, coordinates, images and
    ``uns['mod']``/``uns['spotmap']`` — read element by element, without the count matrix and the other
    summaries (GBs and seconds for a Visium HD sample)."""
    import anndata as ad
    import h5py

    try:
        from anndata.io import read_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem

    from spotmap.results import obsm_key

    key = obsm_key("q05")
    try:
        with h5py.File(h5ad, "r") as f:
            if f"obsm/{key}" not in f:
                raise input_error(h5ad, "missing the q05 cell abundance", field=f"obsm['{key}']")
            if "uns/mod/factor_names" not in f:
                raise input_error(h5ad, "missing cell-type names", field="uns['mod']['factor_names']")
            obsm = {k: read_elem(f[f"obsm/{k}"]) for k in (key, "spatial") if f"obsm/{k}" in f}
            uns = {k: read_elem(f[f"uns/{k}"]) for k in ("spatial", "spotmap", "mod") if f"uns/{k}" in f}
            obs = read_elem(f["obs"])
    except SpotmapError:
        raise
    except Exception as exc:  # noqa: BLE001 - unreadable: one line, the report goes on without the maps
        raise input_error(h5ad, f"cannot be read as AnnData ({type(exc).__name__}: {exc})") from None
    return ad.AnnData(obs=obs, obsm=obsm, uns=uns)


def abundance_maps(adata, summary: str = "q05", samples=None, n_overlay: int = 6, ncols: int = 4) -> list:
    """Figures of cell abundance over the tissue: per sample a grid (one panel per type) and an overlay.

    Returns ``[grid_sample1, overlay_sample1, grid_sample2, ...]`` (matplotlib Figures).
    """
    from spotmap.report.plots import _sample_subsets, abundance_grid, abundance_overlay
    from spotmap.results import table

    figs = []
    ab = table(adata, summary)
    for sample, sub in _sample_subsets(adata, samples):
        sub_ab = ab.loc[sub.obs_names]
        figs.append(abundance_grid(sub, sample, sub_ab, ncols=ncols if ab.shape[1] <= 16 else ncols + 1,
                                   summary_label=summary))
        figs.append(abundance_overlay(sub, sample, sub_ab, n_types=n_overlay, summary_label=summary))
    return figs


def _abundance_content(w: ContentWriter, h5ads: list[Path], dpi: int) -> None:
    import matplotlib.pyplot as plt

    from spotmap.report.mqc import save_mqc_figure
    from spotmap.report.plots import _sample_subsets, abundance_grid, abundance_overlay, grid_layout
    from spotmap.results import table

    chosen = choose_mapping_result(h5ads)
    loaded = []
    for h5 in chosen:
        try:
            adata = read_map_data(h5)
            ab = table(adata, "q05")
        except (SpotmapError, KeyError, OSError) as exc:
            w.note(f"{h5}: cannot draw abundance maps ({str(exc).splitlines()[0]})")
            continue
        loaded.append((h5, adata, ab, _sample_subsets(adata)))
    # a sample in several results (e.g. two mapping folders) gets its folder in the title
    seen: dict[str, int] = {}
    for _, _, _, subsets in loaded:
        for sample, _ in subsets:
            seen[sample] = seen.get(sample, 0) + 1
    i = -1  # the maps of every sample in turn, in the order of the results
    for h5, adata, ab, subsets in loaded:
        origin = ("consensus of all restarts" if h5.parent.name == "consensus"
                  else f"{h5.parent.name.replace('_', ' ')} (no consensus found; the restart with the lowest loss)")
        for sample, sub in subsets:
            i += 1
            tag = f" ({h5.parent.parent.name})" if seen[sample] > 1 else ""
            unit = "bin" if grid_layout(sub) is not None else "spot"
            sub_ab = ab.loc[sub.obs_names]
            for kind, fig, title, legend in (
                ("abundance_grid", abundance_grid(sub, sample, sub_ab, ncols=4 if ab.shape[1] <= 16 else 5),
                 f"Cell abundance per type: {sample}{tag}",
                 f"Sample {sample}, {origin}: for each cell type, the 5% quantile of the posterior of w_sf "
                 f"(q05, the number of cells the model is confident are present) in each {unit}, over the tissue "
                 "image. Each panel has its own colour scale (saturated at the 99.2% quantile)."
                 + (" Visium HD bins are drawn as an image on the bin grid (a pixel is the mean of a block of "
                    "bins when the grid is larger than the panel)." if unit == "bin" else "")),
                ("abundance_overlay", abundance_overlay(sub, sample, sub_ab), f"Most abundant types together: "
                 f"{sample}{tag}",
                 f"Sample {sample}, {origin}: the most abundant cell types in one map, one colour each "
                 f"(as cell2location's plot_spatial). A {unit}'s colour mixes the types present; brightness "
                 "follows abundance relative to each type's own maximum.")):
                png = w.content / "abundance_maps" / f"{_slug(sample + tag)}_{kind}.png"
                save_mqc_figure(fig, png, dpi=dpi)
                plt.close("all")
                sid = w._unique_id(_slug(f"spotmap_{kind}_{sample}{tag}").lower())
                # the overlay's colour mixtures and colour bars would band with a 256-colour palette on
                # Visium's smooth spots; an HD raster is noisy bin to bin and full colour triples its size
                w.image_section("abundance", sid, title, legend, png.read_bytes(), (i, _RANK[kind]),
                                w.content / "generated" / f"{sid}_mqc.yaml", str(h5),
                                compact=kind != "abundance_overlay" or unit == "bin")


def _consensus_labels(folders: list[Path]) -> dict[Path, str]:
    """A title for each consensus folder: the samples of its ``sp.h5ad`` (``obs['sample']``), else the
    folder above it (``mapping/<sample>/consensus``); made unique."""
    import h5py

    try:
        from anndata.io import read_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem

    labels: dict[Path, str] = {}
    for folder in folders:
        label = folder.parent.name
        try:
            with h5py.File(folder / "sp.h5ad", "r") as f:
                names = sorted({str(x) for x in read_elem(f["obs/sample"])})
            if names:
                label = ", ".join(names) if len(names) <= 3 else f"{names[0]} and {len(names) - 1} more samples"
        except Exception:  # noqa: BLE001 - no readable sample names: the folder's name will do
            pass
        labels[folder] = label
    counts: dict[str, int] = {}
    for v in labels.values():
        counts[v] = counts.get(v, 0) + 1
    return {k: (f"{v} ({k.parent.name})" if counts[v] > 1 else v) for k, v in labels.items()}


def _stability_summary(w: ContentWriter, files: list[Path]) -> None:
    for src in files:
        lines = [ln.strip() for ln in src.read_text(errors="replace").splitlines() if ln.strip()]
        if not lines:
            continue
        items = "".join(f"<li>{html.escape(ln.lstrip('-* '))}</li>" for ln in lines)
        flagged = [ln for ln in lines if re.search(r"flag|unstable|warn", ln, re.I)]
        lead = ("<p><strong>Cell types or restarts were flagged:</strong> see below.</p>" if flagged else
                "<p>No cell type or restart was flagged.</p>")
        label = w.groups.get(src.parent)
        w.html_section("stability", w._unique_id("spotmap_stability_summary"),
                       f"In words: {label}" if label else "In words", f"{lead}<ul>{items}</ul>",
                       (label, _RANK["stability_summary"]) if label else
                       (_RANK["stability_summary"], src.parent.parent.name),
                       description=f"From {src.parent.name}/summary.txt.")


def _missing_notes(w: ContentWriter) -> None:
    have = w.found.parents()
    for key in SECTION_KEYS:
        if key in have:
            continue
        _, name, _, step = PARENTS[key]
        body = (f"<div class='alert alert-warning'><strong>The {html.escape(step)} step did not run</strong> "
                f"(or wrote nothing the report could read): no files for “{html.escape(name)}” were "
                f"found under the results folder.</div>")
        w.html_section(key, f"spotmap_{key}_missing", "Step did not run", body, (99,))


def _other_notes(w: ContentWriter) -> None:
    if not w.found.notes:
        return
    items = "".join(f"<li>{html.escape(n)}</li>" for n in w.found.notes)
    w.html_section("other", "spotmap_report_notes", "Notes on the input files",
                   f"<p>The report worked around these problems in the results folder:</p><ul>{items}</ul>", (99,))


# ---------------------------------------------------------------------------------------------
# Ordering and running MultiQC
# ---------------------------------------------------------------------------------------------

def order_config(found: Collected) -> dict:
    """``report_section_order`` for every module (parent) and every section inside it."""
    order: dict[str, dict] = {}
    keys = SECTION_KEYS + ["other"]
    # modules: larger 'order' comes first in MultiQC
    for i, key in enumerate(keys):
        order[PARENTS[key][0]] = {"order": 1000 - 10 * i}
    order[METHODS_ID] = {"order": -1000}
    order[VERSIONS_ANCHOR] = {"order": -1001}
    order[SUMMARY_ID] = {"order": -1002}
    # sections inside a module: smaller 'order' comes first
    for key in keys:
        secs = sorted((s for s in found.sections if s.parent == key),
                      key=lambda s: tuple((0, x, "") if isinstance(x, (int, float)) else (1, 0, str(x))
                                          for x in s.rank))
        for j, s in enumerate(secs):
            order[s.section_id] = {"order": 10 * (j + 1)}
    return {"report_section_order": order,
            "custom_content": {"order": [PARENTS[k][0] for k in keys] + [METHODS_ID, SUMMARY_ID]}}


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
    w = ContentWriter(results, content)
    consensus = sorted({p.parent for kind in files.values() for p in kind if p.parent.name == "consensus"})
    if len(consensus) > 1:  # per-sample mapping: one stability section set per consensus
        w.groups = _consensus_labels(consensus)

    for p in files["table"]:
        w.table(p)
    for p in files["structured"]:
        w.structured(p)
    skip = set()
    if any("signatures_history" in s.section_id for s in w.found.sections):
        skip.add("signatures_history")  # the interactive line graph shows the same
    for p in files["image"]:
        w.image(p, skip)
    # the consensus summary in words: summary.txt, or the aggregate step's own HTML when there is none
    txt_dirs = {p.parent for p in files["summary_txt"]}
    for p in files["html"]:
        if not (p.parent in txt_dirs and "summary" in p.name):
            w.html_file(p)
    _stability_summary(w, files["summary_txt"])
    if files["h5ad"]:
        _abundance_content(w, files["h5ad"], dpi)
    _missing_notes(w)
    _other_notes(w)

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
