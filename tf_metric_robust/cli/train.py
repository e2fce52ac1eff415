"""bin/train's parsed flags -> config.TrainConfig, checked before TensorFlow is imported."""

import os

from tf_metric_robust import config as cfg
from tf_metric_robust.cli.common import (
    FLAGS,
    MODELS,
    UsageError,
    attack_config,
    check_dataset,
    check_multi_worker_env,
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


def _flag_attack(prefix):
    """attack_config(prefix) with a bad value reported under its flag name (--eval_steps ...)."""
    try:
        return attack_config(prefix)
    except ValueError as error:
        raise UsageError(f"--{prefix}{error}") from None


def train_parts():
    """(OptimizerConfig, TripletConfig, training AttackConfig, evaluation AttackConfig) of the
    parsed bin/train flags, without TensorFlow; UsageError naming the flag on a bad value."""
    _check_train_flags()
    lr_boundaries = number_list(FLAGS.lr_boundaries, "lr_boundaries", int)
    lr_values = number_list(FLAGS.lr_values, "lr_values")
    try:
        optimizer = cfg.OptimizerConfig(
            name=FLAGS.optimizer,
            learning_rate=FLAGS.learning_rate,
            lr_boundaries=lr_boundaries,
            lr_values=lr_values,
            momentum=FLAGS.momentum,
            weight_decay=FLAGS.weight_decay,
        )
        triplet = cfg.TripletConfig(
            mining=FLAGS.triplet_mining,
            negative_pool=FLAGS.negative_pool,
            positive=FLAGS.triplet_positive,
            margin=FLAGS.margin,
            margin_other=FLAGS.margin_other,
            distance=FLAGS.triplet_distance,
            lambda_triplet=FLAGS.lambda_triplet,
            lambda_norm=FLAGS.lambda_norm,
            bank_size=FLAGS.bank_size,
            pool_multiplier=FLAGS.pool_multiplier,
            separate_passes=FLAGS.separate_bn_passes,
            positive_noise=FLAGS.positive_noise,
            other_positive=FLAGS.other_positive,
        )
    except ValueError as error:  # the configs name the field, which is the flag's name
        raise UsageError(f"--{error}") from None
    return optimizer, triplet, _flag_attack(""), _flag_attack("eval_")


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
    from tf_metric_robust.config import TrainConfig
    from tf_metric_robust.config.training import OverfitConfig

    _check_batch_fits(triplet)
    try:
        return TrainConfig(
            model_dir=FLAGS.model_dir,
            dataset=FLAGS.dataset,
            data_dir=FLAGS.data_dir,
            download=FLAGS.download,
            model=FLAGS.model,
            model_kwargs=model_kwargs(FLAGS.model),
            mode=FLAGS.mode,
            batch_size=FLAGS.batch_size,
            train_steps=FLAGS.train_steps,
            optimizer=optimizer,
            label_smoothing=FLAGS.label_smoothing,
            augment=FLAGS.augment,
            attack=attack,
            eps_warmup_steps=FLAGS.eps_warmup_steps,
            eval_attack=eval_attack,
            triplet=triplet,
            eval_every=FLAGS.eval_every,
            eval_examples=FLAGS.eval_examples,
            final_eval_examples=FLAGS.final_eval_examples,
            eval_batch_size=FLAGS.eval_batch_size,
            strategy=FLAGS.strategy,
            tpu=FLAGS.tpu,
            mixed_precision=FLAGS.mixed_precision,
            jit_compile=FLAGS.jit_compile,
            seed=FLAGS.seed,
            deterministic=FLAGS.deterministic,
            checkpoint_every=FLAGS.checkpoint_every or FLAGS.eval_every,
            keep_checkpoints=FLAGS.keep_checkpoints,
            init_checkpoint=FLAGS.init_checkpoint,
            attack_bn_mode=FLAGS.attack_bn_mode,
            validation_examples=FLAGS.validation_examples,
            select_best=FLAGS.select_best,
            eval_round_to_grid=FLAGS.eval_round_to_grid,
            export=FLAGS.export,
            beta=FLAGS.beta,
            settings=recipe_settings(),
            base=FLAGS.base,
            awp_gamma=FLAGS.awp_gamma,
            awp_warmup_steps=FLAGS.awp_warmup_steps,
            ema_decay=FLAGS.ema_decay,
            overfit=OverfitConfig(FLAGS.overfit_check_every, FLAGS.on_overfit, FLAGS.overfit_drop),
            allow_changes=allowed_changes(),
        )
    except ValueError as error:
        raise UsageError(str(error)) from None


def model_kwargs(model):
    if model == "wide_resnet":
        return {"depth": FLAGS.wrn_depth, "width": FLAGS.wrn_width}
    return {}
