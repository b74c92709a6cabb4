"""CLIP image and caption embeddings of a corpus, in LAION's released layout.

    EMBDIR/img_emb/img_emb_{N}.npy      float16 [rows, dim], L2-normalised image embeddings
    EMBDIR/text_emb/text_emb_{N}.npy    float16 [rows, dim], L2-normalised caption embeddings
    EMBDIR/metadata/metadata_{N}.parquet  one row per embedding: id, caption, key, shard, path,
                                          url, sha256 (of the image bytes); shard and path of a
                                          tar or folder source are absolute
    EMBDIR/skipped/skipped_{N}.parquet  samples of shard N whose image could not be read
    EMBDIR/embeddings.json              the model (identity, tokenizer, normalisation, dtype)

Because the layout is LAION's, LAION's published embedding folders can stand in for ours as
they are: their metadata columns (url, caption, key, similarity, md5, ...) are read as released,
and the model that made them, which no LAION file names, is given once (`react embeddings-info
EMBDIR --release laion400m`, or `--model/--pretrained/--weights` on the commands that need it)
and checked against the folder from then on. DataComp's pools (parquet beside .npz) are read as they
are too (layouts.py): their features are chosen once with `react embeddings-info POOL --features
b32|l14`. One input shard gives one output shard N; each file is
written atomically and `metadata_{N}.parquet` last, so a shard is done exactly when its files
all exist, and an interrupted run resumes at the first shard not done. Under torchrun each rank
takes every WORLD_SIZE-th shard; on Ray (embed_ray.py) shards stream through decode tasks into
embedding actors, with the same batches and the same bytes written.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from react_core.io import atomic_path, atomic_write_json, read_json
from react_core.machine import usable_cpus
from react_core.retrieval.layouts import (
    DATACOMP_FEATURES,
    DataCompLayout,
    EmbeddingError,
    LaionLayout,
    shard_number,
)

INFO_FILE = "embeddings.json"
FORMAT_VERSION = 1
DEFAULT_SHARD_SIZE = 10_000
logger = logging.getLogger("react")
# The models behind LAION's released embeddings (no file of theirs names it): LAION-400M's are
# OpenAI ViT-B/32's (QuickGELU, pinned from the `openai` tag), LAION-2B/5B's OpenAI ViT-L/14's.
KNOWN_RELEASES = {
    "laion400m": {"model": "ViT-B-32", "pretrained": "openai", "dim": 512},
    "laion2b": {"model": "ViT-L-14", "pretrained": "openai", "dim": 768},
    "laion5b": {"model": "ViT-L-14", "pretrained": "openai", "dim": 768},
}


# Images per forward pass: large on an accelerator; on a CPU small batches keep a block's
# activations in cache (`react embed` on two cores: 64 gave react-tiny 1.40x and ViT-B-32 1.28x the
# images/s of 256; benchmarks/README.md, "Embedding batch size on a CPU").
DEFAULT_BATCH_SIZE = {"cuda": 256, "cpu": 64}


def shard_files(root: str | Path, number: int) -> dict[str, Path]:
    root = Path(root)
    return {
        "image": root / "img_emb" / f"img_emb_{number}.npy",
        "text": root / "text_emb" / f"text_emb_{number}.npy",
        "skipped": root / "skipped" / f"skipped_{number}.parquet",
        "metadata": root / "metadata" / f"metadata_{number}.parquet",
    }


def shard_done(root: str | Path, number: int) -> bool:
    return all(path.is_file() for path in shard_files(root, number).values())


# --------------------------------------------------------------------------------------------
# Model identity


def read_embedding_info(emb_dir: str | Path) -> dict:
    """The folder's `embeddings.json`: model identity, how to rebuild the model, dtype, dim."""
    path = Path(emb_dir) / INFO_FILE
    if not path.is_file():
        raise EmbeddingError(f"{path} not found: cannot tell which model made these embeddings")
    info = read_json(path, EmbeddingError)
    if not isinstance(info, dict):
        raise EmbeddingError(f"{path}: expected a JSON object, found {type(info).__name__}")
    expected = {"dim": int, "identity": dict, "model": dict, "shards": list, "shard_numbers": list, "features": str}
    for key, kind in expected.items():
        if info.get(key) is not None and not isinstance(info[key], kind) or kind is int and isinstance(info.get(key), bool):
            raise EmbeddingError(f"{path}: '{key}' must be a JSON {kind.__name__.replace('dict', 'object').replace('str', 'string')}, "
                                 f"not {info[key]!r}")
    if not all(isinstance(n, int) for n in info.get("shard_numbers") or []):
        raise EmbeddingError(f"{path}: 'shard_numbers' must list integers")
    return info


