#!/usr/bin/env python
"""Train and evaluate an open-vocabulary detector with a (customized) CLIP backbone.

    python tools/train_net.py --config react_dense/lab/configs/ovd_synthetic.yaml --out runs/ovd
    python tools/train_net.py --config configs/lvis_react.yaml --num-gpus 8 --out runs/lvis
    python tools/train_net.py --config CONFIG --eval-only --out runs/ovd [--weights FILE]
    python tools/train_net.py --config CONFIG engine=detectron2 train.max_iters=100
    python tools/train_net.py --config react_dense/lab/configs/seg_synthetic.yaml --out runs/seg
    python tools/train_net.py --config-file CONFIG engine=detectron2 SOLVER.MAX_ITER 10

Detectron2's spellings work beside ours: `--config-file` for `--config`, trailing `KEY VALUE`
pairs of Detectron2 keys (applied to the config's `detectron2:` section), and `key=value`
overrides anywhere on the line.

A `kind: segmentation` config trains an open-vocabulary segmenter instead (react_dense.segmentation);
`react_dense.train_net.train` is the same run from Python.
The config's `engine:` picks Detectron2 or torchvision; with Detectron2 the run also writes
OUT/detectron2_config.yaml, the detector as Detectron2's own tools read it (docs/detector.md).
Training sees base categories only;
evaluation covers every category and writes `metrics.json` (bbox/AP, bbox/APr, segm/AP, ...) in
--out. `--resume` continues from the last checkpoint in --out, to the weights an uninterrupted run
ends with; an --out that holds a run, finished or not, is refused without it.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " The engine (detectron2 or torchvision) comes from the config.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--config", "--config-file", dest="config", required=True,
                        help="a `kind: detection` or `kind: segmentation` YAML (see configs/)")
    parser.add_argument("--out", default=None, help="output folder (default: runs/<config name>)")
    parser.add_argument("--eval-only", action="store_true", help="evaluate --weights (or --out/model_final.pth) without training")
    parser.add_argument("--weights", default=None, help="detector checkpoint to evaluate with --eval-only")
    parser.add_argument("--tower-from-config", action="store_true",
                        help="with --eval-only: evaluate the checkpoint's pyramid and heads with the image tower of the "
                             "config's model.weights (one frozen-trunk detector, many customized towers of its base); "
                             "refused unless the heads read below every gated block")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in --out (a finished run is only evaluated again)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of another run in --out (they are deleted first)")
    parser.add_argument("--num-gpus", type=int, default=1, help="GPUs per machine (Detectron2 engine: one process each)")
    parser.add_argument("--num-machines", type=int, default=1, help="machines (Detectron2 engine)")
    parser.add_argument("--machine-rank", type=int, default=0, help="this machine's rank (Detectron2 engine)")
    parser.add_argument("--dist-url", default="auto", help="rendezvous URL for several machines (Detectron2 engine)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. train.max_iters=100 engine=detectron2, or Detectron2 KEY VALUE pairs")
    return parser


DETECTRON2_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def normalize_overrides(tokens: list[str]) -> list[str]:
    """Our `key=value` overrides as they are; Detectron2's `KEY VALUE` pairs as `detectron2.KEY=VALUE`."""
    from react_core.config import ConfigError

    overrides, rest = [], list(tokens)
    while rest:
        token = rest.pop(0)
        if "=" in token:
            overrides.append(token)
        elif DETECTRON2_KEY.match(token) and rest and "=" not in rest[0]:
            overrides.append(f"detectron2.{token}={rest.pop(0)}")
        else:
            raise ConfigError(
                f"command-line override {token!r}: expected key=value, or a Detectron2 KEY VALUE pair such as SOLVER.MAX_ITER 10"
            )
    return overrides


# what a training run leaves in --out before its metrics.json: the resumable checkpoints of our
# Runner, of the Detectron2 segmentation engine and of Detectron2's checkpointer, and the weights
TRAINING_FILES = ("checkpoint_last.pt", "last_checkpoint.pth", "last_checkpoint", "model_final.pth")


def refuse_unasked_rerun(args) -> None:
    """A finished --out is never retrained over, an unfinished one never restarted over:
    `--resume` continues it (or evaluates a finished one again), `--eval-only` reads it."""
    from react_core.config import ConfigError

    out = Path(args.out)
    if args.resume or args.eval_only:
        return
    if (out / "metrics.json").is_file():
        raise ConfigError(f"{out} holds a finished run (metrics.json): pass --resume to continue it, or choose a new --out")
    for name in TRAINING_FILES:
        if (out / name).is_file():
            raise ConfigError(f"{out} holds an unfinished run ({name}): pass --resume to continue it, or choose a new --out")


def claimed_output(args):
    """--out held for this run (`react_core.outputs`): the same config (less its evaluation-only
    sections and the settings a resumed run may change) and checkpoint are the same run, which may
    resume or evaluate again there. The first machine of several holds it for all."""
    import contextlib
    import dataclasses

    from react_core.outputs import claim_output
    from react_dense.engines.runner import EVALUATION_ONLY, RESULT_FREE
    from react_dense.train_net import load_dense_config

    if args.machine_rank != 0:
        return contextlib.nullcontext()
    config = dataclasses.asdict(load_dense_config(args.config, args.overrides))
    settings = {name: {k: v for k, v in section.items() if k not in RESULT_FREE} if isinstance(section, dict) else section
                for name, section in config.items() if name not in EVALUATION_ONLY}
    if args.weights:
        settings.update(weights=args.weights, tower_from_config=args.tower_from_config)
    return claim_output(args.out, "tools/train_net.py", settings, args.overwrite)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    args.out = args.out or str(Path("runs") / Path(args.config).stem)
    from react_core.console import configure_logging
    configure_logging(fmt="%(asctime)s %(name)s: %(message)s")
    from react_core.errors import ReactError
    from react_dense.train_net import train

    try:
        args.overrides = normalize_overrides(args.overrides)
        with claimed_output(args):
            refuse_unasked_rerun(args)
            metrics = train(
                args.config, args.overrides, args.out, resume=args.resume, eval_only=args.eval_only, weights=args.weights,
                tower_from_config=args.tower_from_config,
                num_gpus=args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=args.dist_url,
            )
    except ReactError as error:
        from react_core.console import print_error

        print_error("train_net", error)
        return 2
    if metrics is not None:
        print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
