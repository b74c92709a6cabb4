"""Files that must be refused (one line, exit status 2), never loaded unsafely or half-read."""
from __future__ import annotations

import pickle
import zipfile

from react_core.cli import main


def _run(capsys, argv):
    status = main(argv)
    err = capsys.readouterr().err.strip()
    return status, err


class _Payload:
    """Unpickling this writes a file: the proof that a loader ran code."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_fake_torchscript_archive_with_a_payload_is_refused_without_running_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    proof = tmp_path / "pwned"
    weights = tmp_path / "ViT-B-32.pt"
    with zipfile.ZipFile(weights, "w") as archive:  # torch.save's zip layout plus a planted code/ entry
        archive.writestr("archive/data.pkl", pickle.dumps({"visual.proj": _Payload(proof)}, protocol=2))
        archive.writestr("archive/code/__torch__.py", "")
        archive.writestr("archive/version", "3\n")
    for argv in (
        ["convert", "--model", "react-tiny", str(weights), str(tmp_path / "out.safetensors"), "--to", "full"],
        ["embed", "--weights", str(weights), "--data", str(tmp_path / "none"), "--out", str(tmp_path / "emb")],
    ):
        status, err = _run(capsys, argv)
        assert status == 2
        assert len(err.splitlines()) == 1 and str(weights) in err and "TorchScript" in err
        assert not proof.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_truncated_safetensors_is_one_line(tmp_path, capsys):
    from safetensors.torch import save_file

    from react_core.modeling import load_clip

    whole = tmp_path / "whole.safetensors"
    save_file(load_clip("react-tiny").model.state_dict(), str(whole))
    data = whole.read_bytes()
    for size in (0, len(data) // 2):
        cut = tmp_path / f"cut{size}.safetensors"
        cut.write_bytes(data[:size])
        for argv in (
            ["convert", "--model", "react-tiny", str(cut), str(tmp_path / "o.pt"), "--to", "full"],
            ["embed", "--weights", str(cut), "--data", str(tmp_path / "none"), "--out", str(tmp_path / "emb")],
        ):
            status, err = _run(capsys, argv)
            assert status == 2 and len(err.splitlines()) == 1 and str(cut) in err and "truncated" in err


def _jpeg(value: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (value, 0, 255 - value)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _shard(path, samples) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for key, caption in samples:
            for name, data in ((f"{key}.jpg", _jpeg(len(key) * 40)), (f"{key}.txt", caption)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def test_embed_lists_a_bad_caption_and_the_sample_a_truncated_shard_ends_in(tmp_path, capsys, caplog):
    import pandas as pd

    shards = tmp_path / "shards"
    shards.mkdir()
    _shard(shards / "000000.tar", [("a", b"a red circle"), ("bb", b"caf\xe9 \xff sign"), ("ccc", b"a blue star")])
    whole = _shard(shards / "000001.tar", [("d", b"a green ring"), ("ee", b"a pink square")])
    (shards / "000001.tar").write_bytes(whole[: len(whole) // 2 + 100])  # cut inside sample ee
    out = tmp_path / "emb"
    argv = ["embed", "--data", str(shards), "--out", str(out), "--workers", "0", "--batch-size", "4"]
    assert main(argv) == 0
    assert "Traceback" not in capsys.readouterr().err and "000001.tar is truncated" in caplog.text
    skipped = pd.concat([pd.read_parquet(p) for p in sorted((out / "skipped").glob("*.parquet"))])
    reasons = dict(zip(skipped["key"], skipped["reason"]))
    assert set(reasons) == {"bb", "ee"} and "utf-8" in reasons["bb"].lower()
    assert "truncated" in reasons["ee"]
    kept = pd.concat([pd.read_parquet(p) for p in sorted((out / "metadata").glob("*.parquet"))])
    assert sorted(kept["key"]) == ["a", "ccc", "d"]


def test_embed_refuses_an_empty_shard_in_one_line(tmp_path, capsys):
    (tmp_path / "000000.tar").write_bytes(b"")
    assert main(["embed", "--data", str(tmp_path / "000000.tar"), "--out", str(tmp_path / "emb"), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1  # besides the progress bar
    assert "000000.tar: not a readable tar shard (empty file)" in err


def test_training_pairs_leave_out_a_caption_that_is_not_utf8(tmp_path, caplog):
    from react_core.data import WebDatasetPairs

    _shard(tmp_path / "000000.tar", [("a", b"a red circle"), ("bb", b"caf\xe9"), ("ccc", b"a blue star")])
    pairs = WebDatasetPairs(str(tmp_path / "000000.tar"))
    assert pairs.captions == ["a red circle", "a blue star"]
    assert "1 samples left out, their caption or json is not UTF-8 text (e.g. bb)" in caplog.text
