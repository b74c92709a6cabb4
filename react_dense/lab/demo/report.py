"""The demo's report: `report.md`, `report.html`, PNG plots and `metrics.json`.

Plots: zero-shot top-1 per variant (mean and std over seeds), a gallery of retrieved pairs
per target class, novel-class detections of the base and the customized backbone, and one panel
per claim with the two values it compares.
"""
from __future__ import annotations

import html
import json
import textwrap
from pathlib import Path

from react_core.io import atomic_path, atomic_write_json, atomic_write_text


def _save_figure(figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_accuracy(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["base CLIP", *summary["zeroshot_top1"]]
    means = [summary["zeroshot_top1_base"], *(v["mean"] for v in summary["zeroshot_top1"].values())]
    spreads = [0.0, *(v["std"] for v in summary["zeroshot_top1"].values())]
    figure, axis = plt.subplots(figsize=(8, 3.6))
    palette = ["#1f77b4", "#7fb3d5", "#2ca02c", "#e07b39", "#8c8c8c"]
    colors = ["#999999", *(palette[i % len(palette)] for i in range(len(labels) - 1))]
    axis.barh(labels[::-1], means[::-1], xerr=spreads[::-1], color=colors[::-1], capsize=3)
    for y, (value, spread) in enumerate(zip(means[::-1], spreads[::-1])):
        axis.text(value + spread + 1.0, y, f"{value:.1f}", va="center")
    axis.set_xlabel("zero-shot top-1 on the target classes (%), mean over seeds (± std)")
    axis.set_xlim(0, 100)
    _save_figure(figure, path)
    plt.close(figure)


def plot_gallery(subset_manifest: Path, world_dir: Path, path: Path, targets: list[str], per_class: int = 6,
                 classes: int = 6) -> None:
    """Top retrieved images per target class (the subset also holds the base classes), a green frame
    where the image truly shows the class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyarrow.parquet as pq

    from react_core.data.pairs import ManifestPairs

    pairs = ManifestPairs(str(subset_manifest))
    table = pq.read_table(subset_manifest).to_pandas()
    table = table.assign(row=range(len(table)), id=table["id"].astype(str))
    truth = pq.read_table(world_dir / "corpus" / "manifest.parquet", columns=["id", "class"]).to_pandas()
    truth = truth.assign(id=truth["id"].astype(str)).rename(columns={"class": "true_class"})
    table = table.merge(truth, on="id", how="left")
    names = sorted(set(table["class"]) & set(targets))[:classes]
    figure, axes = plt.subplots(len(names), per_class, figsize=(per_class * 1.3, len(names) * 1.45))
    for row, name in enumerate(names):
        top = table[table["class"] == name].sort_values("score", ascending=False).head(per_class)
        for col in range(per_class):
            axis = axes[row][col]
            axis.set_xticks([]), axis.set_yticks([])
            if col >= len(top):
                axis.axis("off")
                continue
            record = top.iloc[col]
            axis.imshow(pairs.load_image(int(record["row"])))
            correct = record["true_class"] == name
            for spine in axis.spines.values():
                spine.set_edgecolor("#2ca02c" if correct else "#d62728")
                spine.set_linewidth(3)
            if col == 0:
                axis.set_ylabel(name, fontsize=8)
    figure.suptitle("top retrieved pairs per class (green: the image shows the class)", fontsize=9)
    _save_figure(figure, path)
    plt.close(figure)


def plot_detections(dense_dirs: dict, world_dir: Path, path: Path, images: int = 4) -> None:
    """Novel-class detections on the same validation images, base vs customized backbone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt
    from PIL import Image

    val = json.loads((world_dir / "detection" / "val.json").read_text())
    novel = {c["id"]: c["name"] for c in val["categories"] if c.get("frequency") == "r"}
    with_novel = sorted({a["image_id"] for a in val["annotations"] if a["category_id"] in novel})[:images]
    by_id = {image["id"]: image for image in val["images"]}
    rows = [("base", dense_dirs[("detection", "base")]), ("customized", dense_dirs[("detection", "customized")])]
    figure, axes = plt.subplots(len(rows), len(with_novel), figsize=(len(with_novel) * 2.4, len(rows) * 2.5), squeeze=False)
    for row, (label, folder) in enumerate(rows):
        results_file = Path(folder) / "inference" / "detections.json"
        results = json.loads(results_file.read_text()) if results_file.is_file() else []
        for col, image_id in enumerate(with_novel):
            axis = axes[row][col]
            axis.imshow(Image.open(world_dir / "detection" / by_id[image_id]["file_name"]).convert("RGB"))
            axis.set_xticks([]), axis.set_yticks([])
            found = [r for r in results if r["image_id"] == image_id and r["category_id"] in novel and r["score"] >= 0.3]
            if not found:
                axis.text(0.5, 0.5, "no novel-class\ndetection ≥ 0.3", transform=axis.transAxes, ha="center",
                          va="center", fontsize=7, backgroundcolor="white")
            for result in sorted(found, key=lambda r: -r["score"])[:4]:
                x, y, w, h = result["bbox"]
                axis.add_patch(patches.Rectangle((x, y), w, h, fill=False, color="#ffdd00", linewidth=1.5))
                axis.text(x, y - 1, f"{novel[result['category_id']]} {result['score']:.2f}", fontsize=6,
                          color="black", backgroundcolor="#ffdd00")
            if col == 0:
                axis.set_ylabel(f"{label} backbone", fontsize=8)
    figure.suptitle("novel-class detections (score ≥ 0.3)", fontsize=9)
    _save_figure(figure, path)
    plt.close(figure)


def claim_verdict(claim: dict) -> str:
    """'holds', 'NOT met', or 'not evaluated at quick scale' for a run too small to judge it."""
    if not claim.get("evaluated", True):
        return "not evaluated at quick scale"
    return "holds" if claim["holds"] else "NOT met"


def plot_claims(claims: list[dict], path: Path) -> None:
    """One panel per claim: the two values it compares, green where the target holds, red where not,
    grey where the run is too small to judge it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 3
    rows = -(-len(claims) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 3.6, rows * 2.3), squeeze=False)
    for axis, claim in zip(axes.flat, claims):
        labels = [label.replace(" · ", "\n") for label, _ in claim["values"]]
        values = [0.0 if v is None else v for _, v in claim["values"]]
        color = "#999999" if not claim.get("evaluated", True) else "#2ca02c" if claim["holds"] else "#d62728"
        axis.bar(range(len(values)), values, color=color, width=0.6)
        for x, (_, per_seed) in enumerate(claim.get("per_seed", [])):  # each seed's value over its mean
            if len(per_seed) > 1:
                axis.plot([x] * len(per_seed), per_seed, "k.", markersize=3)
        for x, value in enumerate(values):
            axis.text(x, value, f"{value:.2f}", ha="center", va="bottom", fontsize=7)
        axis.set_xticks(range(len(values)), labels, fontsize=6)
        title = textwrap.fill(claim["name"].split(":")[0], 52)
        axis.set_title(f"{title}\ntarget {claim['target']}: {claim_verdict(claim)}", fontsize=7)
        axis.tick_params(axis="y", labelsize=6)
    for axis in list(axes.flat)[len(claims):]:
        axis.axis("off")
    figure.tight_layout()
    _save_figure(figure, path)
    plt.close(figure)


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if isinstance(value, (int, float)) else str(value)


def _fmt_stats(stats: dict | None, digits: int = 2) -> str:
    """mean ± std (n) over seeds, the mean alone for one seed."""
    if stats is None:
        return "–"
    n = len(stats["values"])
    mean, std = f"{stats['mean']:.{digits}f}", f"{stats['std']:.{digits}f}"
    return mean if n == 1 else f"{mean} ± {std} (n={n})"


def variant_table(summary: dict) -> list[str]:
    """Every variant's zero-shot and dense figures over the seeds measured."""
    dense, labels = summary["dense_over_seeds"], summary["towers"]
    by_label = {label: tower for tower, label in labels.items()}

    def one(value):
        return None if value is None else {"mean": value, "std": 0.0, "values": [value]}

    generic = summary.get("generic_top1_over_seeds", {})
    rows = [("base CLIP", "base", one(summary["zeroshot_top1_base"]), one(summary["generic_top1_base"]))]
    for label, stats in summary["zeroshot_top1"].items():
        rows.append((label, by_label.get(label), stats, generic.get(label)))
    lines = [
        "## Every variant over its seeds",
        "",
        "Mean ± sample std over the adapter seeds measured (n); the heads are the base tower's (seed 0) for "
        "every tower. Locked-text and full fine-tuning retrain the trunk the heads read, so they are not "
        "evaluated on them (–). The permuted column is the detector with the novel classes' text "
        "embeddings shuffled among them (the control of the best variant).",
        "",
        "| variant | target top-1 | generic top-1 | training-free (MaskCLIP) unseen mIoU | head + readout unseen mIoU "
        "| novel APr, F-VLM's novel weight | the same, permuted novel embeddings |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, tower, top1, generic_top1 in rows:
        figures = dense.get(tower, {}) if tower else {}
        cells = [_fmt_stats(top1, digits=1), _fmt_stats(generic_top1, digits=1)]
        cells += [_fmt_stats(figures.get(task)) for task in ("maskclip", "segmentation-ensemble", "detection-novel", "detection-novel-permuted")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(summary: dict) -> str:
    seeds = len(summary["seeds"])
    retrieval, targets = summary["retrieval"], summary["world"]["target_classes"]
    queried = " / ".join(sorted({str(stats["classes"]) for stats in retrieval.values()}))  # one classes file for every mode
    kept = ", ".join(f"{mode} {stats['pairs']}" for mode, stats in retrieval.items())
    judged = all(claim.get("evaluated", True) for claim in summary["claims"])
    lines = [
        "# REACT on the synthetic world",
        "",
        *([] if judged else [
            "**A quick-scale run (`react demo --quick`): the tiny world, one seed, a few iterations per stage. "
            "Its figures only exercise the stages; they show nothing about the method, and no claim is "
            "evaluated. `react demo` runs the demo at the scale that judges the claims.**",
            "",
        ]),
        f"Preset `{summary['preset']}`; the first two variants are means over {seeds} seed(s) (± sample std), "
        + ("plain CLIPSelf too, the other ablations run on the first seed" if len(summary["zeroshot_top1"]) > 2
           else "the ablations were not run (`react demo --ablations`)")
        + ". Target classes: " + ", ".join(summary["world"]["target_classes"]) + ".",
        "",
        "## Retrieval: precision@k against the world's ground truth",
        "",
        f"Retrieval covered the world's dense vocabulary: {queried} classes ({len(targets)} target classes and the "
        f"base classes the detector and the segmentation head train on); pairs kept: {kept}. "
        f"Precision is over the {len(targets)} target classes.",
        "",
        "| mode | pairs kept (all classes) | of them for target classes | precision@k, target classes (%) | random baseline (%) |",
        "|---|---|---|---|---|",
    ]
    for mode, stats in retrieval.items():
        precision, random_precision = stats["precision"], stats["random_precision"]
        lines.append(
            f"| {mode} | {stats['pairs']} | {stats['target_pairs']} | {_fmt(None if precision is None else 100 * precision)} "
            f"| {_fmt(None if random_precision is None else 100 * random_precision)} |"
        )
    lines += [
        "",
        "![retrieval gallery](retrieval_gallery.png)",
        "",
        "## Customization: zero-shot top-1 on held-out images of the target and the generic classes",
        "",
        f"The dense-aware runs (`{summary['dense_config']}`) train on their pairs with random corpus pairs "
        "replayed beside them, a third as many (a quarter of each batch); generic top-1 measures what they "
        "keep of the classes retrieval did not ask for.",
        "",
        "| variant | target top-1 (%) | ± | per seed | generic top-1 (%) |",
        "|---|---|---|---|---|",
        f"| base CLIP (pretrained on the generic slice) | {_fmt(summary['zeroshot_top1_base'])} | | | {_fmt(summary['generic_top1_base'])} |",
    ]
    for label, stats in summary["zeroshot_top1"].items():
        per_seed = ", ".join(f"{v:.1f}" for v in stats["values"])
        lines.append(f"| {label} | {_fmt(stats['mean'])} | {_fmt(stats['std'])} | {per_seed} | {_fmt(summary['generic_top1'][label])} |")
    dense = summary["dense"]
    towers = [name for name in summary["towers"] if f"segmentation/{name}" in dense]
    lines += [
        "",
        "![zero-shot top-1 per variant](accuracy.png)",
        "",
        "## Dense transfer: the base tower and the first seed's customized towers",
        "",
        "The detector and the segmentation head read the tokens of the block below the gated one "
        "(`backbone.feature_block: -2`), which customization leaves as the base tower's; the customized "
        "tower reaches them through its dense readout, in score ensembles whose settings are chosen on "
        "base classes held out of a calibration run (" + ", ".join(summary.get("calibration_heldout", [])) + "): "
        "the detector's weights after the prior correction and the background embedding, the "
        "segmentation readout's temperature. `detection-novel` evaluates the same detector with F-VLM's "
        "fixed novel weight (0.65) and the background embedding, the base classes left to the detector "
        "(base weight 0, which every calibration chose). No novel annotation chooses anything.",
        "",
        "Towers: " + "; ".join(f"`{name}`: {summary['towers'][name]}" for name in towers) + ".",
        "",
        "| task | metric | " + " | ".join(towers) + " |",
        "|---|---|" + "---|" * len(towers),
    ]
    for task, metric, key in (("detection", "bbox AP, novel (rare) classes, calibrated score ensemble", "bbox/APr"),
                              ("detection", "bbox AP, all classes", "bbox/AP"),
                              ("detection-novel", "bbox AP, novel (rare) classes, F-VLM's novel weight only", "bbox/APr"),
                              ("detection-novel", "bbox AP, all classes, F-VLM's novel weight only", "bbox/AP"),
                              ("segmentation", "trained-head mIoU, unseen classes", "mIoU_unseen"),
                              ("segmentation", "trained-head mIoU, seen classes", "mIoU_seen"),
                              ("segmentation-ensemble", "head + readout (calibrated ensemble) mIoU, unseen classes", "mIoU_unseen"),
                              ("segmentation-ensemble", "head + readout (calibrated ensemble) mIoU, seen classes", "mIoU_seen"),
                              ("maskclip", "training-free mIoU, unseen classes", "mIoU_unseen")):
        cells = [_fmt(dense.get(f"{task}/{name}", {}).get(key)) for name in towers]
        lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    lines += ["", *variant_table(summary)]
    lines += [
        "",
        "![novel-class detections](detections.png)",
        "",
        "## Do the claims hold here?",
        "",
        "![each claim and the values it compares](claims.png)",
        "",
    ]
    for claim in summary["claims"]:
        measured = "–" if claim["measured"] is None else f"{claim['measured']:+.2f}" if "point" in claim["target"] else f"{claim['measured']:.2f}x"
        spread = f", seed std {claim['std']:.2f}" if "seed std" in claim["target"] else ""
        lines.append(f"- {claim['name']}: {measured}{spread} (target {claim['target']}: {claim_verdict(claim)})")
    lines.append("")
    return "\n".join(lines)


def render_html(markdown: str) -> str:
    """A small, dependency-free rendering of the report's markdown (headings, tables, images, lists)."""
    body, table = [], []

    def flush_table():
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= set("-")]
            cells = [[html.escape(c.strip()) for c in r.strip().strip("|").split("|")] for r in rows]
            head = "".join(f"<th>{c}</th>" for c in cells[0])
            rest = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells[1:])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rest}</tbody></table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("!["):
            alt, src = line[2:].split("](")
            body.append(f'<p><img alt="{html.escape(alt)}" src="{html.escape(src.rstrip(")"))}"></p>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            body.append(f"<p>{html.escape(line).replace('`', '')}</p>")
    flush_table()
    style = (
        "body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px}"
        "th{background:#f2f2f2}img{max-width:100%}"
    )
    return f"<!doctype html><html><head><meta charset='utf-8'><title>REACT demo</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"


def write_report(out: Path, summary: dict, world_dir: Path, subset_manifest: Path, dense_dirs: dict) -> None:
    plot_accuracy(summary, out / "accuracy.png")
    plot_gallery(subset_manifest, world_dir, out / "retrieval_gallery.png", summary["world"]["target_classes"])
    plot_detections(dense_dirs, world_dir, out / "detections.png")
    plot_claims(summary["claims"], out / "claims.png")
    markdown = render_markdown(summary)
    atomic_write_text(out / "report.md", markdown)
    atomic_write_text(out / "report.html", render_html(markdown))
    atomic_write_json(out / "metrics.json", summary)
