"""react embed --ray: the folder of a single process, byte for byte; a killed actor's batches
retried; a killed driver resumed; a bad shard in a worker is one line."""
from __future__ import annotations

import io
import os
import signal
import tarfile
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from react_core.cli import main  # noqa: E402
from react_core.data.images import index_shard  # noqa: E402
from react_core.modeling import load_clip, save_full  # noqa: E402
from react_core.retrieval import embed_ray  # noqa: E402
from react_core.retrieval.embed import embed_corpus, shard_done  # noqa: E402

MICRO = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
SHARDS, PER_SHARD = 8, 30


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tiny_world, tmp_path_factory):
    """Eight webdataset shards of 30 samples from the tiny world; one image in shard 2 is not an image."""
    source = sorted((tiny_world / "corpus" / "shards").glob("*.tar"))[0]
    entries = list(index_shard(source).items())
    out = tmp_path_factory.mktemp("ray_corpus")
    with open(source, "rb") as handle:
        for number in range(SHARDS):
            with tarfile.open(out / f"{number:06d}.tar", "w") as tar:
                for position, (key, entry) in enumerate(entries[(number * PER_SHARD) % len(entries):][:PER_SHARD]):
                    handle.seek(entry["jpg"].offset)
                    image = b"not an image" if (number, position) == (2, 5) else handle.read(entry["jpg"].size)
                    key = f"{number}_{key}"
                    for name, data in ((f"{key}.jpg", image), (f"{key}.txt", entry["txt"]), (f"{key}.json", b"{}")):
                        info = tarfile.TarInfo(name)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
    return out


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    weights = save_full(load_clip(MICRO).model, tmp_path_factory.mktemp("micro") / "micro.safetensors")
    return load_clip(MICRO, weights=weights)


@pytest.fixture(scope="module")
def single(corpus, micro, tmp_path_factory):
    """The folder one process writes (the reference)."""
    out = tmp_path_factory.mktemp("single") / "emb"
    embed_corpus(micro, corpus, out, batch_size=4, workers=0, progress=False)
    return out


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _actor_pids() -> list[int]:
    """Processes of this machine running our embedding actor (Ray titles them after the class)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"_Embedder" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_a_killed_actor_has_its_batches_retried_and_the_folder_is_the_single_process_one(local_ray, corpus, micro, single,
                                                                                          tmp_path):
    out = tmp_path / "emb"
    result, killed = {}, {}

    def run():
        result["summary"] = embed_ray.embed_corpus_ray(micro, corpus, out, batch_size=4, progress=False)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 300
    while thread.is_alive() and not killed and time.monotonic() < deadline:
        pids = _actor_pids()
        if pids and shard_done(out, 0):  # mid-run: one shard written, the actor working on the next
            killed["pid"], killed["done"] = pids[0], sum(shard_done(out, n) for n in range(SHARDS))
            os.kill(pids[0], signal.SIGKILL)
        time.sleep(0.05)
    thread.join(timeout=300)
    assert killed and killed["done"] < SHARDS, "the actor was not killed while shards were left"
    assert not Path(f"/proc/{killed['pid']}").exists() or b"_Embedder" not in Path(f"/proc/{killed['pid']}/cmdline").read_bytes()
    summary = result["summary"]
    assert summary["shards"] == SHARDS and summary["rows"] == SHARDS * PER_SHARD - 1 and len(summary["failed"]) == 1
    ours, reference = files_of(out), files_of(single)
    assert sorted(ours) == sorted(reference) and len(ours) == 4 * SHARDS + 1
    assert [name for name in ours if ours[name] != reference[name]] == []  # byte for byte


def test_a_killed_driver_resumes_at_the_first_shard_not_done(local_ray, corpus, micro, single, tmp_path, monkeypatch):
    out = tmp_path / "emb"
    written = []
    real_write = embed_ray.write_shard

    def dies_at_the_third_shard(out_, shard, rows, batches, dim):
        if len(written) == 2:
            raise KeyboardInterrupt  # the driver is stopped after two shards
        written.append(shard.number)
        return real_write(out_, shard, rows, batches, dim)

    monkeypatch.setattr(embed_ray, "write_shard", dies_at_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        embed_ray.embed_corpus_ray(micro, corpus, out, batch_size=4, progress=False)
    monkeypatch.setattr(embed_ray, "write_shard", real_write)
    summary = embed_ray.embed_corpus_ray(micro, corpus, out, batch_size=4, progress=False)
    assert summary["already_done"] == 2 and summary["shards"] == SHARDS - 2
    ours, reference = files_of(out), files_of(single)
    assert [name for name in reference if ours.get(name) != reference[name]] == []


def test_the_command_and_a_bad_shard_in_a_worker_is_one_line(local_ray, corpus, tmp_path, capsys):
    (tmp_path / "shards").mkdir()
    for tar in sorted(corpus.glob("*.tar"))[:2]:
        (tmp_path / "shards" / tar.name).write_bytes(tar.read_bytes())
    argv = ["embed", "--model", "react-tiny", "--data", str(tmp_path / "shards"), "--ray", "auto", "--batch-size", "8"]
    assert main(argv + ["--out", str(tmp_path / "good")]) == 0
    assert "embedded 60 pairs in 2 shards (0 shards were already done)" in capsys.readouterr().out
    (tmp_path / "shards" / "000009.tar").write_bytes(b"")
    assert main(argv + ["--out", str(tmp_path / "emb")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("react embed: error: ") and "000009.tar: not a readable tar shard (empty file)" in err[-1]


def test_decode_tasks_cut_the_batches_a_single_process_makes(corpus, micro):
    """Same rows in the same batches, unreadable images left out of the same batch, the same
    pixels: what makes the two runners' forward passes, and so their bytes, the same on any device."""
    import json

    import numpy as np
    from torch.utils.data import DataLoader

    from react_core.retrieval.embed import _collate, _ShardImages, discover_shards

    shard = discover_shards(corpus)[2]
    rows, locations = shard.load()
    loader = DataLoader(_ShardImages(locations, micro.preprocess_val), batch_size=8, collate_fn=_collate)
    decoded = list(embed_ray._decode_shard({"shard": [2], "name": [shard.name]}, source=str(corpus), shard_size=10_000,
                                           listing="test", batch_size=8, transform=micro.preprocess_val))
    expected = list(loader)
    assert len(decoded) == len(expected) == 4 and {row["batches"][0] for row in decoded} == {4}
    for row, (images, kept, digests, failed) in zip(decoded, expected):
        listing = json.loads(row["listing"][0])
        assert listing["rows"] == kept and listing["digests"] == digests and [tuple(f) for f in listing["failed"]] == failed
        assert listing["captions"] == [rows["caption"].iloc[r] for r in kept]
        assert np.array_equal(embed_ray._from_bytes(row["images"][0]), images.numpy())
    assert sum(len(json.loads(row["listing"][0])["failed"]) for row in decoded) == 1
