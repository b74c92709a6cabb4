"""The one place CLIP models are created and loaded.

Accepts any open_clip model name, a custom architecture given as a dict, the project's own
small architectures (`react-tiny`, `react-small`), open_clip pretrained tags, and local
checkpoint files. The activation (QuickGELU or GELU) is pinned from what is known about the
weights: open_clip only warns on a mismatch, and strict key loading cannot catch it, since
both activations have the same parameters.
"""
from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import open_clip
import torch
from open_clip.model import build_model_from_openai_state_dict

from react_core.errors import ReactError
from react_core.io import file_sha256
from react_core.modeling.adapters import apply_adapter, read_adapter_metadata
from react_core.modeling.checkpoints import CheckpointError, load_weights, read_state_dict
from react_core.modeling.gated import add_gated_blocks, gated_layers_in_state_dict

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
QUICKGELU_SUFFIX = "-quickgelu"

# Official REACT pretrained names (`react_{base}_ret_{retrieval set}`): the base checkpoint
# decides the activation, looked up in open_clip's own table for that base.
REACT_BASE_TAGS = {"clip": "openai", "openclip_laion400m": "laion400m_e32", "openclip_laion2b": "laion2b"}

_registered = False


class PretrainedUnavailableError(ReactError, RuntimeError):
    """An open_clip pretrained tag could not be fetched (no internet, unknown tag)."""


@dataclass
class ModelSpec:
    """What a model is: enough to rebuild it and to check that cached embeddings match it."""

    name: str
    pretrained: str | None = None
    weights: str | None = None
    weights_sha256: str | None = None
    quick_gelu: bool = False
    config: dict = field(default_factory=dict)
    gated_layers: list[int] = field(default_factory=list)
    adapter: str | None = None
    adapter_sha256: str | None = None

    @property
    def named(self) -> bool:
        """Whether the weights have a name (a pretrained tag or a file hash): only then do results
        computed from them outlive the process (a randomly initialised model has none)."""
        return bool(self.pretrained or self.weights_sha256)

    def identity(self) -> dict:
        identity = {
            "model": self.name,
            "pretrained": self.pretrained,
            "weights_sha256": self.weights_sha256,
            "quick_gelu": self.quick_gelu,
            "config_sha256": _config_hash(self.config),
        }
        if self.adapter_sha256:
            identity["adapter_sha256"] = self.adapter_sha256
        return identity


@dataclass
class ClipBundle:
    model: torch.nn.Module
    preprocess_train: Callable
    preprocess_val: Callable
    tokenizer: Callable
    spec: ModelSpec


