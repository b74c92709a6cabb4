"""Storage faults on the corpus side: damaged arrays, bad embeddings.json, text files that are not
UTF-8, an output that cannot be written: one line naming the file, exit status 2, nothing
half-written, never a pickle loaded. And text from the corpus shown, never obeyed."""
from __future__ import annotations

import errno
import html
import json
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from react_core.cli import main
from react_core.modeling import load_clip, save_full
from react_core.retrieval.embed import embed_corpus

MICRO = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def built(retrieval_corpus, tiny_world, tmp_path_factory):
    """An embedding folder of a saved micro CLIP, its exact image index and a retrieved subset."""
    root = tmp_path_factory.mktemp("faults")
    weights = save_full(load_clip(MICRO).model, root / "micro.safetensors")
    embed_corpus(load_clip(MICRO, weights=weights), retrieval_corpus, root / "emb", workers=0, progress=False)
    assert main(["index", "--emb", str(root / "emb"), "--kind", "image", "--out", str(root / "image"), "--factory", "Flat"]) == 0
    assert main(retrieve_argv(root, root / "emb", tiny_world, root / "subset")) == 0
    return root


def retrieve_argv(root, emb, tiny_world, out, classes=None, templates="simple"):
    return ["retrieve", "--index", str(root / "image"), "--emb", str(emb), "--classes",
            str(classes or tiny_world / "task" / "classes.txt"), "--templates", templates, "--k", "10", "--no-dedup",
            "--out", str(out)]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


