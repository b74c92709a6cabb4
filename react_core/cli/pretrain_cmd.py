"""`react pretrain --config CONFIG --out DIR`: a small CLIP trained from scratch (cached)."""
from __future__ import annotations

from react_core.outputs import add_overwrite_argument


def register(subparsers):
    parser = subparsers.add_parser(
        "pretrain",
        help="train a CLIP from scratch on image-text pairs",
        description="Train a CLIP (both towers, contrastive loss) from scratch on a pair set: a base model "
        "to customize when no pretrained one fits. The result (DIR/model.safetensors, DIR/pretrain.json) is "
        "cached by the hash of the config and of the training pairs: running again returns it at once; an "
        "interrupted run, run again, resumes from DIR/checkpoint_last.pt to the weights an uninterrupted run ends "
        "with. DIR/model.safetensors appears only when training has ended.",
    )
    parser.add_argument("--config", required=True, help="a YAML config of kind: pretrain")
    parser.add_argument("--out", help="output folder (default: the config's `out`)")
    add_overwrite_argument(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.max_iters=100")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from react_core.cli.customize_cmd import output_folder, run_settings, user_errors
    from react_core.config import load
    from react_core.console import configure_logging
    from react_core.engine.config import PretrainConfig
    from react_core.engine.pretrain import SUMMARY_FILE, pretrain
    from react_core.io import read_json
    from react_core.outputs import claim_output

    configure_logging()
    cfg = load(args.config, args.overrides, schema=PretrainConfig)
    out = output_folder(args, cfg, "pretrain")
    with user_errors(), claim_output(out, "react pretrain", run_settings(cfg), args.overwrite):
        weights = pretrain(cfg, out)
    summary = read_json(weights.parent / SUMMARY_FILE)
    if summary.get("zeroshot"):
        print(f"zero-shot top-1 of the pretrained model: {summary['zeroshot']['top1']:.1f}%")
    print(weights)
    return 0
