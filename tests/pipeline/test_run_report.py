"""The run's HTML report: written by the report stage, self-contained, and rendered by Chromium."""

from __future__ import annotations

import base64
import json
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from mudjack.bugs import Bug, save_bug
from mudjack.data import load_digits_images
from mudjack.html_report import SECTIONS
from mudjack.io import write_json, write_jsonl
from mudjack.triggers import patch_trigger, stamp
from stages.artifacts import INTAKE_LOG
from tests.helpers import CHROMIUM, run_if

TASK = {"backdoored": {"clean_acc": 0.98, "asr": 0.97, "tba": 0.03},
        "patched": {"clean_acc": 0.97, "asr": 0.05, "tba": 0.9}}
# A task that did not report, that no trigger exposes (mudjack.exposure's record, shortened).
UNEXPOSED = {"backdoored": {"clean_acc": 0.9, "asr": 0.0625, "tba": 0.85},
             "patched": {"clean_acc": 0.9, "asr": 0.0375, "tba": 0.86},
             "exposure": {"exposed": False, "trigger": "bug:bug-0", "target": 3,
                          "target_from": "inferred", "triggers": {"bug:bug-0": {
                              "target": 3, "target_from": "inferred", "share": 0.0625,
                              "clean_share": 0.05, "p_value": 0.42, "exposed": False,
                              "backdoored": {"asr": 0.0625, "anti_flip": 0.0},
                              "patched": {"asr": 0.0375, "anti_flip": 0.125}}}}}


class Page(HTMLParser):
    """Section ids and image sources of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "section":
            self.sections.append(values.get("id") or "")
        if tag == "img":
            self.images.append(values.get("src") or "")


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
    return page


def write_run(folder: Path, n_bugs: int, report_id: str = "r-1") -> None:
    """The inputs of the report stage, as the earlier stages leave them."""
    digits = load_digits_images()
    trigger = patch_trigger(digits.x.shape[1:], 2, 6, 6)
    for i, row in enumerate(np.flatnonzero(digits.y != 0)[:n_bugs]):  # misread as 0, the target
        bug = Bug(f"bug-{i}", "digits", int(digits.y[row]), 0, stamp(digits.x[row], trigger),
                  digits.x[row + 20], trigger, record={"iou": 1.0})
        save_bug(bug, folder / "bugs")
    (folder / "bugs").mkdir(exist_ok=True)
    write_json(folder / "reports/retrain.json", {"tasks": {"digits": TASK, "svhn": UNEXPOSED}})
    write_json(folder / "reports/patch.json", {"method": "mudjacking", "bugs": n_bugs,
                                               "seconds": 1.5})
    write_json(folder / "reports/export.json", {"max_abs_diff": 2e-5})
    write_json(folder / "reports/patch_log.json",
               [{"epoch": e, "loss": -4.0 - 0.1 * e, "locality": -1.5 - 0.05 * e}
                for e in range(1, 6)] if n_bugs else [])
    write_jsonl(folder / INTAKE_LOG,
                [{"report_id": report_id, "decision": "rejected", "task": "digits", "label": 7,
                  "predicted": 7, "reasons": ["does not reproduce"], "seconds": 0.01}])


def run_report_stage(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from stages import report

    monkeypatch.chdir(folder)
    report.main()
    return folder / "reports" / "run.html"


@pytest.fixture
def run_html(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_run(tmp_path, n_bugs=2)
    return run_report_stage(tmp_path, monkeypatch)


def test_report_has_every_section_and_inline_images(run_html: Path) -> None:
    page = parse(run_html)
    assert page.sections == list(SECTIONS)
    # two bugs, the before/after bars, the loss curves: all inline PNGs, nothing fetched
    assert len(page.images) == 4
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    text = run_html.read_text()
    assert "bug-0: task digits" in text and "0.05" in text and "does not reproduce" in text
    metrics = json.loads((run_html.parent / "metrics.json").read_text())
    assert metrics["tasks"]["digits"] == TASK


def test_report_shows_every_task_exposure(run_html: Path) -> None:
    metrics = json.loads((run_html.parent / "metrics.json").read_text())
    assert metrics["tasks"]["svhn"] == UNEXPOSED  # a DVC metric with its evidence
    text = run_html.read_text()
    panel = text[text.index('<section id="exposure">'):text.index('<section id="patch-loss">')]
    assert "<td>svhn</td><td>False</td><td>bug:bug-0</td><td>3</td><td>inferred</td>" in panel
    assert "<td>0.0625</td><td>0.0375</td>" in panel and "<td>0.42</td>" in panel
    assert "<th>anti flip after</th>" in panel and "<td>-</td><td>-</td><td>0</td><td>0.125</td>" in panel
    assert "<td>digits</td><td>-</td><td>-</td>" in panel  # no exposure record: shown, not hidden


def test_report_escapes_what_clients_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write_run(tmp_path, n_bugs=0, report_id="<script>alert(1)</script>")
    text = run_report_stage(tmp_path, monkeypatch).read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text


def test_empty_run_still_has_every_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write_run(tmp_path, n_bugs=0)
    path = run_report_stage(tmp_path, monkeypatch)
    page = parse(path)
    assert page.sections == list(SECTIONS)
    assert "No accepted bug." in path.read_text() and "No patch ran." in path.read_text()


def screenshot(html_file: Path, png: Path, profile: Path) -> None:
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={png}",
         "--window-size=1200,3000", html_file.as_uri()],
        capture_output=True, timeout=120, check=True)


@run_if(chromium=True)
def test_report_renders_in_headless_chromium(run_html: Path, tmp_path: Path) -> None:
    from PIL import Image

    png = tmp_path / "run.png"
    screenshot(run_html, png, tmp_path / "profile")
    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert pixels.shape == (3000, 1200, 3)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 50  # text, tables and plots, not a blank page
    # The figures are drawn: the bars' red and blue are on the page.
    assert ((pixels[..., 0] > 150) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)).sum() > 500
    assert ((pixels[..., 2] > 120) & (pixels[..., 0] < 80)).sum() > 500
