"""The mmengine Runner of the torchvision and plain dense engines (react_dense/engines/runner.py):
resume to the uninterrupted weights, non-finite losses and foreign checkpoints named, a quiet
`--out`, one schedule with the Detectron2 engines, and DDP under torchrun on CPU."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from react_core.engine.runner import ResumeError
from react_core.errors import ReactError
from react_core.modeling.checkpoints import CheckpointError
from react_dense.engines.checkpoint import FINAL, load_checkpoint
from react_dense.engines.runner import NonFiniteLossError, train
from react_dense.schedule import DenseTrain
from test_dense_detector import CONFIG, scenes  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
TRAIN = DenseTrain(max_iters=6, lr=0.1, weight_decay=0.01, warmup_iters=2, grad_clip=1.0, log_interval=1,
                   checkpoint_interval=2, batch_size=4)
DATA = torch.utils.data.TensorDataset(torch.linspace(-1, 1, 8)[:, None], torch.linspace(0, 3, 8)[:, None])


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(1, 1)


def _losses(fail_at=None):
    calls = []

    def losses(net, inputs, targets):
        calls.append(1)
        if fail_at is not None and len(calls) > fail_at:
            raise KeyboardInterrupt
        return {"loss": torch.nn.functional.mse_loss(net(inputs), targets)}

    return losses


def _train(net, out, losses, schedule=TRAIN, identity=None, resume=False):
    return train(net, DATA, losses, schedule, out, identity=identity or {"run": "toy"}, desc="toy", resume=resume)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    whole = _model()
    _train(whole, tmp_path / "whole", _losses())
    killed = _model()
    with pytest.raises(KeyboardInterrupt):
        _train(killed, tmp_path / "killed", _losses(fail_at=5))
    assert not (tmp_path / "killed" / FINAL).exists()
    assert torch.load(tmp_path / "killed" / "checkpoint_last.pt", weights_only=True)["meta"]["iter"] == 4
    resumed = _model()
    _train(resumed, tmp_path / "killed", _losses(), resume=True)
    for expected, got in zip(whole.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(got, expected)
    final = torch.load(tmp_path / "killed" / FINAL, weights_only=True)["model"]
    torch.testing.assert_close(final["weight"], whole.weight.detach())
    fresh = _model()
    _train(fresh, tmp_path / "short", _losses(), dataclasses.replace(TRAIN, max_iters=2))
    assert not torch.allclose(fresh.weight, whole.weight), "the runs must have moved apart for the check to mean anything"


def test_out_holds_only_the_checkpoints_and_the_log(tmp_path):
    _train(_model(), tmp_path, _losses())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_last.pt", FINAL, "train.log"]
    assert "iter 6/6" in (tmp_path / "train.log").read_text()


def test_resuming_another_run_is_refused(tmp_path):
    _train(_model(), tmp_path, _losses())
    with pytest.raises(ResumeError, match="different run .*differs in: run"):
        _train(_model(), tmp_path, _losses(), identity={"run": "other"}, resume=True)


def test_resume_names_a_checkpoint_it_cannot_continue_and_an_error_closes_the_bar(tmp_path, monkeypatch):
    (tmp_path / "last_checkpoint.pth").write_bytes(b"")
    with pytest.raises(ResumeError, match="last_checkpoint.pth is not this engine's checkpoint"):
        _train(_model(), tmp_path, _losses(), resume=True)
    from react_core.engine.hooks import ProgressHook

    closed, close = [], ProgressHook.close
    monkeypatch.setattr(ProgressHook, "close", lambda self: (closed.append(self.bar is not None), close(self)))
    with pytest.raises(KeyboardInterrupt):
        _train(_model(), tmp_path / "interrupted", _losses(fail_at=3))
    assert closed == [True]


def test_non_finite_loss_and_foreign_checkpoints_are_named(tmp_path):
    def nan_after_two(net, inputs, targets):
        nan_after_two.calls += 1
        loss = torch.nn.functional.mse_loss(net(inputs), targets)
        return {"loss": loss * float("nan") if nan_after_two.calls > 2 else loss, "loss_part": loss.detach()}

    nan_after_two.calls = 0
    with pytest.raises(NonFiniteLossError, match="loss is nan at iteration 2: .*'loss_part'") as error:
        _train(_model(), tmp_path / "nan", nan_after_two)
    assert isinstance(error.value, ReactError)
    assert not (tmp_path / "nan" / FINAL).exists()
    _train(_model(), tmp_path, _losses())
    with pytest.raises(CheckpointError, match=f"{FINAL} does not fit"):
        load_checkpoint(tmp_path / FINAL, torch.nn.Linear(2, 1))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(tmp_path / FINAL, torch.nn.Sequential(torch.nn.Linear(1, 1)))


class NoisyPoints(torch.utils.data.Dataset):
    """DATA's points with random noise drawn from python's, NumPy's and torch's generators: the
    random augmentation of a real dataset."""

    def __len__(self):
        return len(DATA)

    def __getitem__(self, index):
        import random

        import numpy as np

        inputs, targets = DATA[index]
        return inputs + random.gauss(0, 0.1) + float(np.random.normal(0, 0.1)) + 0.1 * torch.randn(1), targets


def test_the_number_of_loader_workers_leaves_the_weights_as_they_are(tmp_path):
    """Each sample draws its augmentation from its own seed, so `num_workers` (which a resumed
    run may change) decides nothing."""
    trained = []
    for workers in (0, 2):
        net = _model()
        train(net, NoisyPoints(), _losses(), TRAIN, tmp_path / f"workers{workers}", identity={"run": "toy"}, desc="toy",
              num_workers=workers)
        trained.append(net.state_dict())
    assert all(torch.equal(trained[0][key], trained[1][key]) for key in trained[0])
    plain = _model()
    _train(plain, tmp_path / "plain", _losses())
    assert not torch.equal(plain.weight, trained[0]["weight"]), "the noise must change the weights for the check to mean anything"


def test_a_checkpoint_of_another_format_is_refused_in_one_line(tmp_path):
    _train(_model(), tmp_path, _losses(), dataclasses.replace(TRAIN, max_iters=2))
    checkpoint = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)
    checkpoint["meta"]["format"] = 1
    torch.save(checkpoint, tmp_path / "checkpoint_last.pt")
    with pytest.raises(ResumeError, match="checkpoint_last.pt was written by an earlier version of react") as error:
        _train(_model(), tmp_path, _losses(), resume=True)
    assert "\n" not in str(error.value)


def test_detectron2_schedule_is_the_runners(tmp_path):
    """The Detectron2 engines' LambdaLR steps the learning rate the Runner used at each iteration."""
    from react_dense.engines.optim import build_optimizer, build_scheduler

    seen = []

    def losses(net, inputs, targets):
        from mmengine.logging import MessageHub

        seen.append(MessageHub.get_current_instance().get_scalar("train/lr").current())
        return {"loss": torch.nn.functional.mse_loss(net(inputs), targets)}

    _train(_model(), tmp_path, losses)
    optimizer = build_optimizer(_model(), TRAIN)
    scheduler = build_scheduler(optimizer, TRAIN)
    stepped = []
    for _ in range(TRAIN.max_iters):
        stepped.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert stepped == pytest.approx(seen)
    assert stepped[:3] == pytest.approx([0.05, 0.1, 0.1])


