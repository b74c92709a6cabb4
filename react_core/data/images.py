"""Reading images from files, URLs and webdataset shards, where a bad image is skipped, not fatal.

Web-scale pairs always contain some corrupt, truncated or vanished images. Every reader here
returns `None` for such a sample (and logs the first few), so a training run counts them and
goes on instead of dying hours in.
"""
from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from react_core.errors import ReactError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
TRUNCATED = "truncated"  # index_shard's entry for the sample in which a truncated shard's data ends
URL_TIMEOUT_S = 10
_MAX_WARNINGS = 5

logger = logging.getLogger(__name__)
_warned = 0


def _warn(source: str, error: Exception) -> None:
    global _warned
    if _warned < _MAX_WARNINGS:
        logger.warning("skipping unreadable image %s (%s: %s)", source, type(error).__name__, error)
        _warned += 1
        if _warned == _MAX_WARNINGS:
            logger.warning("further unreadable images are skipped silently and counted")


class ShardError(ReactError):
    """A webdataset shard that is not a tar file at all (empty or damaged header)."""


class ImageHashError(ReactError):
    """An image whose bytes are not the ones a subset recorded (the corpus changed since)."""


def check_recorded_sha256(data: bytes, recorded, source: str) -> bytes:
    """`data` if its SHA-256 is `recorded` (or nothing was recorded); else an `ImageHashError`."""
    if isinstance(recorded, str) and recorded and hashlib.sha256(data).hexdigest() != recorded:
        raise ImageHashError(
            f"{source}: the image's bytes differ from the sha256 recorded when it was embedded "
            f"({recorded[:12]}...); the corpus changed since: embed and retrieve again"
        )
    return data


def decode_image(data: bytes, source: str) -> Image.Image | None:
    """RGB image from encoded bytes, or None when they are not a readable image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError) as error:
        _warn(source, error)
        return None


def read_bytes(source: str) -> bytes | None:
    """Bytes of a local path or an http(s)/file URL; None when missing or unreachable."""
    try:
        if "://" in source:
            with urllib.request.urlopen(source, timeout=URL_TIMEOUT_S) as response:
                return response.read()
        with open(source, "rb") as handle:
            return handle.read()
    except (OSError, ValueError) as error:
        _warn(source, error)
        return None


def load_image(source: str) -> Image.Image | None:
    data = read_bytes(source)
    return None if data is None else decode_image(data, source)


@dataclass(frozen=True)
class TarMember:
    """Where one file's bytes lie inside a tar shard, for random access without extraction."""

    shard: str
    offset: int
    size: int


def index_shard(path: str | Path) -> dict[str, dict[str, TarMember | bytes]]:
    """Group a webdataset shard's files by sample key.

    Returns `{key: {extension: TarMember}}`; small text members (`txt`, `json`) are read
    right away and stored as bytes, since captions are needed up front. A truncated shard keeps
    the samples before the cut; the sample the data ends in has only a `TRUNCATED` entry (its
    reason). A file that is not a tar at all is a `ShardError`. Read-only: indexes are
    kept per process for a file of the same size and modification time (a demo or a sweep
    reads the same shards for every run).
    """
    stat = os.stat(path)
    return _index_shard(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _index_shard(path: str, size: int, mtime_ns: int) -> dict[str, dict[str, TarMember | bytes]]:
    samples: dict[str, dict[str, TarMember | bytes]] = {}
    try:
        archive = tarfile.open(path, "r:*")
    except tarfile.ReadError:
        raise ShardError(f"{path}: not a readable tar shard ({'empty file' if size == 0 else 'damaged header'})") from None
    key = None
    with archive:
        try:
            for member in archive:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, dot, extension = base.partition(".")
                if not dot:
                    continue
                key = f"{folder}/{stem}" if folder else stem
                extension = extension.lower()
                if member.offset_data + member.size > size:
                    raise EOFError("member past the end of the file")
                if extension in ("txt", "json"):
                    samples.setdefault(key, {})[extension] = archive.extractfile(member).read()
                else:
                    samples.setdefault(key, {})[extension] = TarMember(str(path), member.offset_data, member.size)
            if size % tarfile.BLOCKSIZE:  # a whole tar is made of 512-byte blocks; tarfile ends quietly in a cut header
                raise EOFError("partial last block")
        except (tarfile.ReadError, EOFError):
            logger.warning("%s is truncated: its data ends in sample %s; the samples before it are read", path, key)
            if key is not None:
                samples[key] = {TRUNCATED: b"the shard's data ends in this sample (truncated file)"}
    return samples


class ShardReader:
    """Reads members of tar shards by offset; one open handle per shard and per process."""

    def __init__(self):
        self._handles: dict[str, object] = {}
        self._pid = os.getpid()

    def read(self, member: TarMember) -> bytes | None:
        if os.getpid() != self._pid:  # a DataLoader worker: do not share the parent's handles
            self._handles, self._pid = {}, os.getpid()
        try:
            handle = self._handles.get(member.shard)
            if handle is None:
                handle = self._handles[member.shard] = open(member.shard, "rb")
            handle.seek(member.offset)
            data = handle.read(member.size)
        except OSError as error:
            _warn(f"{member.shard}@{member.offset}", error)
            return None
        if len(data) != member.size:
            _warn(f"{member.shard}@{member.offset}", EOFError("truncated shard"))
            return None
        return data

    def __getstate__(self):
        return {"_handles": {}, "_pid": -1}
