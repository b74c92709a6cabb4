"""The global random states of a training process, as a resumable checkpoint holds them: python's,
NumPy's, torch's CPU and every CUDA device's, in the types `torch.load(weights_only=True)` reads.
Every trainer's checkpoint carries them (our Runner's, and the Detectron2 engines'), so a resumed
run draws what the uninterrupted run would have drawn next."""
from __future__ import annotations

import random

import numpy as np
import torch


def random_states() -> dict:
    """Every global random state of this process."""
    _, keys, position, has_gauss, cached_gauss = np.random.get_state()
    _, python_state, python_gauss = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(keys.astype(np.int64)),
        "numpy_pos": int(position),
        "numpy_gauss": [int(has_gauss), float(cached_gauss)],
        "python": list(python_state),
        "python_gauss": python_gauss,
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: dict) -> None:
    """Set every global random state to `states` (from `random_states`)."""
    torch.set_rng_state(states["torch"])
    has_gauss, cached_gauss = states["numpy_gauss"]
    np.random.set_state(("MT19937", states["numpy"].numpy().astype(np.uint32), states["numpy_pos"], has_gauss, cached_gauss))
    random.setstate((3, tuple(states["python"]), states["python_gauss"]))
    if torch.cuda.is_available():
        for device, state in enumerate(states.get("cuda", [])[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, device)
