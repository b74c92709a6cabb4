"""`react embed --ray`: the same embedding folder, computed on a Ray cluster with Ray Data.

Shards stream through two stages: CPU tasks read and decode each input shard and cut it into the
batches a single process would make (rows `[i * batch_size, (i + 1) * batch_size)`, unreadable
images left out), and a pool of embedding actors (one GPU each, or CPUs) runs `embed_batch` on
each. The driver gathers a shard's batches and writes it with `write_shard` as soon as all have
come back. Decoding, batching, the forward pass and the writing are the single-process code, so
the folder is byte for byte the one `react embed` writes without Ray on the same kind of device.

Ray Data retries the work of a worker that dies: a decode task runs again, an actor is restarted
and its batch sent again. Finished shards are on disk, so a driver that dies is simply started
again and goes on at the first shard not done, as a single process does. The model goes to the
actors once, through Ray's object store (a random initialisation is then the driver's own).
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
from pathlib import Path

import numpy as np

from react_core.errors import ReactError
from react_core.retrieval.embed import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_SHARD_SIZE,
    EmbeddedBatch,
    EmbeddingError,
    _check_or_write_info,
    _chunks,
    _collate,
    _ShardImages,
    _text_dim,
    discover_shards,
    embed_batch,
    embedding_info,
    shard_done,
    write_shard,
)

logger = logging.getLogger("react")


def connect(address: str) -> None:
    """Join the Ray cluster at `address`; `auto`: the one this machine belongs to (RAY_ADDRESS or
    a running `ray start`), else a new local one. Nothing to do when Ray is running in this process."""
    try:
        import ray
    except ImportError:
        raise EmbeddingError("--ray needs Ray: pip install -e \".[ray]\" (ray[data])") from None
    if ray.is_initialized():
        return
    # Ray's C++ core logs at error level that Ray Data's actors keep their arguments in the object
    # store, on every run; failures reach us as exceptions anyway (set the variable to see its logs)
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    options = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if address != "auto":
        ray.init(address=address, **options)
        return
    try:
        ray.init(address="auto", **options)
    except ConnectionError:
        ray.init(**options)


@functools.lru_cache(maxsize=2)
def _input_shards(source: str, shard_size: int, listing: str) -> list:
    """The corpus's input shards, listed once per worker process and run (`listing`: a digest
    of the names the driver found; workers outlive a run, and the corpus may change between runs)."""
    return discover_shards(source, shard_size)


def _decode_shard(items: dict, *, source: str, shard_size: int, listing: str, batch_size: int, transform):
    """Ray Data stage 1 (CPU tasks): one input shard -> one row per batch of decoded images."""
    for number, name in zip(items["shard"], items["name"]):
        shards = _input_shards(source, shard_size, listing)
        if int(number) >= len(shards) or shards[int(number)].name != name:
            raise EmbeddingError(f"{source}: the input shards changed while embedding ({name} is not shard {number} here)")
        shard = shards[int(number)]
        rows, locations = shard.load()
        dataset = _ShardImages(locations, transform)
        captions = rows["caption"].tolist()
        bounds = _chunks(len(dataset), batch_size) or [(0, 0)]
        for index, (start, stop) in enumerate(bounds):
            images, kept, digests, failed = _collate([dataset[row] for row in range(start, stop)])
            listing = {"rows": kept, "digests": digests, "failed": failed, "captions": [captions[row] for row in kept]}
            yield {"shard": [int(number)], "batch": [index], "batches": [len(bounds)], "listing": [json.dumps(listing)],
                   "images": [_to_bytes(images.numpy())]}


def _to_bytes(array: np.ndarray) -> bytes:
    """An array in .npy format (read back with `allow_pickle=False`: nothing is unpickled)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _from_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


class _Embedder:
    """Ray Data stage 2 (actors): a batch of decoded images and its captions -> embeddings."""

    def __init__(self, model: list, device: str):
        import ray

        module, tokenizer, preprocess = ray.get(model[0])
        self.bundle = _Bundle(module.to(device).eval(), tokenizer, preprocess)

    def __call__(self, batch: dict) -> dict:
        import torch

        listing = json.loads(batch["listing"][0])
        image, text = embed_batch(self.bundle, torch.from_numpy(_from_bytes(batch["images"][0])), listing["captions"])
        return {"shard": batch["shard"], "batch": batch["batch"], "batches": batch["batches"], "listing": batch["listing"],
                "image": [_to_bytes(image)], "text": [_to_bytes(text)]}


class _Bundle:
    """What `embed_batch` reads of a `ClipBundle`."""

    def __init__(self, model, tokenizer, preprocess):
        self.model, self.tokenizer, self.preprocess_val = model, tokenizer, preprocess


