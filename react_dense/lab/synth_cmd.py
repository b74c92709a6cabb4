"""`react synth --preset {tiny,small,demo} --out DIR [--seed N] [--base]`: write the synthetic world."""
from __future__ import annotations

import os

from react_core.cli import UserError

_PRESETS = ("tiny", "small", "demo")


def register(subparsers):
    parser = subparsers.add_parser(
        "synth",
        help="generate the synthetic world used by the tests and the demo",
        description="Generate a deterministic synthetic world into DIR: a web-like image-caption corpus "
        "(webdataset shards + manifest.parquet), a generic pretraining slice in which the target classes "
        "are rare, the target classification task (image folders + caption pairs), LVIS-format detection "
        "scenes whose rare categories are the targets, and semantic segmentation scenes with unseen "
        "classes. DIR/world.json, written last, describes it all and holds a content hash; a DIR whose "
        "world.json has the same preset, seed and generator version is reused as it is; one that holds another world is "
        "replaced only with --overwrite. Sizes: tiny "
        "(tests, seconds), small (about 10x tiny), demo (the full demo on a laptop CPU). With --base, "
        "also the world's base CLIP in DIR/base/model.safetensors, which the lab's configs read: "
        "react-tiny pretrained on the world's generic slice (shipped for preset demo, seed 0; about "
        "30 CPU minutes otherwise).",
    )
    parser.add_argument("--preset", choices=_PRESETS, default="tiny", help="world size (default: tiny)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write the world into")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default: 0)")
    parser.add_argument(
        "--workers", type=int, default=None, metavar="N",
        help="worker processes (default: CPU count, at most 8); does not change the output",
    )
    parser.add_argument("--base", action="store_true",
                        help="also make the world's base CLIP in DIR/base (the lab's configs read it)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a world of another preset, seed or generator version in DIR")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from react_dense.lab.world import WorldError, generate_world

    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    try:
        summary = generate_world(args.preset, args.out, seed=args.seed, workers=args.workers, progress=True,
                                 overwrite=args.overwrite)
    except WorldError as error:
        raise UserError(str(error)) from error
    counts = summary["counts"]
    if summary["cached"]:
        state = "reused (same preset, seed and generator version)"
    else:
        state = f"written in {summary['seconds']:.1f} s"
    print(f"world {summary['preset']} seed {summary['seed']} at {summary['out']}: {state}")
    print(f"  corpus    {counts['corpus_pairs']} pairs ({counts['corpus_mismatched']} mismatched, "
          f"{counts['corpus_target_pairs']} of target classes)")
    print(f"  pretrain  {counts['pretrain_pairs']} pairs ({counts['pretrain_target_pairs']} of target classes)")
    print(f"  task      {counts['task_classes']} classes, {counts['task_train_images']} train / "
          f"{counts['task_val_images']} val images, {counts['task_pairs']} caption pairs")
    frequency = counts["detection_frequency"]
    print(f"  detection {counts['detection_train_images']} train / {counts['detection_val_images']} val images, "
          f"{counts['detection_train_annotations']} / {counts['detection_val_annotations']} annotations, "
          f"categories r={frequency['r']} c={frequency['c']} f={frequency['f']}")
    print(f"  semseg    {counts['semseg_train_images']} train / {counts['semseg_val_images']} val images")
    print(f"  files     {counts['files']} ({counts['bytes'] / 1e6:.1f} MB)")
    for key, path in summary["paths"].items():
        print(f"  {key:<18} {os.path.join(summary['out'], path)}")
    print(f"  content sha256 {summary['content_sha256']}")
    if args.base:
        from react_core.console import configure_logging
        from react_dense.lab.base import prepare_base

        configure_logging()
        print(f"  base CLIP {prepare_base(args.out)}")
    return 0
