"""No silent loss of results: an output belongs to one run, one process at a time; another run's
results are replaced only with --overwrite."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from react_core.cli import main
from react_core.outputs import LOCK_FILE, OutputRefusedError, claim_file, claim_output, settings_hashes

ROOT = Path(__file__).resolve().parents[1]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


A = {"model": "base.safetensors", "train": {"lr": 1e-3}}
B = {"model": "base.safetensors", "train": {"lr": 1e-2}}


def test_the_same_run_comes_back_another_is_refused_and_overwrite_replaces_it(tmp_path):
    out = tmp_path / "run"
    with claim_output(out, "react customize", A):
        (out / "metrics.json").write_text("{}")
    with claim_output(out, "react customize", A):  # the same run: resume, or run again
        pass
    for command, settings, held in (("react customize", B, "different run (differs in: train), `react customize`"),
                                    ("react detect", A, "different run, `react customize`")):
        with pytest.raises(OutputRefusedError, match="--overwrite to replace them") as refused:
            with claim_output(out, command, settings):
                pytest.fail("a refused run must not start")
        assert f"{out} holds the results of a {held}" in str(refused.value)
    assert (out / "metrics.json").read_text() == "{}"
    with claim_output(out, "react detect", A, overwrite=True):
        assert not (out / "metrics.json").exists()  # the earlier run's results are gone before this one writes
    with claim_output(out, "react detect", A):
        pass


def test_a_run_that_fails_before_writing_leaves_no_trace(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyError):
        with claim_output(out, "react customize", A):
            raise KeyError("a bad input, found before anything was written")
    assert not out.exists()
    with claim_output(out, "react detect", B):  # so another run may take the folder
        (out / "detections.json").write_text("[]")
    with pytest.raises(KeyError):
        with claim_output(out, "react detect", B):
            raise KeyError("a failure after the first run wrote its results")
    assert sorted(p.name for p in out.iterdir()) == [".react-run.json", "detections.json"]


def test_a_folder_no_run_recorded_is_refused_and_never_deleted_from(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(b"mine")
    with pytest.raises(OutputRefusedError, match="files that no react run recorded: pass --overwrite to write there anyway"):
        with claim_output(tmp_path, "react detect", A):
            pass
    with claim_output(tmp_path, "react detect", A, overwrite=True):
        pass
    assert (tmp_path / "photo.jpg").read_bytes() == b"mine"


def test_overwrite_never_deletes_the_working_directory(tmp_path, monkeypatch):
    with claim_output(tmp_path, "react customize", A):
        (tmp_path / "adapter.safetensors").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputRefusedError, match="holds the working directory"):
        with claim_output(".", "react customize", B, overwrite=True):
            pass
    assert (tmp_path / "adapter.safetensors").exists()


def test_the_settings_are_the_same_from_any_working_directory(tmp_path, monkeypatch):
    (tmp_path / "world").mkdir()
    (tmp_path / "world" / "base.safetensors").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    here = settings_hashes({"weights": "world/base.safetensors"})
    monkeypatch.chdir(tmp_path / "world")
    assert settings_hashes({"weights": "base.safetensors"}) == here
    assert settings_hashes({"weights": "other.safetensors"}) != here


_HOLDER = textwrap.dedent("""
    import sys, time
    from react_core.outputs import claim_output
    with claim_output(sys.argv[1], "react customize", {}):
        print("held", flush=True)
        time.sleep(60)