def matches_model(emb_dir: str | Path, spec) -> bool:
    """True when the folder's embeddings come from the model `spec` (a `ModelSpec`) describes.

    Cached caption embeddings are valid only for the very text tower that made them; this is the
    check to make before reusing them.
    """
    try:
        info = read_embedding_info(emb_dir)
    except EmbeddingError:
        return False
    return info.get("identity") == spec.identity()


def describe_identity(identity: dict | None) -> str:
    """A model identity in a few words, for one-line errors."""
    if not identity:
        return "an unrecorded model"
    words = [identity.get("model") or "?"]
    if identity.get("pretrained"):
        words.append(f"pretrained {identity['pretrained']}")
    if identity.get("weights_sha256"):
        words.append(f"weights sha256 {identity['weights_sha256'][:12]}")
    words.append("QuickGELU" if identity.get("quick_gelu") else "GELU")
    return " ".join(words)


def _text_dim(bundle) -> int:
    import torch

    model = bundle.model.eval()
    with torch.no_grad():
        probe = model.encode_text(bundle.tokenizer(["probe"]).to(next(model.parameters()).device))
    return int(probe.shape[-1])


def _load_named(model: str | None, pretrained: str | None, weights: str | None, device: str,
                base_weights: str | None = None):
    from react_core.modeling import CheckpointError, PretrainedUnavailableError, load_clip

    if not model:
        raise EmbeddingError("--pretrained/--weights need --model (the architecture, e.g. ViT-B-32)")
    try:
        return load_clip(model, pretrained, weights, device=device, base_weights=base_weights)
    except (CheckpointError, PretrainedUnavailableError, FileNotFoundError, ValueError, RuntimeError) as error:
        # open_clip raises RuntimeError for an unknown pretrained tag
        named = " ".join(f"--{flag} {value}" for flag, value in (("model", model), ("pretrained", pretrained),
                                                                   ("weights", weights)) if value)
        raise EmbeddingError(f"{named}: {str(error).splitlines()[0]}") from None


def resolve_model(emb_dir: str | Path, model: str | None = None, pretrained: str | None = None,
                  weights: str | None = None, device: str = "cpu", base_weights: str | None = None):
    """The CLIP that made the folder's embeddings, to embed queries with: the one its
    `embeddings.json` names, or the one named here (`--model/--pretrained/--weights`), which
    must then make embeddings of the folder's dimension and match `embeddings.json` if there is
    one. A mismatch is an `EmbeddingError` saying which model each side names. `base_weights`:
    where an adapter's base file is now, if it moved."""
    emb_dir = Path(emb_dir)
    recorded = (emb_dir / INFO_FILE).is_file()
    if not (model or pretrained or weights):
        if not recorded:
            raise EmbeddingError(
                f"{emb_dir} has no {INFO_FILE} naming the model that made its embeddings: give --model (with "
                f"--pretrained or --weights), or record it once with `react embeddings-info {emb_dir} --release "
                f"laion400m` (or laion2b, laion5b, or --model ...)")
        return load_model_of(emb_dir, device, base_weights=base_weights)
    bundle = _named_model_for(EmbeddingFolder(emb_dir, require_info=False), model, pretrained, weights, device, base_weights)
    if recorded:
        identity = read_embedding_info(emb_dir).get("identity")
        if identity != bundle.spec.identity():
            raise EmbeddingError(f"{emb_dir / INFO_FILE} says {describe_identity(identity)} made these embeddings, "
                                 f"not {describe_identity(bundle.spec.identity())} as named")
    return bundle


def _named_model_for(folder: "EmbeddingFolder", model: str | None, pretrained: str | None, weights: str | None, device: str,
                     base_weights: str | None = None):
    """The model named, checked to make embeddings of the folder's dimension."""
    bundle = _load_named(model, pretrained, weights, device, base_weights)
    dim = _text_dim(bundle)
    if dim != folder.dim:
        raise EmbeddingError(f"{folder.root} holds {folder.dim}-dimensional embeddings but {describe_identity(bundle.spec.identity())} "
                             f"makes {dim}-dimensional ones: not the model that made them")
    return bundle


