"""react report: full captions as text, correct/wrong marks, per-class precision, worst class first, 1280 px."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pandas as pd
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


def test_report_shows_full_captions_marks_and_worst_class_first(tmp_path):
    long_caption = "a very long caption that goes on well past twenty-eight characters, " * 3
    rows = []
    for i, (cls, truth) in enumerate([("cat", "cat"), ("cat", "dog"), ("dog", "dog"), ("dog", "dog"), ("fox", "cat")]):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(path)
        rows.append({"id": str(i), "class": cls, "truth": truth, "score": 0.9 - 0.1 * i, "caption": f"{i} {long_caption}",
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
    text = (tmp_path / "report" / "index.html").read_text()
    page = _Page()
    page.feed(text)
    assert all(f"{i} {long_caption}".strip() in text for i in range(5))  # whole captions, as text
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