""")


def test_a_second_run_on_one_output_names_the_holders_pid(tmp_path, capsys):
    out = tmp_path / "metrics.json"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = ["eval", "zeroshot", "--classes", str(tmp_path / "none.txt"), "--images", str(tmp_path), "--out", str(tmp_path)]
        (tmp_path / "none.txt").write_text("cat\n")
        assert main(argv) == 2
        err = _one_error_line(capsys)
        assert f"{tmp_path} is in use by another run (pid {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    assert not out.exists()


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_FILE).write_text(f"{dead.pid}\n")  # what a run killed with -9 leaves
    with claim_output(tmp_path, "react customize", A):
        assert (tmp_path / LOCK_FILE).read_text().split() == [str(os.getpid())]
    assert not (tmp_path / LOCK_FILE).exists()


def test_one_process_cannot_hold_an_output_twice(tmp_path):
    with claim_output(tmp_path, "react customize", A):
        with pytest.raises(OutputRefusedError, match=f"pid {os.getpid()}"):
            with claim_output(tmp_path, "react customize", A):
                pass


def test_a_file_output_is_replaced_by_the_same_run_only(tmp_path):
    path = tmp_path / "zeroshot.json"
    with claim_file(path, "react eval zeroshot", A):
        path.write_text("{}")
    with claim_file(path, "react eval zeroshot", A):
        pass
    with pytest.raises(OutputRefusedError, match=r"exists and holds the results of a different run \(differs in: train\)"):
        with claim_file(path, "react eval zeroshot", B):
            pass
    with claim_file(path, "react eval zeroshot", B, overwrite=True):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [".zeroshot.json.react-run.json", "zeroshot.json"]


def test_convert_refuses_an_existing_out_of_another_conversion(gated_towers, tmp_path, capsys):
    out = tmp_path / "full.safetensors"
    convert = ["convert", "--model", "react-tiny", "--to", "full"]
    assert main([*convert, str(gated_towers / "open.safetensors"), str(out)]) == 0
    written = out.read_bytes()
    capsys.readouterr()
    assert main([*convert, str(gated_towers / "closed.safetensors"), str(out)]) == 2
    assert f"{out} exists and holds the results of a different run (differs in: input), `react convert`" in _one_error_line(capsys)
    assert out.read_bytes() == written
    assert main([*convert, str(gated_towers / "closed.safetensors"), str(out), "--overwrite"]) == 0
    assert out.read_bytes() != written


def test_eval_into_another_commands_folder_is_refused(gated_towers, tmp_path, capsys):
    folder = tmp_path / "customize"
    with claim_output(folder, "react customize", A):
        (folder / "metrics.json").write_text(json.dumps({"zeroshot_top1_after": 50.0}))
    (tmp_path / "classes.txt").write_text("cat\n")
    argv = ["eval", "zeroshot", "--weights", str(gated_towers / "open.safetensors"), "--classes", str(tmp_path / "classes.txt"),
            "--images", str(tmp_path), "--out", str(folder)]
    assert main(argv) == 2
    assert "holds the results of a different run, `react customize`" in _one_error_line(capsys)
    assert json.loads((folder / "metrics.json").read_text()) == {"zeroshot_top1_after": 50.0}


def test_an_interrupted_pretrain_leaves_no_weights_under_the_final_name(tiny_world, tmp_path, monkeypatch):
    from react_core.config import load
    from react_core.engine.config import PretrainConfig
    from react_core.engine.pretrain import MODEL_FILE, pretrain
    from react_core.engine.runner import CHECKPOINT_NAME, SafeRunner
    from react_dense.lab.base import PRETRAIN_CONFIG

    checkpoint = SafeRunner.save_checkpoint

    def killed_after_the_first_checkpoint(self, *args, **kwargs):
        checkpoint(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(SafeRunner, "save_checkpoint", killed_after_the_first_checkpoint)
    settings = {"vars.world": str(tiny_world), "data.batch_size": 16, "data.workers": 0, "train.max_iters": 4,
                "train.warmup_iters": 1, "train.checkpoint_interval": 2, "eval": None, "generic_eval": None}
    with pytest.raises(KeyboardInterrupt):
        pretrain(load(PRETRAIN_CONFIG, settings, schema=PretrainConfig), tmp_path)
    assert (tmp_path / CHECKPOINT_NAME).is_file() and not (tmp_path / MODEL_FILE).exists()


_FORKING_HOLDER = textwrap.dedent("""
    import os, sys, time
    from react_core.outputs import claim_output
    with claim_output(sys.argv[1], "react customize", {}):
        if os.fork() == 0:  # a data-loader worker outlives its killed parent for a while
            time.sleep(60)
            os._exit(0)
        print("held", flush=True)
        time.sleep(60)
""")


def test_a_killed_runs_output_is_free_while_its_forked_workers_live_on(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _FORKING_HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    with claim_output(tmp_path, "react customize", {}):
        assert (tmp_path / LOCK_FILE).read_text().split() == [str(os.getpid())]
