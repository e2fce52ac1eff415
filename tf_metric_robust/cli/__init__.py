"""The flag layer: the absl flags of bin/train, bin/evaluate, bin/export and bin/compare, generated
from the settings the config package declares (common.define_flags), one module per entry point
(common.py holds what they share).

`define_*_flags()` declare flags; `*_config()` turn parsed flags into the frozen configs of the
config package, which validate themselves; a config's ValueError becomes a one-line UsageError
naming the flag. Library modules never read flags. `run(main)` wraps an entry point so that user
errors print one line and exit with status 2.
"""

from tf_metric_robust.cli import common, compare, evaluate, export, record, train
from tf_metric_robust.cli.common import (
    DATASETS,
    FLAGS,
    MODELS,
    NumberParser,
    UsageError,
    config_from_flags,
    define_flags,
    define_number,
    flag_values_text,
    our_flags,
    parse_number,
    run,
)
from tf_metric_robust.cli.compare import compare_config, define_compare_flags
from tf_metric_robust.cli.evaluate import define_evaluate_flags, evaluate_config
from tf_metric_robust.cli.export import define_export_flags, export_config
from tf_metric_robust.cli.record import NOT_IN_RECIPE, recipe_settings
from tf_metric_robust.cli.train import define_train_flags, recipe_config, train_config

# The modules whose flags an entry point adopts as key flags (--help, --helpshort):
# `for module in cli.MODULES: flags.adopt_module_key_flags(module)`.
MODULES = (common, train, record, evaluate, export, compare)

__all__ = [
    "DATASETS",
    "FLAGS",
    "MODELS",
    "MODULES",
    "NOT_IN_RECIPE",
    "NumberParser",
    "UsageError",
    "compare_config",
    "config_from_flags",
    "define_compare_flags",
    "define_evaluate_flags",
    "define_export_flags",
    "define_flags",
    "define_number",
    "define_train_flags",
    "evaluate_config",
    "export_config",
    "flag_values_text",
    "our_flags",
    "parse_number",
    "recipe_config",
    "recipe_settings",
    "run",
    "train_config",
]
