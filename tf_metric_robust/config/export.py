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
        if self.detection_reference < 1:
            raise UserError(f"detection_reference must be >= 1, got {self.detection_reference}")
        if self.detection_k < 1:
            raise UserError(f"detection_k must be >= 1, got {self.detection_k}")
        if self.detection_score not in SCORE_TYPES:
            raise UserError(f"detection_score must be one of {SCORE_TYPES}, got "
                            f"{self.detection_score!r}")
        if self.version is not None and self.version < 1:
            raise UserError(f"version must be >= 1, got {self.version}")
        if self.detector not in DETECTORS:
            raise UserError(f"detector must be one of {DETECTORS}, got "
                            f"{self.detector!r}")
        if self.detection_covariance not in (None,) + COVARIANCES:
            raise UserError(f"detection_covariance must be one of {COVARIANCES}, got "
                            f"{self.detection_covariance!r}")
        if self.threshold_examples < 1:
            raise UserError(f"threshold_examples must be >= 1, got {self.threshold_examples}")

    @property
    def resolved_export_dir(self):
        return self.export_dir or os.path.join(self.model_dir, "saved_model")
