"""Kill -9 between checkpoints, then resume: every trainer ends with the tensors of an uninterrupted
run. Each test starts the command as a real subprocess, SIGKILLs it once its first checkpoint is
written and at least one later iteration is done (work that is lost and redone), resumes it, and
compares every tensor of the final weights with those of the same command run without a kill."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from react_core.engine.runner import CHECKPOINT_NAME, LOG_NAME
from test_dense_detector import scenes  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "react_dense" / "lab" / "configs"
DEADLINE_S = 600  # a stuck child fails the test instead of hanging the suite
# five iterations, a checkpoint every two: killed once iteration 3 is logged, so after the
# checkpoint of iteration 2 and before (or just after) that of iteration 4
SCHEDULE = ["train.max_iters=5", "train.checkpoint_interval=2", "train.log_interval=1", "train.warmup_iters=2"]
KILL_AFTER = 3


def _start(argv: list[str], out: Path) -> subprocess.Popen:
    """`python ARGV` from the repository root, its output in OUT.stderr beside `out`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    log = open(out.parent / f"{out.name}.stderr", "w")
    process = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=log, stderr=log)
    log.close()
    return process


def _finish(process: subprocess.Popen, out: Path) -> None:
    process.wait(timeout=DEADLINE_S)
    assert process.returncode == 0, (out.parent / f"{out.name}.stderr").read_text()[-3000:]


def _runner_progress(out: Path) -> int:
    """Iterations done, from the log of our Runner (one line per iteration at log_interval=1)."""
    log = out / LOG_NAME
    return max((int(part.split("/")[0]) for part in log.read_text().split("iter ")[1:]), default=0) if log.is_file() else 0


def _runner_checkpoint(out: Path) -> tuple[int, dict] | None:
    """(iterations done, trained tensors) of our Runner's checkpoint in `out`, if there is one."""
    if not (out / CHECKPOINT_NAME).is_file():
        return None
    left = torch.load(out / CHECKPOINT_NAME, weights_only=True)
    return left["meta"]["iter"], left["state_dict"]


def _kill_between_checkpoints(process: subprocess.Popen, out: Path, progress=_runner_progress,
                              checkpoint=_runner_checkpoint, written: str = CHECKPOINT_NAME) -> tuple[int, dict]:
    """SIGKILL `process` once `out` holds its checkpoint file `written` and `progress(out)` shows
    iteration KILL_AFTER done; returns what `checkpoint(out)` finds then."""
    deadline = time.monotonic() + DEADLINE_S
    while not ((out / written).is_file() and progress(out) >= KILL_AFTER):
        assert process.poll() is None, f"ended before it could be killed: {(out.parent / f'{out.name}.stderr').read_text()[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    reached, left = checkpoint(out)
    assert 2 <= reached < 5, "killed between checkpoints, before the last"
    return reached, left


