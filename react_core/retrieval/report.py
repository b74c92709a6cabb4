"""A visual report of a retrieved subset: look at what was retrieved before training on it.

`DIR/index.html` with PNGs: the filter counts (how many candidates each filter removed), the
score histogram of kept samples (and per retrieval mode), precision@k per mode when ground truth
was known, and for each class its top images (the original files, copied into DIR/images/) with
their full captions as text, scores and, where the ground truth is known, correct/wrong marks;
classes ordered by the precision of their kept samples, worst first. The page is at most 1260 px
wide; images and cards flow into as many columns as fit.

Corpus text is shown, never obeyed: captions and class names have their control characters
escaped (`printable`) before HTML escaping, and a caption links to its URL only when that is an
http(s) URL (a `javascript:` or `data:` one is shown as text). subset.parquet keeps the originals.
"""
from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from react_core.console import printable
from react_core.io import atomic_path, atomic_write_text, output_errors
from react_core.retrieval.export import _ImageSource
from react_core.retrieval.retrieve import read_stats, read_subset


def _save(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    with output_errors(path), atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)


def _filters_png(stats: dict, path: Path) -> bool:
    import matplotlib.pyplot as plt

    removed = {k: v for k, v in stats.get("filters", {}).items() if k != "candidates"}
    if not removed:
        return False
    figure, axis = plt.subplots(figsize=(6, 0.4 * len(removed) + 1))
    axis.barh(list(removed), list(removed.values()), color="tab:red")
    axis.set_xlabel(f"removed (of {stats['filters'].get('candidates', '?')} candidates)")
    axis.invert_yaxis()
    _save(figure, path)
    return True


def _scores_png(subset, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3))
    fused = "score_both" in subset.columns  # a fused score is no cosine: show the two it came from
    for column in ("score_t2i", "score_t2t") if fused else ("score", "score_t2i", "score_t2t"):
        if column in subset.columns and subset[column].notna().any():
            axis.hist(subset[column].dropna(), bins=40, alpha=0.5, label=column)
    axis.set_xlabel("cosine similarity")
    axis.set_ylabel("samples")
    axis.legend()
    _save(figure, path)


def _ground_truth(stats: dict):
    """id -> true class, from the ground truth retrieval used (stats.json names it), or None."""
    import pandas as pd

    path = stats.get("ground_truth")
    if not path or not Path(path).is_file():
        return None
    truth = pd.read_parquet(path, columns=["id", "class"])
    return dict(zip(truth["id"].astype(str), truth["class"].astype(str)))


def _text(value) -> str:
    """Corpus text as HTML: control characters escaped, then markup."""
    return html.escape(printable(str(value)))


def web_link(url) -> str | None:
    """`url` when it is an http(s) URL with a host (safe as a link), else None."""
    if not isinstance(url, str) or printable(url) != url:
        return None
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    return url.strip() if parts.scheme.lower() in ("http", "https") and parts.netloc else None


def _card(row, file: str | None, mark: str) -> str:
    image = f'<img src="{file}" alt="">' if file else '<div class="missing">image not readable here</div>'
    link = web_link(row.get("url"))
    caption = _text(row["caption"])
    if link:
        caption = f'<a href="{html.escape(link)}" rel="noopener noreferrer nofollow">{caption}</a>'
    elif isinstance(row.get("url"), str) and row["url"]:
        caption += f'<br><span class="url">{_text(row["url"])}</span>'  # shown, not linked
    return (f'<figure class="{mark or "unknown"}">{image}<figcaption><b>{SYMBOLS.get(mark, "")} {row["score"]:.3f}</b> '
            f'{caption}</figcaption></figure>')


SYMBOLS = {"correct": "✓", "wrong": "✗"}
STYLE = """body{font-family:sans-serif;max-width:1260px;margin:0 auto;padding:0 10px}
img{max-width:100%}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(140px,1fr));gap:8px}
figure{margin:0;border:3px solid #ccc;padding:4px;font-size:12px;overflow-wrap:anywhere}
figure img{width:100%;height:auto;display:block;image-rendering:pixelated}
figure.correct{border-color:#2a2} figure.wrong{border-color:#d22}
.missing{height:80px;background:#eee;color:#666}
.url{color:#666}
table{border-collapse:collapse} td,th{border:1px solid #999;padding:2px 6px}"""


