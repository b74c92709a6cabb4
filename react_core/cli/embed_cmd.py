"""`react embed --model NAME [--weights FILE] --data SRC --out EMBDIR [--ray auto]`: corpus embeddings."""
from __future__ import annotations

import os

from react_core.cli import UserError
from react_core.outputs import add_overwrite_argument


def register(subparsers):
    parser = subparsers.add_parser(
        "embed",
        help="CLIP image and caption embeddings of a corpus, in LAION's layout",
        description="Embed the images and captions of a corpus with a CLIP and write them in LAION's released "
        "layout: EMBDIR/img_emb/img_emb_N.npy and text_emb/text_emb_N.npy (float16, L2-normalised), "
        "metadata/metadata_N.parquet (id, caption, key, shard, path, url, sha256 of the image bytes), plus "
        "embeddings.json naming the model. SRC is webdataset shards (a folder of *.tar, a glob, or one tar), a "
        "parquet manifest (caption plus path, url, or shard+key), or a folder of images with a .txt caption "
        "beside each. One input shard gives one output shard; a shard is done when all its files exist, so "
        "running the same command again resumes where it stopped. Unreadable images, captions that are not "
        "UTF-8 and the sample a truncated shard ends in are skipped and listed in skipped/skipped_N.parquet; a "
        "shard that is not a tar file at all (say, 0 bytes) stops the run. Under torchrun each rank takes every "
        "WORLD_SIZE-th shard. With --ray, shards stream through CPU decode tasks into embedding actors (one GPU each, or "
        "CPUs) on a Ray cluster (pip install -e \".[ray]\"): the folder is byte for byte the one a single process writes "
        "on the same kind of device, a worker that dies has its work retried, and a driver that dies is started again "
        "with the same command and goes on at the first shard not done.",
    )
    parser.add_argument("--model", default="react-tiny", help="architecture: an open_clip name or react-tiny")
    parser.add_argument("--pretrained", help="an open_clip pretrained tag")
    parser.add_argument("--weights", help="weights file: full state dict, official REACT file, or adapter")
    parser.add_argument("--base-weights", help="where an adapter's base weights file is now, if it moved (its sha256 is checked)")
    parser.add_argument("--data", required=True, metavar="SRC", help="webdataset shards, parquet manifest or captioned folder")
    parser.add_argument("--out", required=True, metavar="EMBDIR", help="embedding folder to write (or resume)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per forward pass (default: 256 on a GPU, 64 on a CPU, where small batches run faster)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes decoding images: DataLoader workers (default: 4, or the CPUs available if fewer); "
                        "with --ray, decode tasks at a time (default: as many as the cluster's free CPUs allow)")
    parser.add_argument(
        "--shard-size", type=int, default=10_000,
        help="rows per output shard for a manifest or folder source (webdataset shards keep theirs)",
    )
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:1 (default: this rank's GPU if any; with --ray the actors' device: cuda "
                        "when the cluster has GPUs)")
    parser.add_argument("--ray", metavar="ADDRESS",
                        help="embed on Ray: 'auto' (the cluster this machine belongs to, else a local one) or the "
                        "cluster's address (HOST:PORT, ray://HOST:PORT)")
    parser.add_argument("--actors", type=int, default=None,
                        help="with --ray: embedding actors (default: one per GPU of the cluster, else 1)")
    add_overwrite_argument(parser)
    parser.set_defaults(handler=run)


def run(args) -> int:
    import torch

    from react_core.data.images import ShardError
    from react_core.modeling import CheckpointError, PretrainedUnavailableError
    from react_core.outputs import argument_settings, claim_output
    from react_core.retrieval.embed import EmbeddingError, rank_and_world

    if (args.batch_size is not None and args.batch_size < 1) or (args.workers or 0) < 0 or args.shard_size < 1 \
            or (args.actors is not None and args.actors < 1):
        raise UserError("--batch-size, --shard-size and --actors must be >= 1, --workers >= 0")
    if args.actors is not None and not args.ray:
        raise UserError("--actors is for --ray (without Ray, --workers sets the decoding processes)")
    rank, world_size = rank_and_world()
    if args.ray and world_size > 1:
        raise UserError("--ray and torchrun are two ways to spread the work: use one")
    device = args.device
    if device is None and not args.ray:
        local = int(os.environ.get("LOCAL_RANK", 0))
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    settings = argument_settings(args, "batch_size", "workers", "device", "ray", "actors")
    try:
        with claim_output(args.out, "react embed", settings, args.overwrite):
            summary = _embed(args, device, rank, world_size)
    except (EmbeddingError, ShardError, CheckpointError, PretrainedUnavailableError, FileNotFoundError) as error:
        raise UserError(str(error)) from error
    from react_core.console import printable

    print(f"embedded {summary['rows']} pairs in {summary['shards']} shards "
          f"({summary['already_done']} shards were already done) into {args.out}")
    if summary["failed"]:
        print(f"{len(summary['failed'])} unreadable samples skipped (listed in {args.out}/skipped/):")
        for shard, sample_id, reason in summary["failed"][:10]:
            print(f"  shard {shard}, id {printable(sample_id)}: {printable(reason)}")
        if len(summary["failed"]) > 10:
            print(f"  ... and {len(summary['failed']) - 10} more")
    return 0


def _embed(args, device: str | None, rank: int, world_size: int) -> dict:
    """The embedding run: on Ray, or in this process (one rank of a torchrun)."""
    from react_core.modeling import load_clip
    from react_core.retrieval.embed import embed_corpus

    if args.ray:
        from react_core.retrieval.embed_ray import embed_corpus_ray

        bundle = load_clip(args.model, args.pretrained, args.weights, device="cpu", base_weights=args.base_weights)
        return embed_corpus_ray(bundle, args.data, args.out, address=args.ray, actors=args.actors,
                                decoders=args.workers or None, device=device, batch_size=args.batch_size,
                                shard_size=args.shard_size)
    bundle = load_clip(args.model, args.pretrained, args.weights, device=device, base_weights=args.base_weights)
    return embed_corpus(bundle, args.data, args.out, batch_size=args.batch_size, workers=args.workers,
                        shard_size=args.shard_size, rank=rank, world_size=world_size)