class _RandomInitNotice(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded ... initialized randomly" notice."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


def register_project_models() -> None:
    """Make `react-tiny` and friends known to open_clip under their names."""
    global _registered
    if not _registered:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


def _config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _register_custom(config: dict) -> str:
    """Register an architecture given as a dict; its name is derived from its content."""
    if "vision_cfg" not in config or "text_cfg" not in config or "embed_dim" not in config:
        raise ValueError("a custom model config needs 'embed_dim', 'vision_cfg' and 'text_cfg'")
    name = f"custom-{_config_hash(config)}"
    folder = Path(tempfile.gettempdir()) / "react_model_configs"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return name


def base_architecture(name: str) -> str:
    return name[: -len(QUICKGELU_SUFFIX)] if name.endswith(QUICKGELU_SUFFIX) else name


def pinned_quick_gelu(name: str, pretrained: str | None) -> bool | None:
    """The activation known for a pretrained tag (open_clip's or REACT's), else None."""
    if not pretrained:
        return None
    arch = base_architecture(name)
    if pretrained.startswith("react_") and "_ret_" in pretrained:
        base = pretrained[len("react_") : pretrained.index("_ret_")]
        prefix = REACT_BASE_TAGS.get(base)
        if prefix is None:
            return None
        tags = [t for t in open_clip.list_pretrained_tags_by_model(arch) if t.startswith(prefix)]
        if not tags:
            return None
        return bool(open_clip.get_pretrained_cfg(arch, tags[0]).get("quick_gelu", False))
    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not cfg:
        return None
    return bool(cfg.get("quick_gelu", False))


def is_torchscript_archive(path: Path) -> bool:
    """OpenAI's released CLIP files are TorchScript archives (a zip with `code/` inside)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(part.split("/")[1:2] == ["code"] for part in archive.namelist()[:200])


def read_torchscript_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a TorchScript archive, read by `torch.jit.load` and nothing else.

    A zip that merely looks like TorchScript (a `code/` entry planted in a pickle archive) is
    refused: it never reaches `torch.load`, whose unpickler could run code in it.
    """
    try:
        with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript; OpenAI's files are TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: has a code/ entry but is not a TorchScript archive ({first})") from None
    return {key: tensor.detach() for key, tensor in scripted.state_dict().items()}


def load_clip(
    model: str | dict = "react-tiny",
    pretrained: str | None = None,
    weights: str | Path | None = None,
    *,
    quick_gelu: bool | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    cache_dir: str | None = None,
    base_weights: str | Path | None = None,
) -> ClipBundle:
    """Create a CLIP model with its transforms and tokenizer.

    Args:
        model: an open_clip name (`ViT-B-32`, `ViT-B-32-quickgelu`), `react-tiny`, or a dict with
            `embed_dim`, `vision_cfg`, `text_cfg`.
        pretrained: an open_clip pretrained tag (downloads on a machine with internet).
        weights: a local file (`.pt`, `.bin`, `.safetensors`, OpenAI TorchScript, a REACT official
            or full file, gated blocks detected from its keys, or one of our adapter files, applied
            over the base model its metadata names) loaded over the architecture.
        quick_gelu: force the activation; by default it is pinned from the tag, else from the name.
        device: where the model is put.
        precision: open_clip's precision (`fp32`, `amp`, `fp16`, `bf16`).
        cache_dir: where open_clip keeps downloaded weights.
        base_weights: where the base weights of an adapter file are now, if they moved (checked
            against the SHA-256 the adapter recorded).

    Returns:
        A `ClipBundle`: the model, its training and evaluation transforms, its
        tokenizer and the spec that identifies it.
    """
    register_project_models()
    config = dict(model) if isinstance(model, dict) else None
    name = _register_custom(config) if config is not None else model
    if weights is not None and is_torchscript_archive(Path(weights)):
        return _load_openai_archive(name, Path(weights), device, precision)
    adapter = read_adapter_metadata(weights) if weights is not None else None
    if adapter is not None:
        return _load_with_adapter(name, pretrained, Path(weights), adapter, base_weights, device, precision, cache_dir)

    arch = base_architecture(name)
    pinned = pinned_quick_gelu(name, pretrained)
    if quick_gelu is None:
        quick_gelu = pinned if pinned is not None else name.endswith(QUICKGELU_SUFFIX)
    elif pinned is not None and pinned != quick_gelu:
        logging.getLogger(__name__).warning(
            "pretrained '%s' was trained with quick_gelu=%s; using quick_gelu=%s as asked", pretrained, pinned, quick_gelu
        )
    if open_clip.get_model_config(arch) is None:
        raise ValueError(f"unknown model '{name}'; known: react-tiny, react-small, or one of open_clip.list_models()")
    notice = _RandomInitNotice()
    if weights is not None:  # the weights are loaded below: open_clip's "initialized randomly" would be wrong
        logging.getLogger().addFilter(notice)
    try:
        created, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
            arch,
            pretrained=pretrained,
            precision=precision,
            device=device,
            force_quick_gelu=quick_gelu,
            cache_dir=cache_dir,
        )
    except RuntimeError as error:
        if pretrained and "download" in str(error).lower():
            raise PretrainedUnavailableError(
                f"could not fetch pretrained weights '{pretrained}' for {arch} ({error}); "
                f"without internet, download them elsewhere and pass the local file with --weights PATH"
            ) from error
        raise
    finally:
        logging.getLogger().removeFilter(notice)
    layers: list[int] = []
    if weights is not None:
        state = read_state_dict(weights)
        layers = gated_layers_in_state_dict(state, created)
        if layers:
            add_gated_blocks(created, layers)
        load_weights(created, state, source=str(weights))
    spec = ModelSpec(
        name=arch,
        pretrained=pretrained,
        weights=str(weights) if weights is not None else None,
        weights_sha256=file_sha256(weights) if weights is not None else None,
        quick_gelu=quick_gelu,
        config=open_clip.get_model_config(arch) or {},
        gated_layers=layers,
    )
    return ClipBundle(created, preprocess_train, preprocess_val, open_clip.get_tokenizer(arch), spec)


