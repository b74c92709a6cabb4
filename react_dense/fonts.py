"""The font that draws class names in the overlays of `react detect` and `react segment`.

A class name may be in any script. PIL's default font has Latin letters only and draws other
characters as empty boxes, so labels and legends use DejaVu Sans (shipped with matplotlib: Latin
with accents, Greek, Cyrillic and more) or, for characters it lacks (Chinese, Japanese, ...), the
first installed font that has them all, found through matplotlib's font list.
"""
from __future__ import annotations

import functools
from typing import Iterable


@functools.lru_cache(maxsize=None)
def _characters(path: str) -> frozenset[int]:
    """The code points font file `path` has glyphs for."""
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


@functools.lru_cache(maxsize=1)
def _installed() -> tuple[str, ...]:
    """The installed font files, DejaVu Sans (matplotlib's own) first."""
    from matplotlib import font_manager

    default = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"), fallback_to_default=True)
    others = sorted(set(font_manager.findSystemFonts()) - {default})
    return (default, *others)


def font_path(texts: Iterable[str]) -> str:
    """The font file for drawing all of `texts`: DejaVu Sans when it has every character, else the
    first installed font that has them all, else the one that has the most."""
    needed = {ord(c) for text in texts for c in text if not c.isspace()}
    fonts = _installed()
    best, best_count = fonts[0], -1
    for path in fonts:
        count = len(needed & _characters(path))
        if count == len(needed):
            return path
        if count > best_count:
            best, best_count = path, count
    return best


def label_font(texts: Iterable[str], size: int = 11):
    """A PIL font of `size` pixels that draws `texts` (see `font_path`)."""
    from PIL import ImageFont

    return ImageFont.truetype(font_path(texts), size)
