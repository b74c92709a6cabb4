"""`react demo [--quick] [--out DIR] [--seed N] [--jobs N] [--ablations]`: the whole pipeline on the synthetic world."""
from __future__ import annotations

from pathlib import Path

from react_core.outputs import add_overwrite_argument


def register(subparsers):
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on a synthetic world and write a report",
        description="Generate a synthetic world, pretrain a small base CLIP on a generic slice of it, "
        "retrieve pairs for the dense tasks' vocabulary (the target classes and the detector's base "
        "classes) from the full corpus, customize the base model (dense-aware gated-image, on the "
        "retrieved pairs and on as many random pairs as a control, each with random corpus pairs "
        "replayed) over three seeds, evaluate "
        "zero-shot classification and open-vocabulary detection and segmentation, and write "
        "DIR/report.md, DIR/report.html, PNG plots and DIR/metrics.json. Every stage is cached: a "
        "second run only redoes what changed. The full demo took 38 minutes on two CPU "
        "cores; --quick runs every stage on the tiny preset in a few minutes.",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test of every stage on the tiny preset, one seed")
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    add_overwrite_argument(parser)
    parser.add_argument("--seed", type=int, default=0, help="first training seed (the full demo uses three)")
    parser.add_argument(
        "--jobs", type=int, default=1,
        help="customization and dense runs side by side in worker processes, the cores shared among "
        "them; each writes its output to its stage folder's stage.log (default: 1; on two cores two "
        "single-threaded runs did 1.02-1.10x the work of one run on both, benchmarks/demo_jobs.py)",
    )
    parser.add_argument(
        "--ablations", action="store_true",
        help="the whole variant table: also customize with plain CLIPSelf on every seed (the control "
        "the claims weigh the customized tower against) and with the paper's ablations on the first "
        "seed (CLS-only gated-image, locked-text and full fine-tuning, which make no claim), and "
        "evaluate the dense tasks on every seed's towers, so the dense claims weigh each gain against "
        "twice the seed std (about twice the time)",
    )
    parser.set_defaults(handler=run)


def run(args) -> int:
    from react_core.errors import UserError
    from react_core.outputs import claim_output
    from react_dense.lab.demo.pipeline import configure_logging, run_demo

    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    configure_logging()
    # every demo is the same run: its stages are cached by their own inputs, a changed one is redone
    with claim_output(args.out, "react demo", {}, args.overwrite):
        run_demo(Path(args.out), quick=args.quick, seed=args.seed, jobs=args.jobs, ablations=args.ablations)
    return 0
