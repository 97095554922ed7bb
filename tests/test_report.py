"""The report step: the shared pipeline run's report (``spotmap run`` on a small simulated case, few epochs),
made by the real MultiQC and opened in headless Chromium as a user would (no JavaScript errors, every
section there, a screenshot saved); and the report builder on results that break the conventions.
"""

from __future__ import annotations

import base64
import json
from html import escape as html_escape
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTEFACTS = REPO / "test-artifacts"  # gitignored
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def sim_report(pipeline_run):
    """The shared pipeline run (:func:`conftest.pipeline_run`: 2 samples × 120 spots, 6 cell types, 2 restarts)
    and its report."""
    return pipeline_run


# ------------------------------------------------------------------------------------------------
# The report file
# ------------------------------------------------------------------------------------------------

def test_report_has_every_section(sim_report):
    from spotmap.report import REPORT_SECTION_IDS

    html = sim_report["report"].read_text()
    assert sim_report["report"].name == "multiqc_report.html"
    assert (sim_report["report"].parent / "multiqc_data").is_dir()
    for sid in REPORT_SECTION_IDS:
        assert f'id="{sid}"' in html, f"section {sid} missing from the report"
    # the content of each section, not just its heading
    for text in ("spotmap_qc", "spotmap_mapping_history", "spotmap_stability_heatmap", "spotmap_signatures_history",
                 "Reconstruction accuracy", "Detection efficiency and total cell abundance",
                 "Cell abundance per type: ", "Most abundant types together", "Kleshchevnikov",
                 "10.1038/s41587-021-01139-4", "detection_alpha"):
        assert text in html, text
    # the co-location section (spotmap run's mapping/colocation/) and its methods sentence
    for text in ("Co-location: the choices and what they show", "Co-location factors: cell types × factors",
                 "Co-location factors over the tissue: sample1", "Tissue regions: sample2", "Composition of each region",
                 'id="spotmap_colocation_composition"', "Number of factors: the fit of each",
                 "Number of regions: the fit of each", "Co-located cell types were found by a non-negative matrix "
                 "factorisation", "Pedregosa et al. 2011"):
        assert text in html, text
    reason = json.loads((sim_report["results"] / "mapping" / "colocation" / "colocation_summary.json").read_text())
    assert html_escape(reason["factor_reason"]) in html or reason["factor_reason"] in html
    assert not re.search(r'id="spotmap_\w+_missing"', html), "a step is reported as not run"
    # the consensus findings (flagged cell types and restarts) in words
    summary = (sim_report["results"] / "mapping" / "consensus" / "summary.txt").read_text().splitlines()
    assert summary
    for line in summary:
        assert html_escape(line) in html, line
    # every restart is a series of the one training plot
    data = json.loads((sim_report["report"].parent / "multiqc_data" / "multiqc_data.json").read_text())
    assert "spotmap_mapping_history" in json.dumps(data)
    for seed in SEEDS:
        assert f"restart_{seed}" in html
    # generated content: one grid and one overlay per sample, rasterised PNGs
    maps = sorted((sim_report["report"].parent / "report_content" / "abundance_maps").glob("*.png"))
    assert len(maps) == 4, maps
    assert sim_report["report"].stat().st_size < 20e6


def test_workflow_summary_lists_changed_parameters_only(sim_report):
    html = sim_report["report"].read_text()
    m = re.search(r'id="spotmap-summary".*?</dl>', html, re.S)
    assert m, "workflow summary missing"
    block = m.group(0)
    assert "map_max_epochs" in block and "detection_alpha" in block and "samplesheet" in block
    assert "n_cells_per_location" not in block and "mapping_mode" not in block  # at their defaults


