"""Linear probe: logistic regression on frozen image features, as the ELEVATER toolkit does it.

The L2 regularisation strength is chosen on a validation split drawn from the training images
(never from the test set), then the classifier is refit on the training shots with that
strength. Full-batch L-BFGS on normalised features: seconds, and no extra dependency.
"""
from __future__ import annotations

import torch

DEFAULT_L2_GRID = tuple(10.0**e for e in range(-6, 3))


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float, max_iter: int = 100) -> torch.nn.Linear:
    """Multinomial logistic regression minimising mean cross-entropy + l2 * ||W||^2."""
    torch.manual_seed(0)
    classifier = torch.nn.Linear(features.shape[1], num_classes)
    torch.nn.init.zeros_(classifier.weight)
    torch.nn.init.zeros_(classifier.bias)
    optimizer = torch.optim.LBFGS(classifier.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(classifier(features), labels) + l2 * classifier.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return classifier


@torch.no_grad()
def accuracy(classifier: torch.nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (classifier(features).argmax(dim=-1) == labels).float().mean().item()


def _per_class_split(labels: torch.Tensor, shots: int | None, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices): `shots` per class for training (all but 20% when None)
    and, for validation, as many other images per class (or the held-out 20%)."""
    train, val = [], []
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        if shots is None:
            cut = len(members) - max(1, len(members) // 5) if len(members) > 1 else 1
            train.append(members[:cut])
            val.append(members[cut:])
        else:
            train.append(members[:shots])
            val.append(members[shots : 2 * shots])
    return torch.cat(train), torch.cat(val)


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    shots: int | None = None,
    seed: int = 0,
    l2_grid=DEFAULT_L2_GRID,
) -> dict:
    """Test top-1 (percent) of a probe trained on `shots` images per class (None: all)."""
    generator = torch.Generator().manual_seed(seed)
    train_idx, val_idx = _per_class_split(train_labels, shots, generator)
    if len(val_idx) == 0:
        raise ValueError("no training images left for the validation split that chooses the regularisation")
    scores = {}
    for l2 in l2_grid:
        classifier = fit_logistic(train_features[train_idx], train_labels[train_idx], num_classes, l2)
        scores[l2] = accuracy(classifier, train_features[val_idx], train_labels[val_idx])
    best = max(scores, key=lambda l2: (scores[l2], l2))
    fit_idx = train_idx if shots is not None else torch.cat([train_idx, val_idx])
    classifier = fit_logistic(train_features[fit_idx], train_labels[fit_idx], num_classes, best)
    return {
        "top1": accuracy(classifier, test_features, test_labels),
        "l2": best,
        "validation_top1": scores[best],
        "train_images": int(len(fit_idx)),
        "test_images": int(len(test_labels)),
        "shots": "all" if shots is None else shots,
    }
