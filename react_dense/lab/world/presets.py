"""World sizes. `tiny` is for tests (well under a minute on two cores), `small` is about ten
times bigger, `demo` is sized for the full pipeline demo on a two-core CPU.

Detection image-count ranges are per category and per LVIS bucket (r: <= 10 training images,
c: 11-100, f: > 100): the target classes take the `r` range and become the novel categories,
the first `det_frequent` base categories take `f`, the other base categories take `c`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Preset:
    corpus_pairs: int
    pretrain_pairs: int
    shard_size: int
    task_train_per_class: int
    task_val_per_class: int
    det_train_images: int
    det_val_images: int
    det_frequent: int
    det_range_f: tuple[int, int]
    det_range_c: tuple[int, int]
    det_range_r: tuple[int, int]
    det_val_min: int
    semseg_train_images: int
    semseg_val_images: int
    mismatch_rate: float = 0.12
    distractor_rate: float = 0.3
    pretrain_target_factor: float = 1 / 20

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        corpus_pairs=4000, pretrain_pairs=2000, shard_size=1000,
        task_train_per_class=20, task_val_per_class=20,
        det_train_images=160, det_val_images=40, det_frequent=2,
        det_range_f=(105, 120), det_range_c=(11, 22), det_range_r=(2, 8), det_val_min=3,
        semseg_train_images=60, semseg_val_images=20,
    ),
    "small": Preset(
        corpus_pairs=40000, pretrain_pairs=20000, shard_size=2000,
        task_train_per_class=100, task_val_per_class=100,
        det_train_images=1200, det_val_images=300, det_frequent=5,
        det_range_f=(250, 600), det_range_c=(20, 90), det_range_r=(3, 10), det_val_min=12,
        semseg_train_images=600, semseg_val_images=200,
    ),
    "demo": Preset(
        corpus_pairs=60000, pretrain_pairs=40000, shard_size=2000,
        task_train_per_class=50, task_val_per_class=50,
        det_train_images=1500, det_val_images=300, det_frequent=6,
        det_range_f=(300, 700), det_range_c=(30, 95), det_range_r=(4, 10), det_val_min=15,
        semseg_train_images=600, semseg_val_images=150,
    ),
}

