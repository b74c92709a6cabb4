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
    """Zero-shot classification accuracy of a CLIP model on a folder of labelled images.

    Args:
        bundle: the CLIP model (`react_core.modeling.load_clip`).
        classnames: the class names, in label order.
        images: a folder with one sub-folder of images per class, named as in `classnames`.
        templates: a template set name (`simple`, `openai`) or a list of templates with `{}`.
        batch_size: images per forward pass.
        workers: image-decoding processes.
        cache_dir: where image embeddings are cached between evaluations of the same images.
        device: where to run; the model's device by default.

    Returns:
        `top1`, `top5` (top-k for fewer classes), `mean_per_class_top1` and `per_class_top1` in percent, and `images`.
    """
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
