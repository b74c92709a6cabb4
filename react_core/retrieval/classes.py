"""Class lists for retrieval, and the text queries made from them.

Sources: `imagenet` (ImageNet-1K's CLIP class names), `lvis` (LVIS v1's 1203 categories in id
order, with synonyms and definitions, from a file shipped in `react_core/resources`), a text file
(one class per line, synonyms after `|`), a JSON list of names, or COCO/LVIS `categories` (a JSON
file with a `categories` list, or the list itself: `name`, optional `synonyms`, optional `def`).

Names are handled as documented here, once for every source:
  * a duplicate name is merged into the first (its synonyms and description join it), with a
    warning: two classes with one name would compete for the same samples;
  * an empty name (a blank line between names, "" in a list) is an error naming the line or
    entry, since it usually means a lost name and would shift every later class; blank lines at
    the end of a text file are ignored;
  * non-ASCII names are kept exactly as they are (the tokenizer handles them).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from react_core.errors import ReactError
from react_core.io import parse_json, read_text

logger = logging.getLogger("react")
LVIS_CATEGORIES = Path(__file__).resolve().parents[1] / "resources" / "lvis_v1_categories.json"
BUILTIN_LISTS = ("imagenet", "lvis")


class ClassListError(ReactError):
    """A class list that cannot be used; names the file and the line or entry."""


@dataclass
class ClassSpec:
    """A class: its name (the label written out), prompt names (first is the readable name) and
    an optional description used as an extra query."""

    name: str
    synonyms: list[str] = field(default_factory=list)
    description: str | None = None


def _readable(name: str) -> str:
    """LVIS names are `aerosol_can`; prompts read better as `aerosol can`."""
    return " ".join(name.replace("_", " ").split())


def _merge(entries: list[tuple[str, list[str], str | None, str]], source: str) -> list[ClassSpec]:
    classes: dict[str, ClassSpec] = {}
    for name, synonyms, description, where in entries:
        if not name.strip():
            raise ClassListError(f"{source}, {where}: empty class name")
        name = name.strip()
        prompts = list(dict.fromkeys(_readable(s) for s in [name, *synonyms] if s.strip()))
        if name in classes:
            logger.warning("%s, %s: class %r appears again; merged into its first entry", source, where, name)
            known = classes[name]
            known.synonyms = list(dict.fromkeys(known.synonyms + prompts))
            known.description = known.description or description
            continue
        classes[name] = ClassSpec(name, prompts, description)
    if not classes:
        raise ClassListError(f"{source}: no class names")
    return list(classes.values())


def load_classes(spec: str) -> list[ClassSpec]:
    """Classes from `imagenet`, `lvis`, a `.txt` file, or a `.json` list / COCO-LVIS categories file."""
    if spec == "imagenet":
        from react_core.modeling.text import imagenet_classnames

        return _merge([(n, [], None, f"entry {i + 1}") for i, n in enumerate(imagenet_classnames())], "imagenet")
    if spec == "lvis":
        return _from_json(LVIS_CATEGORIES.read_text(encoding="utf-8"), "lvis")
    path = Path(spec)
    if not path.is_file():
        raise ClassListError(f"class list {spec!r} is neither {' nor '.join(map(repr, BUILTIN_LISTS))} nor a file")
    text = read_text(path)
    if path.suffix.lower() == ".json":
        return _from_json(text, str(path))
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    entries = []
    for number, line in enumerate(lines, 1):
        words = [w.strip() for w in line.split("|")]
        entries.append((words[0], [w for w in words[1:] if w], None, f"line {number}"))
    return _merge(entries, str(path))


def _from_json(text: str, source: str) -> list[ClassSpec]:
    data = parse_json(text, source, ClassListError)
    if isinstance(data, dict):
        data = data.get("categories")
    if not isinstance(data, list):
        raise ClassListError(f"{source}: expected a list of names or COCO/LVIS 'categories'")
    entries = []
    for number, item in enumerate(data, 1):
        where = f"entry {number}"
        if isinstance(item, str):
            entries.append((item, [], None, where))
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            synonyms = [s for s in item.get("synonyms", []) if isinstance(s, str)]
            entries.append((item["name"], synonyms, item.get("def") or None, where))
        else:
            raise ClassListError(f"{source}, {where}: expected a name or a category with a 'name', got {item!r}")
    if data and isinstance(data[0], dict) and all("id" in c for c in data if isinstance(c, dict)):
        order = sorted(range(len(entries)), key=lambda i: data[i]["id"] if isinstance(data[i], dict) else 0)
        entries = [entries[i] for i in order]
    return _merge(entries, source)


@dataclass
class Queries:
    """Query texts, the class each belongs to, and their L2-normalised embeddings [Q, D]."""

    texts: list[str]
    classes: list[int]
    embeddings: "object"


def build_queries(bundle, classes: list[ClassSpec], templates: list[str], *, average: bool = False,
                  descriptions: bool = False, batch_size: int = 256, progress: bool = True) -> Queries:
    """The text queries of a class list: every prompt name of every class in every template.

    A progress bar counts the class names encoded when that takes more than a second (100 000
    classes x 80 templates take minutes).

    Args:
        bundle: the CLIP model whose text tower encodes the queries.
        classes: the classes (`load_classes`).
        templates: prompt templates with `{}` (`react_core.modeling.text.load_templates`).
        average: one query per prompt name, the normalized mean over templates.
        descriptions: each class's description as one more query.
        batch_size: texts per forward pass.
        progress: show the progress bar.

    Returns:
        `Queries`: the normalized embeddings, their texts and the class of each.
    """
    import torch
    from tqdm import tqdm

    from react_core.modeling.text import class_embeddings, encode_texts

    names = [(c, name) for c, spec in enumerate(classes) for name in spec.synonyms]
    per_chunk = max(1, 16 * batch_size // len(templates))  # names per call: a few batches of texts each
    chunks = []
    with tqdm(total=len(names), desc="encode class names", unit="name", disable=not progress, delay=1.0,
              leave=False) as bar:
        for start in range(0, len(names), per_chunk):
            chunk = [n for _, n in names[start:start + per_chunk]]
            chunks.append(class_embeddings(bundle.model, bundle.tokenizer, chunk, templates, average=average,
                                           batch_size=batch_size))
            bar.update(len(chunk))
    embedded = torch.cat(chunks)
    if average:
        texts = [f"{{{len(templates)} templates}}: {n}" if len(templates) > 1 else templates[0].format(n) for _, n in names]
        owners = [c for c, _ in names]
        vectors = [embedded]
    else:
        texts = [t.format(n) for _, n in names for t in templates]
        owners = [c for c, _ in names for _ in templates]
        vectors = [embedded.reshape(-1, embedded.shape[-1])]
    if descriptions:
        described = [(c, f"{spec.synonyms[0]}, {spec.description}") for c, spec in enumerate(classes) if spec.description]
        if described:
            texts += [t for _, t in described]
            owners += [c for c, _ in described]
            vectors.append(encode_texts(bundle.model, bundle.tokenizer, [t for _, t in described], batch_size))
    return Queries(texts, owners, torch.cat(vectors).float().numpy())
