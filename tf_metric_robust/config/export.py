"""Export settings (bin/export) and the detector choices they name: TF-free, validated here.

The detector kinds, score types and covariance choices live here (not in detection.py, which
needs TensorFlow) so that the flag layer can check them before TensorFlow is imported.
"""

import dataclasses
import os
from typing import Optional

from tf_metric_robust.config.common import UserError

SCORE_TYPES = ("agreement", "similarity")  # kNN detector scores (detection.KnnDetector)
COVARIANCES = ("per_class", "tied")  # Gaussian detector covariance (detection.GaussianDetector)
DETECTORS = ("gaussian", "knn")
DEFAULT_REFERENCE_SIZE = 5000  # clean training examples the exported detector is fitted on
DEFAULT_DETECTION_K = 50  # neighbours of the kNN detector


def check_detector(settings):
    """UserError unless the detector fields of `settings` (an EvalConfig or ExportConfig: the
    settings bin/evaluate and bin/export share) are valid; the field names are the flags'."""
    for name, allowed in (
        ("detector", DETECTORS),
        ("detection_covariance", (None,) + COVARIANCES),
        ("detection_score", SCORE_TYPES),
    ):
        value = getattr(settings, name)
        if value not in allowed:
            shown = ", ".join(str(a) for a in allowed if a is not None)
            raise UserError(f"{name} must be one of {shown}, got {value!r}")
    for name in ("detection_k", "detection_reference"):
        value = getattr(settings, name)
        if int(value) != value or value < 1:
            raise UserError(f"{name} must be an integer >= 1, got {value}")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What bin/export does: export the latest checkpoint of `model_dir` with `detector` fitted
    on about `detection_reference` clean training examples (split evenly over the classes) and
    its 5%-false-positive threshold on up to `threshold_examples` clean test-split images."""

    model_dir: str
    export_dir: Optional[str] = None  # default: model_dir/saved_model
    version: Optional[int] = None
    data_dir: Optional[str] = None
    download: bool = False
    detection_reference: int = DEFAULT_REFERENCE_SIZE
    detection_k: int = DEFAULT_DETECTION_K
    detection_score: str = "agreement"
    detector: str = "gaussian"
    detection_covariance: Optional[str] = None  # default: evaluation.plan's per dataset
    threshold_examples: int = 10_000
    warmup: bool = True

    def __post_init__(self):
        if not self.model_dir:
            raise UserError("--model_dir is required (a bin/train run)")
        check_detector(self)
        if self.version is not None and self.version < 1:
            raise UserError(f"version must be >= 1, got {self.version}")
        if self.threshold_examples < 1:
            raise UserError(f"threshold_examples must be >= 1, got {self.threshold_examples}")

    @property
    def resolved_export_dir(self):
        return self.export_dir or os.path.join(self.model_dir, "saved_model")
