"""Weights files of the dense engines: `model_final.pth` (`{"model": state dict}`), what
`--eval-only`, `react detect` and `react segment` read, and the Detectron2 segmentation engine's
resumable `last_checkpoint.pth` (with optimizer, scheduler and step). Written atomically, read
with `torch.load(weights_only=True)`.

`--tower-from-config` evaluates a checkpoint's pyramid and heads with another image tower, the
config's `model.weights` (F-VLM's use of one frozen-trunk detector for many towers): allowed only
when the heads read below every gated block and the two towers share every other weight."""
from __future__ import annotations

from pathlib import Path

import torch

from react_core.engine.randomness import random_states, restore_random_states
from react_core.io import atomic_path
from react_core.modeling.checkpoints import CheckpointError

FINAL = "model_final.pth"
LAST = "last_checkpoint.pth"  # the Detectron2 segmentation engine's resumable file; the older dense loop's too


def save_checkpoint(path: Path, model, optimizer=None, scheduler=None, step: int = 0) -> None:
    """The model's weights; with an `optimizer`, a resumable checkpoint: its state, the
    scheduler's, the `step` reached and the process's random states."""
    state = {"model": model.state_dict(), "step": step}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
        state["scheduler"] = scheduler.state_dict()
        state["random"] = random_states()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, model, optimizer=None, scheduler=None, *, tower_from_model: bool = False) -> int:
    """Load weights (strictly) and, if given, the optimizer and scheduler states and the random
    states they were saved with; returns the step reached.
    A checkpoint of another model (missing, unexpected or differently shaped tensors) is a
    `CheckpointError` naming the file. With `tower_from_model`, the model keeps its own image
    tower's gated blocks (see `with_model_tower`)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file not found: {path}") from None
    except Exception as error:
        raise CheckpointError(f"{path}: cannot be read as a weights-only checkpoint ({type(error).__name__})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path}: expected a dense-engine checkpoint, a dict with a 'model' state dict")
    weights = with_model_tower(path, state["model"], model) if tower_from_model else state["model"]
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as error:
        first = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error).splitlines()[0])
        raise CheckpointError(f"{path} does not fit this config's model: {first}") from None
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit this config's model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if "random" in state:
            restore_random_states(state["random"])
    return int(state.get("step", 0))


def with_model_tower(path: str | Path, weights: dict, model) -> dict:
    """`weights` with the gated blocks of its image tower replaced by `model`'s own (those of
    the config's `model.weights`; none for the base tower). Refused, naming the file, when the
    model's heads read a gated block of either tower, or when any other tower weight differs:
    then the heads were trained on other features and the swap would not be the same detector."""
    from react_core.modeling.gated import GATED_ATTR, gated_layers, gated_layers_in_state_dict
    from react_dense.modeling.backbone import ClipTower

    found = [(name, module) for name, module in model.named_modules() if isinstance(module, ClipTower)]
    if not found:
        raise CheckpointError(f"{path}: --tower-from-config needs a model with a CLIP backbone")
    name, backbone = found[0]
    prefix = f"{name}.trunk." if name else "trunk."
    theirs = {key[len(prefix):]: value for key, value in weights.items() if key.startswith(prefix)}
    layers = sorted(set(gated_layers(backbone.trunk)) | set(gated_layers_in_state_dict({"visual." + k: v for k, v in theirs.items()}, backbone.trunk)))
    if backbone.reads_gated_blocks(layers):
        raise CheckpointError(
            f"{path}: --tower-from-config: the heads read the output of gated blocks {layers}, so they were trained on "
            "one tower's features; read below them (backbone.feature_block) to share one detector between towers"
        )
    ours = {key[len(prefix):]: value for key, value in model.state_dict().items() if key.startswith(prefix)}
    gated = f"{GATED_ATTR}."
    for key in sorted(set(theirs) | set(ours)):
        if gated in key:
            continue
        if key not in theirs or key not in ours or not torch.equal(theirs[key], ours[key]):
            raise CheckpointError(
                f"{path}: --tower-from-config: its image tower differs from model.weights' at {key}; "
                "the checkpoint was trained on another base tower"
            )
    kept = {key: value for key, value in weights.items() if not key.startswith(prefix)}
    return kept | {prefix + key: value for key, value in ours.items()}
