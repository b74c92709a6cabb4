"""Frozen image features for evaluation: one pass over a loader, L2-normalised, on CPU."""
from __future__ import annotations

import torch
from tqdm import tqdm


@torch.no_grad()
def encode_labelled_images(model, loader, device=None, desc: str = "images") -> tuple[torch.Tensor, torch.Tensor, int]:
    """(features [N, D] float32, labels [N], skipped) for a loader yielding (images, labels, skipped)."""
    device = device or next(model.parameters()).device
    model.eval()
    features, labels, skipped = [], [], 0
    for images, batch_labels, batch_skipped in tqdm(loader, desc=desc, leave=False):
        skipped += batch_skipped
        if len(images) == 0:
            continue
        encoded = model.encode_image(images.to(device))
        features.append(torch.nn.functional.normalize(encoded.float(), dim=-1).cpu())
        labels.append(batch_labels)
    if not features:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    return torch.cat(features), torch.cat(labels), skipped


def labelled_loader(dataset, batch_size: int = 128, workers: int = 0):
    from torch.utils.data import DataLoader

    from react_core.data import collate_labelled

    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_labelled)