def test_torchvision_engine_trains_under_torchrun_on_cpu(scenes, tmp_path):  # noqa: F811
    """Two gloo processes, each on its half of every epoch: DDP keeps their weights identical
    (each alone would drift apart on its own images), and they moved from the initial ones."""
    from react_dense.engines.torchvision.train import build_model
    from react_dense.train_net import load_dense_config

    out = tmp_path / "ddp"
    overrides = [f"vars.world={scenes}", "model.weights=null", "data.num_workers=0", "train.max_iters=3", "train.batch_size=2",
                 "train.checkpoint_interval=3", "train.warmup_iters=1"]
    env = {**{k: v for k, v in os.environ.items() if k != "MKL_NUM_THREADS"}, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "tests" / "torchrun_detection.py"), str(CONFIG), str(out), *overrides],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MKL_NUM_THREADS" not in done.stderr  # no thread warning from each rank
    ranks = [torch.load(out / f"rank{rank}.pth", weights_only=True) for rank in (0, 1)]
    assert all(torch.equal(ranks[0][key], ranks[1][key]) for key in ranks[0])
    torch.manual_seed(0)
    initial, *_ = build_model(load_dense_config(CONFIG, overrides))
    trained = [key for key, value in initial.state_dict().items() if not torch.equal(value, ranks[0][key])]
    assert trained and all(key.startswith(("rpn", "roi_heads", "backbone")) for key in trained)
    final = torch.load(out / FINAL, weights_only=True)["model"]
    assert all(torch.equal(final[key], ranks[0][key]) for key in final)
    checkpoint = torch.load(out / "checkpoint_last.pt", weights_only=True)
    assert checkpoint["meta"]["iter"] == 3 and len(checkpoint["random"]) == 2  # each rank's random states
    assert "bbox/AP" in json.loads((out / "metrics.json").read_text())
