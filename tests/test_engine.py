"""Training engine: parameter groups, schedule, clamp, locked text, and exact kill-and-resume."""
import math
from types import SimpleNamespace

import pytest
import torch
from mmengine.hooks import Hook
from PIL import Image

from react_core.data import PairDataset
from react_core.engine.caption_embeddings import caption_embeddings
from react_core.engine.config import DataConfig, TrainConfig
from react_core.engine.optim import param_groups, warmup_cosine
from react_core.engine.runner import CHECKPOINT_NAME, ResumeError
from react_core.engine.train import train_contrastive
from react_core.modeling import add_gated_blocks, load_clip, set_trainable

COLORS = [(220, 30, 30), (30, 200, 40), (30, 40, 220), (230, 220, 30), (200, 30, 200), (20, 20, 20)]
NAMES = ["red", "green", "blue", "yellow", "purple", "black"]


class ColorPairs(PairDataset):
    """Plain colour images with their colour names; item 5 is unreadable."""

    def __init__(self, transform, size=24):
        super().__init__(transform)
        self.captions = [f"a {NAMES[i % 6]} picture" for i in range(size)]
        self.ids = [str(i) for i in range(size)]

    def load_image(self, index):
        if index == 5:
            return None
        return Image.new("RGB", (64, 64), COLORS[index % 6])


class RecordBatches(Hook):
    def __init__(self):
        self.seen = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.seen.append(data_batch["index"].tolist())


class Interrupt(Hook):
    priority = "LOWEST"  # after the checkpoint hook

    def __init__(self, at):
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.at:
            raise KeyboardInterrupt


def gated_tiny(seed=0):
    torch.manual_seed(seed)
    bundle = load_clip("react-tiny")
    add_gated_blocks(bundle.model, k=2)
    set_trainable(bundle.model, "gated-image")
    return bundle


def settings(**train):
    defaults = dict(mode="gated-image", lr=1e-3, max_iters=6, warmup_iters=2, log_interval=100, checkpoint_interval=2)
    return TrainConfig(**{**defaults, **train}), DataConfig(train={"type": "x"}, batch_size=8, augmentation="none")


def run(bundle, work_dir, hooks=(), identity=None, **train):
    train_cfg, data_cfg = settings(**train)
    dataset = ColorPairs(bundle.preprocess_val)
    embeddings = caption_embeddings(bundle, dataset.captions, None)
    return train_contrastive(
        bundle.model, dataset, mode=train_cfg.mode, train=train_cfg, data=data_cfg, work_dir=work_dir,
        run_identity=identity or {"test": 1}, caption_embeddings=embeddings, hooks=hooks,
    )


def trainable_state(model):
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    whole, whole_batches = gated_tiny(), RecordBatches()
    summary = run(whole, tmp_path / "whole", hooks=[whole_batches])
    assert summary["skipped_images"] >= 1  # item 5 is in every epoch of 24 samples / 6 iterations x 8

    first, first_batches = gated_tiny(), RecordBatches()
    with pytest.raises(KeyboardInterrupt):
        run(first, tmp_path / "killed", hooks=[first_batches, Interrupt(at=3)])
    checkpoint = torch.load(tmp_path / "killed" / CHECKPOINT_NAME, weights_only=True)
    assert checkpoint["meta"]["iter"] == 2  # the interval-2 checkpoint: iteration 3 is lost and redone

    resumed, resumed_batches = gated_tiny(), RecordBatches()
    resumed_summary = run(resumed, tmp_path / "killed", hooks=[resumed_batches])
    assert first_batches.seen[:2] + resumed_batches.seen == whole_batches.seen
    assert resumed_summary["final_lr"] == pytest.approx(summary["final_lr"], rel=1e-6)
    expected, got = trainable_state(whole.model), trainable_state(resumed.model)
    assert expected.keys() == got.keys()
    moved = max((expected[k] - gated_tiny().model.state_dict()[k]).abs().max().item() for k in expected)
    assert moved > 1e-4  # training changed the weights, so equality below is not trivial
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)


def test_resume_refuses_another_runs_checkpoint(tmp_path):
    run(gated_tiny(), tmp_path, max_iters=2)
    with pytest.raises(ResumeError, match="belongs to a different run .differs in: test"):
        run(gated_tiny(), tmp_path, max_iters=2, identity={"test": 2})


def test_text_tower_never_runs_when_locked_and_logit_scale_is_clamped(tmp_path):
    bundle = gated_tiny()
    dataset = ColorPairs(bundle.preprocess_val)
    embeddings = caption_embeddings(bundle, dataset.captions, None)

    def forbidden(*args, **kwargs):
        raise AssertionError("the text tower ran in a training step")

    bundle.model.encode_text = forbidden
    bundle.model.transformer.forward = forbidden
    with torch.no_grad():
        bundle.model.logit_scale.fill_(10.0)
    train_cfg, data_cfg = settings(max_iters=1)
    train_contrastive(
        bundle.model, dataset, mode="gated-image", train=train_cfg, data=data_cfg, work_dir=tmp_path,
        run_identity={}, caption_embeddings=embeddings,
    )
    assert bundle.model.logit_scale.item() == pytest.approx(math.log(100))


def test_weight_decay_only_on_matrices():
    bundle = gated_tiny()
    decay, plain = param_groups(bundle.model, 0.1)
    names = {id(p): n for n, p in bundle.model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    undecayed = {names[id(p)] for p in plain["params"]}
    assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert any(n.endswith("gated_attn_block.attn.in_proj_weight") for n in decayed)
    assert "logit_scale" in undecayed
    assert any(n.endswith("alpha_attn") for n in undecayed) and any(n.endswith("ln_1.weight") for n in undecayed)
    assert all(bundle.model.get_parameter(n).ndim >= 2 for n in decayed)
    assert not any(n.startswith("transformer.") for n in decayed | undecayed)  # frozen text tower


def test_warmup_then_cosine_schedule():
    from mmengine.optim import OptimWrapper
    from mmengine.registry import PARAM_SCHEDULERS

    parameter = torch.nn.Parameter(torch.zeros(1))
    wrapper = OptimWrapper(torch.optim.AdamW([parameter], lr=1.0))
    schedulers = [PARAM_SCHEDULERS.build({**s, "optimizer": wrapper}) for s in warmup_cosine(20, 4)]
    lrs = []
    for _ in range(20):
        lrs.append(wrapper.get_lr()["lr"][0])
        for scheduler in schedulers:
            scheduler.step()
    assert lrs[0] == pytest.approx(0.25) and lrs[3] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:4], lrs[1:4]))
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[4] == pytest.approx(1.0) and lrs[-1] < 0.01
