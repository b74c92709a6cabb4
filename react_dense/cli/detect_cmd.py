"""`react detect`: boxes and masks for any vocabulary, with a trained open-vocabulary detector."""
from __future__ import annotations

import argparse

from react_core.outputs import add_overwrite_argument

DESCRIPTION = """Detect the classes of a vocabulary the detector may never have been trained on:
their CLIP text embeddings become the classifier. Writes DIR/detections.json (COCO results,
with DIR/images.json listing the image ids), one PNG per image with boxes, masks and labels,
and DIR/config.yaml (the detector's config, with the sha256 of the checkpoint and tower read).
The detector is rebuilt from the config.yaml its training run wrote beside --weights, from any
working directory. Runs on the torchvision engine (checkpoints of either engine's training with
it)."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "detect", help="open-vocabulary detection on images", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--weights", required=True, help="detector checkpoint (model_final.pth from tools/train_net.py)")
    parser.add_argument(
        "--config", default=None,
        help="the detector's `kind: detection` config (default: the config.yaml its training run wrote beside --weights)",
    )
    parser.add_argument(
        "--vocabulary", required=True,
        help='"cat,red car,..." or a file: .txt (one class per line, synonyms after "|") or COCO/LVIS .json',
    )
    parser.add_argument("--base-weights", default=None,
                        help="where the base weights of an adapter in the config's model.weights are now, if they moved")
    parser.add_argument("--out", required=True, help="output folder")
    add_overwrite_argument(parser)
    parser.add_argument("--score-threshold", type=float, default=0.3, help="lowest score drawn and written (default 0.3)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from pathlib import Path

    from react_core.errors import UserError
    from react_core.io import atomic_write_json
    from react_core.outputs import claim_output
    from react_dense.modeling.vocabulary import parse_vocabulary

    cfg = load_detector_config(args)
    vocabulary = parse_vocabulary(args.vocabulary)
    missing = next((path for path in args.images if not Path(path).is_file()), None)
    if missing is not None:
        raise UserError(f"image not found: {missing}")
    settings = {
        "images": args.images, "weights": args.weights, "config": args.config, "vocabulary": args.vocabulary,
        "base_weights": args.base_weights, "score_threshold": args.score_threshold, "set": args.set,
    }
    with claim_output(args.out, "react detect", settings, args.overwrite) as out:
        results, listing = detect(args, cfg, vocabulary, out)
        categories = [{"id": cid, "name": name} for cid, name in zip(vocabulary.category_ids, vocabulary.names)]
        atomic_write_json(out / "images.json", {"images": listing, "categories": categories})
        atomic_write_json(out / "detections.json", results)
    print(f"{len(results)} detections in {len(listing)} images -> {out}")
    return 0


def load_detector_config(args):
    """The detector's config: --config, or the config.yaml its training run wrote beside --weights
    (its tower found and checked by `check_run_files`), with --set and --base-weights applied."""
    from pathlib import Path

    from react_core.config import RUN_CONFIG, check_run_files
    from react_core.errors import UserError
    from react_dense.detection.config import load_detection_config

    config = args.config or Path(args.weights).parent / RUN_CONFIG
    if not Path(config).is_file():
        raise UserError(f"{config} not found: pass --config, the config the detector was trained with")
    cfg = load_detection_config(str(config), args.set)
    if args.config is None:
        check_run_files(cfg, config)
    if args.base_weights:
        cfg.model.base_weights = args.base_weights
    return cfg


def detect(args, cfg, vocabulary, out):
    """Detections of every image (COCO results) and their listing; one PNG each in `out`."""
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image
    from tqdm import tqdm

    from react_core.config import write_run_config
    from react_core.errors import UserError
    from react_core.io import atomic_path
    from react_dense.detection.build import build_parts, encode_vocabulary
    from react_dense.detection.evaluation import to_coco_results
    from react_dense.detection.visualize import draw_detections
    from react_dense.engines.checkpoint import load_checkpoint
    from react_dense.engines.torchvision.model import build_torchvision_detector

    parts = build_parts(cfg)
    encoded = encode_vocabulary(parts.bundle, cfg, vocabulary)
    model = build_torchvision_detector(parts, cfg.detector)
    load_checkpoint(args.weights, model)
    model.set_vocabulary(encoded.embeddings, encoded.is_base)
    model.to(args.device).eval()
    results, listing = [], []
    for image_id, path in enumerate(tqdm(args.images, desc="detect"), 1):
        try:
            with Image.open(path) as handle:
                picture = handle.convert("RGB")
        except (FileNotFoundError, OSError) as error:
            raise UserError(f"cannot read image {path}: {error}") from None
        check_input_size(path, picture.width, picture.height, model.transform.min_size[-1], model.transform.max_size)
        tensor = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0).permute(2, 0, 1)
        with torch.no_grad():
            output = model([tensor.to(args.device)])[0]
        keep = output["scores"] >= args.score_threshold
        output = {k: v[keep] for k, v in output.items()}
        results.extend(
            to_coco_results(image_id, output["boxes"], output["scores"], output["labels"], vocabulary.category_ids, output.get("masks"))
        )
        listing.append({"id": image_id, "file_name": str(path), "width": picture.width, "height": picture.height})
        drawing = draw_detections(picture, output, vocabulary.names)
        with atomic_path(out / f"{image_id:05d}_{Path(path).stem}.png") as tmp:
            drawing.save(tmp, format="PNG")
    write_run_config(cfg, out, read=[args.weights])
    return results, listing


def check_input_size(path, width: int, height: int, min_size: int, max_size: int) -> None:
    """Refuse an image so elongated that the detector's resize (shorter side to `min_size`, longer
    side at most `max_size`) would leave its shorter side under one pixel."""
    from react_core.errors import UserError

    short, long = sorted((width, height))
    scale = min(min_size / short, max_size / long)
    if int(short * scale) < 1:
        raise UserError(
            f"image {path} is {width}x{height}: too elongated for this detector (resized to at most {max_size} "
            f"pixels on its longer side, its shorter side would vanish); crop it into pieces closer to square"
        )
