"""Text embeddings of class names: the classifier weights of every zero-shot task.

Zero-shot classification, per-class retrieval queries, the region-text detection head and the
segmentation head all turn a vocabulary into CLIP text embeddings here, one way: each class
name in each prompt template, L2-normalised, averaged over templates, normalised again (as
CLIP does). Embeddings are cached on disk keyed by the model identity, the vocabulary and the
templates, since the text tower is locked and they never change during customization.

Classifier files move between detectors in Detic's format (`save_classifier_file`,
`load_classifier_file`): one `.npy` array, C x D float32, one row per class in the vocabulary's
order.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import torch

from react_core.errors import ReactError
from react_core.io import atomic_path, read_text

_BUILTIN_TEMPLATES = ("imagenet", "simple", "none")


class VocabularyError(ReactError):
    """A class list or template file that cannot be used; names the file and line."""


def builtin_templates(name: str) -> list[str]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    if name == "imagenet":
        return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    if name == "simple":
        return [t("{}") for t in SIMPLE_IMAGENET_TEMPLATES]
    if name == "none":
        return ["{}"]
    raise VocabularyError(f"unknown template set '{name}' (built in: {', '.join(_BUILTIN_TEMPLATES)}, or a file)")


def load_templates(spec: str | Sequence[str]) -> list[str]:
    """A built-in set name, a text file (one template with `{}` per line), or a list."""
    if not isinstance(spec, str):
        templates = list(spec)
        source = "the template list"
    elif spec in _BUILTIN_TEMPLATES:
        return builtin_templates(spec)
    else:
        path = Path(spec)
        if not path.is_file():
            raise VocabularyError(f"templates '{spec}' is neither a built-in set ({', '.join(_BUILTIN_TEMPLATES)}) nor a file")
        templates = read_text(path, VocabularyError).splitlines()
        source = str(path)
    kept = []
    for number, template in enumerate(templates, 1):
        if not template.strip():
            continue
        if template.count("{}") != 1:
            raise VocabularyError(f"{source}, line {number}: template {template!r} must contain '{{}}' exactly once")
        kept.append(template)
    if not kept:
        raise VocabularyError(f"{source}: no templates")
    return kept


def describe_templates(spec: str | Sequence[str]) -> str:
    """How a user names the templates `spec` stands for, with their number: `'simple' (7)`."""
    count = len(load_templates(spec))
    if not isinstance(spec, str):
        return f"a list of {count}"
    return f"'{spec}' ({count})" if spec in _BUILTIN_TEMPLATES else f"from {spec} ({count})"


def imagenet_classnames() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


@torch.no_grad()
def encode_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 256, device=None) -> torch.Tensor:
    """L2-normalised text embeddings, [N, D] float32."""
    device = device or next(model.parameters()).device
    chunks = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(list(texts[start : start + batch_size])).to(device)
        chunks.append(torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1))
    if not chunks:
        return torch.empty(0, model.text_projection.shape[-1] if hasattr(model, "text_projection") else 0)
    return torch.cat(chunks).cpu()


def class_embeddings(
    model, tokenizer, classnames: Sequence[str], templates: Sequence[str], average: bool = True, batch_size: int = 256
) -> torch.Tensor:
    """[C, D] template-averaged class embeddings, or [C, T, D] when `average` is False."""
    texts = [template.format(name) for name in classnames for template in templates]
    flat = encode_texts(model, tokenizer, texts, batch_size)
    per_template = flat.reshape(len(classnames), len(templates), -1)
    if not average:
        return per_template
    return torch.nn.functional.normalize(per_template.mean(dim=1), dim=-1)


def synonym_class_embeddings(
    bundle, synonyms: Sequence[Sequence[str]], templates: Sequence[str], cache_dir: str | Path | None = None
) -> torch.Tensor:
    """[C, D] embeddings of classes given as their prompt names (`synonyms[c]`, the name first):
    the mean of each name's template-averaged embedding, L2-normalised; names go through
    `cached_class_embeddings`."""
    flat = [name for names in synonyms for name in names]
    per_name = cached_class_embeddings(bundle, flat, templates, cache_dir)
    owner = torch.repeat_interleave(torch.arange(len(synonyms)), torch.tensor([len(names) for names in synonyms]))
    summed = torch.zeros(len(synonyms), per_name.shape[1]).index_add_(0, owner, per_name)
    return torch.nn.functional.normalize(summed, dim=-1)


def cache_key(model_identity: dict, classnames: Sequence[str], templates: Sequence[str], average: bool = True) -> str:
    payload = json.dumps([model_identity, list(classnames), list(templates), average], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def cached_class_embeddings(
    bundle, classnames: Sequence[str], templates: Sequence[str], cache_dir: str | Path | None, average: bool = True
) -> torch.Tensor:
    """`class_embeddings` through an on-disk cache keyed by model, vocabulary and templates.

    `bundle` is a `ClipBundle`; its `spec.identity()` changes whenever the text tower's weights
    do, since weights are named by file hash or tag. A randomly initialised model has no such
    name, so its embeddings are never cached.
    """
    if cache_dir is None or not bundle.spec.named:
        return class_embeddings(bundle.model, bundle.tokenizer, classnames, templates, average)
    from safetensors.torch import load_file, save_file

    path = Path(cache_dir) / f"text_{cache_key(bundle.spec.identity(), classnames, templates, average)}.safetensors"
    if path.is_file():
        return load_file(str(path))["embeddings"]
    embeddings = class_embeddings(bundle.model, bundle.tokenizer, classnames, templates, average)
    with atomic_path(path) as tmp:
        save_file({"embeddings": embeddings.contiguous()}, str(tmp))
    return embeddings


def save_classifier_file(path: str | Path, embeddings: torch.Tensor) -> Path:
    """Write [C, D] class embeddings as Detic's zero-shot classifier files are: a C x D float32 `.npy`."""
    import numpy as np

    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, embeddings.detach().float().cpu().numpy())
    return path


def load_classifier_file(path: str | Path) -> torch.Tensor:
    """A classifier file in Detic's format (C x D floats, read without pickle) as a float32 tensor."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise VocabularyError(f"classifier file not found: {path}")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise VocabularyError(f"{path}: not a .npy array ({error})") from None
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise VocabularyError(f"{path}: a {array.dtype} array of shape {array.shape}; expected C x D floats (Detic's format)")
    return torch.from_numpy(array.astype(np.float32))
