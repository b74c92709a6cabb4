"""Storage faults outside retrieval: a text file that is not UTF-8, malformed JSON, a read-only or
full output disk. Each is one line naming the file (and the line), exit status 2, and nothing
half-written is left."""
from __future__ import annotations

import builtins
import errno
import os
import sys
from pathlib import Path

import pytest

from react_core.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "react_dense" / "lab" / "configs"
NOT_UTF8 = "caf\u00e9\n".encode("latin-1")  # 0xe9: Latin-1, not UTF-8


def _one_error_line(capsys, prog: str = "react") -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith(prog), err
    return err


def _bad_text(path: Path, good_lines: int = 2) -> Path:
    path.write_bytes(b"red circle\n" * good_lines + NOT_UTF8)
    return path


def test_a_config_that_is_not_utf8_is_one_line_naming_its_line(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_bytes(b"kind: customize\n# " + NOT_UTF8)
    assert main(["config", "show", str(config)]) == 2
    assert f"{config}, line 2: not UTF-8 text (byte 0xe9" in _one_error_line(capsys)
    child = tmp_path / "child.yaml"
    child.write_text(f"_base_: {config}\n")
    assert main(["customize", "--config", str(child), "--out", str(tmp_path / "run")]) == 2
    assert f"{config}, line 2: not UTF-8" in _one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_train_net_names_a_config_that_is_not_utf8(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from train_net import main as train_net
    finally:
        sys.path.pop(0)
    config = tmp_path / "bad.yaml"
    config.write_bytes(b"kind: detection\n" + NOT_UTF8)
    assert train_net(["--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert f"{config}, line 2: not UTF-8" in _one_error_line(capsys, "train_net")


def test_class_vocabulary_and_template_files_that_are_not_utf8(tmp_path, capsys):
    from react_core.modeling.text import VocabularyError, load_templates

    classes = _bad_text(tmp_path / "classes.txt")
    argv = ["eval", "zeroshot", "--classes", str(classes), "--images", str(tmp_path), "--out", str(tmp_path / "zs.json")]
    assert main(argv) == 2
    assert f"{classes}, line 3: not UTF-8" in _one_error_line(capsys)
    assert not (tmp_path / "zs.json").exists()

    vocabulary = _bad_text(tmp_path / "vocabulary.txt")
    detect = ["detect", "x.png", "--config", str(CONFIGS / "ovd_synthetic.yaml"), "--weights", "w.pth",
              "--vocabulary", str(vocabulary), "--out", str(tmp_path / "detect")]
    assert main(detect) == 2
    assert f"{vocabulary}, line 3: not UTF-8" in _one_error_line(capsys)
    segment = ["segment", "x.png", "--config", str(CONFIGS / "seg_synthetic.yaml"), "--set", "method=maskclip",
               "--vocabulary", str(vocabulary), "--out", str(tmp_path / "segment")]
    assert main(segment) == 2
    assert f"{vocabulary}, line 3: not UTF-8" in _one_error_line(capsys)
    assert not (tmp_path / "detect").exists() and not (tmp_path / "segment").exists()

    with pytest.raises(VocabularyError, match=r"templates.txt, line 1: not UTF-8"):
        load_templates(str(_bad_text(tmp_path / "templates.txt", good_lines=0)))


def test_malformed_json_inputs_name_the_file_and_line(tmp_path, capsys):
    from react_core.engine.caption_embeddings import EmbeddingFolderError, embeddings_from_folder
    from react_core.engine.pretrain import cached_pretrain
    from react_core.io import TextFileError
    from react_dense.detection.data import DatasetError, load_coco
    from react_dense.segmentation.data import SegmentationDataError, image_folder

    broken = '{\n  "categories": [\n    {"id": 1, "name": "cat"},\n  ]\n}\n'  # a trailing comma on line 3
    vocabulary = tmp_path / "vocabulary.json"
    vocabulary.write_text(broken)
    detect = ["detect", "x.png", "--config", str(CONFIGS / "ovd_synthetic.yaml"), "--weights", "w.pth",
              "--vocabulary", str(vocabulary), "--out", str(tmp_path / "detect")]
    assert main(detect) == 2
    assert f"{vocabulary}, line 4, column 3: not valid JSON" in _one_error_line(capsys)

    annotations = tmp_path / "val.json"
    annotations.write_text(broken)
    with pytest.raises(DatasetError, match=r"val.json, line 4, column 3: not valid JSON"):
        load_coco(annotations)
    (tmp_path / "classes.json").write_bytes(b'{"classes": ["' + NOT_UTF8[:-1] + b'"]}')
    with pytest.raises(SegmentationDataError, match=r"classes.json, line 1: not UTF-8"):
        image_folder(tmp_path, "val", None)
    (tmp_path / "embeddings.json").write_text("{")
    with pytest.raises(EmbeddingFolderError, match=r"embeddings.json, line 1, column 2: not valid JSON"):
        embeddings_from_folder(tmp_path, [], {})
    (tmp_path / "pretrain.json").write_text('{"cache_key": ')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(TextFileError, match=r"pretrain.json, line 1, column 15: not valid JSON"):
        cached_pretrain(tmp_path, "key")


def test_a_run_config_that_is_not_yaml_is_one_line(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("kind: detection\nmodel: [unclosed\n")
    argv = ["detect", "x.png", "--weights", str(tmp_path / "model_final.pth"), "--vocabulary", "cat", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert f"{tmp_path / 'config.yaml'}: not valid YAML" in _one_error_line(capsys)


@pytest.fixture
def read_only(monkeypatch):
    """`read_only(folder)`: the folder behaves as on a read-only disk (every write under it is
    refused with EROFS, as the system would), the rest of the file system as it is."""
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir
    frozen: list[Path] = []

    def refused(path) -> bool:
        try:
            resolved = Path(os.fsdecode(path)).resolve()
        except (TypeError, ValueError):
            return False
        return any(resolved == f or f in resolved.parents for f in frozen)

    def fail(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    def guarded_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") and refused(file):
            fail(file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and refused(path):
            fail(path)
        return real_os_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        if refused(path) and not os.path.exists(path):  # an existing folder is EEXIST, as on a real disk
            fail(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)
    return lambda folder: frozen.append(Path(folder).resolve())


def test_a_read_only_output_disk_is_one_line_naming_the_output(gated_towers, tmp_path, capsys, read_only):
    disk = tmp_path / "disk"
    disk.mkdir()
    read_only(disk)
    convert = ["convert", "--model", "react-tiny", str(gated_towers / "open.safetensors"), str(disk / "full.safetensors"),
               "--to", "full"]
    assert main(convert) == 2
    assert f"cannot write {disk / 'full.safetensors'}: Read-only file system" in _one_error_line(capsys)
    (tmp_path / "classes.txt").write_text("cat\n")
    zeroshot = ["eval", "zeroshot", "--classes", str(tmp_path / "classes.txt"), "--images", str(tmp_path), "--out",
                str(disk / "zs")]
    assert main(zeroshot) == 2
    assert f"cannot write {disk / 'zs'}: Read-only file system" in _one_error_line(capsys)
    assert list(disk.iterdir()) == []


def test_a_disk_that_fills_up_leaves_nothing_half_written(gated_towers, tmp_path, capsys, monkeypatch):
    """The disk fills while the converted file is written: one line naming it, no temporary file,
    and the file an earlier conversion wrote is whole."""
    import react_core.io

    out = tmp_path / "full.safetensors"
    convert = ["convert", "--model", "react-tiny", str(gated_towers / "open.safetensors"), str(out), "--to", "full"]
    assert main(convert) == 0
    whole = out.read_bytes()
    capsys.readouterr()
    real_replace = react_core.io.os.replace

    def full_disk(source, target):
        if Path(target) == out:
            with open(source, "r+b") as handle:  # what a writer stopped by the full disk leaves
                handle.truncate(len(whole) // 2)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(source, target)

    monkeypatch.setattr(react_core.io.os, "replace", full_disk)
    assert main([*convert, "--overwrite"]) == 2
    assert f"cannot write {out}: No space left on device" in _one_error_line(capsys)
    assert out.read_bytes() == whole
    assert sorted(p.name for p in tmp_path.iterdir()) == [".full.safetensors.react-run.json", "full.safetensors"]


def test_a_writer_that_reports_a_full_disk_in_its_own_words(tmp_path, monkeypatch):
    """torch.save says `RuntimeError: ... file write failed` on a full disk; with no space left
    in the folder, that is the disk's refusal, named as such."""
    import shutil

    import react_core.io
    from react_core.io import OutputError, atomic_path

    target = tmp_path / "checkpoint_last.pt"
    monkeypatch.setattr(react_core.io.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(OutputError, match=f"cannot write {target}: No space left on device"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: file write failed")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="unrelated"):  # with space left, a writer's own error stays its own
        with atomic_path(target):
            raise RuntimeError("unrelated")


def test_adapter_metadata_that_is_not_json_is_one_line(gated_towers, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import save_file

    source = gated_towers / "open.safetensors"
    with safe_open(str(source), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata()
    broken = tmp_path / "adapter.safetensors"
    save_file(tensors, str(broken), metadata={**metadata, "gated_layers": "[5,"})
    argv = ["eval", "zeroshot", "--weights", str(broken), "--classes", str(tmp_path / "c.txt"), "--images", str(tmp_path),
            "--out", str(tmp_path / "zs.json")]
    (tmp_path / "c.txt").write_text("cat\n")
    assert main(argv) == 2
    assert f"{broken}: adapter metadata is incomplete or malformed" in _one_error_line(capsys)
    assert not (tmp_path / "zs.json").exists()