def write_report(subset_dir: str | Path, out: str | Path, per_class: int = 8, max_classes: int = 100) -> Path:
    """Write the report; returns the path of index.html.

    Each class shows its top `per_class` samples as image files with their full captions, score,
    and, where the ground truth is known, a correct/wrong mark; classes are ordered by the
    precision of their kept samples, worst first (by name without ground truth)."""
    out = Path(out)
    with output_errors(out):
        (out / "images").mkdir(parents=True, exist_ok=True)
    subset, stats = read_subset(subset_dir), read_stats(subset_dir)
    truth = _ground_truth(stats)
    parts = [f"<h1>Retrieval report: {html.escape(str(subset_dir))}</h1>",
             f"<p>{len(subset)} rows, {subset['id'].nunique()} samples, {subset['class'].nunique()} classes; "
             f"mode {html.escape(str(stats.get('mode', '?')))}.</p>"]
    evaluation = stats.get("evaluation")
    if evaluation:
        cells = "".join(f"<tr><td>{m}</td><td>{evaluation[m]['precision']:.3f}</td><td>{evaluation[m]['pair_precision']:.3f}</td></tr>"
                        for m in ("t2i", "t2t", "both", "random") if m in evaluation)
        parts.append(f"<h2>precision@{evaluation['k']} against ground truth</h2><table>"
                     f"<tr><th>mode</th><th>image class</th><th>image class and caption</th></tr>{cells}</table>")
    if _filters_png(stats, out / "filters.png"):
        parts.append('<h2>Removed by each filter</h2><img src="filters.png">')
    _scores_png(subset, out / "scores.png")
    parts.append('<h2>Scores of kept samples</h2><img src="scores.png">')
    empty = stats.get("empty_classes") or []
    if empty:
        parts.append(f"<p>Classes with no sample: {_text(', '.join(empty))}</p>")
    subset = subset.assign(_mark="")
    if truth is not None:
        correct = subset["id"].astype(str).map(truth) == subset["class"]
        subset["_mark"] = np.where(correct, "correct", "wrong")
        precision = correct.groupby(subset["class"]).mean()
        classes = sorted(precision.index, key=lambda name: (precision[name], name))
        parts.append("<h2>Top samples per class, lowest precision first</h2><p>✓/green: the image shows the class "
                     "(ground truth); ✗/red: it does not. Precision: the share of the class's kept samples that are right.</p>")
    else:
        precision = None
        classes = sorted(subset["class"].unique())
        parts.append("<h2>Top samples per class</h2>")
    source = _ImageSource()
    for number, name in enumerate(classes[:max_classes]):
        rows = subset[subset["class"] == name].nsmallest(per_class, "rank")
        cards = []
        for position, row in enumerate(rows.to_dict("records")):
            image = source.read(row)
            file = None
            if image is not None:
                file = f"images/{number:04d}_{position:02d}.{image[1]}"
                with output_errors(out / file), atomic_path(out / file) as tmp:
                    tmp.write_bytes(image[0])
            cards.append(_card(row, file, row["_mark"]))
        count = int((subset["class"] == name).sum())
        score = f", precision {precision[name]:.2f}" if precision is not None else ""
        parts.append(f'<h3>{_text(name)} ({count} samples{score})</h3><div class="grid">{"".join(cards)}</div>')
    if len(classes) > max_classes:
        parts.append(f"<p>{len(classes) - max_classes} more classes not shown.</p>")
    page = out / "index.html"
    with output_errors(page):
        atomic_write_text(page, "<!doctype html><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
                                f"<title>react retrieval report</title><style>{STYLE}</style>\n<body>" + "\n".join(parts) + "</body>\n")
    return page
