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