def _react_error(error: BaseException) -> ReactError | None:
    """The project error raised in a worker (a bad shard) behind Ray's wrappers, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        cause = getattr(error, "cause", None)  # a RayTaskError's original exception
        if isinstance(cause, BaseException):
            error = cause
            continue
        if isinstance(error, ReactError):
            return error
        error = error.__cause__
    return None


def embed_corpus_ray(
    bundle,
    source: str | Path,
    out: str | Path,
    *,
    address: str = "auto",
    actors: int | None = None,
    decoders: int | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = True,
) -> dict:
    """Embed every not-yet-done shard of `source` on Ray; the folder `embed_corpus` would write.

    Args:
        bundle: the CLIP (a `ClipBundle`, on the CPU: the actors move it to their device).
        source: webdataset shards, a parquet manifest or a captioned image folder, as for `embed_corpus`.
        out: the embedding folder to write or resume.
        address: the Ray cluster (`auto`, or `HOST:PORT` / `ray://HOST:PORT`).
        actors: embedding actors (default: one per GPU of the cluster, else 1).
        decoders: decode tasks at a time (default: as many as the cluster's free CPUs allow).
        device: the actors' device, `cuda` or `cpu` (default: `cuda` when the cluster has GPUs).
        batch_size: images per forward pass (default: `DEFAULT_BATCH_SIZE` of the device).
        shard_size: rows per output shard of a manifest or folder source.
        progress: show a progress bar.

    Returns:
        the summary of `embed_corpus`: shards, already_done, rows, failed.
    """
    connect(address)
    import ray
    from tqdm import tqdm

    out = Path(out)
    shards = discover_shards(source, shard_size)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    device = "cuda" if (device or ("cuda" if gpus else "cpu")).startswith("cuda") else "cpu"  # Ray picks each actor's GPU
    if device == "cuda" and not gpus:
        raise EmbeddingError("--device cuda: the Ray cluster has no GPU")
    actors = actors or max(1, gpus if device == "cuda" else 1)
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if device == "cpu" and cpus < actors + 1:  # else the actors hold every CPU and no image is ever decoded
        raise EmbeddingError(f"{actors} CPU embedding actors need a Ray cluster of at least {actors + 1} CPUs "
                             f"(one per actor and one to decode); it has {cpus}")
    batch_size = batch_size or DEFAULT_BATCH_SIZE[device]
    model = bundle.model.eval().cpu()
    dim = _text_dim(bundle)
    _check_or_write_info(out, embedding_info(bundle, dim, str(source), [s.name for s in shards]), 0)
    pending = [s for s in shards if not shard_done(out, s.number)]
    summary = {"shards": 0, "already_done": len(shards) - len(pending), "rows": 0, "failed": []}
    if not pending:
        return summary

    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False  # ours counts images; Ray Data's per-operator bars and logs stay quiet
    context.print_on_execution_start = False
    context.execution_options.preserve_order = False
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # a failed task is raised here, not logged twice
    model_ref = ray.put((model, bundle.tokenizer, bundle.preprocess_val))
    # each actor holds a copy of the model: its bytes are reserved on the actor's node (a resource
    # the decode tasks do not ask for, which also keeps Ray Data from fusing the two stages into one)
    model_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    dataset = ray.data.from_items([{"shard": s.number, "name": s.name} for s in pending], override_num_blocks=len(pending))
    listing = hashlib.sha256("\n".join(s.name for s in shards).encode()).hexdigest()
    dataset = dataset.map_batches(
        _decode_shard, batch_size=1, batch_format="numpy", num_cpus=1,
        compute=ray.data.TaskPoolStrategy(size=decoders) if decoders else None,
        fn_kwargs={"source": str(source), "shard_size": shard_size, "listing": listing, "batch_size": batch_size,
                   "transform": bundle.preprocess_val})
    dataset = dataset.map_batches(
        _Embedder, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if device == "cuda" else 0, num_cpus=0 if device == "cuda" else 1,
        memory=model_bytes, fn_constructor_kwargs={"model": [model_ref], "device": device})

    by_number = {s.number: s for s in pending}
    gathered: dict[int, dict[int, EmbeddedBatch]] = {}
    try:
        with tqdm(total=None, desc="embed (ray)", unit="img", disable=not progress, smoothing=0.1) as bar:
            for row in dataset.iter_rows():
                number, index, count = int(row["shard"]), int(row["batch"]), int(row["batches"])
                listing = json.loads(row["listing"])
                batch = EmbeddedBatch(_from_bytes(row["image"]), _from_bytes(row["text"]), listing["rows"],
                                      listing["digests"], [(position, reason) for position, reason in listing["failed"]])
                parts = gathered.setdefault(number, {})
                parts[index] = batch
                bar.update(len(batch.rows) + len(batch.failed))
                if len(parts) == count:
                    shard = by_number[number]
                    rows, _ = shard.load()
                    summary["failed"].extend(write_shard(out, shard, rows, [parts[i] for i in range(count)], dim))
                    summary["shards"] += 1
                    summary["rows"] += sum(len(parts[i].rows) for i in range(count))
                    del gathered[number]
                    bar.set_postfix_str(f"{summary['already_done'] + summary['shards']}/{len(shards)} shards")
    except Exception as error:  # a worker's ShardError arrives wrapped in Ray's exceptions
        cause = _react_error(error)
        if cause is None:
            raise
        raise type(cause)(str(cause).splitlines()[0]) from None  # Ray Data appends its retry advice to the message
    return summary
