"""bin/train's flags, generated from config.TrainConfig's declarations, and the parsed flags ->
config.TrainConfig, checked before TensorFlow is imported wherever no tensor is needed."""

import os

from tf_metric_robust import config as cfg
from tf_metric_robust.cli.common import (
    FLAGS,
    UsageError,
    check_dataset,
    check_multi_worker_env,
    check_prepared,
    config_from_flags,
    define_flags,
)
from tf_metric_robust.cli.record import allowed_changes, recipe_settings
from tf_metric_robust.config.run import FAKE_PREFIX


def define_train_flags():
    """Every setting of TrainConfig (and its sub-configs) as a flag, and --wrn_depth/--wrn_width
    (WideResNetShape, the model_kwargs of --model=wide_resnet and wide_resnet_swish)."""
    define_flags(cfg.TrainConfig)
    define_flags(cfg.WideResNetShape)


def recipe_config():
    """The TrainConfig of the parsed flags, checked as a recipe: every value valid, nothing read
    from disk (a flagfile parses the same on any machine); UsageError naming the flag."""
    check_dataset(FLAGS.dataset)
    if FLAGS.model not in cfg.MODELS:
        raise UsageError(f"unknown --model {FLAGS.model!r}; known: {', '.join(cfg.MODELS)}")
    model_kwargs = {}
    if FLAGS.model in ("wide_resnet", "wide_resnet_swish"):
        shape = config_from_flags(cfg.WideResNetShape)
        model_kwargs = {"depth": shape.depth, "width": shape.width}
    if FLAGS.model == "wide_resnet_swish":
        # The reference's input mean/std per dataset (wideresnetwithswish.py:191-197); none
        # for a dataset it has no constants for.
        name = FLAGS.dataset.removeprefix(FAKE_PREFIX)
        model_kwargs["normalization"] = next(
            (n for n in ("cifar100", "cifar10", "svhn") if name.startswith(n)), "none"
        )
    return config_from_flags(
        cfg.TrainConfig,
        model_kwargs=model_kwargs,
        settings=recipe_settings(),
        allow_changes=allowed_changes(),
    )


def train_config():
    """Parsed flags -> the TrainConfig bin/train runs (UsageError with one line on bad values).

    Every check that needs no TensorFlow (the recipe, the folders, whether the dataset is
    prepared, the model_dir's record) runs before TensorFlow is imported, so such a mistake is
    reported in about a second; none writes anything.
    """
    config = recipe_config()
    for name in ("model_dir", "data_dir"):
        path = getattr(config, name)
        if path and "://" not in path and os.path.exists(path) and not os.path.isdir(path):
            raise UsageError(f"--{name} {path} is a file, not a directory")
    if config.strategy == "multi_worker":
        workers = check_multi_worker_env()
        if config.batch_size % workers:
            raise UsageError(
                f"--batch_size {config.batch_size} is not divisible by the "
                f"{workers} workers of TF_CONFIG; use a multiple of {workers}"
            )
    check_prepared(config.dataset, config.data_dir, config.download)
    _check_run_record(config)
    _check_batch_fits(config)
    return config


def _check_run_record(config):
    """The model_dir's record against this run (run_folder.check_recipe: another recipe, changed
    settings, a folder that is not a run) before TensorFlow is imported; training.train repeats
    it for callers of the Python API, and writes the record only once everything has passed."""
    from tf_metric_robust import distribute, run_folder

    if distribute.is_chief():  # only the chief writes (and so checks) the record
        run_folder.check_writable(config.model_dir)
        run_folder.check_recipe(config.model_dir, config.recipe(), config.allow_changes)


def _check_batch_fits(config):
    """Refuses a train split smaller than what one training step reads, before anything is
    written: --batch_size, times (1 + --pool_multiplier) with the extra clean pool of TLA."""
    from tf_metric_robust import data

    try:
        examples = data.dataset_info(config.dataset).num_train_examples
    except ValueError as error:
        raise UsageError(str(error)) from None
    batch, multiplier = config.batch_size, config.triplet.pool_multiplier
    if config.mode == "tla" and config.triplet.negative_pool == "extra":
        if examples < batch * (1 + multiplier):
            raise UsageError(
                f"--dataset {config.dataset} has {examples} training examples, fewer than one "
                f"step reads with --negative_pool=extra: --batch_size {batch} x (1 + "
                f"--pool_multiplier {multiplier}) = {batch * (1 + multiplier)}; lower "
                "--batch_size or --pool_multiplier, or use --negative_pool=batch or bank"
            )
    elif examples < batch:
        raise UsageError(
            f"--dataset {config.dataset} has {examples} training examples, fewer "
            f"than --batch_size {batch}; use --batch_size={examples} or less"
        )
