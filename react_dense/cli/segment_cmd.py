"""`react segment`: label maps and overlays for any vocabulary, with a trained segmenter or MaskCLIP."""
from __future__ import annotations

import argparse

from react_core.outputs import add_overwrite_argument

DESCRIPTION = """Segment images into the classes of a vocabulary the segmenter may never have
been trained on: their CLIP text embeddings are the classifier. Writes, per image,
DIR/labels/<name>.png (label value = class index in the vocabulary, 255 = unlabeled; 16-bit
when the vocabulary has 255 classes or more) and DIR/overlays/<name>.png (colours over the
image, with a legend), plus DIR/classes.json (index, name, colour). <name> is the image's file
name without its suffix; inputs that share one get <number>_<name>, numbered from 1 in the
order given. With a trained head, pixels that match no class better than the learned void
embedding are unlabeled (--no-void turns that off). A `method: maskclip` config needs no
--weights: it is the training-free baseline. DIR/config.yaml records the segmenter's config
with the sha256 of the checkpoint and tower read. Without --config, the segmenter is rebuilt
from the config.yaml its training run wrote beside --weights, from any working directory."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment", help="open-vocabulary semantic segmentation of images", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument(
        "--config", default=None,
        help="the segmenter's `kind: segmentation` config (default: the config.yaml its training run wrote beside --weights)",
    )
    parser.add_argument("--weights", default=None, help="segmenter checkpoint (model_final.pth from tools/train_net.py)")
    parser.add_argument(
        "--vocabulary", required=True,
        help='"cat,red car,..." or a file: .txt (one class per line, synonyms after "|") or COCO/LVIS .json',
    )
    parser.add_argument("--base-weights", default=None,
                        help="where the base weights of an adapter in the config's model.weights are now, if they moved")
    parser.add_argument("--out", required=True, help="output folder")
    add_overwrite_argument(parser)
    parser.add_argument("--no-void", action="store_true", help="label every pixel with a vocabulary class")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from pathlib import Path

    from react_core.errors import UserError
    from react_core.io import atomic_write_json
    from react_core.outputs import claim_output
    from react_dense.modeling.vocabulary import parse_vocabulary
    from react_dense.segmentation.visualize import palette

    cfg = load_segmenter_config(args)
    vocabulary = parse_vocabulary(args.vocabulary)
    missing = next((path for path in args.images if not Path(path).is_file()), None)
    if missing is not None:
        raise UserError(f"image not found: {missing}")
    settings = {
        "images": args.images, "weights": args.weights, "config": args.config, "vocabulary": args.vocabulary,
        "base_weights": args.base_weights, "no_void": args.no_void, "set": args.set,
    }
    with claim_output(args.out, "react segment", settings, args.overwrite) as out:
        fill = segment(args, cfg, vocabulary, out)
        colors = palette(len(vocabulary)).tolist()
        atomic_write_json(
            out / "classes.json",
            {"classes": [{"index": i, "name": n, "color": c} for i, (n, c) in enumerate(zip(vocabulary.names, colors))],
             "unlabeled": int(fill)},
        )
    print(f"{len(args.images)} images segmented into {len(vocabulary)} classes -> {out}")
    return 0


def load_segmenter_config(args):
    """The segmenter's config: --config, or the config.yaml its training run wrote beside --weights
    (its tower found and checked by `check_run_files`), with --set and --base-weights applied."""
    from pathlib import Path

    from react_core.config import RUN_CONFIG, check_run_files
    from react_core.errors import UserError
    from react_dense.segmentation.config import load_segmentation_config

    if args.config is None and args.weights is None:
        raise UserError("--config is required without --weights (a training run's checkpoint beside its config.yaml)")
    config = args.config or Path(args.weights).parent / RUN_CONFIG
    if not Path(config).is_file():
        raise UserError(f"{config} not found: pass --config, the config the segmenter was trained with")
    cfg = load_segmentation_config(str(config), args.set)
    if cfg.method == "head" and not args.weights:
        raise UserError("--weights is required for a trained head (method: head); only method: maskclip runs without")
    if args.config is None:
        check_run_files(cfg, config)
    if args.base_weights:
        cfg.model.base_weights = args.base_weights
    return cfg


def segment(args, cfg, vocabulary, out) -> int:
    """Label maps and overlays of every image in `out`; returns the label value of unlabeled pixels."""
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image
    from tqdm import tqdm

    from react_core.config import write_run_config
    from react_core.io import atomic_path
    from react_dense.engines.checkpoint import load_checkpoint
    from react_dense.engines.plain.train import build_segmenter
    from react_dense.modeling.vocabulary import vocabulary_embeddings
    from react_dense.segmentation.data import read_image
    from react_dense.segmentation.inference import predict_logits
    from react_dense.segmentation.visualize import overlay_with_legend

    bundle = cfg.model.load()
    model = build_segmenter(cfg, bundle)
    if cfg.method == "head":
        load_checkpoint(args.weights, model)
    model.to(args.device).eval()
    text = vocabulary_embeddings(bundle, vocabulary, cfg.text.templates, cfg.text.cache_dir).to(args.device)
    append_void = not args.no_void and cfg.method == "head"
    unlabeled = len(vocabulary) if append_void else None
    dtype = np.uint8 if len(vocabulary) < 255 else np.uint16
    fill = np.iinfo(dtype).max
    for path, name in zip(tqdm(args.images, desc="segment"), output_names(args.images)):
        image = read_image(Path(path))
        with torch.no_grad():
            logits = predict_logits(
                lambda x: model(x, text, append_void=append_void), image[None].to(args.device),
                cfg.test.mode, cfg.test.crop_size, cfg.test.stride, cfg.test.test_size,
            )
        labels = logits[0].argmax(0).cpu().numpy()
        stored = np.where(labels == unlabeled, fill, labels).astype(dtype) if unlabeled is not None else labels.astype(dtype)
        with atomic_path(out / "labels" / f"{name}.png") as tmp:
            Image.fromarray(stored).save(tmp, format="PNG")
        picture = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        with atomic_path(out / "overlays" / f"{name}.png") as tmp:
            overlay_with_legend(picture, labels, vocabulary.names, unlabeled=unlabeled).save(tmp, format="PNG")
    write_run_config(cfg, out, read=[args.weights] if cfg.method == "head" else [])
    return fill


def output_names(paths: list[str]) -> list[str]:
    """One output name per input: its stem, or `<position>_<stem>` for stems that several inputs share."""
    from collections import Counter
    from pathlib import Path

    stems = [Path(path).stem for path in paths]
    shared = Counter(stems)
    return [stem if shared[stem] == 1 else f"{number:05d}_{stem}" for number, stem in enumerate(stems, 1)]
