"""Evaluation of (customized) CLIP models: zero-shot, image-text retrieval, linear probe."""
from react_core.eval.features import encode_labelled_images, labelled_loader
from react_core.eval.linear_probe import fit_logistic, linear_probe
from react_core.eval.retrieval import evaluate_retrieval, retrieval_recalls
from react_core.eval.zeroshot import evaluate_zeroshot, zeroshot_metrics

__all__ = [
    "encode_labelled_images",
    "evaluate_retrieval",
    "evaluate_zeroshot",
    "fit_logistic",
    "labelled_loader",
    "linear_probe",
    "retrieval_recalls",
    "zeroshot_metrics",
]
