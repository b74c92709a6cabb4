"""A retrieved subset -> a training set: webdataset shards or an image folder (from local images),
and a URL list for img2dataset (for remote ones).

Each sample is written once even when `--assign all` kept it under several classes; its
`json` (and the manifest row) lists them all. Images are copied byte for byte (no re-encoding).
Webdataset output: `DIR/shards/{N:06d}.tar` with `KEY.{jpg,png,...}`, `KEY.txt`, `KEY.json`, and
`DIR/manifest.parquet` (id, caption, class, score, shard, key); folder output:
`DIR/images/{N:06d}/{KEY}.{ext}` and `DIR/manifest.parquet` (id, caption, class, score, path).
Both are what `react customize` reads. Shards are written atomically and skipped when present,
so an interrupted export resumes; a folder that cannot be written (read-only, full disk) is one
`OutputError` naming the file, and no partial file stays behind.

Samples with only a URL (LAION's and DataComp's metadata) go to `DIR/urls.parquet` with the
img2dataset command that downloads them, as an argument list (`DIR/img2dataset.json`) and as a
shell script with every argument quoted (`DIR/img2dataset.sh`); it is written, never run here.
Where the subset has DataComp's `face_bboxes`, img2dataset blurs those faces as DataComp's own
download does; where it has the `sha256` of the image bytes, img2dataset checks it.

Blocklists apply here again: the ones given and the ones retrieval used (re-read, as they may
have grown since), before anything is written; `DIR/stats.json` counts what they dropped.
"""
from __future__ import annotations

import functools
import io
import json
import logging
import operator
import shlex
import tarfile
from pathlib import Path

from react_core.data.images import ImageHashError
from react_core.errors import ReactError
from react_core.io import atomic_path, atomic_write_json, atomic_write_text, output_errors
from react_core.retrieval.retrieve import Blocklist, blocked_rows, read_blocklist, read_stats, read_subset

URL_LIST = "urls.parquet"
STATS_FILE = "stats.json"
# columns kept beside url and caption in the URL list, when the subset has them (img2dataset saves them per image)
URL_LIST_COLUMNS = ("id", "class", "uid", "key", "sha256", "md5", "similarity", "clip_b32_similarity_score",
                    "clip_l14_similarity_score")
logger = logging.getLogger("react")


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


def export_subset(subset_dir: str | Path, to: str, out: str | Path, shard_size: int = 10_000, progress: bool = True,
                  blocklist: Blocklist | None = None) -> dict:
    """Write the subset as `to` ('webdataset' or 'folder') and the URL list of its remote samples.

    Args:
        subset_dir: the output folder of `react retrieve`.
        to: 'webdataset' or 'folder'.
        out: the folder to write (an interrupted export into it resumes).
        shard_size: samples per tar shard or sub-folder.
        progress: show a progress bar.
        blocklist: lists to apply besides those retrieval used.

    Returns:
        the counts also written to OUT/stats.json: samples, blocklisted (and what matched), written,
        unreadable ids, remote samples.
    """
    import pandas as pd
    from tqdm import tqdm

    if to not in ("webdataset", "folder"):
        raise ExportError(f"--to must be webdataset or folder, not {to!r}")
    out = Path(out)
    subset = read_subset(subset_dir)
    samples = _samples(subset)
    counts = {"samples": int(len(samples)), "blocklisted": 0, "written": 0, "unreadable": [], "remote": 0}
    blocklist = _with_recorded_lists(read_stats(subset_dir), blocklist)
    if blocklist is not None:
        blocked, matched = blocked_rows(samples, blocklist)
        samples = samples[~blocked].reset_index(drop=True)
        counts |= {"blocklisted": int(blocked.sum()), "blocklist": blocklist.describe() | {"matched": matched}}
    local = samples.apply(lambda r: _has_local(r.to_dict()), axis=1) if len(samples) else pd.Series([], dtype=bool)
    remote = samples[~local & samples.get("url", pd.Series([None] * len(samples))).notna()] if len(samples) else samples
    counts["remote"] = int(len(remote))
    with output_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    if len(remote):
        kept = [c for c in URL_LIST_COLUMNS if c in remote.columns]
        extra = ["face_bboxes"] if "face_bboxes" in remote.columns else []
        with output_errors(out / URL_LIST), atomic_path(out / URL_LIST) as tmp:
            remote[["url", "caption", *kept, *extra]].to_parquet(tmp, index=False)
        argv = img2dataset_command(out / URL_LIST, out / "downloaded", kept, blur_faces=bool(extra),
                                   verify_sha256="sha256" in kept)
        with output_errors(out / "img2dataset.json"):
            atomic_write_json(out / "img2dataset.json", {"argv": argv})
        with output_errors(out / "img2dataset.sh"):
            atomic_write_text(out / "img2dataset.sh", "#!/bin/sh\n# fetch the subset's remote images\n" + shlex.join(argv) + "\n")
    local_samples = samples[local].reset_index(drop=True)
    source = _ImageSource()
    manifest = []
    with tqdm(total=len(local_samples), desc=f"export {to}", unit="img", disable=not progress) as bar:
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
    counts["written"] = len(manifest)
    with output_errors(out / "manifest.parquet"), atomic_path(out / "manifest.parquet") as tmp:
        pd.DataFrame(manifest, columns=["id", "caption", "class", "classes", "score", "shard", "key", "path"]).dropna(
            axis=1, how="all").to_parquet(tmp, index=False)
    with output_errors(out / STATS_FILE):
        atomic_write_json(out / STATS_FILE, counts)
    return counts