def record_model(emb_dir: str | Path, model: str | None = None, pretrained: str | None = None,
                 weights: str | None = None, release: str | None = None, device: str = "cpu",
                 features: str | None = None, base_weights: str | None = None) -> dict:
    """Write `embeddings.json` for a folder that has none (LAION's as released, a DataComp pool),
    naming the model that made its embeddings: the one of a known LAION `release` (see
    `KNOWN_RELEASES`), of DataComp's `features` (`b32`, `l14`: which of the pool's arrays the
    folder stands for), or the one named; checked against the folder's dimension. Returns the
    written content."""
    emb_dir = Path(emb_dir)
    folder = EmbeddingFolder(emb_dir, require_info=False, features=features)
    if features is not None and folder.layout.name != "datacomp":
        raise EmbeddingError(f"--features is for DataComp pools (parquet beside .npz); {emb_dir} is in LAION's layout")
    known, name = None, None
    if release is not None:
        if release not in KNOWN_RELEASES:
            raise EmbeddingError(f"--release must be one of {', '.join(KNOWN_RELEASES)}, not {release!r}")
        known, name = KNOWN_RELEASES[release], f"{release}'s embeddings"
    elif features is not None and not (model or pretrained or weights):
        known, name = DATACOMP_FEATURES[features], f"DataComp's {features} features"
    elif features is not None:
        from react_core.modeling.clip import base_architecture

        expected = DATACOMP_FEATURES[features]["model"]
        if base_architecture(model or "") != expected:
            logger.warning("DataComp's %s features are OpenAI %s's; recording %s as named", features, expected, model)
    if known is not None:
        from react_core.modeling.clip import base_architecture

        if model and base_architecture(model) != known["model"]:
            raise EmbeddingError(f"{name} were made by {known['model']} ({known['pretrained']}), not {model}")
        if folder.dim != known["dim"]:
            raise EmbeddingError(f"{emb_dir} holds {folder.dim}-dimensional embeddings, {name} are {known['dim']}-dimensional")
        model = model or known["model"]
        pretrained = pretrained or (None if weights else known["pretrained"])
    bundle = _named_model_for(folder, model, pretrained, weights, device, base_weights)
    info = embedding_info(bundle, folder.dim, str(emb_dir.resolve()), list(folder.layout.names))
    info |= {"shard_numbers": [int(n) for n in folder.numbers], "release": release}
    if features is not None:
        info |= {"format": "datacomp", "features": features}
    atomic_write_json(emb_dir / INFO_FILE, info)
    return info


def embedding_info(bundle, dim: int, source: str, shard_names: list[str]) -> dict:
    spec = bundle.spec
    tokenizer = bundle.tokenizer
    return {
        "format": "laion",
        "version": FORMAT_VERSION,
        "identity": spec.identity(),
        "model": {"name": spec.name, "pretrained": spec.pretrained, "weights": spec.adapter or spec.weights,
                  "quick_gelu": spec.quick_gelu, "config": spec.config},
        "tokenizer": {"type": type(tokenizer).__name__,
                      "context_length": int(getattr(tokenizer, "context_length", 0) or 0)},
        "normalized": True,
        "dtype": "float16",
        "dim": int(dim),
        "source": source,
        "shards": shard_names,
    }


def load_model_of(emb_dir: str | Path, device: str = "cpu", weights: str | None = None, base_weights: str | None = None):
    """Rebuild the model named by an embedding folder, checking that its identity still matches;
    `base_weights`: where an adapter's base file is now, if it moved."""
    from react_core.modeling import load_clip

    info = read_embedding_info(emb_dir)
    model = info.get("model")
    if not model:
        raise EmbeddingError(f"{Path(emb_dir) / INFO_FILE} names no model to embed the queries with")
    if not (model.get("pretrained") or model.get("weights") or weights):
        logging.getLogger("react").warning(
            "%s: the embeddings come from a randomly initialised %s; a new random initialisation cannot reproduce "
            "it, so queries will not match them (embed with --weights FILE to make this reproducible)",
            Path(emb_dir) / INFO_FILE, model["name"])
    architecture = model["config"] if model["name"].startswith("custom-") and model.get("config") else model["name"]
    bundle = load_clip(architecture, model.get("pretrained"), weights or model.get("weights"),
                       quick_gelu=model.get("quick_gelu"), device=device, base_weights=base_weights)
    if bundle.spec.identity() != info["identity"]:
        raise EmbeddingError(
            f"{Path(emb_dir) / INFO_FILE}: the model rebuilt from it ({bundle.spec.identity()}) is not the one that "
            f"made the embeddings ({info['identity']}); were the weights changed?"
        )
    return bundle


