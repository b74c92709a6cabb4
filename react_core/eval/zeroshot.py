"""Zero-shot classification: images against the text embeddings of the class names."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from react_core.eval.features import encode_labelled_images, labelled_loader


def zeroshot_metrics(
    image_features: torch.Tensor, labels: torch.Tensor, class_embeddings: torch.Tensor, classnames: Sequence[str]
) -> dict:
    """Top-1, top-5 (top-k for fewer classes) and per-class top-1 accuracy, in percent."""
    if len(labels) == 0:
        raise ValueError("no readable images to evaluate")
    logits = image_features @ class_embeddings.T
    k = min(5, len(classnames))
    topk = logits.topk(k, dim=-1).indices
    correct1 = topk[:, 0] == labels
    correctk = (topk == labels[:, None]).any(dim=-1)
    per_class = {}
    for index, name in enumerate(classnames):
        mask = labels == index
        if mask.any():
            per_class[name] = 100.0 * correct1[mask].float().mean().item()
    return {
        "top1": 100.0 * correct1.float().mean().item(),
        f"top{k}": 100.0 * correctk.float().mean().item(),
        "mean_per_class_top1": sum(per_class.values()) / len(per_class),
        "per_class_top1": per_class,
        "images": int(len(labels)),
    }


def evaluate_zeroshot(
    bundle,
    classnames: Sequence[str],
    images: str | Path,
    templates: str | Sequence[str] = "simple",
    batch_size: int = 128,
    workers: int = 0,
    cache_dir: str | Path | None = None,
    device=None,
) -> dict:
    """Zero-shot accuracy of `bundle` (a ClipBundle) on `images/<class>/*` for `classnames`."""
    from react_core.data import ClassificationFolder
    from react_core.modeling.text import cached_class_embeddings, load_templates

    template_list = load_templates(templates)
    dataset = ClassificationFolder(images, classnames, bundle.preprocess_val)
    class_embeddings = cached_class_embeddings(bundle, classnames, template_list, cache_dir)
    features, labels, skipped = encode_labelled_images(
        bundle.model, labelled_loader(dataset, batch_size, workers), device, desc="zero-shot"
    )
    metrics = zeroshot_metrics(features, labels, class_embeddings.to(features.dtype), classnames)
    template_set = templates if isinstance(templates, str) else "a list"
    metrics.update(skipped=skipped, templates=len(template_list), template_set=template_set, classes=len(classnames))
    return metrics
