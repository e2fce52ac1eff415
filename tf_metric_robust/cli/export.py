"""bin/export's flags -> config.ExportConfig (a SavedModel for TF Serving, detector inside)."""

import os

from absl import flags

from tf_metric_robust.cli.common import (
    FLAGS,
    UsageError,
    config_from_flags,
    define_data_location_flags,
    define_detector_flags,
)


def define_export_flags():
    """Flags of bin/export (SavedModel for TF Serving with a detector inside)."""
    flags.DEFINE_string(
        "model_dir",
        None,
        "A bin/train run: its latest checkpoint is exported; "
        "recipe.json gives the model and the dataset of the detection reference.",
    )
    flags.DEFINE_string(
        "export_dir",
        None,
        "TF Serving model base path; the export goes to "
        "<export_dir>/<version>/ (default: <model_dir>/saved_model).",
    )
    flags.DEFINE_integer(
        "version",
        None,
        "Version folder to write (default: the largest "
        "existing version + 1); an existing version is never overwritten.",
        lower_bound=1,
    )
    define_data_location_flags(" (detection reference)")
    define_detector_flags(
        "Detector behind the detection_score output: gaussian (the TLA paper's) or knn.",
        "Clean training examples the detector is fitted on (split evenly over the classes; "
        "bin/evaluate takes the same).",
    )
    flags.DEFINE_bool("warmup", True, "Write assets.extra/tf_serving_warmup_requests.")


def export_config():
    """Parsed flags -> config.ExportConfig (raises UsageError with one line on bad values)."""
    if FLAGS.model_dir and not os.path.isdir(FLAGS.model_dir):  # before TensorFlow: fails fast
        raise UsageError(f"--model_dir {FLAGS.model_dir} does not exist")
    from tf_metric_robust import run_folder  # reads the record without TensorFlow
    from tf_metric_robust.config import ExportConfig

    config = config_from_flags(ExportConfig)
    run_folder.read_recipe(config.model_dir)  # UserError for a folder that is not a run
    return config
