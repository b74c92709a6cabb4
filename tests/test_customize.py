"""`react pretrain` and `react customize` end to end on the tiny synthetic world."""
import json
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from react_core.config import load
from react_core.engine.caption_embeddings import EmbeddingFolderError, embeddings_from_folder
from react_core.engine.config import CustomizeConfig, PretrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "react_dense" / "lab" / "configs"


@pytest.fixture(scope="module")
def tiny_runs(tiny_world, tiny_base, tmp_path_factory):
    """A few-step pretrain config over the lab's, in the tiny world; and a customize config on the
    world's base."""
    root = tmp_path_factory.mktemp("runs")
    pretrain_yaml = root / "pretrain.yaml"
    pretrain_yaml.write_text(
        f"_base_: {CONFIGS / 'pretrain.yaml'}\n"
        f"vars: {{world: {tiny_world}}}\n"
        f"out: {root / 'pretrain'}\n"
        "data: {batch_size: 32, workers: 0}\n"
        "train: {max_iters: 3, warmup_iters: 1, checkpoint_interval: 2}\n"
    )
    customize_yaml = root / "customize.yaml"
    customize_yaml.write_text(
        f"_base_: {CONFIGS / 'customize.yaml'}\n"
        f"vars: {{world: {tiny_world}}}\n"
        f"model: {{weights: {tiny_base}}}\n"
        "gated: {k: 1}\n"
        "data: {batch_size: 16}\n"
        "train: {max_iters: 3, warmup_iters: 1}\n"
    )
    return root, pretrain_yaml, customize_yaml


def test_pretrain_is_cached_by_config_and_data(tiny_runs):
    from react_core.engine.pretrain import SUMMARY_FILE, pretrain

    root, pretrain_yaml, _ = tiny_runs
    weights = pretrain(load(pretrain_yaml, schema=PretrainConfig), root / "pretrain")
    summary = json.loads((root / "pretrain" / SUMMARY_FILE).read_text())
    assert summary["iters"] == 3 and 0 <= summary["zeroshot"]["top1"] <= 100
    stamp = weights.stat().st_mtime_ns
    assert pretrain(load(pretrain_yaml, schema=PretrainConfig), root / "pretrain") == weights
    assert weights.stat().st_mtime_ns == stamp  # not trained again
    changed = load(pretrain_yaml, ["train.lr=2e-3", "train.max_iters=1"], schema=PretrainConfig)
    assert pretrain(changed, root / "other") != weights


