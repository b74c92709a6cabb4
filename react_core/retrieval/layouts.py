"""How an embedding folder's files lie on disk, and reading its arrays safely.

Two layouts are read as they are, behind one interface (`EmbeddingFolder` in embed.py):

  * LAION's (ours too): `img_emb/img_emb_N.npy`, `text_emb/text_emb_N.npy`,
    `metadata/metadata_N.parquet`, one shard per N;
  * DataComp's pools as `download_upstream.py --download_npz` leaves them: `UID.parquet` beside
    `UID.npz` (in the folder given or in its `metadata/`), one shard per pair of files. The
    parquet holds `uid`, `url`, `text`, `sha256`, `clip_b32_similarity_score`,
    `clip_l14_similarity_score`, `face_bboxes`, ...; the npz, row for row, OpenAI CLIP features
    `b32_img`, `b32_txt` (ViT-B/32, 512-d), `l14_img`, `l14_txt` (ViT-L/14, 768-d) and `dedup`.
    Which pair of features a folder stands for is chosen once (`react embeddings-info POOL
    --features b32`) and recorded in POOL/embeddings.json.

Arrays are memory-mapped without ever unpickling: the `.npy` header is parsed here, the dtype must
be float16 or float32, the shape 2-D, and the file exactly as long as the header says, so a
truncated file, random bytes or an array of other dimensions is one `EmbeddingError` naming the
file. An npz member stored uncompressed is memory-mapped inside the zip; a compressed one is
decompressed (the last few are kept).
"""
from __future__ import annotations

import functools
import logging
import struct
import zipfile
from pathlib import Path

import numpy as np

from react_core.errors import ReactError

logger = logging.getLogger("react")

FLOAT_DTYPES = (np.dtype("<f2"), np.dtype("<f4"))
LAION_DIRS = {"image": ("img_emb", "img_emb"), "text": ("text_emb", "text_emb")}
# DataComp's features: the npz keys of each kind and the model that made them (no DataComp file names it)
DATACOMP_FEATURES = {
    "b32": {"image": "b32_img", "text": "b32_txt", "model": "ViT-B-32", "pretrained": "openai", "dim": 512},
    "l14": {"image": "l14_img", "text": "l14_txt", "model": "ViT-L-14", "pretrained": "openai", "dim": 768},
}
# DataComp's parquet columns under the names our metadata uses (the originals are kept too)
DATACOMP_RENAMED = {"id": "uid", "caption": "text"}
_ZIP_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")


class EmbeddingError(ReactError):
    """An embedding folder or corpus that cannot be used; the message names the file."""


