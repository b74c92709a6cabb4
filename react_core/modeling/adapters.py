"""Customized-model files: adapters, full state dicts, and the official REACT layout.

- An **adapter** holds only what a mode trains (`is_trainable`), under full-model key names, as
  safetensors whose metadata names the base model (architecture, activation, pretrained tag or
  weights file and its SHA-256), the gated layers and the mode: a few percent of a full file.
- A **full** file is the whole state dict (safetensors or `.pt`), gated blocks included.
- The **official** layout is the released REACT one: a full fp16 state dict, wrapped in
  `{"state_dict": ...}` with DDP `module.` prefixes.

All three load through `react_core.modeling.load_clip(name, weights=FILE)`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from react_core.io import atomic_path
from react_core.modeling.checkpoints import DDP_PREFIX, CheckpointError, _shorten, read_safetensors_metadata
from react_core.modeling.gated import MODES, Mode, gated_layers, is_trainable

ADAPTER_FORMAT = "react-adapter"
ADAPTER_VERSION = "1"


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def adapter_tensors(model: torch.nn.Module, mode: Mode) -> dict[str, torch.Tensor]:
    """The state-dict entries a mode changes (parameters and buffers such as BatchNorm statistics)."""
    return {k: v for k, v in model.state_dict().items() if is_trainable(k, mode)}


def save_adapter(model: torch.nn.Module, path: str | Path, *, spec, mode: Mode, layers: list[int] | None = None) -> Path:
    """Write the tensors `mode` trains, with metadata that lets `load_clip` rebuild the base first.

    `spec` is the base model's `ModelSpec` (from `load_clip`); the base must be reproducible, so a
    random-init model (no pretrained tag, no weights file) is refused: save a full file instead.
    """
    path = Path(path)
    if mode not in MODES:
        raise ValueError(f"unknown mode '{mode}' (choose from {', '.join(MODES)})")
    found = gated_layers(model)
    if layers is not None and sorted(layers) != found:
        raise ValueError(f"layers {sorted(layers)} do not match the model's gated blocks {found}")
    if mode == "gated-image" and not found:
        raise ValueError("mode 'gated-image' needs gated blocks, and the model has none")
    if spec.gated_layers and not spec.adapter:
        raise ValueError(
            f"the model was loaded from {spec.weights}, which already holds gated blocks, so it cannot serve as the "
            "base of an adapter: load the base model (pretrained tag or base weights) and apply the file to it"
        )
    if not spec.pretrained and not spec.weights:
        raise ValueError(
            "the base model is randomly initialised (no pretrained tag, no weights file), so an adapter could not be "
            "applied to it again: save a full file instead"
        )
    metadata = {
        "format": ADAPTER_FORMAT,
        "format_version": ADAPTER_VERSION,
        "model": spec.name,
        "model_config": json.dumps(spec.config, sort_keys=True),
        "quick_gelu": json.dumps(spec.quick_gelu),
        "pretrained": spec.pretrained or "",
        "base_weights": str(Path(spec.weights).resolve()) if spec.weights else "",
        "base_weights_sha256": spec.weights_sha256 or "",
        "gated_layers": json.dumps(found),
        "mode": mode,
    }
    _save_safetensors(adapter_tensors(model, mode), path, metadata)
    return path


def read_adapter_metadata(path: str | Path) -> dict | None:
    """The metadata of an adapter file, decoded; None for any other file."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    metadata = read_safetensors_metadata(path)
    if metadata.get("format") != ADAPTER_FORMAT:
        return None
    try:
        return {
            "model": metadata["model"],
            "model_config": json.loads(metadata["model_config"]),
            "quick_gelu": json.loads(metadata["quick_gelu"]),
            "pretrained": metadata["pretrained"] or None,
            "base_weights": metadata["base_weights"] or None,
            "base_weights_sha256": metadata["base_weights_sha256"] or None,
            "gated_layers": json.loads(metadata["gated_layers"]),
            "mode": metadata["mode"],
        }
    except (KeyError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: adapter metadata is incomplete or malformed ({error})") from None


def apply_adapter(model: torch.nn.Module, tensors: dict[str, torch.Tensor], mode: Mode, source: str = "adapter") -> None:
    """Load an adapter's tensors over a base model that already has the adapter's gated blocks.

    Strict: the adapter must hold exactly the tensors its mode trains; extra or missing keys are
    an error naming them.
    """
    own = model.state_dict()
    expected = {k for k in own if is_trainable(k, mode)}
    missing, unexpected = expected - tensors.keys(), tensors.keys() - expected
    if missing or unexpected:
        parts = [f"missing keys: {_shorten(missing)}"] if missing else []
        parts += [f"unexpected keys: {_shorten(unexpected)}"] if unexpected else []
        raise CheckpointError(f"{source} does not fit the model in mode '{mode}': " + "; ".join(parts))
    wrong = [k for k, v in tensors.items() if v.numel() != own[k].numel()]
    if wrong:
        details = ", ".join(f"{k} {tuple(tensors[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(wrong)[:5])
        raise CheckpointError(f"{source} has tensors of the wrong shape: {details}")
    with torch.no_grad():
        for key, value in tensors.items():
            own[key].copy_(value.reshape(own[key].shape))


def check_frozen_unchanged(model: torch.nn.Module, base: torch.nn.Module, mode: Mode, source: str) -> None:
    """Before cutting an adapter out of a full file: what the mode freezes must equal the base model.

    Equality is up to fp16 rounding, since released files are fp16; otherwise the adapter would
    silently drop changes.
    """
    base_state = base.state_dict()
    for key, value in model.state_dict().items():
        if is_trainable(key, mode):
            continue
        reference = base_state[key].to(value.dtype)
        if not torch.allclose(value, reference, rtol=1e-3, atol=1e-6):
            diff = (value.float() - reference.float()).abs().max().item()
            raise CheckpointError(
                f"{source}: tensor '{key}' differs from the base model (max abs difference {diff:.3g}), which mode "
                f"'{mode}' keeps frozen; an adapter cannot hold it: give the right base, another mode, or convert to full"
            )


def save_full(model: torch.nn.Module, path: str | Path) -> Path:
    """The whole state dict: safetensors for a `.safetensors` path, else a `torch.save` file."""
    path = Path(path)
    state = model.state_dict()
    if path.suffix == ".safetensors":
        _save_safetensors(state, path)
    else:
        with atomic_path(path) as tmp:
            torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp)
    return path


def save_official(model: torch.nn.Module, path: str | Path, fp16: bool = True, wrap: bool = True, prefix: bool = True) -> Path:
    """The released REACT layout: fp16 full state dict, `{"state_dict": ...}` wrapper, `module.` prefixes."""
    path = Path(path)
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        if fp16 and value.is_floating_point():
            value = value.half()
        state[(DDP_PREFIX if prefix else "") + key] = value
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state} if wrap else state, tmp)
    return path