# --------------------------------------------------------------------------------------------
# Corpus sources: webdataset shards, a parquet manifest, a folder of captioned images


@dataclass
class InputShard:
    """One unit of work; `load()` returns its metadata rows and the image location of each row."""

    number: int
    name: str
    load: Callable[[], tuple["object", list]]


@dataclass(frozen=True)
class _BadSample:
    """The location of a sample found unusable while its shard was indexed, with the reason."""

    reason: str


def _webdataset_shard(path: str) -> tuple[object, list]:
    import pandas as pd

    from react_core.data.images import IMAGE_EXTENSIONS, TRUNCATED, index_shard

    rows, locations = [], []
    resolved = str(Path(path).resolve())  # a subset's rows then find their images from any folder
    for key, entry in index_shard(path).items():
        bad = entry[TRUNCATED].decode() if TRUNCATED in entry else None
        meta, caption = {}, None
        if bad is None:
            try:
                meta = json.loads(entry["json"]) if "json" in entry else {}
                caption = entry["txt"].decode("utf-8").strip() if "txt" in entry else meta.get("caption")
            except (UnicodeDecodeError, json.JSONDecodeError) as error:  # listed in skipped/; the run goes on
                bad = f"unreadable caption or json ({type(error).__name__}: {error})"
        if bad is None and caption is None:
            continue
        rows.append({"id": str(meta.get("id", key)), "caption": caption or "", "key": key, "shard": resolved,
                     "url": meta.get("url")})
        locations.append(_BadSample(bad) if bad else next((entry[e] for e in IMAGE_EXTENSIONS if e in entry), None))
    return pd.DataFrame(rows, columns=["id", "caption", "key", "shard", "url"]), locations


def _chunks(count: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, count)) for start in range(0, count, size)]


def _manifest_shards(path: Path, shard_size: int) -> list[InputShard]:
    import pandas as pd
    import pyarrow.parquet as pq

    from react_core.data import ManifestPairs, PairDataError

    try:
        count = pq.ParquetFile(path).metadata.num_rows
    except Exception as error:
        raise EmbeddingError(f"{path}: not a readable parquet file ({type(error).__name__}: {error})") from None
    pairs: list = []

    def load(start: int, stop: int):
        if not pairs:
            try:
                pairs.append(ManifestPairs(str(path)))
            except PairDataError as error:
                raise EmbeddingError(str(error)) from None
            pairs.append(pd.read_parquet(path))
        dataset, table = pairs
        rows = table.iloc[start:stop]
        columns = {"id": [str(i) for i in dataset.ids[start:stop]], "caption": dataset.captions[start:stop]}
        for name in ("key", "shard", "path", "url"):
            if name in rows.columns:
                columns[name] = rows[name].astype("string").tolist()
        frame = pd.DataFrame(columns)
        return frame, [_ManifestImage(dataset, i) for i in range(start, stop)]

    return [InputShard(n, f"{path}[{a}:{b}]", lambda a=a, b=b: load(a, b)) for n, (a, b) in enumerate(_chunks(count, shard_size))]


@dataclass(frozen=True)
class _ManifestImage:
    """A row of a `ManifestPairs`, read through it (paths, urls or shard members)."""

    dataset: object
    index: int


def _folder_shards(root: Path, shard_size: int) -> list[InputShard]:
    import pandas as pd

    from react_core.data.images import IMAGE_EXTENSIONS

    images = sorted(p for p in root.rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS
                    and p.with_suffix(".txt").is_file())
    if not images:
        raise EmbeddingError(f"{root}: no webdataset shards (*.tar) and no image with a .txt caption beside it")

    def load(start: int, stop: int):
        chunk = images[start:stop]
        frame = pd.DataFrame({
            "id": [str(p.relative_to(root).with_suffix("")) for p in chunk],
            "caption": [p.with_suffix(".txt").read_text(encoding="utf-8").strip() for p in chunk],
            "path": [str(p.resolve()) for p in chunk],
        })
        return frame, [str(p) for p in chunk]

    return [InputShard(n, f"{root}[{a}:{b}]", lambda a=a, b=b: load(a, b)) for n, (a, b) in enumerate(_chunks(len(images), shard_size))]


