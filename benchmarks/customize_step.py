"""Step time and peak memory of one customization step, per training configuration.

Configurations (same model, batch, images and optimizer):
  full         every parameter trains; both towers run every step.
  locked-text  the image tower and logit_scale train; caption embeddings are cached (no text tower).
  official     gated-image tuning the way the official code runs it: the whole CLIP in memory, the
               locked text tower run on the captions every step, one plain forward.
  official-ckpt  the same with open_clip's activation checkpointing on every block, as in the
               official recipe.
  gated-image  this project's path: gated blocks and logit_scale train, cached caption embeddings
               (the text tower is not even in memory), the frozen blocks below the first gated block
               run under no_grad, gated blocks checkpointed (`react_core.modeling.gated`).
  gated-image-nockpt  the same without checkpointing the gated blocks: faster, more memory.
  gated-image-dense  gated-image-nockpt plus the dense objective (`react_core.modeling.dense_objective`)
               with the `dense:` section of --dense-config (default: the demo's dense-aware config,
               react_dense/lab/configs/customize_dense.yaml: 2 x 2 mosaics of the first 32 images, tiles and 2
               random-grid boxes each, teacher = the tower itself); its ratio to gated-image-nockpt
               is the cost of dense-aware customization over a CLS-only step.

Each measurement runs in a fresh subprocess, so its peak resident memory (ru_maxrss, minus the
process's peak after imports and inputs) belongs to one configuration only. Step time is reported
as wall-clock seconds and as CPU seconds of the process (all threads): on a machine shared with
other jobs the wall clock depends on the neighbours, CPU time much less. Rounds interleave the
configurations; ratios are taken within each round, then the median and the range over rounds
are reported.

    python benchmarks/customize_step.py --model ViT-B-32 --batch 32 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_DENSE_CONFIG = Path(__file__).resolve().parents[1] / "react_dense" / "lab" / "configs" / "customize_dense.yaml"

CONFIGS = ("full", "locked-text", "official", "official-ckpt", "gated-image", "gated-image-nockpt", "gated-image-dense")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(
    config: str,
    model_name: str,
    batch: int,
    steps: int,
    warmup: int,
    seed: int,
    count_flops: bool = False,
    gated_k: int | None = None,
    dense_config: str | Path = DEFAULT_DENSE_CONFIG,
) -> dict:
    """Run `warmup + steps` training steps of one configuration in this process.

    With `count_flops`, one more step runs under torch's FlopCounterMode (forward, backward and
    recomputation; the optimizer's element-wise work is not counted).
    """
    import open_clip
    import torch
    import torch.nn.functional as F

    from react_core.modeling import ImageTower, add_gated_blocks, load_clip, set_trainable, train_mode
    from react_core.modeling.clip import register_project_models

    torch.manual_seed(seed)
    register_project_models()
    architecture = open_clip.get_model_config(model_name)
    size = architecture["vision_cfg"]["image_size"]
    images = torch.randn(batch, 3, size, size)
    tokens = open_clip.get_tokenizer(model_name)([f"a photo of object number {i}" for i in range(batch)])
    cached_text = F.normalize(torch.randn(batch, architecture["embed_dim"]), dim=-1)
    baseline = _peak_rss_mib()

    clip = load_clip(model_name).model
    if config.startswith(("gated-image", "official")):
        add_gated_blocks(clip, k=gated_k, checkpointing=config == "gated-image")
    counts = set_trainable(clip, {"full": "full", "locked-text": "locked-text"}.get(config, "gated-image"))
    clip.set_grad_checkpointing(config == "official-ckpt")
    if config == "gated-image-dense":
        from react_core.config import load
        from react_core.engine.config import CustomizeConfig
        from react_core.modeling.dense_objective import DenseObjective

        model = ImageTower(clip)
        del clip
        objective = DenseObjective(load(dense_config, schema=CustomizeConfig).dense, seed=seed)
        dense_terms = []

        def features():
            pooled, dense = objective.features(model.visual, images)
            dense_terms.append(sum(v for k, v in objective(model.visual, images, dense, pooled).items() if k.startswith("loss")))
            return F.normalize(pooled, dim=-1), cached_text

    elif config in ("locked-text", "gated-image", "gated-image-nockpt"):
        model = ImageTower(clip)
        del clip

        def features():
            return model(images), cached_text

    else:
        model = clip

        def features():
            image, text, _ = model(images, tokens)[:3]
            return image, text

    train_mode(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    labels = torch.arange(batch)

    def step():
        image, text = features()
        logits = model.logit_scale.exp() * image @ text.t()
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        if config == "gated-image-dense":
            loss = loss + dense_terms.pop()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    times, cpu_times = [], []
    for number in range(warmup + steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        if number >= warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    result = {
        "config": config,
        "step_s": statistics.median(times) if times else None,
        "step_cpu_s": statistics.median(cpu_times) if cpu_times else None,
        "peak_mib": _peak_rss_mib() - baseline,
        "trainable": counts["trainable"],
        "threads": torch.get_num_threads(),
    }
    if count_flops:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            step()
        result["gflop"] = counter.get_total_flops() / 1e9
    return result


def _run_child(args, config: str, count_flops: bool = False) -> dict:
    command = [
        sys.executable, __file__, "--child", config, "--model", args.model, "--batch", str(args.batch),
        "--seed", str(args.seed), "--dense-config", str(args.dense_config),
    ] + (["--gated-k", str(args.gated_k)] if args.gated_k else [])
    command += ["--steps", "0", "--warmup", "0", "--count-flops"] if count_flops else [
        "--steps", str(args.steps), "--warmup", str(args.warmup)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{config} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3g} ({min(values):.3g}–{max(values):.3g})"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32", help="model name for load_clip (random init)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement (median taken)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all configurations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gated-k", type=int, help="gated blocks in the last k layers (default: REACT's k)")
    parser.add_argument("--dense-config", default=str(DEFAULT_DENSE_CONFIG),
                        help="customize config whose dense: section gated-image-dense runs (default: %(default)s)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--json", help="also write the raw measurements to this file")
    parser.add_argument("--count-flops", action="store_true",
                        help="also count the FLOPs of one step per configuration (one extra subprocess each)")
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.model, args.batch, args.steps, args.warmup, args.seed, args.count_flops,
                                 args.gated_k, args.dense_config)))
        return
    if "full" not in args.configs:
        parser.error("'full' is the baseline of every ratio; keep it in --configs")

    rounds = []
    for number in range(args.rounds):
        results = {config: _run_child(args, config) for config in args.configs}
        rounds.append(results)
        print(f"round {number + 1}: " + ", ".join(
            f"{c} {r['step_s']:.2f}s wall {r['step_cpu_s']:.2f}s CPU {r['peak_mib']:.0f}MiB" for c, r in results.items()
        ), file=sys.stderr)

    if rounds:
        print(f"{args.model}, batch {args.batch}, random init, CPU, {rounds[0]['full']['threads']} threads; "
              f"{args.rounds} interleaved rounds × {args.steps} timed steps; median (min–max over rounds)\n")
        print("| configuration | trainable params | step wall (s) | step CPU (s) | CPU × full | CPU × official "
              "| CPU × official-ckpt | wall × full | peak memory (MiB) | memory × full |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for config in args.configs:
            cells = [f"{rounds[0][config]['trainable'] / 1e6:.1f}M"]
            cells += [_summary([r[config][key] for r in rounds]) for key in ("step_s", "step_cpu_s")]
            for key, baseline in [("step_cpu_s", "full"), ("step_cpu_s", "official"), ("step_cpu_s", "official-ckpt"),
                                  ("step_s", "full")]:
                ratios = [r[config][key] / r[baseline][key] for r in rounds] if baseline in args.configs else None
                cells.append(_summary(ratios) if ratios else "–")
            cells += [f"{statistics.median(r[config]['peak_mib'] for r in rounds):.0f} "
                      f"({min(r[config]['peak_mib'] for r in rounds):.0f}–{max(r[config]['peak_mib'] for r in rounds):.0f})",
                      _summary([r[config]["peak_mib"] / r["full"]["peak_mib"] for r in rounds])]
            print(f"| {config} | " + " | ".join(cells) + " |")
        if {"gated-image-dense", "gated-image-nockpt"} <= set(args.configs):
            for key, what in (("step_cpu_s", "CPU"), ("step_s", "wall")):
                ratios = [r["gated-image-dense"][key] / r["gated-image-nockpt"][key] for r in rounds]
                print(f"\ndense-aware step / CLS-only step (gated-image-dense / gated-image-nockpt), {what}: {_summary(ratios)}")
    flops = {}
    if args.count_flops:
        flops = {config: _run_child(args, config, count_flops=True)["gflop"] for config in args.configs}
        print("\n| configuration | GFLOP per step (counted) | × full | × official | × official-ckpt |")
        print("|---|---:|---:|---:|---:|")
        for config, gflop in flops.items():
            ratios = [f"{gflop / flops[b]:.3f}" if b in flops else "–" for b in ("full", "official", "official-ckpt")]
            print(f"| {config} | {gflop:.0f} | " + " | ".join(ratios) + " |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"args": vars(args), "rounds": rounds, "gflop": flops}, handle, indent=2)


if __name__ == "__main__":
    main()
