"""A visual report of a retrieved subset: look at what was retrieved before training on it.

`DIR/index.html` with PNGs: the filter counts (how many candidates each filter removed), the
score histogram of kept samples (and per retrieval mode), precision@k per mode when ground truth
was known, and for each class its top images with their captions and scores.
"""
from __future__ import annotations

import html
from pathlib import Path

from react_core.io import atomic_path, atomic_write_text
from react_core.retrieval.export import _ImageSource
from react_core.retrieval.retrieve import read_stats, read_subset


def _save(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
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
    for column in ("score", "score_t2i", "score_t2t"):
        if column in subset.columns and subset[column].notna().any():
            axis.hist(subset[column].dropna(), bins=40, alpha=0.5, label=column)
    axis.set_xlabel("cosine similarity")
    axis.set_ylabel("samples")
    axis.legend()
    _save(figure, path)


def _class_png(rows, source: _ImageSource, path: Path, columns: int) -> None:
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    count = len(rows)
    lines = -(-count // columns)
    figure, axes = plt.subplots(lines, columns, figsize=(2.2 * columns, 2.6 * lines), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, row in zip(axes.flat, rows.to_dict("records")):
        image = source.read(row)
        if image is not None:
            try:
                axis.imshow(Image.open(io.BytesIO(image[0])).convert("RGB"))
            except OSError:
                pass
        caption = str(row["caption"])
        axis.set_title(f"{row['score']:.3f}\n{caption[:28]}{'…' if len(caption) > 28 else ''}", fontsize=7)
    _save(figure, path)


def write_report(subset_dir: str | Path, out: str | Path, per_class: int = 8, max_classes: int = 100) -> Path:
    """Write the report; returns the path of index.html."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    subset, stats = read_subset(subset_dir), read_stats(subset_dir)
    parts = [f"<h1>Retrieval report: {html.escape(str(subset_dir))}</h1>",
             f"<p>{len(subset)} rows, {subset['id'].nunique()} samples, {subset['class'].nunique()} classes; "
             f"mode {html.escape(str(stats.get('mode', '?')))}.</p>"]
    evaluation = stats.get("evaluation")
    if evaluation:
        cells = "".join(f"<tr><td>{m}</td><td>{evaluation[m]['precision']:.3f}</td><td>{evaluation[m]['pair_precision']:.3f}</td></tr>"
                        for m in ("t2i", "t2t", "both", "random") if m in evaluation)
        parts.append(f"<h2>precision@{evaluation['k']} against ground truth</h2><table border=1>"
                     f"<tr><th>mode</th><th>image class</th><th>image class and caption</th></tr>{cells}</table>")
    if _filters_png(stats, out / "filters.png"):
        parts.append('<h2>Removed by each filter</h2><img src="filters.png">')
    _scores_png(subset, out / "scores.png")
    parts.append('<h2>Scores of kept samples</h2><img src="scores.png">')
    empty = stats.get("empty_classes") or []
    if empty:
        parts.append(f"<p>Classes with no sample: {html.escape(', '.join(empty))}</p>")
    source = _ImageSource()
    classes = list(dict.fromkeys(subset.sort_values("rank")["class"]))
    parts.append("<h2>Top samples per class</h2>")
    for number, name in enumerate(classes[:max_classes]):
        rows = subset[subset["class"] == name].nsmallest(per_class, "rank")
        file = f"class_{number:04d}.png"
        _class_png(rows, source, out / file, columns=max(1, min(len(rows), 8)))
        count = int((subset["class"] == name).sum())
        parts.append(f'<h3>{html.escape(name)} ({count} samples)</h3><img src="{file}">')
    if len(classes) > max_classes:
        parts.append(f"<p>{len(classes) - max_classes} more classes not shown.</p>")
    page = out / "index.html"
    atomic_write_text(page, "<!doctype html><meta charset='utf-8'><title>react retrieval report</title>"
                            "<body style='font-family:sans-serif'>" + "\n".join(parts) + "</body>\n")
    return page
