"""bin/train's parsed flags -> config.TrainConfig, checked before TensorFlow is imported."""

import os

from tf_metric_robust import config as cfg
from tf_metric_robust.cli.common import (
    FLAGS,
    MODELS,
    UsageError,
    check_dataset,
    check_prepared,
    check_multi_worker_env,
    config_from_flags,
    number_list,
)
from tf_metric_robust.cli.record import allowed_changes, recipe_settings


def _check_train_flags():
    """The invariants of bin/train's flags that need no TensorFlow, each as one-line UsageError."""
    if not FLAGS.model_dir:
        raise UsageError("--model_dir is required (where checkpoints and results go)")
    check_dataset(FLAGS.dataset)
    if FLAGS.model not in MODELS:
        raise UsageError(f"unknown --model {FLAGS.model!r}; known: {', '.join(MODELS)}")
    # Single-flag ranges are checked while parsing (lower_bound, NumberParser); here the rest.
    if FLAGS.model == "wide_resnet" and (FLAGS.wrn_depth - 4) % 6:
        raise UsageError(
            f"--wrn_depth must be 6n+4 (10, 16, 22, 28, 34, ...), got {FLAGS.wrn_depth}"
        )
    for name in ("model_dir", "data_dir"):
        path = FLAGS[name].value
        if path and "://" not in path and os.path.exists(path) and not os.path.isdir(path):
            raise UsageError(f"--{name} {path} is a file, not a directory")
    if FLAGS.strategy == "multi_worker":
        workers = check_multi_worker_env()
        if FLAGS.batch_size % workers:
            raise UsageError(
                f"--batch_size {FLAGS.batch_size} is not divisible by the "
                f"{workers} workers of TF_CONFIG; use a multiple of {workers}"
            )


def attack_config(prefix=""):
    """The AttackConfig of bin/train's flags <prefix>eps, <prefix>step_size, ... (prefix '' for
    the training attack, 'eval_' for the evaluation attack); UsageError naming the flag."""
    method = FLAGS.train_attack if prefix == "" else "pgd"
    loss = FLAGS[f"{prefix}attack_loss"].value
    return config_from_flags(cfg.AttackConfig, prefix, f"--{prefix}", loss=loss, method=method)


def train_parts():
    """(OptimizerConfig, TripletConfig, training AttackConfig, evaluation AttackConfig) of the
    parsed bin/train flags, without TensorFlow; UsageError naming the flag on a bad value."""
    _check_train_flags()
    optimizer = config_from_flags(
        cfg.OptimizerConfig,
        error_prefix="--",  # the configs name the field, which is the flag's name
        name=FLAGS.optimizer,
        lr_boundaries=number_list(FLAGS.lr_boundaries, "lr_boundaries", int),
        lr_values=number_list(FLAGS.lr_values, "lr_values"),
    )
    triplet = config_from_flags(
        cfg.TripletConfig,
        error_prefix="--",
        mining=FLAGS.triplet_mining,
        positive=FLAGS.triplet_positive,
        distance=FLAGS.triplet_distance,
        separate_passes=FLAGS.separate_bn_passes,
    )
    return optimizer, triplet, attack_config(""), attack_config("eval_")


def _check_batch_fits(triplet):
    """Refuses a train split smaller than what one training step reads, before anything is
    written: --batch_size, times (1 + --pool_multiplier) with the extra clean pool of TLA."""
    from tf_metric_robust import data

    try:
        examples = data.dataset_info(FLAGS.dataset).num_train_examples
    except ValueError as error:
        raise UsageError(str(error)) from None
    batch, multiplier = FLAGS.batch_size, triplet.pool_multiplier
    if FLAGS.mode == "tla" and triplet.negative_pool == "extra":
        if examples < batch * (1 + multiplier):
            raise UsageError(
                f"--dataset {FLAGS.dataset} has {examples} training examples, fewer than one "
                f"step reads with --negative_pool=extra: --batch_size {batch} x (1 + "
                f"--pool_multiplier {multiplier}) = {batch * (1 + multiplier)}; lower "
                "--batch_size or --pool_multiplier, or use --negative_pool=batch or bank"
            )
    elif examples < batch:
        raise UsageError(
            f"--dataset {FLAGS.dataset} has {examples} training examples, fewer "
            f"than --batch_size {batch}; use --batch_size={examples} or less"
        )


def train_config():
    """Parsed flags -> config.TrainConfig (raises UsageError with one line on bad values).

    Every check that needs no TensorFlow runs before experiment (and TensorFlow) is imported, so
    a bad flag is rejected in about a second; none writes anything.
    """
    optimizer, triplet, attack, eval_attack = train_parts()
    check_prepared(FLAGS.dataset, FLAGS.data_dir, FLAGS.download)
    config = config_from_flags(
        cfg.TrainConfig,
        model_kwargs=model_kwargs(FLAGS.model),
        optimizer=optimizer,
        attack=attack,
        eval_attack=eval_attack,
        triplet=triplet,
        checkpoint_every=FLAGS.checkpoint_every or FLAGS.eval_every,
        overfit=config_from_flags(cfg.training.OverfitConfig, "overfit_", action=FLAGS.on_overfit),
        settings=recipe_settings(),
        allow_changes=allowed_changes(),
    )
    _check_run_record(config)
    _check_batch_fits(triplet)
    return config


def _check_run_record(config):
    """The model_dir's record against this run (run_files.check_recipe: another recipe, changed
    settings, a folder that is not a run) before TensorFlow is imported; experiment.train repeats
    it for callers of the Python API, and writes the record only once everything has passed."""
    from tf_metric_robust import distribute, run_files

    if distribute.is_chief():  # only the chief writes (and so checks) the record
        run_files.check_writable(config.model_dir)
        run_files.check_recipe(config.model_dir, config.recipe(), config.allow_changes)


def model_kwargs(model):
    if model == "wide_resnet":
        return {"depth": FLAGS.wrn_depth, "width": FLAGS.wrn_width}
    return {}
