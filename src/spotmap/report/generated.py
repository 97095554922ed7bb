"""Stage 3 of the report: the content the report makes itself — cell abundance maps from the chosen mapping
result, the consensus findings in words, and notes on steps that did not run or files that were odd."""

from __future__ import annotations

import html
import re
from pathlib import Path

from spotmap.errors import SpotmapError
from spotmap.report import sections
from spotmap.report.collect import choose_mapping_result, read_map_data
from spotmap.report.content import ContentWriter, _slug


def _load_maps(w: ContentWriter, h5ads: list[Path]) -> list[tuple]:
    """``[(h5ad, adata, q05 abundances, [(sample, view)])]`` of the mapping results to draw."""
    from spotmap.pl.abundance import sample_subsets
    from spotmap.results import table

    loaded = []
    for h5 in choose_mapping_result(h5ads):
        try:
            adata = read_map_data(h5)
            ab = table(adata, "q05")
        except (SpotmapError, KeyError, OSError) as exc:
            w.note(f"{h5}: cannot draw abundance maps ({str(exc).splitlines()[0]})")
            continue
        loaded.append((h5, adata, ab, sample_subsets(adata)))
    return loaded


def abundance_content(w: ContentWriter, h5ads: list[Path], dpi: int) -> None:
    """Per sample of the consensus (or best restart) results: the abundance grid and overlay sections."""
    import matplotlib.pyplot as plt

    from spotmap.pl.abundance import abundance_grid, abundance_overlay
    from spotmap.pl.spatial import grid_layout
    from spotmap.report.mqc import save_mqc_figure

    loaded = _load_maps(w, h5ads)
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
            fields = dict(label=f"{sample}{tag}", sample=sample, origin=origin, unit=unit,
                          hd_note=sections.ABUNDANCE_GRID_HD_NOTE if unit == "bin" else "")
            for sec, fig in ((sections.ABUNDANCE_GRID,
                              abundance_grid(sub, sample, sub_ab, ncols=4 if ab.shape[1] <= 16 else 5)),
                             (sections.ABUNDANCE_OVERLAY, abundance_overlay(sub, sample, sub_ab))):
                png = w.content / "abundance_maps" / f"{_slug(sample + tag)}_{sec.id}.png"
                save_mqc_figure(fig, png, dpi=dpi)
                plt.close("all")
                sid = w._unique_id(_slug(f"spotmap_{sec.id}_{sample}{tag}").lower())
                # the overlay's colour mixtures and colour bars would band with a 256-colour palette on
                # Visium's smooth spots; an HD raster is noisy bin to bin and full colour triples its size
                w.image_section(sec.parent, sid, sec.title.format(**fields), sec.description.format(**fields),
                                png.read_bytes(), (i, sec.order), w.content / "generated" / f"{sid}_mqc.yaml",
                                str(h5), compact=sec is not sections.ABUNDANCE_OVERLAY or unit == "bin")


def stability_summary(w: ContentWriter, files: list[Path]) -> None:
    """The consensus findings (``summary.txt``) in words, one section per consensus folder."""
    sec = sections.STABILITY_SUMMARY
    for src in files:
        lines = [ln.strip() for ln in src.read_text(errors="replace").splitlines() if ln.strip()]
        if not lines:
            continue
        items = "".join(f"<li>{html.escape(ln.lstrip('-* '))}</li>" for ln in lines)
        flagged = [ln for ln in lines if re.search(r"flag|unstable|warn", ln, re.I)]
        lead = ("<p><strong>Cell types or restarts were flagged:</strong> see below.</p>" if flagged else
                "<p>No cell type or restart was flagged.</p>")
        label = w.groups.get(src.parent)
        w.html_section(sec.parent, w._unique_id(sec.id), f"{sec.title}: {label}" if label else sec.title,
                       f"{lead}<ul>{items}</ul>",
                       (label, sec.order) if label else (sec.order, src.parent.parent.name),
                       description=sec.description.format(folder=src.parent.name))


def missing_notes(w: ContentWriter) -> None:
    """A warning in each step's section that received no file."""
    have = w.found.parents()
    for key in sections.STEP_KEYS:
        if key in have:
            continue
        parent = sections.PARENTS[key]
        body = (f"<div class='alert alert-warning'><strong>The {html.escape(parent.step)} step did not run</strong> "
                f"(or was skipped, or wrote nothing the report could read): no files for “{html.escape(parent.title)}” were "
                f"found under the results folder.</div>")
        w.html_section(key, sections.STEP_MISSING.id.format(key=key), sections.STEP_MISSING.title, body,
                       (sections.STEP_MISSING.order,))


def input_notes(w: ContentWriter) -> None:
    """What the report worked around in the results folder, if anything."""
    if not w.found.notes:
        return
    sec = sections.INPUT_NOTES
    items = "".join(f"<li>{html.escape(n)}</li>" for n in w.found.notes)
    w.html_section(sec.parent, sec.id, sec.title,
                   f"<p>The report worked around these problems in the results folder:</p><ul>{items}</ul>",
                   (sec.order,))
