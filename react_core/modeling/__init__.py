"""CLIP models: loading, gated customization blocks, checkpoints."""
from react_core.modeling.checkpoints import CheckpointError, load_weights, read_state_dict, unwrap_state_dict
from react_core.modeling.adapters import save_adapter, save_full, save_official
from react_core.modeling.clip import ClipBundle, ModelSpec, PretrainedUnavailableError, load_clip
from react_core.modeling.gated import ImageTower, add_gated_blocks, encode_image_for_training, set_trainable, train_mode

__all__ = [
    "CheckpointError",
    "ClipBundle",
    "ImageTower",
    "add_gated_blocks",
    "encode_image_for_training",
    "save_adapter",
    "save_full",
    "save_official",
    "set_trainable",
    "train_mode",
    "ModelSpec",
    "PretrainedUnavailableError",
    "load_clip",
    "load_weights",
    "read_state_dict",
    "unwrap_state_dict",
]
