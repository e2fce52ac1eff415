"""SavedModel export for serving: serving graph, detector, atomic versioned folders, warm-up.

serving: ServingModule and its three signatures; detector: references, fitting, threshold,
record; folders: versions and atomic publishing; warmup: TF Serving warm-up records;
saved_model: export_saved_model, export_with_detector (bin/export and the end of bin/train) and
bin/export's export_run; onnx: the same outputs and detector as one ONNX graph (bin/export
--format=onnx).
"""

from tf_metric_robust.export.detector import (
    calibrate_detector,
    export_detector,
    make_detector,
    reference_examples,
)
from tf_metric_robust.export.folders import latest_version, versions
from tf_metric_robust.export.onnx import ONNX_DETECTOR_FILE, ONNX_FILE, export_onnx, export_onnx_run
from tf_metric_robust.export.saved_model import (
    DETECTOR_FILE,
    export_run,
    export_saved_model,
    export_with_detector,
)
from tf_metric_robust.export.serving import GRADIENT_SIGNATURE, SIGNATURES, ServingModule
from tf_metric_robust.export.warmup import WARMUP_FILE, predict_log_record, write_warmup_requests

__all__ = [
    "DETECTOR_FILE",
    "GRADIENT_SIGNATURE",
    "ONNX_DETECTOR_FILE",
    "ONNX_FILE",
    "SIGNATURES",
    "WARMUP_FILE",
    "ServingModule",
    "calibrate_detector",
    "export_detector",
    "export_onnx",
    "export_onnx_run",
    "export_run",
    "export_saved_model",
    "export_with_detector",
    "latest_version",
    "make_detector",
    "predict_log_record",
    "reference_examples",
    "versions",
    "write_warmup_requests",
]
