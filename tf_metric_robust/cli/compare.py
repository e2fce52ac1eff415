"""bin/compare's flags (plus bin/train's, passed on to every run) -> config.CompareConfig."""

import dataclasses

from tf_metric_robust import config as cfg
from tf_metric_robust.cli.common import (
    FLAGS,
    UsageError,
    config_from_flags,
    define_flags,
    our_flags,
)
from tf_metric_robust.cli.train import define_train_flags


def define_compare_flags():
    """Flags of bin/compare (CompareConfig's settings), plus bin/train's: a recipe's --flagfile
    parses, and every training flag given (in the flagfile or on the command line) is passed on
    to each run's bin/train."""
    define_train_flags()
    define_flags(cfg.CompareConfig)


def compare_config():
    """Parsed flags -> config.CompareConfig; the plan is checked too (TF-free, one-line errors)."""
    from tf_metric_robust.compare import plan

    own = {cfg.flag_name(field) for field in dataclasses.fields(cfg.CompareConfig)}
    forwarded = ("mode", "seed", "model_dir")  # set per run by bin/compare
    train_args = tuple(
        flag.serialize()
        for flag in our_flags()
        if flag.present and flag.name not in own and flag.name not in forwarded
    )
    try:
        only = plan.parse_only(FLAGS.only)
    except ValueError as error:
        raise UsageError(str(error)) from None
    config = config_from_flags(cfg.CompareConfig, train_args=train_args, only=only)
    try:
        plan.build(config, cfg.MODES)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return config
