"""Stage 2 of the report: each step's file rewritten into the content folder with a complete custom-content
header that places it in its report section (:mod:`spotmap.report.sections`), each PNG wrapped in a small
file (``plot_type: image``) so it gets a title and a legend. Files that break the conventions are still
shown where the registry or their own header puts them, and the report says what was worked around."""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from spotmap.report import sections
from spotmap.utils import atomic_path, log


@dataclass
class Placed:
    """One custom-content section written into the content folder: its parent (a key of
    :data:`~spotmap.report.sections.PARENTS`), MultiQC id and rank inside the parent."""

    parent: str
    section_id: str
    rank: tuple
    source: str = ""


@dataclass
class Collected:
    """What was found in the results folder and how it was placed."""

    sections: list[Placed] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # deviations worked around (logged and shown in "Other")

    def parents(self) -> set[str]:
        return {s.parent for s in self.sections}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_") or "x"


def _write_yaml(path: Path, content: dict) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(content, sort_keys=False, width=10_000, allow_unicode=True))
    return path


def _prefix(path: Path, suffix_stem: str) -> str:
    """The file-name prefix before ``suffix_stem`` (the sample or run)."""
    stem = path.name.split(".")[0]
    return (stem[: stem.find(suffix_stem)] if suffix_stem in stem else stem).strip("_")


def _with_restart(label: str, path: Path) -> str:
    """``label`` plus the restart folder the file sits in (or "consensus")."""
    restart = next((p for p in reversed(path.parent.parts) if p.startswith("restart")), None)
    if restart and restart not in label:
        label = f"{label}, {restart.replace('_', ' ')}" if label else restart.replace("_", " ")
    if not label and path.parent.name == "consensus":
        label = "consensus"
    return label


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
        self.found.sections.append(Placed(parent, section_id, rank, source))

    def note(self, msg: str) -> None:
        log.warning("report: %s", msg)
        self.found.notes.append(msg)

    # -- tables --------------------------------------------------------------------------------
    def table(self, src: Path) -> None:
        conf, lines = _read_tsv_header(src.read_text(errors="replace"))
        if not [ln for ln in lines if ln.strip()]:
            self.note(f"{src.name}: no data rows; left out")
            return
        cid = str(conf.get("id") or "")
        if not cid:
            known = sections.by_file(src.name)
            cid = known[0].id if known else "spotmap_" + _slug(src.name.split("_mqc")[0]).lower()
            self.note(f"{src.name}: no '# id:' header line; shown as '{cid}'")
        key = self._place(conf, src, cid)
        conf.setdefault("plot_type", "table")
        if src.suffix == ".csv":
            conf.setdefault("format", "csv")
        elif src.suffix == ".tsv":
            conf.setdefault("format", "tsv")
        conf.update(sections.parent_fields(key))
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
        rank = sections.BY_ID[cid].order if cid in sections.BY_ID else 5
        if label is None:
            return cid, (rank, conf["section_name"])
        suffix = "_" + _slug(label).lower()
        conf["id"] = cid + suffix
        conf["section_name"] = f"{conf['section_name']}: {label}"
        pc = conf.get("pconfig")
        if isinstance(pc, dict):
            if pc.get("id"):
                pc["id"] = str(pc["id"]) + suffix
            if pc.get("title"):
                pc["title"] = f"{pc['title']}: {label}"
        return cid + suffix, (label, rank)

    def _place(self, conf: dict, src: Path, cid: str) -> str:
        """Set id, section name and description of a custom-content file; return its report section key.

        A section of the registry (by the file's id, else by its published name) gets the registry's title
        and parent; any other file keeps its own title under the parent it names (``parent_id``), else
        "Other outputs"."""
        known = sections.BY_ID.get(cid) or (sections.by_file(src.name) or (None,))[0]
        conf["id"] = cid
        if known is not None:
            key = known.parent
            conf["section_name"] = known.title
            if not conf.get("description") and "{" not in known.description:
                conf["description"] = known.description
            return key
        key = next((k for k, p in sections.PARENTS.items() if p.id == conf.get("parent_id")), "other")
        name = str(conf.get("section_name") or "").strip()
        if not name or name.lower() == sections.PARENTS[key].title.lower():
            # the section's own name would make MultiQC drop the sub-heading and its description
            conf["section_name"] = src.name.split("_mqc")[0].replace("_", " ")
        conf.setdefault("description", "")
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
                    new = f"{name} ({_with_restart(_prefix(src, '_training'), src) or src.parent.name})"
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
        doc.update(sections.parent_fields(key))
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
        key = self._place(conf, src, cid)
        title = conf["section_name"]
        label = self.groups.get(src.parent)
        title = f"{title}: {label}" if label else title
        sid = self._unique_id(_slug(cid))
        doc = {"id": sid, "section_name": title, "description": conf.get("description", ""), "plot_type": "html",
               **sections.parent_fields(key), "data": text}
        _write_yaml(self._target(src, f"{sid}_mqc.yaml"), doc)
        rank = sections.BY_ID[cid].order if cid in sections.BY_ID else 5
        self.add(key, sid, (label, rank) if label else (rank, title), str(src))

    # -- images --------------------------------------------------------------------------------
    def image(self, src: Path, skip: set[str]) -> None:
        """A step's PNG, placed by its published name (:attr:`~spotmap.report.sections.Section.file`); the
        ids in ``skip`` are left out."""
        stem = src.name.rsplit(".", 1)[0]
        known = sections.by_file(src.name)
        group = self.groups.get(src.parent)  # the samples of the mapping, when there are several mappings
        if known is not None:
            sec, label = known
            if sec.id in skip:
                return
            label = _with_restart(label, src) or group or ""
            key, rank = sec.parent, sec.order
            title, legend = sec.title.format(label=label), sec.description.format(label=label)
            if group and "{label}" not in sec.title:
                title = f"{title}: {group}"
        else:
            key, rank = "other", 5
            title, legend = stem.replace("_mqc", "").replace("_", " "), ""
        sid = self._unique_id(_slug(f"spotmap_img_{stem.replace('_mqc', '')}_{src.parent.name}").lower())
        self.image_section(key, sid, title, legend, src.read_bytes(), (rank, title),
                           self._target(src, f"{sid}_mqc.yaml"), str(src))

    def image_section(self, key: str, sid: str, title: str, legend: str, png: bytes, rank: tuple,
                      target: Path, source: str = "", compact: bool = True) -> None:
        b64 = base64.b64encode(compact_png(png) if compact else png).decode("ascii")
        doc = {"id": sid, "section_name": title, "description": legend, "plot_type": "image",
               **sections.parent_fields(key),
               "data": f'<div class="mqc-custom-content-image"><img src="data:image/png;base64,{b64}" '
                       f'alt="{html.escape(title)}" style="max-width:100%"/></div>'}
        # JSON is YAML, and PyYAML's emitter takes seconds over a long base64 string
        with atomic_path(target) as tmp:
            tmp.write_text(json.dumps(doc, ensure_ascii=False, indent=1))
        self.add(key, sid, rank, source)

    def html_section(self, key: str, sid: str, title: str, body: str, rank: tuple, description: str = "") -> None:
        doc = {"id": sid, "section_name": title, "description": description, "plot_type": "html",
               **sections.parent_fields(key), "data": body}
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
