"""Storage faults around `react index` and the index folders `react retrieve` reads: each is one
line naming the file and exit status 2, and `react index` leaves nothing half-written."""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from react_core.cli import main
from react_core.retrieval.ann import IndexBuildError, read_index, search
from test_index_build import write_folder

ROOT = Path(__file__).resolve().parents[1]


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def micro(retrieval_corpus, tmp_path_factory):
    """The retrieval corpus embedded by a saved micro CLIP, and a Flat image index of it."""
    from react_core.modeling import load_clip, save_full
    from react_core.retrieval.embed import embed_corpus
    from test_retrieval_pipeline import MICRO

    root = tmp_path_factory.mktemp("faults")
    weights = save_full(load_clip(MICRO).model, root / "micro.safetensors")
    embed_corpus(load_clip(MICRO, weights=weights), retrieval_corpus, root / "emb", workers=0, progress=False)
    assert main(["index", "--emb", str(root / "emb"), "--kind", "image", "--out", str(root / "image")]) == 0
    return root


def retrieve(micro, tiny_world, index_dir, out):
    return main(["retrieve", "--index", str(index_dir), "--emb", str(micro / "emb"), "--classes",
                 str(tiny_world / "task" / "classes.txt"), "--templates", "simple", "--k", "5", "--out", str(out)])


def damaged_copy(micro, tmp_path) -> Path:
    copy = tmp_path / "image"
    shutil.copytree(micro / "image", copy)
    return copy


@pytest.mark.parametrize("damage, expected", [
    ("empty", "empty file"),
    ("truncated", "truncated or damaged"),
    ("random", "truncated or damaged"),
])
def test_a_damaged_index_faiss_is_one_line(micro, tiny_world, tmp_path, capsys, damage, expected):
    index_dir = damaged_copy(micro, tmp_path)
    path = index_dir / "index.faiss"
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "random": os.urandom(len(data))}[damage])
    assert retrieve(micro, tiny_world, index_dir, tmp_path / "out") == 2
    err = one_line(capsys)
    assert str(path) in err and expected in err
    assert not (tmp_path / "out" / "subset.parquet").exists()


@pytest.mark.parametrize("text, expected", [
    ('{"factory": "Flat", "kind": ', "line 1, column 29: not valid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    ('["Flat"]', "expected a JSON object"),
    ('{"factory": "Flat", "kind": "image", "ntotal": 89}', "key 'dim' missing"),
])
def test_a_malformed_index_json_is_one_line(micro, tiny_world, tmp_path, capsys, text, expected):
    index_dir = damaged_copy(micro, tmp_path)
    path = index_dir / "index.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert retrieve(micro, tiny_world, index_dir, tmp_path / "out") == 2
    err = one_line(capsys)
    assert str(path) in err and expected in err


def test_an_index_of_another_dimension_than_its_index_json_is_one_line(micro, tiny_world, tmp_path, capsys):
    index_dir = damaged_copy(micro, tmp_path)
    info = json.loads((index_dir / "index.json").read_text())
    other = faiss.IndexFlatIP(info["dim"] * 2)
    other.add(np.zeros((info["ntotal"], info["dim"] * 2), dtype=np.float32))
    faiss.write_index(other, str(index_dir / "index.faiss"))
    assert retrieve(micro, tiny_world, index_dir, tmp_path / "out") == 2
    err = one_line(capsys)
    assert str(index_dir / "index.faiss") in err and f"dimension {info['dim'] * 2}" in err and "index.json" in err


def test_an_index_of_another_dimension_than_the_queries_is_one_line(micro, tiny_world, tmp_path, capsys):
    """index.faiss and index.json agree with each other, not with the embeddings (and so the
    queries of their model): `react retrieve` says so naming the index; `search` itself, given
    queries of another dimension, names the file it read the index from."""
    index_dir = damaged_copy(micro, tmp_path)
    info = json.loads((index_dir / "index.json").read_text())
    other = faiss.IndexFlatIP(info["dim"] * 2)
    other.add(np.zeros((info["ntotal"], info["dim"] * 2), dtype=np.float32))
    faiss.write_index(other, str(index_dir / "index.faiss"))
    (index_dir / "index.json").write_text(json.dumps({**info, "dim": info["dim"] * 2}))
    assert retrieve(micro, tiny_world, index_dir, tmp_path / "out") == 2
    err = one_line(capsys)
    assert str(index_dir / "index.faiss") in err and f"are {info['dim']}-dimensional" in err
    index = read_index(index_dir)
    with pytest.raises(IndexBuildError, match=f"{index_dir / 'index.faiss'}.*queries are {info['dim']}-dimensional"):
        search(index, np.zeros((3, info["dim"]), dtype=np.float32), 5)


def test_a_truncated_ivfdata_is_one_line_not_a_crash(tmp_path, capsys):
    queries = write_folder(tmp_path / "emb")
    assert main(["index", "--emb", str(tmp_path / "emb"), "--out", str(tmp_path / "index"), "--factory", "IVF16,Flat",
                 "--on-disk", "--k", "10"]) == 0
    capsys.readouterr()
    data = tmp_path / "index" / "index.ivfdata"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
    with pytest.raises(IndexBuildError, match=f"{data}.*truncated"):
        search(read_index(tmp_path / "index"), queries, 10)


# --------------------------------------------------------------------------------------------
# The embedding folder, checked before building


def error_line(err: str, command: str = "index") -> str:
    """The one error line, on a line of its own (a progress bar may stand above it)."""
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"react {command}: error: "), err
    return lines[0]


