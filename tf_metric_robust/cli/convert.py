"""bin/convert_checkpoint's flags -> config.ConvertConfig."""

from tf_metric_robust.cli.common import config_from_flags, define_flags
from tf_metric_robust.config.convert import ConvertConfig


def define_convert_flags():
    """Flags of bin/convert_checkpoint: every setting of ConvertConfig."""
    define_flags(ConvertConfig)


def convert_config():
    """Parsed flags -> config.ConvertConfig (raises UsageError with one line on bad values)."""
    return config_from_flags(ConvertConfig)
