"""react report: full captions as text, correct/wrong marks, per-class precision, worst class first, 1280 px."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pandas as pd
import pytest
from PIL import Image

from react_core.cli import main


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.headings, self.marks, self._in_h3 = [], [], [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "figure":
            self.marks.append(attrs.get("class"))
        self._in_h3 = tag == "h3"

    def handle_data(self, data):
        if self._in_h3:
            self.headings.append(data)
            self._in_h3 = False


LONG_CAPTION = "a very long caption that goes on well past twenty-eight characters, " * 3


def _report_with_ground_truth(tmp_path):
    """Five samples in three classes (precision 0.5, 1 and 0) with long captions; returns index.html."""
    rows = []
    for i, (cls, truth) in enumerate([("cat", "cat"), ("cat", "dog"), ("dog", "dog"), ("dog", "dog"), ("fox", "cat")]):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(path)
        rows.append({"id": str(i), "class": cls, "truth": truth, "score": 0.9 - 0.1 * i, "caption": f"{i} {LONG_CAPTION}",
                     "path": str(path)})
    table = pd.DataFrame(rows)
    subset = table.drop(columns="truth").assign(rank=lambda t: t.groupby("class").cumcount())
    (tmp_path / "subset").mkdir()
    subset.to_parquet(tmp_path / "subset" / "subset.parquet")
    table[["id"]].assign(**{"class": table["truth"]}).to_parquet(tmp_path / "truth.parquet")
    (tmp_path / "subset" / "stats.json").write_text(json.dumps({
        "mode": "t2t", "filters": {"candidates": 5}, "ground_truth": str(tmp_path / "truth.parquet"),
        "evaluation": {"k": 2, "t2t": {"precision": 0.5, "pair_precision": 0.4}, "random": {"precision": 0.3, "pair_precision": 0.2}}}))

    assert main(["report", str(tmp_path / "subset"), "--out", str(tmp_path / "report")]) == 0
    return tmp_path / "report" / "index.html"


def test_report_shows_full_captions_marks_and_worst_class_first(tmp_path):
    text = _report_with_ground_truth(tmp_path).read_text()
    page = _Page()
    page.feed(text)
    assert all(f"{i} {LONG_CAPTION}".strip() in text for i in range(5))  # whole captions, as text
    assert [h.split(" (")[0] for h in page.headings] == ["fox", "cat", "dog"]  # precision 0, 0.5, 1
    assert "precision 0.50" in page.headings[1]
    assert page.marks == ["wrong", "correct", "wrong", "correct", "correct"]
    assert all((tmp_path / "report" / src).is_file() for src in page.images)
    samples = [src for src in page.images if src.startswith("images/")]
    assert len(samples) == 5 and all(Image.open(tmp_path / "report" / src).size == (32, 32) for src in samples)
    assert re.search(r"max-width:\s*1260px", text)
    assert all(Image.open(tmp_path / "report" / src).size[0] <= 1260 for src in page.images)


def test_report_without_ground_truth_orders_by_name_and_marks_nothing(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(path)
    (tmp_path / "subset").mkdir()
    pd.DataFrame({"id": ["1", "2"], "class": ["zebra", "ant"], "score": [0.5, 0.4], "rank": [0, 0],
                  "caption": ["z", "a"], "path": [str(path), str(path)]}).to_parquet(tmp_path / "subset" / "subset.parquet")
    assert main(["report", str(tmp_path / "subset"), "--out", str(tmp_path / "report")]) == 0
    page = _Page()
    page.feed((tmp_path / "report" / "index.html").read_text())
    assert [h.split(" (")[0] for h in page.headings] == ["ant", "zebra"] and page.marks == ["unknown", "unknown"]


def _chromium() -> str:
    """A Chromium binary playwright can drive: its own download, or the system's (Debian's `chromium`)."""
    import shutil

    return next((path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), "")


def test_report_renders_in_headless_chromium_without_errors_and_fits_1280px(tmp_path):
    """The page as a browser shows it: no console error, every image decoded, no horizontal scroll
    at 1280 px. Needs the `browser` extra (playwright) and a Chromium; skipped without them."""
    sync_api = pytest.importorskip("playwright.sync_api")
    index = _report_with_ground_truth(tmp_path)
    errors = []
    with sync_api.sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=_chromium() or None, args=["--no-sandbox"])
        except sync_api.Error as error:
            pytest.skip(f"no Chromium playwright can start: {str(error).splitlines()[0]}")
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(index.as_uri(), wait_until="load")
        images = page.eval_on_selector_all("img", "all => all.map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])")
        width = page.evaluate("document.documentElement.scrollWidth")
        browser.close()
    assert errors == []
    assert len(images) == 6 and all(loaded for _, loaded in images), images  # 5 samples and the score plot
    assert width <= 1280
