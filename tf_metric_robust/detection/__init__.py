"""Detectors of adversarial inputs in the embedding space, ROC AUC and the TLA detection protocol.

TLA (Mao et al., "Metric Learning for Adversarial Robustness", NeurIPS 2019, arXiv 1909.00900,
section 5.3 and Figure 5) follows Zheng & Hong (NeurIPS 2018, "Robust detection of adversarial
attacks by modeling the intrinsic properties of deep neural networks"): model the clean training
embeddings of each class with a Gaussian; an input whose best class density is low is flagged.
The ROC runs over ALL clean and adversarial test images, misclassified = positive. Figure 5 AUCs
(undefended / AT / ALP / TLA): MNIST 94.83 / 91.25 / 89.77 / 94.94, CIFAR-10 23.95 / 61.07 /
63.15 / 69.60 (targets, not our results). The authors' repository
(columbia/Metric_Learning_Adversarial_Robustness) ships no detection code, only tSNE.py.

`GaussianDetector` is that model; `KnnDetector` is the k-nearest-neighbour alternative (and
Table 4's kNN classifier). Both are tf.Modules with `score(embeddings, predictions)` -> float32
[N] (higher = more suspicious), TF ops only, savable in a SavedModel, and a differentiable
`confidence` that attacks/adaptive.py maximises.
"""

from tf_metric_robust.config import COVARIANCES, DEFAULT_DETECTION_K, DETECTORS, SCORE_TYPES
from tf_metric_robust.detection.common import subsample_per_class
from tf_metric_robust.detection.gaussian import GaussianDetector, shrunk_covariance
from tf_metric_robust.detection.knn import KnnDetector
from tf_metric_robust.detection.metrics import (
    FALSE_POSITIVE_RATE,
    protocol_report,
    roc_auc,
    roc_curve,
    strongest_per_example,
    threshold_at_fpr,
)

__all__ = [
    "COVARIANCES",
    "DETECTORS",
    "FALSE_POSITIVE_RATE",
    "GaussianDetector",
    "KnnDetector",
    "SCORE_TYPES",
    "build",
    "protocol_report",
    "roc_auc",
    "roc_curve",
    "shrunk_covariance",
    "strongest_per_example",
    "subsample_per_class",
    "threshold_at_fpr",
]


def build(
    kind,
    embeddings,
    labels,
    *,
    num_classes=None,
    k=DEFAULT_DETECTION_K,
    score_type="agreement",
    covariance="per_class",
):
    """The detector `kind` ('gaussian' or 'knn') fitted on clean reference embeddings [R, D] and
    labels [R]: the one constructor bin/evaluate and bin/export share."""
    if kind == "gaussian":
        return GaussianDetector(embeddings, labels, covariance=covariance, num_classes=num_classes)
    if kind == "knn":
        return KnnDetector(
            embeddings,
            labels,
            k=min(k, len(labels)),
            score_type=score_type,
            num_classes=num_classes,
        )
    raise ValueError(f"detector must be one of {DETECTORS}, got {kind!r}")