def _index(tmp_path, capsys, *extra) -> str:
    status = main(["index", "--emb", str(tmp_path / "emb"), "--out", str(tmp_path / "index"), "--factory", "Flat", *extra])
    assert status == 2
    err = error_line(capsys.readouterr().err)
    assert not (tmp_path / "index" / "index.faiss").exists() and not (tmp_path / "index" / "index.json").exists()
    return err


def test_rows_that_do_not_match_the_metadata_are_named(tmp_path, capsys):
    write_folder(tmp_path / "emb")
    path = tmp_path / "emb" / "img_emb" / "img_emb_1.npy"
    np.save(path, np.load(path)[:-5])
    err = _index(tmp_path, capsys)
    assert str(path) in err and "1995 embeddings for 2000 rows" in err and "metadata_1.parquet" in err


def test_arrays_of_another_dimension_than_embeddings_json_are_named(tmp_path, capsys):
    write_folder(tmp_path / "emb")
    path = tmp_path / "emb" / "img_emb" / "img_emb_2.npy"
    np.save(path, np.zeros((2000, 64), dtype=np.float16))
    err = _index(tmp_path, capsys)
    assert str(path) in err and "64-dimensional embeddings where embeddings.json says 32" in err


@pytest.mark.parametrize("damage, expected", [
    ("truncated", "truncated or damaged"),
    ("random", "not a .npy array"),
    ("pickled", "expected a C-ordered 2-D float16 or float32 array, found object"),
])
def test_unreadable_arrays_are_named(tmp_path, capsys, damage, expected):
    write_folder(tmp_path / "emb")
    path = tmp_path / "emb" / "img_emb" / "img_emb_0.npy"
    data = path.read_bytes()
    if damage == "pickled":
        np.save(path, np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    else:
        path.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(len(data)))
    err = _index(tmp_path, capsys)
    assert str(path) in err and expected in err


def test_embeddings_that_are_not_finite_are_named_with_their_row(tmp_path, capsys):
    write_folder(tmp_path / "emb")
    path = tmp_path / "emb" / "img_emb" / "img_emb_1.npy"
    array = np.load(path)
    array[7, 3] = np.nan
    np.save(path, array)
    err = _index(tmp_path, capsys)
    assert str(path) in err and "row 7 (global row 2007)" in err


# --------------------------------------------------------------------------------------------
# The output disk


def _react_index_subprocess(emb: Path, out: Path, preexec) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1", OMP_WAIT_POLICY="PASSIVE")
    return subprocess.run([sys.executable, "-m", "react_core", "index", "--emb", str(emb), "--out", str(out),
                           "--factory", "Flat"], capture_output=True, text=True, env=env, preexec_fn=preexec, timeout=300)


def _read_only(folder: Path):
    """A preexec function that makes `folder` a read-only mount in the child's own mount namespace
    (root writes through permission bits; a read-only file system stops it), or None where only
    the permission bits are needed; skips where neither can be had."""
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    new_namespace, recursive, private, bind, remount, read_only = 0x20000, 1 << 14, 1 << 18, 4096, 32, 1
    path = str(folder).encode()

    def mount_read_only():
        steps = ((libc.unshare, (new_namespace,)), (libc.mount, (None, b"/", None, recursive | private, None)),
                 (libc.mount, (path, path, None, bind, None)), (libc.mount, (None, path, None, bind | remount | read_only, None)))
        for call, arguments in steps:
            if call(*arguments) != 0:
                raise OSError(ctypes.get_errno(), "mount namespace")

    probe = subprocess.run(["true"], preexec_fn=mount_read_only, capture_output=True)
    if probe.returncode != 0:
        pytest.skip("root writes through permission bits and this machine gives no private mount namespace")
    return mount_read_only


def test_a_read_only_out_is_one_line_and_nothing_is_written(tmp_path):
    write_folder(tmp_path / "emb")
    out = tmp_path / "index"
    out.mkdir()
    try:
        done = _react_index_subprocess(tmp_path / "emb", out, _read_only(out))
    except subprocess.SubprocessError:
        pytest.skip("no private mount namespace here")
    finally:
        os.chmod(out, 0o755)
    assert done.returncode == 2, done.stderr
    line = error_line(done.stderr)
    assert str(out) in line and "cannot write" in line and ("Read-only" in line or "Permission" in line)
    assert list(out.iterdir()) == []


def test_a_full_disk_is_one_line_and_nothing_half_written_is_left(tmp_path):
    """A file size limit (RLIMIT_FSIZE, the signal it raises ignored) makes the write of
    index.faiss fail part way, as a full disk does: one line naming the file, exit status 2, no
    index.faiss, no temporary file, no index.json: the output folder it made is gone."""
    write_folder(tmp_path / "emb")  # a 768 kB Flat index; the limit stops it at 64 kB

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    done = _react_index_subprocess(tmp_path / "emb", tmp_path / "index", limited)
    assert done.returncode == 2, done.stderr
    line = error_line(done.stderr)
    assert f"{tmp_path / 'index' / 'index.faiss'}: cannot write (File too large)" in line
    assert not (tmp_path / "index").exists()  # the folder the run made is removed with what it held
