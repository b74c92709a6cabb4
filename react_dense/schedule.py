"""The `train:` section both dense tasks share: `react_core`'s training vocabulary plus the batch
(per process under torchrun; Detectron2's IMS_PER_BATCH counts all GPUs together) and the device,
with defaults for a detector or segmenter head. `amp` is the torchvision and plain engines'
(Detectron2's is its SOLVER.AMP). Segmentation's adds only its crops."""
from __future__ import annotations

from dataclasses import dataclass

from react_core.config.common import TrainSchedule


@dataclass
class DenseTrain(TrainSchedule):
    max_iters: int = 1000
    log_interval: int = 20
    checkpoint_interval: int = 500
    batch_size: int = 2
    device: str = "cpu"