def img2dataset_command(url_list: Path, output_folder: Path, columns: list[str], *, blur_faces: bool = False,
                        verify_sha256: bool = False) -> list[str]:
    """The img2dataset command line that downloads a URL list, as an argument list (for
    `subprocess.run(argv)`, never a shell string)."""
    argv = ["img2dataset", "--url_list", str(url_list), "--input_format", "parquet", "--url_col", "url",
            "--caption_col", "caption", "--save_additional_columns", json.dumps(columns),
            "--output_format", "webdataset", "--output_folder", str(output_folder)]
    if blur_faces:
        argv += ["--bbox_col", "face_bboxes"]
    if verify_sha256:
        argv += ["--verify_hash", json.dumps(["sha256", "sha256"])]
    return argv


def _with_recorded_lists(stats: dict, given: Blocklist | None) -> Blocklist | None:
    """The lists given, and those retrieval (or a refilter) applied, read again from their files:
    a list that grew since also filters the export. A recorded list that is gone is skipped with a
    warning (the subset was filtered with it already)."""
    recorded = [f["path"] for f in (stats.get("blocklist") or {}).get("files", [])]
    for step in stats.get("refiltered") or []:
        recorded += [f["path"] for f in (step.get("blocklist") or {}).get("files", [])]
    lists = [given] if given is not None else []
    for path in dict.fromkeys(recorded):
        if Path(path).is_file():
            lists.append(read_blocklist(path))
        else:
            logger.warning("%s, a blocklist the subset was filtered with, is gone: not applied again", path)
    return functools.reduce(operator.or_, lists) if lists else None


def _record(row, key: str, shard: str | None, path: str | None) -> dict:
    return {"id": str(row["id"]), "caption": row["caption"], "class": row["class"], "classes": list(row["classes"]),
            "score": float(row["score"]), "shard": shard, "key": key, "path": path}


def _written_rows(out: Path, number: int) -> list[dict] | None:
    """The manifest rows of shard `number` if an earlier run finished it (its listing is written last)."""
    listing = out / "done" / f"{number:06d}.json"
    return json.loads(listing.read_text(encoding="utf-8")) if listing.is_file() else None


def _write_shard(chunk, number: int, to: str, out: Path, source: _ImageSource, counts: dict) -> list[dict]:
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
        with output_errors(out / relative), atomic_path(out / relative) as tmp:
            tmp.write_bytes(buffer.getvalue())
    else:
        for position, row in enumerate(chunk.to_dict("records")):
            image = source.read(row)
            if image is None:
                counts["unreadable"].append(str(row["id"]))
                continue
            key = f"{number:06d}{position:05d}"
            relative = f"images/{number:06d}/{key}.{image[1]}"
            with output_errors(out / relative), atomic_path(out / relative) as tmp:
                tmp.write_bytes(image[0])
            records.append(_record(row, key, None, relative))
    with output_errors(out / "done" / f"{number:06d}.json"):
        atomic_write_json(out / "done" / f"{number:06d}.json", records)
    return records
