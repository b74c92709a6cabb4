"""A retrieved subset -> a training set: webdataset shards or an image folder (from local images),
and a URL list for img2dataset (for remote ones).

Each sample is written once even when `--assign all` kept it under several classes; its
`json` (and the manifest row) lists them all. Images are copied byte for byte (no re-encoding).
Webdataset output: `DIR/shards/{N:06d}.tar` with `KEY.{jpg,png,...}`, `KEY.txt`, `KEY.json`, and
`DIR/manifest.parquet` (id, caption, class, score, shard, key); folder output:
`DIR/images/{N:06d}/{KEY}.{ext}` and `DIR/manifest.parquet` (id, caption, class, score, path).
Both are what `react customize` reads. Shards are written atomically and skipped when present,
so an interrupted export resumes.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from react_core.data.images import ImageHashError
from react_core.errors import ReactError
from react_core.io import atomic_path, atomic_write_text
from react_core.retrieval.retrieve import read_subset

URL_LIST = "urls.parquet"


class ExportError(ReactError):
    """A subset that cannot be exported; names the file or sample."""


def _samples(subset):
    """One row per sample (first = best class), with `classes` listing all of its classes."""
    ordered = subset.sort_values("score", ascending=False)
    classes = ordered.groupby("id", sort=False)["class"].agg(list)
    unique = ordered.drop_duplicates("id").set_index("id")
    unique["classes"] = classes
    return unique.reset_index().sort_values(["class", "rank"]).reset_index(drop=True)


class _ImageSource:
    """Reads the original bytes of a sample: a local path or a member of its webdataset shard."""

    def __init__(self):
        from react_core.data.images import ShardReader

        self.reader = ShardReader()
        self.indexes: dict[str, dict] = {}

    def read(self, row) -> tuple[bytes, str] | None:
        from react_core.data.images import IMAGE_EXTENSIONS, check_recorded_sha256, index_shard, read_bytes

        path = row.get("path")
        if isinstance(path, str) and path:
            data = read_bytes(path)
            if data is None:
                return None
            return check_recorded_sha256(data, row.get("sha256"), path), Path(path).suffix.lstrip(".").lower() or "jpg"
        shard, key = row.get("shard"), row.get("key")
        if isinstance(shard, str) and isinstance(key, str) and Path(shard).is_file():
            if shard not in self.indexes:
                self.indexes[shard] = index_shard(shard)
            entry = self.indexes[shard].get(key, {})
            for extension in IMAGE_EXTENSIONS:
                if extension in entry:
                    data = self.reader.read(entry[extension])
                    return None if data is None else (check_recorded_sha256(data, row.get("sha256"), f"{shard}:{key}"), extension)
        return None


def _has_local(row) -> bool:
    path, shard = row.get("path"), row.get("shard")
    return (isinstance(path, str) and bool(path)) or (isinstance(shard, str) and bool(shard))


def export_subset(subset_dir: str | Path, to: str, out: str | Path, shard_size: int = 10_000, progress: bool = True) -> dict:
    """Write the subset as `to` ('webdataset' or 'folder'); returns counts."""
    import pandas as pd
    from tqdm import tqdm

    if to not in ("webdataset", "folder"):
        raise ExportError(f"--to must be webdataset or folder, not {to!r}")
    out = Path(out)
    samples = _samples(read_subset(subset_dir))
    local = samples.apply(lambda r: _has_local(r.to_dict()), axis=1) if len(samples) else pd.Series([], dtype=bool)
    remote = samples[~local & samples.get("url", pd.Series([None] * len(samples))).notna()] if len(samples) else samples
    counts = {"samples": int(len(samples)), "written": 0, "unreadable": [], "remote": int(len(remote))}
    kept = ["id", "class"] + [c for c in ("key", "similarity", "md5") if c in remote.columns]
    if len(remote):
        with atomic_path(out / URL_LIST) as tmp:
            remote[["url", "caption", *kept]].to_parquet(tmp, index=False)
    local_samples = samples[local].reset_index(drop=True)
    source = _ImageSource()
    manifest = []
    bar = tqdm(total=len(local_samples), desc=f"export {to}", unit="img", disable=not progress)
    for number, start in enumerate(range(0, len(local_samples), shard_size)):
        chunk = local_samples.iloc[start:start + shard_size]
        rows = _written_rows(out, number)
        if rows is None:
            try:
                rows = _write_shard(chunk, number, to, out, source, counts)
            except ImageHashError as error:
                raise ExportError(str(error)) from None
        manifest.extend(rows)
        bar.update(len(chunk))
    bar.close()
    counts["written"] = len(manifest)
    with atomic_path(out / "manifest.parquet") as tmp:
        pd.DataFrame(manifest, columns=["id", "caption", "class", "classes", "score", "shard", "key", "path"]).dropna(
            axis=1, how="all").to_parquet(tmp, index=False)
    if len(remote):
        atomic_write_text(out / "img2dataset.txt", (
            f"img2dataset --url_list {out / URL_LIST} --input_format parquet --url_col url --caption_col caption "
            f"--save_additional_columns '{json.dumps(kept)}' --output_format webdataset --output_folder {out / 'downloaded'}\n"))
    return counts


def _record(row, key: str, shard: str | None, path: str | None) -> dict:
    return {"id": str(row["id"]), "caption": row["caption"], "class": row["class"], "classes": list(row["classes"]),
            "score": float(row["score"]), "shard": shard, "key": key, "path": path}


def _written_rows(out: Path, number: int) -> list[dict] | None:
    """The manifest rows of shard `number` if an earlier run finished it (its listing is written last)."""
    listing = out / "done" / f"{number:06d}.json"
    return json.loads(listing.read_text(encoding="utf-8")) if listing.is_file() else None


def _write_shard(chunk, number: int, to: str, out: Path, source: _ImageSource, counts: dict) -> list[dict]:
    from react_core.io import atomic_write_json

    records = []
    if to == "webdataset":
        relative = f"shards/{number:06d}.tar"
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for position, row in enumerate(chunk.to_dict("records")):
                image = source.read(row)
                if image is None:
                    counts["unreadable"].append(str(row["id"]))
                    continue
                key = f"{number:06d}{position:05d}"
                record = _record(row, key, relative, None)
                meta = {k: record[k] for k in ("id", "class", "classes", "score")} | {"caption": row["caption"]}
                for name, data in ((f"{key}.{image[1]}", image[0]), (f"{key}.txt", row["caption"].encode("utf-8")),
                                   (f"{key}.json", json.dumps(meta).encode("utf-8"))):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                records.append(record)
        with atomic_path(out / relative) as tmp:
            tmp.write_bytes(buffer.getvalue())
    else:
        for position, row in enumerate(chunk.to_dict("records")):
            image = source.read(row)
            if image is None:
                counts["unreadable"].append(str(row["id"]))
                continue
            key = f"{number:06d}{position:05d}"
            relative = f"images/{number:06d}/{key}.{image[1]}"
            with atomic_path(out / relative) as tmp:
                tmp.write_bytes(image[0])
            records.append(_record(row, key, None, relative))
    atomic_write_json(out / "done" / f"{number:06d}.json", records)
    return records