def discover_shards(source: str | Path, shard_size: int = DEFAULT_SHARD_SIZE) -> list[InputShard]:
    """Input shards of a corpus: `*.tar` files (a glob, a file, or a folder holding them), a
    parquet manifest (cut into `shard_size` rows), or a folder of images with `.txt` captions."""
    text = str(source)
    if glob.has_magic(text):
        tars = sorted(glob.glob(text))
        if not tars:
            raise EmbeddingError(f"no files match {text!r}")
    else:
        path = Path(text)
        if not path.exists():
            raise EmbeddingError(f"corpus not found: {path}")
        if path.suffix == ".parquet":
            return _manifest_shards(path, shard_size)
        if path.is_file():
            tars = [text]
        else:
            tars = sorted(str(p) for p in path.rglob("*.tar"))
            if not tars:
                return _folder_shards(path, shard_size)
    return [InputShard(n, tar, lambda tar=tar: _webdataset_shard(tar)) for n, tar in enumerate(tars)]


# --------------------------------------------------------------------------------------------
# Embedding


class _ShardImages:
    """Map-style dataset over one shard's image locations: (tensor or None, row, sha256, error)."""

    def __init__(self, locations: list, transform: Callable):
        from react_core.data.images import ShardReader

        self.locations = locations
        self.transform = transform
        self.reader = ShardReader()

    def __len__(self) -> int:
        return len(self.locations)

    def _bytes(self, location) -> bytes | None:
        from react_core.data.images import TarMember, read_bytes

        if location is None:
            return None
        if isinstance(location, TarMember):
            return self.reader.read(location)
        return read_bytes(location)

    def __getitem__(self, row: int):
        from react_core.data.images import decode_image

        location = self.locations[row]
        if isinstance(location, _BadSample):
            return None, row, None, location.reason
        if isinstance(location, _ManifestImage):
            image = location.dataset.load_image(location.index)
            digest = None
        else:
            data = self._bytes(location)
            if data is None:
                return None, row, None, "missing or unreadable file"
            digest = hashlib.sha256(data).hexdigest()
            image = decode_image(data, str(location))
        if image is None:
            return None, row, digest, "not a decodable image"
        try:
            return self.transform(image), row, digest, None
        except Exception as error:  # a transform failure is one bad sample, not a failed job
            return None, row, digest, f"{type(error).__name__}: {error}"


def _collate(samples):
    import torch

    kept = [s for s in samples if s[0] is not None]
    images = torch.stack([s[0] for s in kept]) if kept else torch.empty(0)
    return images, [s[1] for s in kept], [s[2] for s in kept], [(s[1], s[3]) for s in samples if s[0] is None]


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of ranks, from torchrun's environment."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _check_or_write_info(out: Path, info: dict, rank: int) -> None:
    path = out / INFO_FILE
    if path.is_file():
        existing = read_embedding_info(out)
        if existing.get("identity") != info["identity"]:
            raise EmbeddingError(
                f"{path}: this folder holds embeddings of another model ({existing.get('identity')}); "
                f"give a new --out for {info['identity']}"
            )
        if existing.get("shards") != info["shards"]:
            raise EmbeddingError(f"{path}: this folder holds embeddings of another corpus ({existing.get('source')})")
        return
    if rank == 0:
        atomic_write_json(path, info)


