"""Run by tests/test_dense_runner.py under `torchrun --nproc_per_node 2`: train the torchvision
detector, save each rank's weights as OUT/rank<N>.pth, evaluate on the main process."""
import sys
from pathlib import Path

import torch

from react_dense.engines.torchvision.train import evaluate_model, train
from react_dense.train_net import load_dense_config

config, out, *overrides = sys.argv[1:]
cfg = load_dense_config(config, overrides)
model, eval_vocab, split, rank = train(cfg, Path(out))
torch.save(model.state_dict(), Path(out) / f"rank{rank}.pth")
if rank == 0:
    evaluate_model(cfg, model, eval_vocab, split, Path(out))
