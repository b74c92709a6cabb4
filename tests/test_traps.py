"""Traps a user falls into: an error glued to a progress bar, class names drawn as empty boxes,
zero-shot numbers from different templates printed as if comparable, a random-init notice where
nothing random was made."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image

from react_core.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "react_dense" / "lab" / "configs"
NAMES = ["crème brûlée", "Ελιά", "медведь"]
TOFU = "\ue000"  # a private-use character no font here has: drawn as the missing-glyph box


def test_an_error_starts_its_own_line_after_a_progress_bar(monkeypatch, capsys):
    import react_core.cli
    from react_core.errors import UserError

    def failing(args):
        from tqdm import tqdm

        bar = tqdm(total=4, desc="encode")
        bar.update(2)
        raise UserError("class list not found: classes.txt")

    def register(subparsers):
        subparsers.add_parser("fail").set_defaults(handler=failing)

    monkeypatch.setattr(react_core.cli, "_command_modules", lambda: iter([register]))
    assert main(["fail"]) == 2
    err = capsys.readouterr().err
    assert "encode:  50%" in err
    assert err.split("\n")[-2] == "react fail: error: class list not found: classes.txt"


def _is_tofu(font, character: str) -> bool:
    return bytes(font.getmask(character)) == bytes(font.getmask(TOFU))


def test_legend_font_draws_accented_greek_and_cyrillic_names():
    from PIL import ImageFont

    from react_dense.fonts import label_font

    font = label_font(NAMES)
    drawn = [c for name in NAMES for c in name if not c.isspace()]
    assert not any(_is_tofu(font, c) for c in drawn)
    assert any(_is_tofu(ImageFont.load_default(), c) for c in drawn)  # what the legends drew before


def test_the_first_font_with_every_glyph_is_chosen(monkeypatch):
    import react_dense.fonts

    fonts = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    latin_only, full = str(fonts / "cmr10.ttf"), str(fonts / "DejaVuSans.ttf")
    monkeypatch.setattr(react_dense.fonts, "_installed", lambda: (latin_only, full))
    assert react_dense.fonts.font_path(["cat"]) == latin_only
    assert react_dense.fonts.font_path(["cat", "Ελιά"]) == full


def test_a_cjk_name_is_drawn_when_a_font_with_its_glyphs_is_installed():
    from react_dense.fonts import _characters, _installed, label_font

    if not any(ord("猫") in _characters(path) for path in _installed()):
        pytest.skip("no installed font has CJK glyphs (e.g. fonts-noto-cjk)")
    assert not _is_tofu(label_font(["猫"]), "猫")


def test_overlays_draw_the_names_not_boxes():
    """The same overlay with the real names and with names of missing glyphs: they differ only
    where the glyphs exist."""
    import torch

    from react_dense.detection.visualize import draw_detections
    from react_dense.segmentation.visualize import overlay_with_legend

    image = Image.fromarray(np.full((48, 64, 3), 120, np.uint8))
    labels = np.zeros((48, 64), np.int64)
    labels[:, 32:] = 1
    labels[:24, :] = 2
    boxes = {"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0], [20.0, 8.0, 60.0, 44.0]]), "labels": torch.tensor([1, 2]),
             "scores": torch.tensor([0.9, 0.8])}
    unknown = [TOFU * len(name) for name in NAMES]
    for draw in (lambda names: overlay_with_legend(image, labels, names), lambda names: draw_detections(image, boxes, names)):
        assert not np.array_equal(np.asarray(draw(NAMES)), np.asarray(draw(unknown)))


def test_eval_zeroshot_and_customize_use_one_template_default_and_say_which(tmp_path, capsys):
    from react_core.cli import build_parser
    from react_core.engine.config import ZeroShotConfig

    zeroshot = build_parser().parse_args(["eval", "zeroshot", "--classes", "c", "--images", "i", "--out", "o"])
    assert zeroshot.templates == ZeroShotConfig(classes="c", images="i").templates == "simple"

    for name, value in (("red", 200), ("blue", 30)):
        (tmp_path / "images" / name).mkdir(parents=True)
        Image.fromarray(np.full((32, 32, 3), value, np.uint8)).save(tmp_path / "images" / name / "0.png")
    (tmp_path / "classes.txt").write_text("red\nblue\n")
    argv = ["eval", "zeroshot", "--classes", str(tmp_path / "classes.txt"), "--images", str(tmp_path / "images"),
            "--out", str(tmp_path / "zeroshot.json")]
    assert main(argv) == 0
    assert "zero-shot with templates 'simple' (7)" in capsys.readouterr().out
    assert '"template_set": "simple"' in (tmp_path / "zeroshot.json").read_text()

    customize = ["customize", "--config", str(CONFIGS / "customize.yaml"), "--out", str(tmp_path / "run"),
                 f"vars.world={tmp_path / 'no_world'}"]
    assert main(customize) == 2  # no world there: it stops at the training pairs, after saying what it evaluates with
    assert "zero-shot before and after with templates 'simple' (7)" in capsys.readouterr().out


@pytest.fixture
def _root_logging_restored():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def test_no_random_init_notice_when_the_pretrained_base_is_cached(tiny_world, tiny_base, caplog, _root_logging_restored):
    from react_dense.lab.base import prepare_base

    caplog.set_level(logging.INFO)
    settings = {"data.batch_size": 32, "data.workers": 0, "train.max_iters": 3, "train.warmup_iters": 1,
                "train.checkpoint_interval": 2}  # the tiny_base fixture's
    mtime = os.stat(tiny_base).st_mtime_ns
    assert prepare_base(tiny_world, tiny_base.parent, settings) == tiny_base
    assert "is cached" in caplog.text and "initialized randomly" not in caplog.text
    assert os.stat(tiny_base).st_mtime_ns == mtime