def embed_corpus(
    bundle,
    source: str | Path,
    out: str | Path,
    *,
    batch_size: int | None = None,
    workers: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
) -> dict:
    """Embed the images and captions of a webdataset corpus: the work of `react embed`.

    Only the shards not yet done that belong to this rank are embedded, so an interrupted run
    resumes; images that cannot be read are skipped and listed.

    Args:
        bundle: the CLIP model (`react_core.modeling.load_clip`).
        source: a folder of webdataset `.tar` shards (or one shard).
        out: the embedding folder (`img_emb/`, `text_emb/`, `metadata/`, `embeddings.json`).
        batch_size: images per forward pass; `DEFAULT_BATCH_SIZE` of the model's device type by
            default.
        workers: decoding processes.
        shard_size: rows per output shard.
        rank, world_size: this process's share of the shards (from torchrun's environment by
            default).
        progress: show a progress bar.

    Returns:
        A summary: `shards` (done by this call), `skipped_shards` (already done), `rows`, and
        `failed`, a list of (shard, id, reason) for the images that could not be read.
    """
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    out = Path(out)
    env_rank, env_world = rank_and_world()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    shards = discover_shards(source, shard_size)
    model = bundle.model.eval()
    device = next(model.parameters()).device
    batch_size = batch_size or DEFAULT_BATCH_SIZE.get(device.type, DEFAULT_BATCH_SIZE["cuda"])
    dim = _text_dim(bundle)
    _check_or_write_info(out, embedding_info(bundle, dim, str(source), [s.name for s in shards]), rank)

    if workers is None:  # 4, or fewer where fewer CPUs are ours (more only slows and warns per shard)
        workers = min(4, usable_cpus())
    mine = shards[rank::world_size]
    pending = [s for s in mine if not shard_done(out, s.number)]
    summary = {"shards": 0, "already_done": len(mine) - len(pending), "rows": 0, "failed": []}
    with tqdm(total=None, desc=f"embed (rank {rank})" if world_size > 1 else "embed", unit="img",
              disable=not progress, smoothing=0.1) as bar:
        for shard in pending:
            bar.set_postfix_str(f"shard {shard.number + 1}/{len(shards)}")
            rows, locations = shard.load()
            dataset = _ShardImages(locations, bundle.preprocess_val)
            loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate,
                                pin_memory=device.type == "cuda", persistent_workers=False)
            captions = rows["caption"].tolist()
            batches = []
            for images, batch_rows, batch_digests, batch_failed in loader:
                batches.append(EmbeddedBatch(*embed_batch(bundle, images, [captions[r] for r in batch_rows]),
                                             batch_rows, batch_digests, batch_failed))
                bar.update(len(batch_rows) + len(batch_failed))
            failed = write_shard(out, shard, rows, batches, dim)
            summary["shards"] += 1
            summary["rows"] += sum(len(b.rows) for b in batches)
            summary["failed"].extend(failed)
    return summary


@dataclass
class EmbeddedBatch:
    """One batch's float16 image and caption embeddings, the shard rows they belong to, the image
    digests, and the (row, reason) of the batch's samples that could not be read."""

    image: np.ndarray
    text: np.ndarray
    rows: list[int]
    digests: list[str | None]
    failed: list[tuple[int, str]]


def embed_batch(bundle, images, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """float16 L2-normalised image and caption embeddings of one batch: the one forward pass of
    every runner (one process, torchrun ranks, Ray actors), so that a batch gives the same bytes
    wherever it runs on the same kind of device."""
    import torch

    if not captions:  # every image of the batch unreadable
        return np.empty((0, 0), dtype=np.float16), np.empty((0, 0), dtype=np.float16)
    model = bundle.model
    device = next(model.parameters()).device
    autocast = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), autocast:
        image = model.encode_image(images.to(device, non_blocking=True))
        text = model.encode_text(bundle.tokenizer(captions).to(device))
        image = torch.nn.functional.normalize(image.float(), dim=-1).half().cpu()
        text = torch.nn.functional.normalize(text.float(), dim=-1).half().cpu()
    return image.numpy(), text.numpy()


def write_shard(out: Path, shard: InputShard, rows, batches: list[EmbeddedBatch], dim: int) -> list[tuple[int, str, str]]:
    """Write output shard `shard.number` from its batches in order: skipped/, img_emb/, text_emb/
    and metadata/ last (so a shard is done exactly when its metadata exists). Returns the
    (shard, id, reason) of the samples skipped."""
    import pandas as pd

    failed = [item for batch in batches for item in batch.failed]
    files = shard_files(out, shard.number)
    skipped = rows.iloc[[r for r, _ in failed]].copy()
    skipped["reason"] = [reason for _, reason in failed]
    skipped["input_shard"] = shard.name
    _write_parquet(files["skipped"], skipped)
    for kind in ("image", "text"):
        arrays = [getattr(batch, kind) for batch in batches if len(batch.rows)]
        _write_npy(files[kind], np.concatenate(arrays) if arrays else np.empty((0, dim), dtype=np.float16))
    metadata = rows.iloc[[r for batch in batches for r in batch.rows]].reset_index(drop=True)
    metadata["sha256"] = pd.array([d for batch in batches for d in batch.digests], dtype="string")
    _write_parquet(files["metadata"], metadata)
    return [(shard.number, str(rows["id"].iloc[r]), reason) for r, reason in failed]


