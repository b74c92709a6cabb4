"""`react eval {zeroshot,retrieval,linear-probe}`: evaluate a base or customized CLIP."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from react_core.config.common import DEFAULT_TEMPLATES
from react_core.outputs import add_overwrite_argument


def _model_arguments(parser):
    parser.add_argument("--model", default="react-tiny", help="architecture: an open_clip name or react-tiny")
    parser.add_argument("--pretrained", help="an open_clip pretrained tag")
    parser.add_argument(
        "--weights", help="weights file: a full state dict, an official REACT file, or an adapter from react customize"
    )
    parser.add_argument("--base-weights", help="where the base weights of an adapter (--weights) are now, if they moved")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--out", required=True, help="metrics file (*.json) or folder (metrics.json inside)")
    add_overwrite_argument(parser)


def register(subparsers):
    parser = subparsers.add_parser(
        "eval",
        help="zero-shot classification, image-text retrieval, linear probe",
        description="Evaluate a CLIP: base, customized (adapter or full file) or official REACT weights.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    zeroshot = actions.add_parser(
        "zeroshot",
        help="zero-shot top-1/top-5/per-class accuracy on a labelled image folder",
        description="Classify IMAGES/<class>/* by similarity to the text embeddings of the class names "
        "(each name in each template, averaged). Sub-folders are named by class name (spaces as _ or -) or index. "
        f"The templates default to '{DEFAULT_TEMPLATES}', as react customize's zero-shot before/after does, so the "
        "two numbers compare; the set used is printed and recorded in the metrics (template_set).",
    )
    _model_arguments(zeroshot)
    zeroshot.add_argument(
        "--classes", required=True, help="class names, one per line, in label order; or imagenet (ImageNet-1K)"
    )
    zeroshot.add_argument("--images", required=True, help="folder with one sub-folder per class")
    zeroshot.add_argument("--templates", default=DEFAULT_TEMPLATES,
                          help=f"simple (open_clip's 7), imagenet (CLIP's 80), none, or a file (default: {DEFAULT_TEMPLATES})")
    zeroshot.set_defaults(handler=run_zeroshot)

    retrieval = actions.add_parser(
        "retrieval",
        help="image->text and text->image recall@1/5/10 on a pairs parquet",
        description="Recall@1/5/10 both ways on a pair manifest (caption plus path, url, or shard+key); rows "
        "that name the same image share it, so an image may have several captions.",
    )
    _model_arguments(retrieval)
    retrieval.add_argument("--pairs", required=True, help="pairs parquet")
    retrieval.add_argument("--root", help="folder that relative paths are read from (default: the parquet's)")
    retrieval.set_defaults(handler=run_retrieval)

    probe = actions.add_parser(
        "linear-probe",
        help="logistic regression on frozen image features, few-shot or full",
        description="Fit a logistic-regression classifier on frozen, normalised image features of TRAIN "
        "(K images per class, or all), with the L2 strength chosen on a validation split of other training "
        "images (as the ELEVATER toolkit does), and report top-1 on TEST.",
    )
    _model_arguments(probe)
    probe.add_argument("--classes", required=True, help="class names, one per line, in label order")
    probe.add_argument("--train", required=True, help="labelled training folder (one sub-folder per class)")
    probe.add_argument("--test", required=True, help="labelled test folder")
    probe.add_argument("--shots", default="all", help="images per class for training, or 'all'")
    probe.add_argument("--seed", type=int, default=0, help="seed of the per-class sampling")
    probe.set_defaults(handler=run_linear_probe)


def _metrics_path(out: str) -> Path:
    path = Path(out)
    return path if path.suffix == ".json" else path / "metrics.json"


def _load(args):
    import torch

    from react_core.modeling import load_clip

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_clip(args.model, args.pretrained, args.weights, device=device, base_weights=args.base_weights)


@contextlib.contextmanager
def _claimed(args) -> Iterator[Path]:
    """The metrics file of this run, held for it (`react_core.outputs`): the folder when --out is
    one, the file itself when --out names a .json."""
    from react_core.outputs import argument_settings, claim_file, claim_output

    settings = argument_settings(args, "workers")
    path = _metrics_path(args.out)
    claim = claim_file if path == Path(args.out) else claim_output
    with claim(args.out, f"react eval {args.action}", settings, args.overwrite):
        yield path


def _write(path: Path, metrics: dict, bundle) -> int:
    import json

    from react_core.io import atomic_write_json

    metrics = {**metrics, "model": bundle.spec.identity()}
    atomic_write_json(path, metrics)
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))
    return 0


def run_zeroshot(args) -> int:
    from react_core.cli.customize_cmd import user_errors
    from react_core.data import read_classnames
    from react_core.eval import evaluate_zeroshot
    from react_core.modeling.text import describe_templates

    with user_errors():
        classnames = read_classnames(args.classes)
        with _claimed(args) as path:
            bundle = _load(args)
            print(f"zero-shot with templates {describe_templates(args.templates)}")
            metrics = evaluate_zeroshot(bundle, classnames, args.images, args.templates, args.batch_size, args.workers)
            return _write(path, metrics, bundle)


def run_retrieval(args) -> int:
    from react_core.cli.customize_cmd import user_errors
    from react_core.data import ManifestPairs
    from react_core.eval import evaluate_retrieval

    with user_errors(), _claimed(args) as path:
        bundle = _load(args)
        pairs = ManifestPairs(args.pairs, args.root, transform=bundle.preprocess_val)
        metrics = evaluate_retrieval(bundle, pairs, args.batch_size, args.workers)
        return _write(path, metrics, bundle)


def run_linear_probe(args) -> int:
    from react_core.cli import UserError
    from react_core.cli.customize_cmd import user_errors
    from react_core.data import ClassificationFolder, read_classnames
    from react_core.eval import encode_labelled_images, labelled_loader, linear_probe

    if args.shots != "all" and not (args.shots.isdigit() and int(args.shots) > 0):
        raise UserError(f"--shots must be a positive integer or 'all', got {args.shots!r}")
    shots = None if args.shots == "all" else int(args.shots)
    with user_errors():
        classnames = read_classnames(args.classes)
        with _claimed(args) as path:
            bundle = _load(args)
            features = {}
            for split, folder in (("train", args.train), ("test", args.test)):
                dataset = ClassificationFolder(folder, classnames, bundle.preprocess_val)
                loader = labelled_loader(dataset, args.batch_size, args.workers)
                features[split] = encode_labelled_images(bundle.model, loader, desc=split)
            try:
                metrics = linear_probe(*features["train"][:2], *features["test"][:2], len(classnames), shots, args.seed)
            except ValueError as error:
                raise UserError(f"{args.train}: {error}") from None
            metrics["skipped"] = features["train"][2] + features["test"][2]
            return _write(path, metrics, bundle)
