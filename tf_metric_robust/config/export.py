"""Export settings (bin/export) and the detector choices they name: TF-free, validated here.

The detector kinds, score types and covariance choices live here (not in detection.py, which
needs TensorFlow) so that the flag layer can check them before TensorFlow is imported, and so
does `detector_settings`, the one rule by which bin/export, the export at the end of bin/train
and bin/evaluate --detection pick the detector's covariance.
"""

import dataclasses
import os
from typing import Optional

from tf_metric_robust.config.common import (
    AT_LEAST_ONE,
    UserError,
    check_settings,
    setting,
    shared_setting,
)

SCORE_TYPES = ("agreement", "similarity")  # kNN detector scores (detection.KnnDetector)
COVARIANCES = ("per_class", "tied")  # Gaussian detector covariance (detection.GaussianDetector)
DETECTORS = ("gaussian", "knn")
EXPORT_FORMATS = ("saved_model", "onnx")  # bin/export --format
# The detector settings bin/evaluate and bin/export share (so the exported detector is the one
# whose AUC bin/evaluate reports), declared once: detector_setting(name) is each one's field.
DETECTOR_SETTINGS = {
    "detector": dict(
        default="gaussian",
        help="Detector in the embedding space: gaussian = class-conditional Gaussians (the TLA "
        "paper's); knn = k nearest neighbours. bin/evaluate scores both and reports this one "
        "first; bin/export serves its detection_score.",
        choices=DETECTORS,
    ),
    "detection_covariance": dict(
        default=None,
        help="Gaussian detector covariance (default: per_class where it can be fitted, else "
        "tied; tied for Tiny ImageNet).",
        choices=COVARIANCES,
    ),
    "detection_reference": dict(
        default=5000,
        help="Clean training examples the detectors are fitted on (split evenly over the "
        "classes; the same for bin/evaluate and bin/export).",
        valid=AT_LEAST_ONE,
    ),
    "detection_k": dict(default=50, help="Neighbours of the kNN detector.", valid=AT_LEAST_ONE),
    "detection_score": dict(
        default="agreement",
        help="kNN detection score (see detection.KnnDetector).",
        choices=SCORE_TYPES,
    ),
}
DEFAULT_REFERENCE_SIZE = DETECTOR_SETTINGS["detection_reference"]["default"]
DEFAULT_DETECTION_K = DETECTOR_SETTINGS["detection_k"]["default"]


def detector_setting(name):
    """The field of the shared detector setting `name` (DETECTOR_SETTINGS)."""
    return shared_setting(name, DETECTOR_SETTINGS)


# The Gaussian detector refuses Cholesky factors (C x D x D float64, C = 1 when tied) above this.
MAX_COVARIANCE_BYTES = 1 << 30
# Datasets whose default covariance is not 'per_class'. Tiny ImageNet: 200 classes x 25
# references cannot each support a 2048-d covariance (nor fit in memory as 200 float64 factors).
_DATASET_COVARIANCE = {"tiny_imagenet": "tied"}


def covariance_problem(covariance, num_classes, embedding_dim, counts=None):
    """Why the Gaussian detector cannot fit `covariance` for `num_classes` classes of
    `embedding_dim`-d embeddings with `counts` references per class (None: not known yet), as
    one line; None if it can. Memory: C (per_class) or 1 (tied) D x D float64 factors; data:
    'per_class' needs >= 2 references of every class, 'tied' >= 1 and more references than
    classes (a pooled within-class covariance from singletons is zero)."""
    factors = num_classes if covariance == "per_class" else 1
    if factors * embedding_dim * embedding_dim * 8 > MAX_COVARIANCE_BYTES:
        return (
            f"{factors} covariances of {embedding_dim}x{embedding_dim} float64 exceed "
            f"{MAX_COVARIANCE_BYTES >> 20} MiB"
            + ("; use covariance='tied'" if covariance == "per_class" else "")
        )
    if counts is None:
        return None
    counts = [int(c) for c in counts]
    needed = 2 if covariance == "per_class" else 1
    short = [c for c, count in enumerate(counts) if count < needed]
    if short:
        return (
            f"covariance {covariance!r} needs >= {needed} references of every class; "
            f"{len(short)} classes have fewer (first: class {short[0]}, "
            f"{counts[short[0]]} references)"
        )
    if covariance == "tied" and sum(counts) <= len(counts):
        return "covariance 'tied' needs more references than classes; every class has 1"
    return None


def detector_settings(settings, dataset, *, num_classes, embedding_dim, counts=None):
    """The options of export.make_detector / detection.build (detector, k, score_type,
    covariance) for `settings` (an ExportConfig or EvalConfig) on `dataset`: the one rule of
    bin/export, bin/train's export and bin/evaluate --detection.

    An unset detection_covariance is the dataset's ('tied' for Tiny ImageNet), else 'per_class'
    (the paper's) where covariance_problem allows it for these sizes and reference `counts`,
    else 'tied'. A covariance that was set is kept (the detector says if it cannot be fitted).
    """
    covariance = settings.detection_covariance
    if covariance is None:
        covariance = _DATASET_COVARIANCE.get(dataset, "per_class")
        if covariance_problem(covariance, num_classes, embedding_dim, counts):
            covariance = "tied"
    return {
        "detector": settings.detector,
        "k": settings.detection_k,
        "score_type": settings.detection_score,
        "covariance": covariance,
    }


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What bin/export does: export the latest checkpoint of `model_dir` with `detector` fitted
    on about `detection_reference` clean training examples (split evenly over the classes) and
    its 5%-false-positive threshold on up to `threshold_examples` clean test-split images."""

    model_dir: str = setting(
        None,
        "A bin/train run: its latest checkpoint is exported; recipe.json gives the model and "
        "the dataset of the detection reference.",
    )
    format: str = setting(
        "saved_model",
        "saved_model: a SavedModel for TF Serving; onnx: model.onnx for ONNX Runtime (needs the "
        "onnx extra: pip install -e '.[onnx]'). Both serve the same outputs and detector.",
        choices=EXPORT_FORMATS,
    )
    export_dir: Optional[str] = setting(
        None,
        "Model base path; the export goes to <export_dir>/<version>/ (default: "
        "<model_dir>/saved_model, or <model_dir>/onnx for --format=onnx).",
    )
    version: Optional[int] = setting(
        None,
        "Version folder to write (default: the largest existing version + 1); an existing "
        "version is never overwritten.",
        valid=AT_LEAST_ONE,
    )
    data_dir: Optional[str] = shared_setting("data_dir")
    download: bool = shared_setting("download")
    detection_reference: int = detector_setting("detection_reference")
    detection_k: int = detector_setting("detection_k")
    detection_score: str = detector_setting("detection_score")
    detector: str = detector_setting("detector")
    detection_covariance: Optional[str] = detector_setting("detection_covariance")
    threshold_examples: int = 10_000  # clean test images the 5%-FPR threshold is set on
    warmup: bool = setting(True, "Write assets.extra/tf_serving_warmup_requests (SavedModel only).")

    def __post_init__(self):
        if not self.model_dir:
            raise UserError("model_dir is required (a bin/train run)")
        check_settings(self)
        if self.threshold_examples < 1:
            raise UserError(f"threshold_examples must be >= 1, got {self.threshold_examples}")

    @property
    def resolved_export_dir(self):
        default = "onnx" if self.format == "onnx" else "saved_model"
        return self.export_dir or os.path.join(self.model_dir, default)