def test_methods_text_describes_the_random_starts_and_the_consensus(tmp_path):
    """The methods paragraph says what restarts are (each from its own random start, not "random
    initialisations" of one deterministic start) and whether flagged restarts were pooled."""
    import yaml

    from spotmap.report.pipeline_info import write_methods

    assets = REPO / "src" / "spotmap" / "assets"
    text = {}
    for keep in (False, True, "true"):
        out = write_methods(assets, tmp_path / f"methods_{keep}.yaml", {"restarts": 3, "keep_flagged": keep})
        text[keep] = re.sub(r"\s+", " ", yaml.safe_load(out.read_text())["data"])
    assert "each from its own random starting point" in text[False] and "random initialisations" not in text[False]
    assert "below a set fraction of the loss's decrease since the first epoch" in text[False]  # the stopping rule
    assert "the other restarts were pooled into a consensus" in text[False]
    assert "flagged ones included" in text[True] and text[True] == text["true"] and "${" not in text[True]


def test_software_versions_in_nf_core_format(sim_report):
    import yaml

    import spotmap

    gen = sim_report["report"].parent / "report_content" / "generated"
    doc = yaml.safe_load((gen / "spotmap_software_mqc_versions.yml").read_text())
    assert doc["SPOTMAP"]["spotmap"] == spotmap.__version__
    assert "pyro-ppl" in doc["SPOTMAP"] and "torch" in doc["SPOTMAP"]
    html = sim_report["report"].read_text()
    assert 'id="multiqc_software_versions"' in html and "pyro-ppl" in html


def test_missing_steps_are_noted(tmp_path, sim_report):
    """Only QC ran: the report still builds and says which steps did not run."""
    from spotmap.report import build_report

    R = tmp_path / "results"
    shutil.copytree(sim_report["results"] / "qc", R / "qc")
    # a previous report inside the results folder (as `spotmap run` writes it) is not read back
    old = R / "multiqc" / "report_content" / "steps"
    old.mkdir(parents=True)
    (old / "old_mqc.tsv").write_text("# id: spotmap_leftover\n# plot_type: table\nSample\tx\ns1\t1\n")
    report = build_report(R, R / "multiqc")
    html = report.read_text()
    assert "spotmap_leftover" not in html
    assert 'id="spotmap_qc_section"' in html
    for key in ("signatures", "mapping", "stability", "abundance"):
        assert f'id="spotmap_{key}_missing"' in html, key
    assert "Step did not run" in html
    assert "the parameters of this run are unknown" in html


def test_bad_results_folder_is_one_line_error(tmp_path):
    from click.testing import CliRunner

    from spotmap.cli import cli

    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "missing", tmp_path / "empty"):
        res = CliRunner().invoke(cli, ["report", "--results", str(folder), "--outdir", str(tmp_path / "o")])
        assert res.exit_code == 2, res.output
        err = res.output.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("spotmap: error:") and str(folder) in err[0], res.output
    assert not (tmp_path / "o" / "multiqc_report.html").exists()


def test_abundance_maps_api(sim_report):
    import matplotlib.pyplot as plt

    from spotmap.pl import abundance_maps
    from spotmap.results import read_results

    adata = read_results(sim_report["results"] / "mapping" / "consensus")
    figs = abundance_maps(adata)
    try:
        assert len(figs) == 2 * adata.obs["sample"].nunique()
        grid = figs[0]
        titles = {ax.get_title() for ax in grid.axes}
        assert set(adata.uns["mod"]["factor_names"]) <= titles  # one panel per cell type
        assert any("cells per spot" in ax.get_ylabel() for ax in grid.axes)  # colour bars are labelled
    finally:
        for f in figs:
            plt.close(f)


# ------------------------------------------------------------------------------------------------
# Opened in a real browser
# ------------------------------------------------------------------------------------------------

def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    return None


