"""`react text-embed --classes lvis --templates imagenet --weights FILE --out lvis_clip.npy`: a
zero-shot classifier file, in Detic's format, from a (customized) CLIP's text tower."""
from __future__ import annotations

import argparse

from react_core.cli import UserError
from react_core.outputs import add_overwrite_argument

DESCRIPTION = """Write the text embeddings of a class list as a zero-shot classifier file in Detic's
format: one .npy array, C x D float32, row c the L2-normalised embedding of class c (each of its
names in each template, averaged over templates, then over the names). Detic's
MODEL.ROI_BOX_HEAD.ZEROSHOT_WEIGHT_PATH and react's MODEL.REACT.ZEROSHOT.WEIGHT_PATH read it, so
files move both ways; rows follow the class list (category id order for COCO/LVIS categories,
which is Detectron2's class order). CLASSES: lvis (LVIS v1's 1203 categories, shipped with react),
imagenet, a .txt file (one class per line, synonyms after '|'), a JSON list of names, or a COCO/LVIS
annotation or categories .json. The text tower is the model's: --weights may be a customized
model or an adapter from `react customize` (which names its base). An --out written by another
run (other classes, templates or weights) is kept unless --overwrite; the same run may write it again."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "text-embed", help="a zero-shot classifier file (Detic's C x D .npy) from class names",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--classes", required=True, help="lvis, imagenet, a .txt file, or a .json list / COCO-LVIS categories")
    parser.add_argument("--templates", default="imagenet",
                        help="imagenet (CLIP's 80), simple (7), none (the name alone), or a file with one template per line")
    parser.add_argument("--model", default=None,
                        help="architecture: an open_clip name or react-tiny (default: the one an adapter --weights names, else react-tiny)")
    parser.add_argument("--pretrained", help="an open_clip pretrained tag")
    parser.add_argument("--weights", help="weights file: a full state dict, an official REACT file, or an adapter")
    parser.add_argument("--base-weights", help="where an adapter's base weights are now, if they moved")
    parser.add_argument("--names-only", action="store_true",
                        help="embed each class's first name only, not the mean over its synonyms (Detic's default)")
    parser.add_argument("--batch-size", type=int, default=256, help="texts per forward pass")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--out", required=True, help="the .npy file to write")
    add_overwrite_argument(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
    """`react text-embed`: claim --out, then write the classifier file."""
    from pathlib import Path

    from react_core.outputs import argument_settings, claim_file

    out = Path(args.out)
    if out.suffix != ".npy":
        raise UserError(f"--out {out}: a classifier file is a .npy array")
    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    with claim_file(out, "react text-embed", argument_settings(args, "batch_size", "device"), args.overwrite):
        return _write_classifier(args, out)


def _write_classifier(args, out) -> int:
    """Embed the class list with the model's text tower and write the classifier file `out`."""
    import torch
    from tqdm import tqdm

    from react_core.modeling import CheckpointError, PretrainedUnavailableError, load_clip
    from react_core.modeling.adapters import read_adapter_metadata
    from react_core.modeling.text import load_templates, save_classifier_file, synonym_class_embeddings
    from react_core.retrieval.classes import load_classes

    classes = load_classes(args.classes)
    templates = load_templates(args.templates)
    model = args.model
    if model is None:
        adapter = read_adapter_metadata(args.weights) if args.weights else None
        model = adapter["model"] if adapter is not None else "react-tiny"
    try:
        bundle = load_clip(model, args.pretrained, args.weights, device=args.device, base_weights=args.base_weights)
    except (CheckpointError, PretrainedUnavailableError, FileNotFoundError) as error:
        raise UserError(str(error)) from error
    except ValueError as error:
        raise UserError(f"--model {model}: {error}") from error
    names = [spec.synonyms[:1] if args.names_only else spec.synonyms for spec in classes]
    chunk = max(1, args.batch_size // max(1, len(templates)))
    parts = []
    with tqdm(total=len(names), desc="text-embed", unit="class", dynamic_ncols=True) as progress:
        for start in range(0, len(names), chunk):
            parts.append(synonym_class_embeddings(bundle, names[start : start + chunk], templates))
            progress.update(len(parts[-1]))
    embeddings = torch.cat(parts)
    save_classifier_file(out, embeddings)
    print(f"{len(classes)} classes x {embeddings.shape[1]} ({len(templates)} templates) -> {out}")
    return 0
