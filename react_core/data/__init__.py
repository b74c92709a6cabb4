"""Data: image-caption pairs for customization, labelled folders for evaluation."""
from react_core.data.classification import ClassificationFolder, collate_labelled, read_classnames
from react_core.data.pairs import (
    CaptionedFolderPairs,
    ManifestPairs,
    PairCollate,
    PairDataError,
    PairDataset,
    WebDatasetPairs,
    build_pairs,
)
from react_core.data.sampler import ResumableSampler, SeededSamples, seeded_randomness
from react_core.data.transforms import official_augmentation, train_transform

__all__ = [
    "CaptionedFolderPairs",
    "ClassificationFolder",
    "ManifestPairs",
    "PairCollate",
    "PairDataError",
    "PairDataset",
    "ResumableSampler",
    "SeededSamples",
    "WebDatasetPairs",
    "build_pairs",
    "collate_labelled",
    "official_augmentation",
    "read_classnames",
    "seeded_randomness",
    "train_transform",
]
