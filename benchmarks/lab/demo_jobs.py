"""Throughput of `react demo --jobs`: the same customization runs one after another on every core,
against side by side in worker processes with the cores shared among them.

Each round runs one short customization per `--configs` entry (default: the demo's dense-aware and
CLS-only gated-image configs, `--iters` iterations each, fresh folders) through the demo's own
stage runner, first with one job on all cores and then with `--jobs` jobs; rounds alternate the
order, so a neighbour's load falls on both. The ratio is sequential wall time over side-by-side wall time
within a round (above 1: side by side does more work per second); the median and range over
rounds are reported.

    react synth --preset demo --out runs/world
    python benchmarks/lab/demo_jobs.py --world runs/world --rounds 2
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

from react_core.machine import usable_cpus
from react_dense.lab.demo.pipeline import _customize
from react_dense.lab.demo.stages import Stage, StageRunner, threads_per_job

BASE = Path(__file__).resolve().parents[2] / "react_dense" / "lab" / "resources" / "demo_base.safetensors"


def timed(root: Path, world: Path, configs: list[str], iters: int, jobs: int) -> float:
    stages = []
    for number, config in enumerate(configs):
        overrides = {"vars.world": str(world), "model.weights": str(BASE),
                     "train.max_iters": iters, "train.checkpoint_interval": 10 * iters}
        stages.append(Stage(f"customize-{number}", partial(_customize, config, overrides), overrides))
    runner = StageRunner(root, total=len(stages), echo=lambda _: None, jobs=jobs)
    start = time.perf_counter()
    runner.run_all(stages)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True, help="a demo-preset world (react synth --preset demo)")
    parser.add_argument("--configs", nargs="+", default=["customize_dense.yaml", "customize.yaml"],
                        help="customize configs under react_dense/lab/configs/, one run each per measurement")
    parser.add_argument("--iters", type=int, default=40, help="iterations per run")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import torch

    cores = usable_cpus()
    torch.set_num_threads(cores)
    print(f"{cores} cores; {' and '.join(args.configs)}, {args.iters} iterations each; 1 job x {cores} threads "
          f"against {args.jobs} jobs x {threads_per_job(args.jobs)} threads")
    ratios = []
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(args.rounds):
            order = (1, args.jobs) if round_index % 2 == 0 else (args.jobs, 1)
            seconds = {}
            for jobs in order:
                root = Path(scratch) / f"round{round_index}-jobs{jobs}"
                seconds[jobs] = timed(root, args.world.resolve(), args.configs, args.iters, jobs)
                shutil.rmtree(root)
            ratios.append(seconds[1] / seconds[args.jobs])
            print(f"round {round_index}: one job {seconds[1]:.0f} s, {args.jobs} jobs {seconds[args.jobs]:.0f} s, "
                  f"throughput {ratios[-1]:.2f}x")
    print(f"side by side: {statistics.median(ratios):.2f}x the sequential throughput "
          f"(range {min(ratios):.2f}-{max(ratios):.2f}x over {len(ratios)} rounds)")


if __name__ == "__main__":
    main()
