"""The plain training loop shared by the torchvision detector and the plain segmentation engine."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from react_core.modeling.checkpoints import CheckpointError
from react_dense.engines.loop import FINAL, LAST, load_checkpoint, train_loop, warmup_cosine

TRAIN = SimpleNamespace(max_iters=6, lr=0.1, weight_decay=0.01, warmup_iters=2, grad_clip=1.0, log_interval=1,
                        checkpoint_interval=2)
BATCH = (torch.linspace(-1, 1, 8)[:, None], torch.linspace(0, 3, 8)[:, None])


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(1, 1)


def _loss(model, fail_at=None):
    calls = []

    def step_loss(batch):
        calls.append(1)
        if fail_at is not None and len(calls) > fail_at:
            raise KeyboardInterrupt
        inputs, targets = batch
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        return loss, {"loss": loss}

    return step_loss


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    whole = _model()
    train_loop(whole, [BATCH], _loss(whole), TRAIN, tmp_path / "whole")
    killed = _model()
    (tmp_path / "killed").mkdir()
    with pytest.raises(KeyboardInterrupt):
        train_loop(killed, [BATCH], _loss(killed, fail_at=5), TRAIN, tmp_path / "killed")
    assert not (tmp_path / "killed" / FINAL).exists()
    resumed = _model()
    assert load_checkpoint(tmp_path / "killed" / LAST, _model()) == 4
    train_loop(resumed, [BATCH], _loss(resumed), TRAIN, tmp_path / "killed", resume=True)
    for expected, got in zip(whole.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(got, expected)
    fresh = _model()
    train_loop(fresh, [BATCH], _loss(fresh), SimpleNamespace(**{**vars(TRAIN), "max_iters": 2}), tmp_path / "short")
    assert not torch.allclose(fresh.weight, whole.weight), "the runs must have moved apart for the check to mean anything"


def test_schedule_warms_up_then_decays_to_zero():
    factor = warmup_cosine(10, 4)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(9) == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi * 5 / 6)).item()))
    assert factor(10) == pytest.approx(0.0)


def test_non_finite_loss_and_foreign_checkpoints_are_named(tmp_path):
    model = _model()

    def nan_loss(batch):
        return torch.tensor(float("nan"), requires_grad=True), {"loss": torch.tensor(float("nan"))}

    with pytest.raises(FloatingPointError, match="at step 0"):
        train_loop(model, [BATCH], nan_loss, TRAIN, tmp_path)
    train_loop(model, [BATCH], _loss(model), TRAIN, tmp_path)
    with pytest.raises(CheckpointError, match=f"{FINAL} does not fit"):
        load_checkpoint(tmp_path / FINAL, torch.nn.Linear(2, 1))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(tmp_path / FINAL, torch.nn.Sequential(torch.nn.Linear(1, 1)))
