"""CLIP models: loading, gated customization blocks, checkpoints."""
from react_core.modeling.checkpoints import CheckpointError, load_weights, read_state_dict, unwrap_state_dict
from react_core.modeling.clip import ClipBundle, ModelSpec, PretrainedUnavailableError, describe, load_clip

__all__ = [
    "CheckpointError",
    "ClipBundle",
    "ModelSpec",
    "PretrainedUnavailableError",
    "describe",
    "load_clip",
    "load_weights",
    "read_state_dict",
    "unwrap_state_dict",
]
