"""`react customize --config CONFIG [--out DIR] [key=value ...]`: REACT customization of a CLIP."""
from __future__ import annotations

import contextlib

from react_core.outputs import add_overwrite_argument

# settings that change where a run writes or how it logs, not its result: a run that differs only
# in these is the same run (it may resume)
RESULT_FREE = ("out", "cache", "eval", "generic_eval", "model.base_weights", "data.workers", "train.log_interval",
               "train.checkpoint_interval")


def register(subparsers):
    parser = subparsers.add_parser(
        "customize",
        help="train gated blocks (or the image tower) of a frozen CLIP on image-text pairs",
        description="Freeze a CLIP and train it on image-text pairs with the contrastive loss. Modes "
        "(train.mode): gated-image (new gated blocks and logit_scale train; the REACT recipe), locked-text "
        "(the whole image tower trains), full. With the text tower locked, caption embeddings are computed "
        "once (or reused from data.text_embeddings after checking the model identity) and the text tower "
        "never runs in a training step. Writes to --out: checkpoint_last.pt (resume: run the same command "
        "again; it ends with the weights an uninterrupted run ends with), the mmengine log, config.yaml, and once "
        "the run has ended adapter.safetensors (or model.safetensors in full mode or on a randomly initialised "
        "base) followed by metrics.json, with zeroshot_top1_before/after when the config has an eval: section. "
        "Under torchrun, trains with DDP.",
    )
    parser.add_argument("--config", required=True, help="a YAML config of kind: customize")
    parser.add_argument("--out", help="output folder (default: the config's `out`)")
    add_overwrite_argument(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=1e-4")
    parser.set_defaults(handler=run)


@contextlib.contextmanager
def user_errors():
    """Turn the data, checkpoint and vocabulary errors of a run into one-line user errors."""
    from react_core.cli import UserError
    from react_core.data import PairDataError
    from react_core.data.images import ShardError
    from react_core.engine.caption_embeddings import EmbeddingFolderError
    from react_core.engine.runner import ResumeError
    from react_core.modeling import CheckpointError
    from react_core.modeling.text import VocabularyError

    try:
        yield
    except (PairDataError, ShardError, EmbeddingFolderError, ResumeError, CheckpointError, VocabularyError) as error:
        raise UserError(str(error)) from None


def run_settings(cfg) -> dict:
    """What decides the result of a customize or pretrain run: its config less `RESULT_FREE`."""
    import dataclasses

    settings = dataclasses.asdict(cfg)
    for key in RESULT_FREE:
        *parents, leaf = key.split(".")
        section = settings
        for parent in parents:
            section = section.get(parent) or {}
        section.pop(leaf, None)
    return settings


def output_folder(args, cfg, command: str) -> str:
    from react_core.cli import UserError

    out = args.out or cfg.out
    if out is None:
        raise UserError(f"no output folder: pass --out DIR (or set `out:` in {args.config}) for react {command}")
    return out


def run(args) -> int:
    import json

    from react_core.config import load
    from react_core.console import configure_logging
    from react_core.engine.config import CustomizeConfig
    from react_core.engine.customize import METRICS_FILE, customize
    from react_core.modeling.text import describe_templates
    from react_core.outputs import claim_output

    configure_logging()
    cfg = load(args.config, args.overrides, schema=CustomizeConfig)
    out = output_folder(args, cfg, "customize")
    if cfg.eval is not None or cfg.generic_eval is not None:
        with user_errors():
            used = {describe_templates(e.templates) for e in (cfg.eval, cfg.generic_eval) if e is not None}
        print(f"zero-shot before and after with templates {', '.join(sorted(used))}")
    with user_errors(), claim_output(out, "react customize", run_settings(cfg), args.overwrite):
        metrics = customize(cfg, out)
    shown = {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}
    print(json.dumps(shown, indent=2))
    print(f"wrote {out}/{METRICS_FILE}")
    return 0