def _write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(array, dtype=np.float16))


def _write_parquet(path: Path, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def skipped_samples(emb_dir: str | Path):
    """Every sample that embedding skipped (unreadable image), with its shard and reason."""
    import pandas as pd

    files = sorted(Path(emb_dir, "skipped").glob("skipped_*.parquet"), key=shard_number)
    frames = [pd.read_parquet(f).assign(output_shard=shard_number(f)) for f in files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["id", "reason", "output_shard"])


# --------------------------------------------------------------------------------------------
# Reading a folder


class EmbeddingFolder:
    """A finished embedding folder, whatever its layout (LAION's and ours, or a DataComp pool; see
    layouts.py): per-shard arrays (memory-mapped) and metadata, under our column names.

    Rows are numbered globally in shard order; a FAISS index built from the folder uses these
    row numbers as ids. Arrays are checked as they are opened: a truncated or damaged file, or one
    of another width than embeddings.json's `dim`, is an `EmbeddingError` naming it.

    Args:
        root: the folder.
        require_info: refuse a folder without embeddings.json (one that names no model).
        features: for a DataComp pool whose embeddings.json does not name them yet, `b32` or `l14`.
    """

    def __init__(self, root: str | Path, require_info: bool = True, features: str | None = None):
        self.root = Path(root)
        self.info = read_embedding_info(self.root) if require_info or (self.root / INFO_FILE).is_file() else {}
        self.layout = _open_layout(self.root, self.info, features)
        numbers = self.layout.numbers
        if self.layout.name == "laion" and self.info:
            expected = self.info.get("shard_numbers") or range(len(self.info.get("shards") or numbers))
            missing = sorted(set(expected) - set(numbers))
            if missing:
                raise EmbeddingError(
                    f"{self.root}: shards {missing[:10]} of {len(expected)} are not embedded yet; run `react embed` again to finish"
                )
        self.numbers = numbers
        self.dim = self.info.get("dim")
        counted = "image" if self.layout.has("image") else "text"
        self.counts = []
        for number in numbers:
            array = self.layout.array(counted, number, self.dim)
            self.dim = self.dim or int(array.shape[1])
            self.counts.append(len(array))
        self.dim = int(self.dim)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def has(self, kind: str) -> bool:
        """Whether the folder holds `kind` ('image' or 'text') embeddings."""
        return self.layout.has(kind)

    def array(self, kind: str, number: int) -> np.ndarray:
        """Shard `number`'s stored `kind` embeddings as they are on disk (memory-mapped where possible)."""
        return self.layout.array(kind, number, self.dim)

    def check(self, kind: str) -> None:
        """Check the `kind` arrays before a long job reads them: each readable, of the folder's
        dimension and with one row per metadata row. Reads file headers and parquet footers, not
        the data."""
        import pyarrow.parquet as pq

        if not self.has(kind):
            raise EmbeddingError(f"{self.root}: no {kind} embeddings ({self.layout.array_source(kind, self.numbers[0])} not found)")
        for number, count in zip(self.numbers, self.counts):
            array = self.array(kind, number)  # the layout checks it is readable and of the folder's dimension
            source = self.layout.array_source(kind, number)
            if len(array) != count:
                raise EmbeddingError(f"{source}: {len(array)} rows, the folder's other arrays of shard {number} have {count}")
            metadata = self.layout.metadata_file(number)
            try:
                rows = pq.ParquetFile(metadata).metadata.num_rows
            except FileNotFoundError:
                raise EmbeddingError(f"{metadata} not found") from None
            except Exception as error:  # pyarrow raises several types for a damaged footer
                raise EmbeddingError(f"{metadata}: not a readable parquet file ({type(error).__name__})") from None
            if rows != count:
                raise EmbeddingError(f"{source}: {count} embeddings for {rows} rows of {metadata}")

    def as_vectors(self, block: np.ndarray) -> np.ndarray:
        """float32, L2-normalised rows of a stored block (the layouts that store them unnormalised
        are normalised on reading, so that inner products are cosines)."""
        vectors = np.asarray(block, dtype=np.float32)
        if self.layout.normalized:
            return vectors
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def iter_arrays(self, kind: str) -> Iterator[tuple[int, np.ndarray]]:
        """(first global row, float32 L2-normalised array) per shard, in order."""
        for number, start in zip(self.numbers, self.offsets[:-1]):
            yield int(start), self.as_vectors(self.array(kind, number))

    def gather(self, kind: str, rows: np.ndarray) -> np.ndarray:
        """float32 embeddings of global `rows` (any order), by positioned reads rather than a
        memory map: pages read for scattered rows (re-ranking, rescoring) do not stay in this
        process's resident memory, which matters when the corpus is larger than RAM."""
        rows = np.asarray(rows, dtype=np.int64)
        result = np.empty((len(rows), self.dim), dtype=np.float32)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise EmbeddingError(f"{self.root}: rows outside 0..{len(self) - 1} requested")
        shard_of = np.searchsorted(self.offsets, rows, side="right") - 1
        for position in np.unique(shard_of):
            mask = shard_of == position
            array = self.array(kind, self.numbers[position])
            local = rows[mask] - self.offsets[position]
            result[mask] = _read_rows(array, local) if isinstance(array, np.memmap) else array[local]
        return result if self.layout.normalized else self.as_vectors(result)

    def metadata(self, columns: list[str] | None = None):
        """All metadata rows in global row order, with a `row` column and an `id` one: a DataComp
        pool's is its `uid` (its `text` is the `caption`); LAION's metadata has none, so there it
        is the `key` when keys are unique, else shard_position."""
        import pandas as pd

        wanted = None if columns is None else list(dict.fromkeys([*columns, "key"] if "id" in columns else columns))
        table = pd.concat([self.layout.read_metadata(number, wanted) for number in self.numbers], ignore_index=True)
        if len(table) != len(self):
            raise EmbeddingError(f"{self.root}: metadata has {len(table)} rows but the embeddings have {len(self)}")
        table["row"] = np.arange(len(table), dtype=np.int64)
        if "id" not in table.columns and (columns is None or "id" in columns):
            key = table["key"].astype("string") if "key" in table.columns else None
            unique = key is not None and key.notna().all() and key.is_unique
            table["id"] = key.tolist() if unique else [
                f"{number}_{position}" for number, count in zip(self.numbers, self.counts) for position in range(count)]
        return table


def _open_layout(root: Path, info: dict, features: str | None):
    """The reader of `root`'s files: the layout embeddings.json records, else the one found."""
    if info.get("format") == "datacomp":
        if features is not None and features != info.get("features"):
            raise EmbeddingError(f"{root / INFO_FILE} records DataComp's {info.get('features')} features, not {features}")
        return DataCompLayout(root, info.get("features"), info.get("shards"))
    if LaionLayout.found_in(root):
        return LaionLayout(root)
    if DataCompLayout.found_in(root):
        return DataCompLayout(root, features)
    raise EmbeddingError(f"{root}: neither metadata/metadata_N.parquet files (LAION's layout) nor parquet files with an .npz "
                         "beside them (a DataComp pool): not an embedding folder?")


def _read_rows(array: np.memmap, rows: np.ndarray) -> np.ndarray:
    """Rows of a memory-mapped 2-D .npy file, read from its file with `os.pread` (the map gives
    only the layout: no page of it is touched); a contiguous run of rows is one read."""
    if not array.flags.c_contiguous or array.ndim != 2:
        raise EmbeddingError(f"{array.filename}: expected a C-ordered 2-D array, found shape {array.shape}")
    row_bytes = array.shape[1] * array.dtype.itemsize
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    runs = np.split(ordered, np.flatnonzero(np.diff(ordered) != 1) + 1)
    with open(array.filename, "rb") as handle:
        chunks = [os.pread(handle.fileno(), row_bytes * len(run), array.offset + int(run[0]) * row_bytes) for run in runs if len(run)]
    result = np.empty((len(rows), array.shape[1]), dtype=np.float32)
    result[order] = np.frombuffer(b"".join(chunks), dtype=array.dtype).reshape(-1, array.shape[1])
    return result