class _Payload:
    """Unpickling this creates a file: the proof that nothing was unpickled is that it does not exist."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _damaged_copy(built, tmp_path, damage):
    emb = tmp_path / "emb"
    shutil.copytree(built / "emb", emb)
    damage(emb)
    return emb


@pytest.mark.parametrize("fault", ["truncated", "pickle", "other_dim", "empty"])
def test_damaged_embedding_array_is_one_line_naming_it(built, tiny_world, tmp_path, capsys, fault):
    marker = tmp_path / "unpickled"
    target = "img_emb/img_emb_1.npy"

    def damage(emb):
        path = emb / target
        if fault == "truncated":
            path.write_bytes(path.read_bytes()[:-100])
        elif fault == "pickle":
            path.write_bytes(pickle.dumps(_Payload(marker)))
        elif fault == "other_dim":
            np.save(path, np.zeros((29, 256), dtype=np.float16))
        else:
            path.write_bytes(b"")

    emb = _damaged_copy(built, tmp_path, damage)
    capsys.readouterr()
    assert main(retrieve_argv(built, emb, tiny_world, tmp_path / "subset")) == 2
    err = one_line_error(capsys)
    assert f"{emb / target}:" in err
    expected = {"truncated": "truncated or damaged", "pickle": "not a .npy array", "other_dim":
                "256-dimensional embeddings where embeddings.json says 32", "empty": "not a .npy array"}[fault]
    assert expected in err
    assert not marker.exists() and not (tmp_path / "subset").exists()


def test_damaged_caption_array_is_named_when_indexed(built, tmp_path, capsys):
    emb = _damaged_copy(built, tmp_path, lambda e: (e / "text_emb" / "text_emb_2.npy").write_bytes(b"\x93NUMPY garbage"))
    assert main(["index", "--emb", str(emb), "--kind", "text", "--out", str(tmp_path / "text"), "--factory", "Flat"]) == 2
    assert f"{emb / 'text_emb' / 'text_emb_2.npy'}: not a .npy array" in one_line_error(capsys)


@pytest.mark.parametrize("content,expected", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object, found list"),
    (b'{"dim": "32"}', "'dim' must be a JSON int"),
    (b'{"caf\xe9": 1}', "line 1: not UTF-8 text"),
])
def test_malformed_embeddings_json_is_one_line_naming_it(built, tiny_world, tmp_path, capsys, content, expected):
    emb = _damaged_copy(built, tmp_path, lambda e: (e / "embeddings.json").write_bytes(content))
    capsys.readouterr()
    assert main(retrieve_argv(built, emb, tiny_world, tmp_path / "subset")) == 2
    err = one_line_error(capsys)
    assert f"error: {emb / 'embeddings.json'}" in err and expected in err


@pytest.mark.parametrize("which", ["classes", "templates"])
def test_text_file_that_is_not_utf8_names_file_and_line(built, tiny_world, tmp_path, capsys, which):
    bad = tmp_path / f"{which}.txt"
    good = "a photo of a {}.\n" if which == "templates" else "red disc\n"
    bad.write_bytes(good.encode() * 2 + b"caf\xe9 {}\n")
    argv = retrieve_argv(built, built / "emb", tiny_world, tmp_path / "subset",
                         classes=bad if which == "classes" else None, templates=str(bad) if which == "templates" else "simple")
    capsys.readouterr()
    assert main(argv) == 2
    assert f"{bad}, line 3: not UTF-8 text (byte 0xe9 at column 4)" in one_line_error(capsys)


@pytest.mark.parametrize("fault", [(errno.EROFS, "Read-only file system"), (errno.ENOSPC, "No space left on device")])
def test_unwritable_export_is_one_line_and_leaves_nothing_half_written(built, tmp_path, capsys, monkeypatch, fault):
    """A read-only --out fails where the first file is created, a full disk where a shard's bytes
    are written (simulated: as root, permissions do not stop writes, and no tiny filesystem is at hand)."""
    out = tmp_path / "export"
    if fault[0] == errno.EROFS:
        def refuse(*args, **kwargs):
            raise OSError(fault[0], fault[1])
        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    else:
        real = Path.write_bytes

        def full(self, data):
            real(self, data[: len(data) // 2])  # the disk fills up halfway through the shard
            raise OSError(fault[0], fault[1])
        monkeypatch.setattr(Path, "write_bytes", full)
    capsys.readouterr()
    assert main(["export", str(built / "subset"), "--out", str(out), "--shard-size", "5"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress bar, on a line of its own
    # the first file written names itself: the output's run record on a read-only disk, the shard on a full one
    first = ".react-run.json" if fault[0] == errno.EROFS else "shards/000000.tar"
    assert err == f"react export: error: cannot write {out}/{first}: {fault[1]}"
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) if out.exists() else []
    assert set(left) <= {".react-run.json"}, left  # neither a temporary file nor a partial shard, manifest or listing


def test_report_links_only_web_urls_and_shows_control_characters(tmp_path):
    from PIL import Image

    from react_core.retrieval.report import web_link

    image = tmp_path / "0.png"
    Image.new("RGB", (8, 8)).save(image)
    captions = ["plain \x1b[31mred\x1b[0m text", "right-to-left \u202egnp.exe", "line\nbreak"]
    urls = ["javascript:alert(document.cookie)", "https://example.com/a?b=<c>", "data:text/html,<script>x</script>"]
    subset = pd.DataFrame({"id": ["0", "1", "2"], "class": ["c\x07at"] * 3, "score": [0.9, 0.8, 0.7], "rank": [0, 1, 2],
                           "caption": captions, "url": urls, "path": [str(image)] * 3})
    (tmp_path / "subset").mkdir()
    subset.to_parquet(tmp_path / "subset" / "subset.parquet")
    assert main(["report", str(tmp_path / "subset"), "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("<a href=") == 1 and '<a href="https://example.com/a?b=&lt;c&gt;"' in page
    assert "javascript:alert(document.cookie)" in page and 'href="javascript' not in page and "<script>" not in page
    assert "plain \\x1b[31mred\\x1b[0m text" in page and "\x1b" not in page
    assert "\\u202egnp.exe" in page and "\u202e" not in page and "line\\nbreak" in page
    assert f"<h3>{html.escape('c' + chr(92) + 'x07at')} " in page
    assert pd.read_parquet(tmp_path / "subset" / "subset.parquet")["caption"].tolist() == captions  # stored as it was
    assert web_link(" HTTPS://example.com/x") == "HTTPS://example.com/x"
    assert [web_link(u) for u in ("JaVaScRiPt:alert(1)", "http:///no-host", "ftp://example.com/x", "https://a.b/\x1b", None)] \
        == [None] * 5


def test_embedded_captions_keep_their_text_and_terminal_lines_escape_it(retrieval_corpus, tmp_path, capsys):
    """The stored metadata keeps a caption's control characters; what a command prints escapes them."""
    import io
    import tarfile

    from react_core.console import printable
    from react_core.data.images import index_shard

    source = sorted(retrieval_corpus.glob("*.tar"))[0]
    entries = list(index_shard(source).items())[:3]
    caption = "evil \x1b]0;title\x07 caption"
    with open(source, "rb") as handle, tarfile.open(tmp_path / "000000.tar", "w") as tar:
        for position, (key, entry) in enumerate(entries):
            handle.seek(entry["jpg"].offset)
            image = handle.read(entry["jpg"].size) if position else b"broken \x1b[2J"
            for name, data in ((f"{key}.jpg", image), (f"{key}.txt", caption.encode()),
                               (f"{key}.json", json.dumps({"id": f"id\x1b[2J{position}"}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    assert main(["embed", "--model", "react-tiny", "--data", str(tmp_path / "000000.tar"), "--out", str(tmp_path / "emb"),
                 "--workers", "0"]) == 0
    metadata = pd.read_parquet(tmp_path / "emb" / "metadata" / "metadata_0.parquet")
    assert metadata["caption"].tolist() == [caption, caption]
    out = capsys.readouterr().out
    assert "id id\\x1b[2J0:" in out and "\x1b" not in out
    assert printable("tab\there \u2028 ok é 猫") == "tab\\there \\u2028 ok é 猫"


def test_class_names_are_encoded_under_a_progress_bar(monkeypatch):
    import tqdm

    from react_core.retrieval.classes import ClassSpec, build_queries

    bars = []

    class Recorder(tqdm.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)
            self.updates = []

        def update(self, n=1):
            self.updates.append(n)
            return super().update(n)

    monkeypatch.setattr(tqdm, "tqdm", Recorder)
    classes = [ClassSpec(f"class {i}", [f"class {i}", f"synonym {i}"]) for i in range(150)]
    queries = build_queries(load_clip(MICRO), classes, ["a {}.", "the {}.", "{}"], batch_size=8, progress=True)
    assert len(queries.texts) == 150 * 2 * 3
    (bar,) = [b for b in bars if b.desc == "encode class names"]
    assert bar.total == 300 and sum(bar.updates) == 300 and len(bar.updates) == 8  # 42 names (16 batches of texts) a step


def test_read_only_retrieve_out_is_one_line_and_writes_nothing(built, tiny_world, tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    capsys.readouterr()
    assert main(retrieve_argv(built, built / "emb", tiny_world, tmp_path / "subset")) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the class-encoding bar, when the machine was slow enough to show it
    assert err == f"react retrieve: error: cannot write {tmp_path / 'subset' / '.react-run.json'}: Read-only file system"
    assert not (tmp_path / "subset").exists()  # the folder the run made is gone with it