def _npy_header(handle, source: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, bytes of data) from a .npy header; anything else is an `EmbeddingError`."""
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    except (ValueError, OSError, SyntaxError, struct.error) as error:
        raise EmbeddingError(f"{source}: not a .npy array ({str(error).splitlines()[0]})") from None
    if dtype not in FLOAT_DTYPES or len(shape) != 2 or fortran:
        raise EmbeddingError(f"{source}: expected a C-ordered 2-D float16 or float32 array, found {dtype} {shape}")
    return shape, dtype, int(np.prod(shape)) * dtype.itemsize


def _checked(shape: tuple[int, ...], dim: int | None, source: str) -> None:
    if dim is not None and shape[1] != dim:
        raise EmbeddingError(f"{source}: {shape[1]}-dimensional embeddings where embeddings.json says {dim}")


def open_npy(path: str | Path, dim: int | None = None) -> np.memmap:
    """A 2-D float .npy file, memory-mapped; `dim`: the width the folder's embeddings.json records."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            shape, dtype, size = _npy_header(handle, str(path))
            offset = handle.tell()
        actual = path.stat().st_size
    except FileNotFoundError:
        raise EmbeddingError(f"{path} not found") from None
    if actual != offset + size:
        raise EmbeddingError(f"{path}: {actual} bytes where its header promises {offset + size} "
                             f"({shape[0]} x {shape[1]} {dtype}): truncated or damaged")
    _checked(shape, dim, str(path))
    if shape[0] == 0:
        return np.empty(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def open_npz_member(path: str | Path, name: str, dim: int | None = None) -> np.ndarray:
    """Array `name` of an .npz file: memory-mapped inside the zip when stored uncompressed (what
    `np.savez` writes), else decompressed."""
    path = Path(path)
    try:
        mtime_ns = path.stat().st_mtime_ns
    except FileNotFoundError:
        raise EmbeddingError(f"{path} not found") from None
    located = _locate_member(str(path), name, mtime_ns)
    if located is None:
        return _decompressed(str(path), name, mtime_ns, dim)
    offset, shape, dtype = located
    _checked(shape, dim, f"{path}[{name}]")
    if shape[0] == 0:
        return np.empty(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


@functools.lru_cache(maxsize=4096)
def _locate_member(path: str, name: str, mtime_ns: int) -> tuple[int, tuple[int, ...], np.dtype] | None:
    """(data offset, shape, dtype) of an uncompressed npz member; None when it is compressed.
    Cached per file version: re-ranking opens the same shards again and again."""
    source = f"{path}[{name}]"
    try:
        with zipfile.ZipFile(path) as archive:
            try:
                member = archive.getinfo(f"{name}.npy")
            except KeyError:
                held = ", ".join(n.removesuffix(".npy") for n in archive.namelist())
                raise EmbeddingError(f"{path}: no array {name!r} (it holds {held})") from None
            if member.compress_type != zipfile.ZIP_STORED:
                return None
        with open(path, "rb") as handle:
            handle.seek(member.header_offset)
            fields = _ZIP_LOCAL_HEADER.unpack(handle.read(_ZIP_LOCAL_HEADER.size))
            start = member.header_offset + _ZIP_LOCAL_HEADER.size + fields[9] + fields[10]
            handle.seek(start)
            shape, dtype, size = _npy_header(handle, source)
            offset = handle.tell()
            end = handle.seek(0, 2)
    except (zipfile.BadZipFile, struct.error, EOFError, OSError) as error:
        raise EmbeddingError(f"{path}: not a readable .npz file ({error})") from None
    if offset + size > end or member.file_size != offset + size - start:
        raise EmbeddingError(f"{source}: its data does not fit the member's recorded size: truncated or damaged")
    return offset, shape, dtype


@functools.lru_cache(maxsize=4)
def _decompressed(path: str, name: str, mtime_ns: int, dim: int | None) -> np.ndarray:
    """A compressed npz member, read whole; the last few stay cached (re-ranking reads the same shards often)."""
    source = f"{path}[{name}]"
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as handle:
            shape, dtype, size = _npy_header(handle, source)
            data = handle.read(size)
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise EmbeddingError(f"{path}: not a readable .npz file ({error})") from None
    if len(data) != size:
        raise EmbeddingError(f"{source}: truncated ({len(data)} of {size} bytes)")
    _checked(shape, dim, source)
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def shard_number(path: Path) -> int:
    return int(path.stem.rsplit("_", 1)[1])


class LaionLayout:
    """`img_emb/img_emb_N.npy`, `text_emb/text_emb_N.npy`, `metadata/metadata_N.parquet`."""

    name = "laion"
    normalized = True  # LAION's and ours are stored L2-normalised

    def __init__(self, root: Path):
        self.root = root
        self.numbers = sorted(shard_number(p) for p in (root / "metadata").glob("metadata_*.parquet"))
        if not self.numbers:
            raise EmbeddingError(f"{root / 'metadata'}: no metadata_N.parquet files (not an embedding folder?)")
        self.names = [str(n) for n in self.numbers]

    @staticmethod
    def found_in(root: Path) -> bool:
        return any((root / "metadata").glob("metadata_*.parquet"))

    def array_file(self, kind: str, number: int) -> Path:
        folder, prefix = LAION_DIRS[kind]
        return self.root / folder / f"{prefix}_{number}.npy"

    def has(self, kind: str) -> bool:
        return self.array_file(kind, self.numbers[0]).is_file()

    def array_source(self, kind: str, number: int) -> str:
        """The file of shard `number`'s `kind` array, as error messages name it."""
        return str(self.array_file(kind, number))

    def array(self, kind: str, number: int, dim: int | None = None) -> np.ndarray:
        path = self.array_file(kind, number)
        if not path.is_file():
            raise EmbeddingError(f"{path} not found ({kind} embeddings of shard {number})")
        return open_npy(path, dim)

    def metadata_file(self, number: int) -> Path:
        return self.root / "metadata" / f"metadata_{number}.parquet"

    def read_metadata(self, number: int, columns: list[str] | None):
        return _read_parquet(self.metadata_file(number), columns)


class DataCompLayout:
    """A DataComp pool: `UID.parquet` beside `UID.npz`, in the folder or in its `metadata/`."""

    name = "datacomp"
    normalized = False  # normalised on reading, so that inner products are cosines whatever was stored

    def __init__(self, root: Path, features: str | None, recorded: list[str] | None = None):
        if features not in DATACOMP_FEATURES:
            raise EmbeddingError(
                f"{root} is a DataComp pool: choose its features once with `react embeddings-info {root} --features b32` "
                "(OpenAI ViT-B/32) or `--features l14` (OpenAI ViT-L/14)")
        self.root = root
        self.features = features
        self.folder, found = self.pool_files(root)
        if recorded is not None:
            missing = sorted(set(recorded) - set(found))
            if missing:
                raise EmbeddingError(f"{self.folder}: {len(missing)} of the {len(recorded)} recorded shards are gone "
                                     f"(e.g. {missing[0]}.parquet / .npz)")
            if len(found) > len(recorded):
                logger.warning("%s: %d parquet/npz pairs added since embeddings.json was written are left out",
                               self.folder, len(found) - len(recorded))
            found = list(recorded)
        self.names = found
        self.numbers = list(range(len(found)))

    @staticmethod
    def pool_files(root: Path) -> tuple[Path, list[str]]:
        """The folder holding the pool's files and their shared names (sorted): `root` itself, or
        `root/metadata` as `download_upstream.py` lays it out."""
        for folder in (root, root / "metadata"):
            stems = sorted(p.stem for p in folder.glob("*.parquet") if p.with_suffix(".npz").is_file())
            if stems:
                return folder, stems
        raise EmbeddingError(f"{root}: no DataComp parquet files with an .npz beside them")

    @staticmethod
    def found_in(root: Path) -> bool:
        try:
            DataCompLayout.pool_files(root)
        except EmbeddingError:
            return False
        return True

    def has(self, kind: str) -> bool:
        return True  # every DataComp npz holds both kinds

    def array_source(self, kind: str, number: int) -> str:
        """The npz member of shard `number`'s `kind` array, as error messages name it."""
        return f"{self.folder / self.names[number]}.npz[{DATACOMP_FEATURES[self.features][kind]}]"

    def array(self, kind: str, number: int, dim: int | None = None) -> np.ndarray:
        return open_npz_member(self.folder / f"{self.names[number]}.npz", DATACOMP_FEATURES[self.features][kind], dim)

    def metadata_file(self, number: int) -> Path:
        return self.folder / f"{self.names[number]}.parquet"

    def read_metadata(self, number: int, columns: list[str] | None):
        wanted = None if columns is None else list(dict.fromkeys(DATACOMP_RENAMED.get(c, c) for c in columns))
        table = _read_parquet(self.metadata_file(number), wanted)
        for ours, theirs in DATACOMP_RENAMED.items():
            if theirs in table.columns and (columns is None or ours in columns):
                table[ours] = table[theirs].astype("string") if ours == "id" else table[theirs]
        return table.drop(columns=[c for c in ("text",) if c in table.columns])


def _read_parquet(path: Path, columns: list[str] | None):
    """Metadata columns of one shard (those of `columns` it has; all when None)."""
    import pandas as pd
    import pyarrow.parquet as pq

    try:
        if columns is not None:
            names = pq.ParquetFile(path).schema_arrow.names
            columns = [c for c in columns if c in names]
        return pd.read_parquet(path, columns=columns)
    except FileNotFoundError:
        raise EmbeddingError(f"{path} not found") from None
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise EmbeddingError(f"{path}: not a readable parquet file ({str(error).splitlines()[0]})") from None