class DevTools:
    """A minimal Chrome DevTools Protocol client over a WebSocket (standard library only)."""

    def __init__(self, ws_url: str, timeout: float = 30.0):
        u = urllib.parse.urlparse(ws_url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        resp = b""
        while b"\r\n\r\n" not in resp:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the handshake")
            resp += chunk
        head, self.buf = resp.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise ConnectionError(head.decode(errors="replace"))
        self.next_id = 0
        self.events: list[dict] = []

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buf)))
            if not chunk:
                raise ConnectionError("DevTools connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send_frame(self, payload: bytes, opcode: int = 1) -> None:
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
        else:
            head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _recv_message(self) -> dict:
        data = b""
        while True:
            b0, b1 = self._exact(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = int.from_bytes(self._exact(2), "big")
            elif n == 127:
                n = int.from_bytes(self._exact(8), "big")
            mask = self._exact(4) if b1 & 0x80 else None
            payload = self._exact(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 8:
                raise ConnectionError("DevTools closed the connection")
            if opcode == 9:
                self._send_frame(payload, opcode=10)
                continue
            if opcode in (0, 1, 2):
                data += payload
                if b0 & 0x80:
                    return json.loads(data)

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self._send_frame(json.dumps({"id": self.next_id, "method": method, "params": params}).encode())
        while True:
            msg = self._recv_message()
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method: str, timeout: float) -> bool:
        end = time.monotonic() + timeout
        if any(e["method"] == method for e in self.events):
            return True
        while time.monotonic() < end:
            self.sock.settimeout(max(0.1, end - time.monotonic()))
            try:
                msg = self._recv_message()
            except (socket.timeout, TimeoutError):
                return False
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    return True
        return False

    def evaluate(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return res.get("result", {}).get("value")

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append("exception: " + (d.get("exception", {}).get("description") or d.get("text", "")))
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console.error: " + " ".join(str(a.get("value", a.get("description", "")))
                                                        for a in p.get("args", [])))
            elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out


def open_in_chromium(html: Path, screenshot: Path, section_ids: list[str], timeout: float = 40.0,
                     full_page: bool = False) -> dict:
    """Load ``html`` in headless Chromium; return console errors, sections found, rendered plots."""
    exe = _chromium()
    profile = Path(tempfile.mkdtemp(prefix="spotmap-chromium-"))
    proc = subprocess.Popen(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "--remote-allow-origins=*", "--window-size=1400,3000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        port_file = profile / "DevToolsActivePort"
        end = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError("chromium did not start: " + proc.stderr.read().decode(errors="replace")[-2000:])
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = []
        while not targets and time.monotonic() < end:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                targets = [t for t in json.load(r) if t.get("type") == "page"]
            time.sleep(0.1)
        cdp = DevTools(targets[0]["webSocketDebuggerUrl"], timeout=timeout)
        for domain in ("Runtime", "Log", "Page"):
            cdp.call(f"{domain}.enable")
        cdp.call("Emulation.setDeviceMetricsOverride", width=1400, height=3000, deviceScaleFactor=1, mobile=False)
        cdp.call("Page.navigate", url=html.resolve().as_uri())
        loaded = cdp.wait_event("Page.loadEventFired", timeout)
        # MultiQC draws its Plotly plots after load: wait until they are there (or time runs out)
        n_plots = 0
        while time.monotonic() < end:
            n_plots = cdp.evaluate("document.querySelectorAll('.js-plotly-plot').length") or 0
            if n_plots >= 3:
                break
            time.sleep(0.25)
        time.sleep(0.5)
        found = cdp.evaluate(f"JSON.stringify({json.dumps(section_ids)}.filter(i => document.getElementById(i)))")
        images = cdp.evaluate("Array.from(document.querySelectorAll('.mqc-custom-content-image img'))"
                              ".filter(i => i.complete && i.naturalWidth > 0).length")
        if full_page:
            height = int(cdp.evaluate("document.documentElement.scrollHeight") or 3000)
            cdp.call("Emulation.setDeviceMetricsOverride", width=1400, height=min(height, 16000),
                     deviceScaleFactor=1, mobile=False)
            time.sleep(1.0)
        shot = cdp.call("Page.captureScreenshot", format="png")
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        cdp.wait_event("__none__", 0.5)  # collect late console messages
        return {"loaded": loaded, "errors": cdp.errors(), "sections": json.loads(found or "[]"),
                "plots": n_plots, "images": images or 0, "title": cdp.evaluate("document.title")}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.browser
def test_report_in_headless_chromium(sim_report):
    from spotmap.report import REPORT_SECTION_IDS

    if _chromium() is None:
        if os.environ.get("SPOTMAP_REQUIRE_BROWSER") == "1":
            pytest.fail("SPOTMAP_REQUIRE_BROWSER=1 but no chromium on PATH (install Debian's 'chromium')")
        pytest.skip("chromium not installed (apt-get install chromium); set SPOTMAP_REQUIRE_BROWSER=1 to require it")
    shot = ARTEFACTS / "report_screenshot.png"
    if shot.exists():
        shot.unlink()
    res = open_in_chromium(sim_report["report"], shot, REPORT_SECTION_IDS)
    assert res["loaded"], "the page never finished loading"
    assert res["errors"] == [], res["errors"]
    assert sorted(res["sections"]) == sorted(REPORT_SECTION_IDS), res["sections"]
    assert res["plots"] >= 3, f"only {res['plots']} interactive plots rendered (QC table aside: 2 line graphs, heatmap)"
    assert res["images"] >= 8, f"only {res['images']} images decoded"
    assert "spotmap" in (res["title"] or "")
    # a real screenshot: a PNG of the requested size with more than a blank page in it
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (w, h) == (1400, 3000)
    shutil.copy(sim_report["report"], ARTEFACTS / "multiqc_report.html")


def test_deviating_step_files_are_placed_and_noted(tmp_path):
    """Files that break the conventions still reach the right section, and the report says what was fixed."""
    import yaml

    from spotmap.report import sections
    from spotmap.report.collect import collect
    from spotmap.report.content import ContentWriter

    R = tmp_path / "results"
    for seed in (0, 1):  # two restarts that name their training series alike
        d = R / "mapping" / f"restart_{seed}"
        d.mkdir(parents=True)
        (d / "joint_training_mqc.yaml").write_text(yaml.safe_dump({
            "id": "spotmap_mapping_history", "plot_type": "linegraph", "section_name": "Mapping",
            "data": {"joint": {"1.0": 10.0 - seed, "2.0": 5.0}}}))
    (R / "qc").mkdir()
    (R / "qc" / "s1_qc_summary_mqc.tsv").write_text("Sample\tspots\ns1\t10\n")  # no header at all
    (R / "signatures").mkdir()
    (R / "signatures" / "signatures_training_mqc.yaml").write_text("id: [unclosed\n")  # broken YAML

    files = collect(R)
    w = ContentWriter(R, tmp_path / "content")
    for p in files["table"]:
        w.table(p)
    for p in files["structured"]:
        w.structured(p)
    by_id = {s.section_id: s.parent for s in w.found.sections}
    # the headerless table is known by its published name (the registry's): it gets the QC summary's id
    assert by_id == {"spotmap_qc": "qc", "spotmap_mapping_history": "mapping"}
    notes = " | ".join(w.found.notes)
    assert "no '# id:' header line" in notes and "not valid YAML" in notes and "series 'joint'" in notes

    series = {}
    for f in sorted((tmp_path / "content").rglob("*_training_mqc.yaml")):
        doc = yaml.safe_load(f.read_text())
        assert doc["parent_id"] == sections.PARENTS["mapping"].id
        assert doc["section_name"] == sections.MAPPING_HISTORY.title  # the registry's, not the file's "Mapping"
        series.update(doc["data"])
        assert all(isinstance(x, float) for pts in doc["data"].values() for x in pts)  # numeric x axis
    assert len(series) == 2 and "joint" in series
    table = next((tmp_path / "content").rglob("s1_qc_summary_mqc.tsv")).read_text()
    assert "# parent_id: spotmap_qc_section" in table and table.rstrip().endswith("s1\t10")


def test_inputs_staged_as_symlinks_are_found(tmp_path, sim_report):
    """Nextflow stages the steps' folders as symlinks (``stageAs: '?/*'``): they are followed."""
    from spotmap.report.collect import choose_mapping_result, collect

    stage = tmp_path / "work"
    stage.mkdir()
    (stage / "1").mkdir()
    (stage / "1" / "consensus").symlink_to(sim_report["results"] / "mapping" / "consensus", target_is_directory=True)
    (stage / "2").mkdir()
    (stage / "2" / "sample1_qc_summary_mqc.tsv").symlink_to(
        sim_report["results"] / "qc" / "sample1" / "sample1_qc_summary_mqc.tsv")
    (stage / "loop").symlink_to(stage, target_is_directory=True)  # a loop must not hang the walk
    files = collect(stage)
    names = {p.name for v in files.values() for p in v}
    assert {"sample1_qc_summary_mqc.tsv", "stability_mqc.tsv", "restarts_mqc.tsv", "summary.txt", "sp.h5ad"} <= names
    assert [p.parent.name for p in choose_mapping_result(files["h5ad"])] == ["consensus"]


def test_per_sample_consensus_sections_stay_apart(tmp_path, sim_report):
    """Per-sample mapping (Nextflow stages each consensus in a numbered folder): each consensus keeps
    its own stability sections, titled with its samples — one shared id would merge the tables row by
    row (cell types, restarts). Without any consensus, each mapping's best restart is drawn."""
    from spotmap.report.collect import choose_mapping_result, collect, consensus_labels
    from spotmap.report.content import ContentWriter

    stage = tmp_path / "work"
    for n in ("1", "2"):  # copies: collect() visits a folder linked twice only once
        shutil.copytree(sim_report["results"] / "mapping" / "consensus", stage / n / "consensus")
        shutil.copytree(sim_report["results"] / "mapping" / "colocation", stage / f"{n}c" / "colocation")
    files = collect(stage)
    folders = sorted({p.parent for p in files["h5ad"]})
    labels = consensus_labels(folders)
    assert sorted(labels.values()) == ["sample1, sample2 (1)", "sample1, sample2 (2)"]
    # a co-location folder is named by the samples its summary lists, as a consensus by its sp.h5ad
    coloc = consensus_labels(sorted({p.parent for p in files["table"] if p.parent.name == "colocation"}))
    assert sorted(coloc.values()) == ["sample1, sample2 (1c)", "sample1, sample2 (2c)"]
    w = ContentWriter(stage, tmp_path / "content")
    w.groups = labels | coloc
    for p in files["table"]:
        w.table(p)
    for p in files["structured"]:
        w.structured(p)
    for p in files["image"]:
        w.image(p, set())
    ids = [s.section_id for s in w.found.sections]
    assert len(ids) == len(set(ids))
    assert {"spotmap_stability_sample1_sample2_1", "spotmap_stability_sample1_sample2_2",
            "spotmap_restarts_sample1_sample2_1", "spotmap_stability_heatmap_sample1_sample2_2",
            "spotmap_colocation_factor_fits_sample1_sample2_1c", "spotmap_colocation_composition_sample1_sample2_2c",
            } <= set(ids)
    titles = [json.loads(p.read_text())["section_name"] for p in (tmp_path / "content").rglob("*dotplot*_mqc.yaml")]
    assert sorted(titles) == [f"Co-location factors: cell types × factors: sample1, sample2 ({n}c)" for n in (1, 2)]
    # restarts only, one mapping folder per sample: the best restart of each
    h5 = [tmp_path / "r" / s / f"restart_{k}" / "sp.h5ad" for s in ("s1", "s2") for k in (0, 1)]
    assert sorted(p.parent.parent.name for p in choose_mapping_result(h5)) == ["s1", "s2"]