def test_customize_writes_metrics_and_a_loadable_adapter(tiny_runs, tiny_base, tmp_path, capsys):
    from react_core.cli import main
    from react_core.modeling import load_clip

    root, _, customize_yaml = tiny_runs
    out = tmp_path / "gated"
    assert main(["customize", "--config", str(customize_yaml), "--out", str(out)]) == 0
    console = "".join(capsys.readouterr())
    assert "mmengine - INFO" not in console and "Failed to search registry" not in console
    assert "Parsing model identifier" not in console  # open_clip's INFO lines
    assert sorted(p.name for p in out.iterdir()) == [
        ".react-run.json", "adapter.safetensors", "cache", "checkpoint_last.pt", "config.yaml", "metrics.json", "train.log"]
    assert "iter 3/3" in (out / "train.log").read_text()  # the scalars still reach the log file
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((out / "adapter.safetensors").stat().st_mode) == 0o666 & ~umask
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"zeroshot_top1_before", "zeroshot_top1_after"} <= metrics.keys()
    assert metrics["mode"] == "gated-image" and metrics["gated_layers"] == [5]
    assert 0 < metrics["trainable"] < 0.2 * metrics["total"]
    assert metrics["pairs"] > 0 and metrics["iters"] == 3

    adapter = load_clip("react-tiny", weights=out / "adapter.safetensors")
    assert adapter.spec.gated_layers == [5]
    base = load_clip("react-tiny", weights=tiny_base)
    gates = {k: v for k, v in adapter.model.state_dict().items() if "alpha" in k}
    assert any(v.abs().item() > 0 for v in gates.values())  # the gates moved off zero
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(adapter.model.encode_image(images), base.model.encode_image(images))
        torch.testing.assert_close(adapter.model.encode_text(base.tokenizer(["a cat"])), base.model.encode_text(base.tokenizer(["a cat"])))

    # running again resumes the finished run: no new training, same result
    assert main(["customize", "--config", str(customize_yaml), "--out", str(out)]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["zeroshot_top1_after"] == pytest.approx(metrics["zeroshot_top1_after"])


def test_customize_config_errors_name_the_key(tiny_runs, tmp_path, capsys):
    from react_core.cli import main

    _, _, customize_yaml = tiny_runs
    assert main(["customize", "--config", str(customize_yaml), "train.mode=half"]) == 2
    assert "train.mode" in capsys.readouterr().err
    assert main(["customize", "--config", str(customize_yaml), "data.train.manifest=/nowhere.parquet", "--out", str(tmp_path / "x")]) == 2
    assert "/nowhere.parquet" in capsys.readouterr().err


def test_embedding_folder_reused_only_for_the_same_text_tower(tmp_path):
    identity = {"model": "react-tiny", "weights_sha256": "abc"}
    (tmp_path / "text_emb").mkdir()
    (tmp_path / "metadata").mkdir()
    vectors = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.save(tmp_path / "text_emb" / "text_emb_0.npy", vectors)
    pd.DataFrame({"id": ["a", "b", "c"]}).to_parquet(tmp_path / "metadata" / "metadata_0.parquet")
    (tmp_path / "embeddings.json").write_text(json.dumps({"identity": identity}))
    rows = embeddings_from_folder(tmp_path, ["c", "a"], identity)
    expected = torch.nn.functional.normalize(torch.from_numpy(vectors[[2, 0]]), dim=-1)
    torch.testing.assert_close(rows, expected)
    with pytest.raises(EmbeddingFolderError, match="cannot be reused"):
        embeddings_from_folder(tmp_path, ["a"], {**identity, "weights_sha256": "other"})
    with pytest.raises(EmbeddingFolderError, match="no embedding for 1 training captions .e.g. id 'zz'"):
        embeddings_from_folder(tmp_path, ["a", "zz"], identity)


def test_replay_pairs_train_alongside_and_change_the_run_key(tiny_runs, tmp_path):
    from react_core.data import build_pairs
    from react_core.engine.common import run_key
    from react_core.engine.customize import customize

    _, _, customize_yaml = tiny_runs
    replay = ["data.replay.type=PairManifest", "data.replay.manifest=${vars.world}/corpus/manifest.parquet",
              "data.replay.sample=20", "data.replay.sample_seed=1"]
    plain = load(customize_yaml, schema=CustomizeConfig)
    mixed = load(customize_yaml, replay, schema=CustomizeConfig)
    plain_pairs, mixed_pairs = build_pairs(plain.data.train), build_pairs(mixed.data.train, replay=mixed.data.replay)
    assert mixed_pairs.captions[: len(plain_pairs)] == plain_pairs.captions
    assert run_key(mixed, mixed_pairs) != run_key(plain, plain_pairs)
    metrics = customize(mixed, tmp_path / "replay")
    assert metrics["replay_pairs"] == 20 and metrics["pairs"] == len(plain_pairs) + 20
    with pytest.raises(Exception, match="sample=100000"):
        customize(load(customize_yaml, [*replay, "data.replay.sample=100000"], schema=CustomizeConfig), tmp_path / "bad")


def test_runs_of_one_base_share_its_zero_shot_results(tiny_runs, tmp_path, monkeypatch):
    """With a shared `cache`, the base's zero-shot results are computed by the first run and read back
    by the next (another seed); the evaluations after training are always computed."""
    import react_core.eval
    from react_core.data import build_pairs
    from react_core.engine.common import run_key
    from react_core.engine.customize import customize

    evaluated = []
    evaluate = react_core.eval.evaluate_zeroshot
    monkeypatch.setattr(react_core.eval, "evaluate_zeroshot", lambda *a, **k: evaluated.append(a[2]) or evaluate(*a, **k))
    _, _, customize_yaml = tiny_runs
    shared = [f"cache={tmp_path / 'shared'}"]
    first = customize(load(customize_yaml, shared, schema=CustomizeConfig), tmp_path / "seed0")
    assert len(evaluated) == 4  # target and generic, before and after
    second_cfg = load(customize_yaml, [*shared, "train.seed=1"], schema=CustomizeConfig)
    second = customize(second_cfg, tmp_path / "seed1")
    assert len(evaluated) == 6  # only the two evaluations after training
    for key in ("zeroshot_before", "generic_before"):
        assert second[key] == first[key]
    assert len(list((tmp_path / "shared").rglob("zeroshot_*.json"))) == 2
    assert not (tmp_path / "seed1" / "cache").exists()
    elsewhere = load(customize_yaml, ["train.seed=1"], schema=CustomizeConfig)
    pairs = build_pairs(elsewhere.data.train)
    assert run_key(elsewhere, pairs) == run_key(second_cfg, pairs)  # where the cache lies decides nothing
