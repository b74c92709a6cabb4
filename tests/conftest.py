"""Fixtures shared across the test suite."""
from __future__ import annotations

from pathlib import Path

import pytest

# A ModifiedResNet CLIP small enough for a CPU test: every ResNet-tower test builds this one.
TINY_RESNET = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 2], "width": 16, "head_width": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip():
    """A random-init react-tiny (seed 0), in eval mode; one per test module."""
    import torch

    from react_core.modeling import load_clip

    torch.manual_seed(0)
    bundle = load_clip("react-tiny")
    bundle.model.eval()
    return bundle


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """The `tiny` synthetic world (seed 0), generated once per test session."""
    from react_dense.lab.world import generate_world

    out = tmp_path_factory.mktemp("tiny_world")
    generate_world("tiny", out, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_base(tiny_world, tmp_path_factory) -> Path:
    """The tiny world's base CLIP: the lab's pretrain config cut to three iterations; its weights file."""
    from react_dense.lab.base import prepare_base

    settings = {"data.batch_size": 32, "data.workers": 0, "train.max_iters": 3, "train.warmup_iters": 1,
                "train.checkpoint_interval": 2}
    return prepare_base(tiny_world, tmp_path_factory.mktemp("tiny_base"), settings)


@pytest.fixture(scope="session")
def retrieval_corpus(tiny_world, tmp_path_factory) -> Path:
    """Three small webdataset shards cut from the tiny world's corpus (30 samples each), the
    second holding one undecodable image; ids are the world's, so its manifest is the ground truth."""
    import io
    import tarfile

    from react_core.data.images import index_shard

    source = sorted((tiny_world / "corpus" / "shards").glob("*.tar"))[0]
    entries = list(index_shard(source).items())
    out = tmp_path_factory.mktemp("retrieval_corpus")
    with open(source, "rb") as handle:
        for number in range(3):
            with tarfile.open(out / f"{number:06d}.tar", "w") as tar:
                for key, entry in entries[number * 30:(number + 1) * 30]:
                    handle.seek(entry["jpg"].offset)
                    image = handle.read(entry["jpg"].size)
                    if number == 1 and key == entries[35][0]:
                        image = b"not a jpeg"
                    for name, data in ((f"{key}.jpg", image), (f"{key}.txt", entry["txt"]), (f"{key}.json", entry["json"])):
                        info = tarfile.TarInfo(name)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
    return out


@pytest.fixture(scope="session")
def gated_towers(tmp_path_factory) -> Path:
    """A random-init react-tiny saved as `base.safetensors`, and two gated-image adapters on it with
    one gated block before the last layer: `closed.safetensors` (gates at 0) and `open.safetensors`
    (gated block randomized, gates open)."""
    import torch

    from react_core.modeling import add_gated_blocks, load_clip, save_adapter, save_full
    from test_gated import _randomize_gated

    folder = tmp_path_factory.mktemp("gated_towers")
    torch.manual_seed(0)
    save_full(load_clip("react-tiny").model, folder / "base.safetensors")
    bundle = load_clip("react-tiny", weights=folder / "base.safetensors")
    add_gated_blocks(bundle.model, layers=[5])
    save_adapter(bundle.model, folder / "closed.safetensors", spec=bundle.spec, mode="gated-image")
    _randomize_gated(bundle.model)
    save_adapter(bundle.model, folder / "open.safetensors", spec=bundle.spec, mode="gated-image")
    return folder
