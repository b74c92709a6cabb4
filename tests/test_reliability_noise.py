"""Noise a user should not see, and files with the mode a user expects."""
from __future__ import annotations

import logging
import os
import stat

from safetensors.torch import save_file

from react_core.io import atomic_path, atomic_write_json
from react_core.modeling import load_clip


def test_no_random_init_notice_when_weights_load(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    weights = tmp_path / "model.safetensors"
    save_file(load_clip("react-tiny").model.state_dict(), str(weights))
    assert "initialized randomly" in caplog.text  # no weights: the notice is true and stays
    caplog.clear()
    load_clip("react-tiny", weights=weights)
    assert "initialized randomly" not in caplog.text


def test_results_get_the_mode_of_a_plain_open(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "metrics.json", {"a": 1})
        with atomic_path(tmp_path / "shard.tar") as tmp:
            tmp.write_bytes(b"x")
        os.umask(0o027)
        atomic_write_json(tmp_path / "other.json", {})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "shard.tar").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "other.json").stat().st_mode) == 0o640


def test_embed_starts_no_more_workers_than_cpus_by_default(retrieval_corpus, tmp_path, monkeypatch, recwarn):
    import torch.utils.data

    from react_core.retrieval import embed as embed_module

    started = []
    real_loader = torch.utils.data.DataLoader

    def loader(*args, **kwargs):
        started.append(kwargs["num_workers"])
        return real_loader(*args, **kwargs)

    monkeypatch.setattr(embed_module.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(torch.utils.data, "DataLoader", loader)
    micro = load_clip({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
    })
    embed_module.embed_corpus(micro, retrieval_corpus, tmp_path, batch_size=32, progress=False)
    assert started and set(started) == {1}  # one CPU: one worker per shard, not the default 4
    assert not [w for w in recwarn if "worker processes in total" in str(w.message)]