def _load_with_adapter(name, pretrained, path: Path, adapter: dict, base_weights, device, precision, cache_dir) -> ClipBundle:
    """Rebuild the base model the adapter names, add its gated blocks, load its tensors strictly."""
    if base_architecture(name) != adapter["model"]:
        raise CheckpointError(f"{path} is an adapter for '{adapter['model']}', not for '{name}'")
    if pretrained and pretrained != adapter["pretrained"]:
        raise CheckpointError(f"{path} is an adapter for pretrained '{adapter['pretrained']}', not '{pretrained}'")
    base_file = base_weights or adapter["base_weights"]
    if base_file is not None:
        if not Path(base_file).is_file():
            raise CheckpointError(
                f"{path}: its base weights {base_file} are not there; pass their new location with --base-weights FILE "
                f"(model.base_weights=FILE in a config), a file with SHA-256 {adapter['base_weights_sha256']}"
            )
        if file_sha256(base_file) != adapter["base_weights_sha256"]:
            raise CheckpointError(f"{path}: base weights {base_file} are not the file the adapter was trained on (SHA-256 differs)")
    known = open_clip.get_model_config(adapter["model"]) is not None
    bundle = load_clip(
        adapter["model"] if known else adapter["model_config"],
        adapter["pretrained"],
        base_file,
        quick_gelu=adapter["quick_gelu"],
        device=device,
        precision=precision,
        cache_dir=cache_dir,
    )
    if bundle.spec.gated_layers:
        raise CheckpointError(f"{path}: its base weights {base_file} already hold gated blocks")
    if adapter["gated_layers"]:  # locked-text and full adapters have none
        add_gated_blocks(bundle.model, adapter["gated_layers"])
    apply_adapter(bundle.model, read_state_dict(path), adapter["mode"], source=str(path))
    bundle.spec.gated_layers = list(adapter["gated_layers"])
    bundle.spec.adapter = str(path)
    bundle.spec.adapter_sha256 = file_sha256(path)
    return bundle


def _load_openai_archive(name: str, path: Path, device, precision) -> ClipBundle:
    """OpenAI's TorchScript file: its tensors through `torch.jit.load`, the model built by
    open_clip from OpenAI's state-dict layout; never a pickle load."""
    state = read_torchscript_state_dict(path)
    try:
        created = build_model_from_openai_state_dict(state, cast_dtype=open_clip.get_cast_dtype(precision))
    except (KeyError, IndexError, RuntimeError) as error:
        raise CheckpointError(f"{path}: a TorchScript archive but not an OpenAI CLIP ({type(error).__name__}: {error})") from None
    created = created.to(device)
    if precision != "fp16":  # OpenAI's state dict is built in fp16; other precisions as open_clip does
        created.float()
        if precision == "bf16":
            open_clip.convert_weights_to_lp(created, dtype=torch.bfloat16)
    created.visual.image_mean = open_clip.OPENAI_DATASET_MEAN
    created.visual.image_std = open_clip.OPENAI_DATASET_STD
    size = created.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    preprocess_train = open_clip.image_transform(size, is_train=True)
    preprocess_val = open_clip.image_transform(size, is_train=False)
    arch = base_architecture(name)
    spec = ModelSpec(name=arch, weights=str(path), weights_sha256=file_sha256(path), quick_gelu=True, config=open_clip.get_model_config(arch) or {})
    return ClipBundle(created, preprocess_train, preprocess_val, open_clip.get_tokenizer(arch), spec)