def _killed_and_whole(argv: list[str], tmp_path: Path, **engine) -> tuple[Path, Path, int, dict]:
    """Runs `argv` into tmp/whole to the end and into tmp/killed until SIGKILL, side by side;
    returns both folders, and the iteration and trained tensors the killed run's checkpoint holds."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    uninterrupted = _start([*argv, "--out", str(whole)], whole)
    interrupted = _start([*argv, "--out", str(killed)], killed)
    reached, left = _kill_between_checkpoints(interrupted, killed, **engine)
    _finish(uninterrupted, whole)
    return whole, killed, reached, left


def _assert_resumed_at(out: Path, reached: int) -> None:
    assert f"resumed from {out / CHECKPOINT_NAME} at iteration {reached}" in (out / LOG_NAME).read_text()


def _assert_equal_tensors(expected: dict, got: dict, left: dict, prefix: str) -> None:
    """Every tensor of `got` equal to `expected`'s; and some differ from `left`, the killed run's
    checkpoint (its names are the final file's behind `prefix`), so training went on after it."""
    assert expected.keys() == got.keys()
    unequal = [key for key in expected if not torch.equal(expected[key], got[key])]
    assert not unequal, f"{len(unequal)} of {len(expected)} tensors differ, first {unequal[:3]}"
    left = {key[len(prefix):]: value for key, value in left.items() if key.startswith(prefix)}
    assert left.keys() & got.keys() and any(not torch.equal(left[key], got[key]) for key in left.keys() & got.keys())


def _train_net_refuses_an_unfinished_out(argv: list[str], out: Path, capsys, checkpoint: str = CHECKPOINT_NAME) -> None:
    """tools/train_net.py without --resume on the killed run's --out: one line naming --resume,
    exit status 2, the checkpoint as it was."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from train_net import main
    finally:
        sys.path.pop(0)
    before = (out / checkpoint).read_bytes()
    capsys.readouterr()
    assert main([*argv[1:], "--out", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and "unfinished run" in errors[0] and "--resume" in errors[0], errors
    assert (out / checkpoint).read_bytes() == before


def _dense_final(out: Path) -> dict:
    return torch.load(out / "model_final.pth", weights_only=True)["model"]


def test_torchvision_detection_resumes_to_the_uninterrupted_weights(scenes, tmp_path, capsys):  # noqa: F811
    argv = ["tools/train_net.py", "--config", str(CONFIGS / "ovd_synthetic.yaml"), f"vars.world={scenes}", "model.weights=null",
            *SCHEDULE, "train.batch_size=2", "data.num_workers=0", "data.hflip=true", "detector.min_size=64", "detector.max_size=64",
            "detector.masks=false", "detector.box_head_dim=64", "detector.roi_batch_size=32", "backbone.out_channels=32"]
    whole, killed, reached, left = _killed_and_whole(argv, tmp_path)
    assert not (killed / "model_final.pth").exists() and not (killed / "metrics.json").exists()
    _train_net_refuses_an_unfinished_out(argv, killed, capsys)
    _finish(_start([*argv, "--out", str(killed), "--resume"], killed), killed)
    _assert_resumed_at(killed, reached)
    _assert_equal_tensors(_dense_final(whole), _dense_final(killed), left, "net.")
    assert json.loads((killed / "metrics.json").read_text()) == json.loads((whole / "metrics.json").read_text())


SEGMENTATION = ["tools/train_net.py", "--config", str(CONFIGS / "seg_synthetic.yaml"), "model.weights=null", *SCHEDULE,
                "train.batch_size=2", "train.crop_size=64", "train.num_workers=2", "test.batch_size=4", "test_data.0.max_images=2",
                "backbone.out_channels=16", "head.decoder_channels=16"]


def test_plain_segmentation_resumes_to_the_uninterrupted_weights(tiny_world, tmp_path, capsys):
    argv = [*SEGMENTATION, f"vars.world={tiny_world}"]
    whole, killed, reached, left = _killed_and_whole(argv, tmp_path)
    assert not (killed / "model_final.pth").exists()
    _train_net_refuses_an_unfinished_out(argv, killed, capsys)
    _finish(_start([*argv, "--out", str(killed), "--resume"], killed), killed)
    _assert_resumed_at(killed, reached)
    _assert_equal_tensors(_dense_final(whole), _dense_final(killed), left, "net.")


def test_customize_resumes_to_the_uninterrupted_adapter_and_never_names_an_intermediate_one(tiny_world, gated_towers, tmp_path):
    """Dense-aware gated-image customization with timm's augmentation in two loader workers:
    the sample seeds, the objective's box generator and the optimizer all have to continue."""
    argv = ["-m", "react_core", "customize", "--config", str(CONFIGS / "customize_dense.yaml"), f"vars.world={tiny_world}",
            f"model.weights={gated_towers / 'base.safetensors'}", *SCHEDULE, "data.batch_size=8", "data.workers=2",
            "data.augmentation=official", "dense.images=4", "eval=null", "generic_eval=null"]
    whole, killed, reached, left = _killed_and_whole(argv, tmp_path)
    assert not {"adapter.safetensors", "model.safetensors", "metrics.json"} & {p.name for p in killed.iterdir()}
    _finish(_start(argv + ["--out", str(killed)], killed), killed)  # the same command again resumes
    _assert_resumed_at(killed, reached)
    _assert_equal_tensors(load_file(whole / "adapter.safetensors"), load_file(killed / "adapter.safetensors"),
                          left, "tower.")
    metrics = [json.loads((out / "metrics.json").read_text()) for out in (whole, killed)]
    for name in ("iters", "final_lr", "skipped_images", "dense"):
        assert metrics[0][name] == metrics[1][name]


def test_pretrain_resumes_to_the_uninterrupted_weights(tiny_world, tmp_path):
    """Both towers from scratch, open_clip's random augmentation in a loader worker."""
    argv = ["-m", "react_core", "pretrain", "--config", str(CONFIGS / "pretrain.yaml"), f"vars.world={tiny_world}", *SCHEDULE,
            "data.batch_size=8", "data.workers=1", "eval=null", "generic_eval=null"]
    whole, killed, reached, left = _killed_and_whole(argv, tmp_path)
    assert not {"model.safetensors", "pretrain.json"} & {p.name for p in killed.iterdir()}
    _finish(_start(argv + ["--out", str(killed)], killed), killed)
    _assert_resumed_at(killed, reached)
    _assert_equal_tensors(load_file(whole / "model.safetensors"), load_file(killed / "model.safetensors"),
                          left, "tower.")


def _detectron2_progress(out: Path) -> int:
    """Iterations done, from Detectron2's training curve (a line per iteration at log_interval=1)."""
    curve = out / "train_metrics.json"
    lines = [json.loads(line) for line in curve.read_text().splitlines() if line.endswith("}")] if curve.is_file() else []
    return max((line["iteration"] + 1 for line in lines), default=0)


def _detectron2_checkpoint(out: Path) -> tuple[int, dict]:
    """(iterations done, model tensors) of the checkpoint Detectron2's `last_checkpoint` names."""
    left = torch.load(out / (out / "last_checkpoint").read_text().strip(), weights_only=True)
    return left["iteration"] + 1, left["model"]


def test_detectron2_detection_resumes_to_the_uninterrupted_weights(scenes, tmp_path, capsys):  # noqa: F811
    pytest.importorskip("detectron2")
    argv = ["tools/train_net.py", "--config", str(CONFIGS / "ovd_synthetic.yaml"), f"vars.world={scenes}", "model.weights=null",
            "engine=detectron2", *SCHEDULE, "train.batch_size=2", "data.num_workers=2", "data.hflip=true", "detector.min_size=64",
            "detector.max_size=64", "detector.masks=false", "detector.box_head_dim=64", "detector.roi_batch_size=32",
            "backbone.out_channels=32"]
    whole, killed, reached, left = _killed_and_whole(argv, tmp_path, progress=_detectron2_progress,
                                                     checkpoint=_detectron2_checkpoint, written="last_checkpoint")
    assert not (killed / "model_final.pth").exists() and not (killed / "metrics.json").exists()
    _train_net_refuses_an_unfinished_out(argv, killed, capsys, "last_checkpoint")
    _finish(_start([*argv, "--out", str(killed), "--resume"], killed), killed)
    assert f"Starting training from iteration {reached}" in (killed / "log.txt").read_text()
    _assert_equal_tensors(_dense_final(whole), _dense_final(killed), left, "")
    assert json.loads((killed / "metrics.json").read_text()) == json.loads((whole / "metrics.json").read_text())


def _detectron2_segmentation_checkpoint(out: Path) -> tuple[int, dict]:
    left = torch.load(out / "last_checkpoint.pth", weights_only=True)
    return left["step"], left["model"]


def test_detectron2_segmentation_resumes_to_the_uninterrupted_weights(tiny_world, tmp_path, capsys):
    pytest.importorskip("detectron2")
    argv = [*SEGMENTATION, f"vars.world={tiny_world}", "engine=detectron2"]
    whole, killed, reached, left = _killed_and_whole(argv, tmp_path, progress=_detectron2_progress,
                                                     checkpoint=_detectron2_segmentation_checkpoint, written="last_checkpoint.pth")
    assert not (killed / "model_final.pth").exists()
    _train_net_refuses_an_unfinished_out(argv, killed, capsys, "last_checkpoint.pth")
    _finish(_start([*argv, "--out", str(killed), "--resume"], killed), killed)
    iterations = [json.loads(line)["iteration"] for line in (killed / "train_metrics.json").read_text().splitlines()]
    assert any(iterations == [*range(logged), *range(reached, 5)] for logged in range(KILL_AFTER, 6))  # went on from `reached`
    _assert_equal_tensors(_dense_final(whole), _dense_final(killed), left, "")
