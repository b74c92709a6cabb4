"""How long a command takes to start: `react --help` and `react config show CONFIG` against the
interpreter's own start (`python -c pass`), and against importing what a command that trains
needs (torch, open_clip, mmengine), all measured here in the same run.

    python benchmarks/startup.py [--rounds 7] [--config react_dense/lab/configs/ovd_synthetic.yaml]

Each measurement is a fresh process; the rounds interleave the commands so that a change in the
machine's load touches them all alike. Prints the median wall time of each and its ratio to
`python -c pass`.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commands(config: str) -> dict[str, list[str]]:
    python = sys.executable
    return {
        "python -c pass": [python, "-c", "pass"],
        "react --help": [python, "-m", "react_core", "--help"],
        "react config show CONFIG": [python, "-m", "react_core", "config", "show", config],
        "import torch, open_clip, mmengine": [python, "-c", "import torch, open_clip, mmengine"],
    }


def wall_time(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--config", default=str(ROOT / "react_dense" / "lab" / "configs" / "ovd_synthetic.yaml"))
    args = parser.parse_args()
    runs = commands(args.config)
    for argv in runs.values():  # once untimed: file caches warm for every command alike
        wall_time(argv)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, argv in runs.items():
            times[name].append(wall_time(argv))
    baseline = statistics.median(times["python -c pass"])
    print(f"{args.rounds} interleaved rounds, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"| command | median wall (s) | min-max (s) | x python -c pass |\n|---|---:|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {min(values):.3f}-{max(values):.3f} | {median / baseline:.1f} |")


if __name__ == "__main__":
    main()
