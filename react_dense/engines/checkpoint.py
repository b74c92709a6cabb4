"""Weights files of the dense engines: `model_final.pth` (`{"model": state dict}`), what
`--eval-only`, `react detect` and `react segment` read, and the Detectron2 segmentation engine's
resumable `last_checkpoint.pth` (with optimizer, scheduler and step). Written atomically, read
with `torch.load(weights_only=True)`."""
from __future__ import annotations

from pathlib import Path

import torch

from react_core.io import atomic_path
from react_core.modeling.checkpoints import CheckpointError

FINAL = "model_final.pth"


def save_checkpoint(path: Path, model, optimizer=None, scheduler=None, step: int = 0) -> None:
    state = {"model": model.state_dict(), "step": step}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
        state["scheduler"] = scheduler.state_dict()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, model, optimizer=None, scheduler=None) -> int:
    """Load weights (strictly) and, if given, the optimizer state; returns the step reached.
    A checkpoint of another model (missing, unexpected or differently shaped tensors) is a
    `CheckpointError` naming the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file not found: {path}") from None
    try:
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
    except RuntimeError as error:
        first = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error).splitlines()[0])
        raise CheckpointError(f"{path} does not fit this config's model: {first}") from None
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit this config's model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    return int(state.get("step", 0))
