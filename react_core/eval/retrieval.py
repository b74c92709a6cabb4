"""Image-text retrieval: recall at 1, 5 and 10 in both directions on a set of pairs."""
from __future__ import annotations

from typing import Sequence

import torch
from tqdm import tqdm

RECALL_AT = (1, 5, 10)


def retrieval_recalls(
    image_features: torch.Tensor, text_features: torch.Tensor, text_to_image: torch.Tensor, ks: Sequence[int] = RECALL_AT
) -> dict:
    """R@k in percent. `text_to_image[t]` is the image caption `t` describes; an image may have several.

    image->text counts a hit when any of the image's captions is in the top k; text->image when
    its image is.
    """
    similarity = image_features @ text_features.T
    metrics = {}
    ranked_images = similarity.T.argsort(dim=-1, descending=True)
    for k in ks:
        top = ranked_images[:, : min(k, len(image_features))]
        metrics[f"t2i_R@{k}"] = 100.0 * (top == text_to_image[:, None]).any(dim=-1).float().mean().item()
    ranked_texts = similarity.argsort(dim=-1, descending=True)
    owner = text_to_image[ranked_texts]
    images = torch.arange(len(image_features))[:, None]
    for k in ks:
        hits = (owner[:, : min(k, owner.shape[1])] == images).any(dim=-1)
        metrics[f"i2t_R@{k}"] = 100.0 * hits.float().mean().item()
    metrics["images"] = int(len(image_features))
    metrics["texts"] = int(len(text_features))
    return metrics


@torch.no_grad()
def evaluate_retrieval(bundle, pairs, batch_size: int = 128, workers: int = 0, device=None) -> dict:
    """Recalls of `bundle` on a pair dataset; rows that share an image location share the image."""
    from torch.utils.data import DataLoader

    from react_core.data import PairCollate
    from react_core.modeling.text import encode_texts

    model = bundle.model.eval()
    device = device or next(model.parameters()).device
    locations = pairs.image_locations()
    first_row: dict[str, int] = {}
    for row, location in enumerate(locations):
        first_row.setdefault(location, row)
    image_rows = sorted(set(first_row.values()))
    subset = torch.utils.data.Subset(pairs, image_rows)
    loader = DataLoader(subset, batch_size=batch_size, num_workers=workers, collate_fn=PairCollate())
    features, kept_rows, skipped = [], [], 0
    for batch in tqdm(loader, desc="retrieval images", leave=False):
        skipped += batch["skipped"]
        if len(batch["index"]):
            features.append(torch.nn.functional.normalize(model.encode_image(batch["images"].to(device)).float(), dim=-1).cpu())
            kept_rows.extend(batch["index"].tolist())
    if not features:
        raise ValueError("no readable images to evaluate")
    image_of_row = {row: i for i, row in enumerate(kept_rows)}
    text_rows = [row for row, location in enumerate(locations) if first_row[location] in image_of_row]
    text_to_image = torch.tensor([image_of_row[first_row[locations[row]]] for row in text_rows])
    text_features = encode_texts(model, bundle.tokenizer, [pairs.captions[row] for row in text_rows], batch_size)
    metrics = retrieval_recalls(torch.cat(features), text_features, text_to_image)
    metrics["skipped"] = skipped
    return metrics
