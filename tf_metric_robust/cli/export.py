"""bin/export's flags -> config.ExportConfig (a SavedModel for TF Serving or an ONNX model for
ONNX Runtime, detector inside)."""

import importlib.util
import os

from tf_metric_robust import config as cfg
from tf_metric_robust.cli.common import UsageError, config_from_flags, define_flags


def define_export_flags():
    """Flags of bin/export (a SavedModel or an ONNX model with a detector inside): every setting
    of ExportConfig."""
    define_flags(cfg.ExportConfig)


def export_config():
    """Parsed flags -> config.ExportConfig (raises UsageError with one line on bad values)."""
    from tf_metric_robust import run_folder  # reads the record without TensorFlow

    config = config_from_flags(cfg.ExportConfig)
    if not os.path.isdir(config.model_dir):  # before TensorFlow: fails fast
        raise UsageError(f"--model_dir {config.model_dir} does not exist")
    run_folder.read_recipe(config.model_dir)  # UserError for a folder that is not a run
    if config.format == "onnx":
        missing = [m for m in ("tf2onnx", "onnx") if importlib.util.find_spec(m) is None]
        if missing:
            raise UsageError(
                f"--format=onnx needs {' and '.join(missing)}: pip install -e '.[onnx]'"
            )
    return config
