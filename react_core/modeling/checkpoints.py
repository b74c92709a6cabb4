"""Reading checkpoint files safely, in every layout CLIP weights are released in.

Files are read with safetensors or `torch.load(weights_only=True)`: never an unrestricted
unpickle. A state dict may be bare, wrapped in `{"state_dict": ...}` (or `"model"`), and
carry a DDP `module.` prefix.
"""
from __future__ import annotations

from pathlib import Path

import torch

from react_core.errors import ReactError

WRAPPER_KEYS = ("state_dict", "model", "module")
DDP_PREFIX = "module."


class CheckpointError(ReactError):
    """A checkpoint that does not fit the model; the message names the file and keys."""


def _shorten(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def unwrap_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """Strip `{"state_dict": ...}` wrappers and the DDP `module.` prefix."""
    while isinstance(checkpoint, dict):
        wrapper = next((k for k in WRAPPER_KEYS if isinstance(checkpoint.get(k), dict)), None)
        if wrapper is None or any(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            break
        checkpoint = checkpoint[wrapper]
    if checkpoint and all(k.startswith(DDP_PREFIX) for k in checkpoint):
        checkpoint = {k[len(DDP_PREFIX) :]: v for k, v in checkpoint.items()}
    return checkpoint


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a `.safetensors` file; a truncated or damaged one is a `CheckpointError`."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except SafetensorError as error:
        raise CheckpointError(f"{path}: not a readable .safetensors file, truncated or damaged ({error})") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a `.safetensors`, `.pt`, `.pth` or `.bin` file into a flat state dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except SafetensorError as error:
            raise CheckpointError(f"{path}: not a readable .safetensors file, truncated or damaged ({error})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise CheckpointError(
                f"{path}: cannot be read as a weights-only checkpoint ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''})"
            ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    state = unwrap_state_dict(state)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {_shorten(bad)}")
    return state


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load strictly: a missing or unexpected key is an error naming the keys.

    Tensors are cast to the model's dtype (released REACT files are fp16) and scalar/1-d
    `logit_scale` shapes are reconciled.
    """
    own = model.state_dict()
    missing = own.keys() - state.keys()
    unexpected = state.keys() - own.keys()
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_shorten(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_shorten(unexpected)}")
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(parts))
    mismatched = [k for k, v in state.items() if v.numel() != own[k].numel()]
    if mismatched:
        details = ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(mismatched)[:5])
        raise CheckpointError(f"{source} has tensors of the wrong shape: {details}")
    cast = {k: v.to(own[k].dtype).reshape(own[k].shape) for k, v in state.items()}
    model.load_state_dict(cast, strict=True)
