"""The TF-free config layer: every run setting as a frozen dataclass that validates itself.

Each setting is declared once, on its field (common.setting: default, help, range or choices);
cli/ generates the flags from those declarations and turns a UserError into a one-line usage
error; library modules take the configs (or plain arguments) and never read flags. Importing this
package never imports TensorFlow.
"""

from tf_metric_robust.config.common import Range, UserError, flag_name
from tf_metric_robust.config.compare import CompareConfig
from tf_metric_robust.config.convert import ConvertConfig
from tf_metric_robust.config.evaluation import (
    DEFAULT_ATTACKS,
    EVAL_STRATEGIES,
    SUITE_VERSIONS,
    SUITES,
    EvalConfig,
    EvaluateRun,
    Thresholds,
)
from tf_metric_robust.config.export import (
    COVARIANCES,
    DEFAULT_DETECTION_K,
    DEFAULT_REFERENCE_SIZE,
    DETECTORS,
    EXPORT_FORMATS,
    MAX_COVARIANCE_BYTES,
    SCORE_TYPES,
    ExportConfig,
    covariance_problem,
    detector_settings,
)
from tf_metric_robust.config.training import (
    DISTANCES,
    KL_MODES,
    MININGS,
    MODES,
    NEGATIVE_POOLS,
    OTHER_POSITIVES,
    POSITIVES,
    RECIPE_KEYS,
    AttackConfig,
    OptimizerConfig,
    TripletConfig,
    check_mode,
)
from tf_metric_robust.config.run import (
    DATASETS,
    MODELS,
    OPERATIONAL_FIELDS,
    STRATEGIES,
    TrainConfig,
    WideResNetShape,
)

__all__ = [
    "DEFAULT_ATTACKS",
    "EVAL_STRATEGIES",
    "SUITES",
    "SUITE_VERSIONS",
    "EvalConfig",
    "EvaluateRun",
    "Thresholds",
    "COVARIANCES",
    "DEFAULT_DETECTION_K",
    "DEFAULT_REFERENCE_SIZE",
    "DETECTORS",
    "EXPORT_FORMATS",
    "DISTANCES",
    "KL_MODES",
    "MAX_COVARIANCE_BYTES",
    "MININGS",
    "MODES",
    "NEGATIVE_POOLS",
    "OPERATIONAL_FIELDS",
    "OTHER_POSITIVES",
    "POSITIVES",
    "RECIPE_KEYS",
    "SCORE_TYPES",
    "AttackConfig",
    "CompareConfig",
    "ConvertConfig",
    "ExportConfig",
    "OptimizerConfig",
    "Range",
    "TrainConfig",
    "TripletConfig",
    "UserError",
    "flag_name",
    "DATASETS",
    "MODELS",
    "STRATEGIES",
    "WideResNetShape",
    "check_mode",
    "covariance_problem",
    "detector_settings",
]
