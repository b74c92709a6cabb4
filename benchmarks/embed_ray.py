"""`react embed --ray` against single-process `react embed` on the same shards: images/s, and
the overhead of Ray at one worker.

    python benchmarks/embed_ray.py                                  # ViT-B-32 (random init), 2 CPUs
    python benchmarks/embed_ray.py --model react-tiny --shards 8    # decoding weighs more

The corpus: `--shards` webdataset shards of `--per-shard` images, the tiny synthetic world's
images re-encoded as `--image-size` px JPEGs (web images are larger than the world's), captions
as they are. The model is saved once (random init), so every run embeds with the same weights.
Each run is a fresh subprocess that embeds into an empty folder; its time is the embedding call
alone (Ray's start is reported apart: a cluster is started once for many corpora).

Configurations, on the same `--cpus` cores:
  single        `react embed` as a user runs it: DataLoader --workers = cpus, torch's default threads
  ray           a local Ray of `--cpus` CPUs: one CPU embedding actor, decode tasks on the others
  single-1      one decoding process and one torch thread for the forward pass
  ray-1         one decode task at a time and one actor (one torch thread): the same pipeline as
                single-1, so the ratio is what Ray's machinery costs
Rounds interleave the configurations; figures are medians (min-max). The folders of `ray` and
`single` are compared byte for byte.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

CONFIGS = ("single", "ray", "single-1", "ray-1")


def build_corpus(folder: Path, shards: int, per_shard: int, image_size: int) -> None:
    """Shards of the tiny world's images, re-encoded at `image_size` px, with their captions."""
    from PIL import Image

    from react_core.data.images import index_shard
    from react_dense.lab.world import generate_world

    world = folder / "world"
    generate_world("tiny", world, seed=0)
    source = sorted((world / "corpus" / "shards").glob("*.tar"))[0]
    entries = list(index_shard(source).items())
    (folder / "corpus").mkdir()
    with open(source, "rb") as handle:
        for number in range(shards):
            with tarfile.open(folder / "corpus" / f"{number:06d}.tar", "w") as tar:
                for position in range(per_shard):
                    key, entry = entries[(number * per_shard + position) % len(entries)]
                    handle.seek(entry["jpg"].offset)
                    image = Image.open(io.BytesIO(handle.read(entry["jpg"].size))).convert("RGB")
                    buffer = io.BytesIO()
                    image.resize((image_size, image_size), Image.BICUBIC).save(buffer, format="JPEG", quality=90)
                    name = f"{number:04d}{position:05d}"
                    for suffix, data in (("jpg", buffer.getvalue()), ("txt", entry["txt"]), ("json", b"{}")):
                        info = tarfile.TarInfo(f"{name}.{suffix}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))


def run_one(config: str, args) -> dict:
    """One measurement, in this (fresh) process."""
    import torch

    from react_core.modeling import load_clip
    from react_core.retrieval.embed import embed_corpus

    one = config.endswith("-1")
    if one:
        torch.set_num_threads(1)
    bundle = load_clip(args.model, weights=args.weights, device="cpu")
    out = Path(args.out)
    result = {"config": config, "torch_threads": torch.get_num_threads()}
    if config.startswith("single"):
        started = time.perf_counter()
        summary = embed_corpus(bundle, args.corpus, out, batch_size=args.batch_size, workers=1 if one else args.cpus,
                               progress=False)
    else:
        import ray

        from react_core.retrieval.embed_ray import embed_corpus_ray

        started = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        result["ray_init_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        summary = embed_corpus_ray(bundle, args.corpus, out, actors=1, decoders=1 if one else None,
                                   batch_size=args.batch_size, progress=False)
    result["seconds"] = time.perf_counter() - started
    result["images"] = summary["rows"] + len(summary["failed"])
    result["images_per_second"] = result["images"] / result["seconds"]
    return result


def measure(config: str, args, folder: Path, round_: int) -> dict:
    out = folder / f"out_{config}_{round_}"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "RAY_BACKEND_LOG_LEVEL": "fatal"}
    if config.endswith("-1"):
        env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, __file__, "--run", config, "--corpus", str(folder / "corpus"), "--out", str(out),
               "--weights", str(folder / "weights.safetensors"), "--model", args.model, "--cpus", str(args.cpus),
               "--batch-size", str(args.batch_size)]
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    if completed.returncode:
        raise SystemExit(f"{config} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1]) | {"out": str(out)}


def same_bytes(a: Path, b: Path) -> bool:
    files = lambda root: {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    return files(a) == files(b)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--per-shard", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--run", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_one(args.run, args)))
        return

    from react_core.modeling import load_clip, save_full

    with tempfile.TemporaryDirectory(prefix="embed_ray_") as tmp:
        folder = Path(tmp)
        build_corpus(folder, args.shards, args.per_shard, args.image_size)
        save_full(load_clip(args.model).model, folder / "weights.safetensors")
        results: dict[str, list[dict]] = {c: [] for c in args.configs}
        for round_ in range(args.rounds):
            for config in args.configs:
                results[config].append(measure(config, args, folder, round_))
                print(f"round {round_ + 1}: {config} {results[config][-1]['images_per_second']:.1f} img/s", file=sys.stderr)
        rate = {c: [r["images_per_second"] for r in runs] for c, runs in results.items()}
        print(f"{args.model} (random init), batch {args.batch_size}, {args.shards} shards x {args.per_shard} images of "
              f"{args.image_size} px, {args.cpus} CPUs, {args.rounds} interleaved rounds; median (min-max)\n")
        print("| configuration | images/s | seconds | Ray start (s) |\n|---|---:|---:|---:|")
        for config, runs in results.items():
            init = [r["ray_init_seconds"] for r in runs if "ray_init_seconds" in r]
            print(f"| {config} | {spread(rate[config])} | {spread([r['seconds'] for r in runs])} | "
                  f"{spread(init) if init else '-'} |")
        pairs = [("ray", "single", "Ray / single-process images/s"),
                 ("single-1", "ray-1", "overhead at one worker: single-1 / ray-1 images/s (goal <= 1.1)")]
        for a, b, label in pairs:
            if a in rate and b in rate:
                ratios = [x / y for x, y in zip(rate[a], rate[b])]
                print(f"\n{label}: {spread(ratios)}")
        if "ray" in results and "single" in results:
            identical = all(same_bytes(Path(r["out"]), Path(s["out"])) for r, s in zip(results["ray"], results["single"]))
            print(f"\nray and single folders byte-identical: {identical}")


if __name__ == "__main__":
    main()
