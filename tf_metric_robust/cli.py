"""The flag layer: every absl flag of bin/train, bin/evaluate and bin/export, defined once.

`define_*` functions declare flags; `*_config()` functions turn parsed flags into the frozen
configs of config.py, validating invariants with one-line messages. Library modules never read
flags. `run(main)` wraps an entry point so that user errors print one line and exit non-zero.
"""

import os
import re
import sys

from absl import app, flags, logging

from tf_metric_robust import config as cfg
from tf_metric_robust.config import UserError

FLAGS = flags.FLAGS
SEED_RANGE = dict(lower_bound=0, upper_bound=2**32 - 1)  # numpy's seed range (Keras seeds it)


def parse_number(text):
    """'0.3', '1e-3' or a fraction like '8/255' -> float; ValueError otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    text = str(text).strip()
    if text.count("/") == 1:
        numerator, denominator = (float(part) for part in text.split("/"))
        if denominator == 0:
            raise ValueError(f"{text!r} divides by zero")
        return numerator / denominator
    return float(text)


class NumberParser(flags.FloatParser):
    """absl float parser that also reads fractions (8/255) and refuses values outside a Range.

    Every float flag of bin/train, bin/evaluate and bin/export uses it, so one number syntax works
    everywhere and --help shows each flag's valid range.
    """

    def __init__(self, valid=None):
        super().__init__()
        self.valid = valid or cfg.Range()
        self.syntactic_help = f"a number in {self.valid}; fractions like 8/255 work"

    def convert(self, argument):
        try:
            return parse_number(argument)
        except ValueError:
            raise ValueError(f"must be a number or a fraction like 8/255, got {argument!r}")

    def parse(self, argument):
        value = self.convert(argument)
        if value not in self.valid:
            raise ValueError(f"must be in {self.valid}, got {argument}")
        return value


def define_number(name, default, help_text, valid=None):
    """A float flag that accepts fractions and only values inside `valid` (a config.Range)."""
    flags.DEFINE(NumberParser(valid), name, default, help_text,
                 serializer=flags.ArgumentSerializer())


def _define_data_location_flags(purpose=""):
    """--data_dir and --download, shared by bin/train, bin/evaluate and bin/export."""
    flags.DEFINE_string("data_dir", None, f"tensorflow-datasets data directory{purpose}.")
    flags.DEFINE_bool("download", False, "Download the dataset if it is not in --data_dir.")


def define_data_flags():
    flags.DEFINE_string("dataset", "mnist5k", f"Dataset: {_dataset_choices()}.")
    _define_data_location_flags()


def define_attack_flags(prefix, help_prefix, eps, step_size, steps):
    """Flags of one PGD attack: <prefix>eps, <prefix>step_size, <prefix>steps, ..."""
    define_number(f"{prefix}eps", eps, f"{help_prefix} L-inf/L2 radius on the [0,1] scale.",
                  cfg.UNIT)
    define_number(f"{prefix}step_size", step_size, f"{help_prefix} step size.", cfg.POSITIVE)
    flags.DEFINE_integer(f"{prefix}steps", steps, f"{help_prefix} number of PGD steps.",
                         lower_bound=1)
    flags.DEFINE_enum(f"{prefix}norm", "linf", ["linf", "l2"], f"{help_prefix} norm.")
    flags.DEFINE_enum(f"{prefix}attack_loss", "ce", ["ce", "cw"],
                      f"{help_prefix} loss: cross-entropy or CW margin.")
    flags.DEFINE_bool(f"{prefix}random_start", True, f"{help_prefix} random start in the ball.")


def define_train_flags():
    define_data_flags()
    flags.DEFINE_string("model_dir", None, "Output folder: checkpoints/, tensorboard/, "
                        "saved_model/, flags.txt, metrics.json. Re-running resumes.")
    flags.DEFINE_string("model", "small_cnn", f"Network: {', '.join(MODELS)}.")
    flags.DEFINE_integer("wrn_depth", 34, "WideResNet depth, 6n+4 (10, 16, 22, 28, 34, ...).",
                         lower_bound=10)
    flags.DEFINE_integer("wrn_width", 10, "WideResNet widening factor.", lower_bound=1)
    flags.DEFINE_enum("mode", "tla", list(cfg.MODES),
                      "natural: CE on clean; pgd: Madry PGD-AT; tla: PGD-AT + triplet loss; "
                      "trades: CE(x) + beta KL(p(x)||p(x')), x' maximising the KL (Zhang et al. "
                      "2019); mart: boosted CE(x') + beta KL(p(x)||p(x')) (1 - p(x)_y) (Wang et "
                      "al. 2020). trades/mart attack from x + 0.001 N(0,1) as their references.")
    define_number("beta", 6.0, "Weight of the KL term of --mode=trades/mart (both references: 6 "
                  "on CIFAR-10; TRADES MNIST: 1).", cfg.NON_NEGATIVE)
    flags.DEFINE_enum("base", "pgd", list(cfg.training.BASES), "--mode=tla only: pgd adds the "
                      "triplet term to CE on x' (the TLA authors); trades adds it to the TRADES "
                      "objective and attacks TRADES' KL (ours, not the paper's).")
    define_number("awp_gamma", 0.0, "Adversarial weight perturbation (Wu et al. 2020): relative "
                  "size gamma, each kernel moved by gamma x its norm (0: off; reference 5e-3 for "
                  "TRADES-AWP on CIFAR-10, 1e-2 for AT-AWP).", cfg.Range(0.0, 1.0))
    flags.DEFINE_integer("awp_warmup_steps", 0, "Training steps before AWP starts (the "
                         "reference: 10 epochs for TRADES-AWP, 0 for AT-AWP).", lower_bound=0)
    define_number("ema_decay", 0.0, "Exponential moving average of the weights, evaluated and "
                  "exported instead of them (0: off; e.g. 0.999).", cfg.UNIT_OPEN)
    # Optimisation.
    flags.DEFINE_integer("batch_size", 50, "Global batch size (split over replicas).",
                         lower_bound=1)
    flags.DEFINE_integer("train_steps", 1000, "Total optimizer steps.", lower_bound=1)
    flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adam"], "Optimizer.")
    define_number("learning_rate", 0.1, "Initial learning rate.", cfg.POSITIVE)
    flags.DEFINE_list("lr_boundaries", [], "Steps where the learning rate changes: strictly "
                      "increasing whole numbers >= 1 (needs --lr_values).")
    flags.DEFINE_list("lr_values", [], "Learning rates, one more than --lr_boundaries, each a "
                      "number in (0, inf) (fractions like 1/10 work).")
    define_number("momentum", 0.9, "SGD momentum.", cfg.UNIT_OPEN)
    define_number("weight_decay", 2e-4, "Coefficient of sum(l2_loss(kernel)) (Madry style).",
                  cfg.NON_NEGATIVE)
    define_number("label_smoothing", 0.0, "Label smoothing of the CE loss.", cfg.UNIT_OPEN)
    flags.DEFINE_bool("augment", None, "Force data augmentation on/off (default: per dataset).")
    # Training attack (PGD inside the step).
    define_attack_flags("", "Training attack:", 0.3, 0.01, 40)
    flags.DEFINE_integer("eps_warmup_steps", 0, "Grow the training eps and step_size linearly "
                         "from 0 over this many steps (0: full eps from the start).",
                         lower_bound=0)
    flags.DEFINE_enum("train_attack", "pgd", ["pgd", "fgsm_rs", "n_fgsm"], "Training attack "
                      "(pgd, trades, tla, mart): PGD; fgsm_rs: FGSM from a uniform start, step "
                      "1.25 eps, projected (Wong et al. 2020); n_fgsm: noise U(-2 eps, 2 eps), step "
                      "eps, no projection to the eps-ball (de Jorge et al. 2022). Fast ones need "
                      "--steps=1.")
    flags.DEFINE_integer("overfit_check_every", 0, "Catastrophic-overfitting guard: PGD-5 and "
                         "FGSM probe on a fixed batch every this many steps (0: off).",
                         lower_bound=0)
    flags.DEFINE_enum("on_overfit", "warn", ["warn", "restore"], "When PGD probe accuracy "
                      "collapses while FGSM accuracy climbs: warn, or restore the last good "
                      "weights and continue with the training step size x 0.8.")
    define_number("overfit_drop", 0.2, "PGD probe accuracy fall from its best that counts as a "
                  "collapse (Wong et al.: 0.2).", cfg.UNIT)
    # Evaluation attack (test_step, metrics.json).
    define_attack_flags("eval_", "Evaluation attack:", 0.3, 0.01, 100)
    flags.DEFINE_integer("eval_every", 500, "Steps between evaluations and checkpoints.",
                         lower_bound=1)
    flags.DEFINE_integer("eval_examples", 1000, "Test examples for periodic evaluation; final "
                         "metrics.json uses the whole test split unless --final_eval_examples.",
                         lower_bound=1)
    flags.DEFINE_integer("final_eval_examples", None, "Limit of test examples for metrics.json.",
                         lower_bound=1)
    flags.DEFINE_integer("eval_batch_size", 200, "Batch size of evaluation.", lower_bound=1)
    # TLA triplet term.
    flags.DEFINE_enum("triplet_mining", "paper", ["paper", "semihard"],
                      "paper: adversarial anchor vs hardest clean negative; semihard: TFA loss.")
    flags.DEFINE_enum("negative_pool", "batch", ["batch", "bank", "extra"],
                      "Where paper mining looks for negatives.")
    flags.DEFINE_integer("pool_multiplier", 10, "Extra clean pool size in batches ('extra'): a "
                         "training step reads batch_size x (1 + pool_multiplier) examples.",
                         lower_bound=1)
    flags.DEFINE_integer("bank_size", 4096, "Memory bank size in embeddings ('bank').",
                         lower_bound=1)
    flags.DEFINE_enum("triplet_positive", "own", ["own", "other", "both"],
                      "Positive: the anchor's clean source, another clean image of its class, "
                      "or both terms.")
    define_number("margin", 0.03, "Triplet margin alpha (own-source term).", cfg.NON_NEGATIVE)
    define_number("margin_other", None, "Margin of the other-image term (default: margin).",
                  cfg.NON_NEGATIVE)
    flags.DEFINE_enum("triplet_distance", "abs_cosine", ["abs_cosine", "cosine", "l2",
                                                         "squared_l2"], "Distance D.")
    define_number("lambda_triplet", 2.0, "Weight of the triplet term.", cfg.NON_NEGATIVE)
    define_number("lambda_norm", 1e-3, "Weight of the embedding-norm term.", cfg.NON_NEGATIVE)
    # TLA as the authors run it (issue 14).
    flags.DEFINE_bool("separate_bn_passes", True, "TLA: one forward pass per image batch (clean, "
                      "adversarial, negatives, other positives), each with its own batch-norm "
                      "statistics, as the authors (train_update_fast_triplet.py:252-273); "
                      "--noseparate_bn_passes: one joint pass (faster; the same without BN).")
    define_number("positive_noise", 0.0, "TLA own positive: add uniform noise in [-x, x], "
                  "rounded to the 1/255 grid, clipped (authors' CIFAR nat_noise_level 8: 8/255).",
                  cfg.UNIT)
    flags.DEFINE_enum("other_positive", "batch", ["batch", "data"], "TLA's 'other' positive: "
                      "data = an independent training image of the class (the authors, "
                      "train_update_fast_triplet.py:641-645); batch = another image of the class "
                      "in the batch, or the image itself if there is none (cheaper).")
    flags.DEFINE_enum("attack_bn_mode", "inference", ["inference", "train"], "Batch-norm mode "
                      "of the TRAINING attack: train = batch statistics (Madry's PGD-AT, "
                      "cifar10_challenge train.py:41,57); inference = moving statistics (the TLA "
                      "authors' TLA attack, train_update_fast_triplet.py:546,611).")
    flags.DEFINE_integer("validation_examples", 0, "Hold the first N training examples out of "
                         "training as a validation split (for --select_best); 0: none.",
                         lower_bound=0)
    flags.DEFINE_enum("select_best", "none", ["none", "pgd"], "pgd: after each evaluation, "
                      "score the evaluation attack on the validation split and keep the best "
                      "checkpoint in DIR/best_checkpoint; the final metrics and the export use it "
                      "(the authors selected on 500 test images; we never select on the test set).")
    flags.DEFINE_bool("eval_round_to_grid", False, "Round evaluation adversarial images to the "
                      "1/255 pixel grid, as the authors' CIFAR evaluation (pgd_attack.py:285-286).")
    # System.
    flags.DEFINE_enum("strategy", "auto", ["auto", "one_device", "mirrored", "multi_worker",
                                           "tpu"],
                      "tf.distribute strategy: auto = MirroredStrategy over the local GPUs, else "
                      "TF's default strategy on the CPU; one_device = the first GPU (default "
                      "strategy without one); mirrored = all GPUs or all logical CPUs; "
                      "multi_worker = TF_CONFIG cluster; tpu.")
    flags.DEFINE_string("tpu", None, "TPU name or address for --strategy=tpu.")
    flags.DEFINE_enum("mixed_precision", "none", ["none", "mixed_float16", "mixed_bfloat16"],
                      "Keras dtype policy (logits and losses stay float32).")
    flags.DEFINE_bool("jit_compile", False, "XLA-compile the train step (slower on CPU).")
    flags.DEFINE_integer("seed", 0, "Seed of data order, augmentation and attack starts.",
                         **SEED_RANGE)
    flags.DEFINE_bool("deterministic", False, "Also pin TF's kernels (tf.config.experimental."
                      "enable_op_determinism; needed for bit-identical GPU runs, slower). Seeds "
                      "always come from --seed, and a resumed run replays the same batches and "
                      "attack starts.")
    flags.DEFINE_integer("checkpoint_every", None, "Steps between checkpoints "
                         "(default: --eval_every).", lower_bound=1)
    flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept.", lower_bound=1)
    flags.DEFINE_string("init_checkpoint", None, "Initialise network weights from this checkpoint "
                        "(e.g. a PGD-AT run's model_dir) before training.")
    flags.DEFINE_bool("export", True, "Export the SavedModel at the end of training.")
    flags.DEFINE_list("allow_changes", [], "Settings a resumed run may change, e.g. "
                      "train_steps,lr_boundaries,lr_values (without it a resume with other "
                      "result-changing flags is refused); changes go to DIR/history.jsonl.")


def _numbers(values, name, kind=float, valid=None):
    """A list flag's items -> tuple of floats (or ints, kind=int); None stays None.

    Items are numbers or fractions like 8/255; UsageError naming the flag for anything else, a
    non-whole number when kind is int, or an item outside `valid` (a config.Range).
    """
    if values is None:
        return None
    parsed = []
    for item in (str(v).strip() for v in values):
        if not item:
            continue
        try:
            value = parse_number(item)
        except ValueError:
            raise UsageError(f"--{name} must list numbers or fractions like 8/255, got "
                             f"{item!r}") from None
        if kind is int:
            if not value.is_integer():
                raise UsageError(f"--{name} must list whole numbers, got {item!r}")
            value = int(value)
        if valid is not None and value not in valid:
            raise UsageError(f"--{name} items must be in {valid}, got {item}")
        parsed.append(value)
    return tuple(parsed)


def attack_config(prefix=""):
    from tf_metric_robust.config import AttackConfig

    return AttackConfig(eps=FLAGS[f"{prefix}eps"].value, step_size=FLAGS[f"{prefix}step_size"].value,
                        steps=FLAGS[f"{prefix}steps"].value, norm=FLAGS[f"{prefix}norm"].value,
                        loss=FLAGS[f"{prefix}attack_loss"].value,
                        random_start=FLAGS[f"{prefix}random_start"].value,
                        method=FLAGS.train_attack if prefix == "" and "train_attack" in FLAGS
                        else "pgd")


# Names accepted by --dataset and --model, checked before TensorFlow is imported (that import
# takes seconds); tests/test_reliability.py checks they equal data.dataset_names() and
# models.MODELS.
DATASETS = ("cifar10", "cifar100", "fashion_mnist", "mnist", "mnist5k", "svhn_cropped",
            "tiny_imagenet")
DATASET_FOLDER_PREFIX = "image_folder:"  # data.py: any labelled image folder
MODELS = ("madry_mnist", "mnist_large", "preact_resnet18", "preact_resnet_tiny", "small_cnn",
          "wide_resnet")
FAKE_PREFIX = "fake:"  # data.py: fake:<name>, random examples with <name>'s shapes and classes


def _dataset_choices():
    """The --dataset help: every registered name, fake:<name> and image_folder:/path."""
    return (f"{', '.join(DATASETS)}; {FAKE_PREFIX}<name> (random examples with that dataset's "
            f"shapes and classes, offline: smoke tests); or {DATASET_FOLDER_PREFIX}/path/to/folder")


def _check_dataset(name):
    """UsageError unless --dataset names a registered, fake:<registered> or folder dataset."""
    base = name[len(FAKE_PREFIX):] if name.startswith(FAKE_PREFIX) else name
    if base not in DATASETS and not name.startswith(DATASET_FOLDER_PREFIX):
        raise UsageError(f"unknown --dataset {name!r}; known: {_dataset_choices()}")


def _check_train_flags():
    """The invariants of bin/train's flags that need no TensorFlow, each as one-line UsageError."""
    from tf_metric_robust import distribute  # its TF_CONFIG helpers do not import TensorFlow

    if not FLAGS.model_dir:
        raise UsageError("--model_dir is required (where checkpoints and results go)")
    _check_dataset(FLAGS.dataset)
    if FLAGS.model not in MODELS:
        raise UsageError(f"unknown --model {FLAGS.model!r}; known: {', '.join(MODELS)}")
    # Single-flag ranges are checked while parsing (lower_bound, NumberParser); here the rest.
    if FLAGS.model == "wide_resnet" and (FLAGS.wrn_depth - 4) % 6:
        raise UsageError(f"--wrn_depth must be 6n+4 (10, 16, 22, 28, 34, ...), got "
                         f"{FLAGS.wrn_depth}")
    for name in ("model_dir", "data_dir"):
        path = FLAGS[name].value
        if path and "://" not in path and os.path.exists(path) and not os.path.isdir(path):
            raise UsageError(f"--{name} {path} is a file, not a directory")
    if FLAGS.strategy == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise UsageError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                             "(the cluster and this worker's task)")
        _, _, workers = distribute.cluster_from_env()
        if FLAGS.batch_size % workers:
            raise UsageError(f"--batch_size {FLAGS.batch_size} is not divisible by the "
                             f"{workers} workers of TF_CONFIG; use a multiple of {workers}")


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
    lr_boundaries = _numbers(FLAGS.lr_boundaries, "lr_boundaries", int)
    lr_values = _numbers(FLAGS.lr_values, "lr_values")
    try:
        optimizer = cfg.OptimizerConfig(
            name=FLAGS.optimizer, learning_rate=FLAGS.learning_rate,
            lr_boundaries=lr_boundaries, lr_values=lr_values, momentum=FLAGS.momentum,
            weight_decay=FLAGS.weight_decay)
        triplet = cfg.TripletConfig(
            mining=FLAGS.triplet_mining, negative_pool=FLAGS.negative_pool,
            positive=FLAGS.triplet_positive, margin=FLAGS.margin, margin_other=FLAGS.margin_other,
            distance=FLAGS.triplet_distance, lambda_triplet=FLAGS.lambda_triplet,
            lambda_norm=FLAGS.lambda_norm, bank_size=FLAGS.bank_size,
            pool_multiplier=FLAGS.pool_multiplier, separate_passes=FLAGS.separate_bn_passes,
            positive_noise=FLAGS.positive_noise, other_positive=FLAGS.other_positive)
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
                "--batch_size or --pool_multiplier, or use --negative_pool=batch or bank")
    elif examples < batch:
        raise UsageError(f"--dataset {FLAGS.dataset} has {examples} training examples, fewer "
                         f"than --batch_size {batch}; use --batch_size={examples} or less")


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
            model_dir=FLAGS.model_dir, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
            download=FLAGS.download, model=FLAGS.model,
            model_kwargs=_model_kwargs(FLAGS.model), mode=FLAGS.mode,
            batch_size=FLAGS.batch_size, train_steps=FLAGS.train_steps, optimizer=optimizer,
            label_smoothing=FLAGS.label_smoothing, augment=FLAGS.augment,
            attack=attack, eps_warmup_steps=FLAGS.eps_warmup_steps,
            eval_attack=eval_attack, triplet=triplet,
            eval_every=FLAGS.eval_every, eval_examples=FLAGS.eval_examples,
            final_eval_examples=FLAGS.final_eval_examples, eval_batch_size=FLAGS.eval_batch_size,
            strategy=FLAGS.strategy, tpu=FLAGS.tpu, mixed_precision=FLAGS.mixed_precision,
            jit_compile=FLAGS.jit_compile, seed=FLAGS.seed, deterministic=FLAGS.deterministic,
            checkpoint_every=FLAGS.checkpoint_every or FLAGS.eval_every,
            keep_checkpoints=FLAGS.keep_checkpoints, init_checkpoint=FLAGS.init_checkpoint,
            attack_bn_mode=FLAGS.attack_bn_mode, validation_examples=FLAGS.validation_examples,
            select_best=FLAGS.select_best, eval_round_to_grid=FLAGS.eval_round_to_grid,
            export=FLAGS.export, beta=FLAGS.beta, settings=recipe_settings(),
            base=FLAGS.base, awp_gamma=FLAGS.awp_gamma, awp_warmup_steps=FLAGS.awp_warmup_steps,
            ema_decay=FLAGS.ema_decay,
            overfit=OverfitConfig(FLAGS.overfit_check_every, FLAGS.on_overfit, FLAGS.overfit_drop),
            allow_changes=_allowed_changes())
    except ValueError as error:
        raise UsageError(str(error)) from None


def _model_kwargs(model):
    if model == "wide_resnet":
        return {"depth": FLAGS.wrn_depth, "width": FLAGS.wrn_width}
    return {}


# Flags of bin/train that do not change results: where the run reads and writes, how often it
# checkpoints or evaluates on the side (the final evaluation follows --final_eval_examples), on
# which hardware it runs, what is printed. Every other flag of this module is part of the recipe
# (recipe.json): a resume must match it unless --allow_changes names it (README, "Resuming").
NOT_IN_RECIPE = ("model_dir", "data_dir", "download", "eval_every", "eval_examples",
                 "eval_batch_size", "checkpoint_every", "keep_checkpoints", "export", "strategy",
                 "tpu", "jit_compile", "deterministic", "init_checkpoint", "allow_changes")


def _our_flags():
    """The flags this module defined for the running program (not absl's or TensorFlow's)."""
    return sorted(FLAGS.get_flags_for_module(__name__), key=lambda flag: flag.name)


def _plain_value(value):
    """A flag value as JSON; list items as numbers where they are numbers ('1e-4' == '0.0001')."""
    if isinstance(value, (list, tuple)):
        items = []
        for item in value:
            try:
                items.append(float(item))
            except (TypeError, ValueError):
                items.append(item)
        return items
    return value


def recipe_settings():
    """{flag name: value} of every result-changing flag of bin/train (not in NOT_IN_RECIPE)."""
    return {flag.name: _plain_value(flag.value) for flag in _our_flags()
            if flag.name not in NOT_IN_RECIPE}


def _allowed_changes():
    names = tuple(name.strip().lstrip("-") for name in FLAGS.allow_changes if name.strip())
    known = recipe_settings()
    for name in names:
        if name not in known:
            hint = ("it does not change results: no need to allow it" if name in NOT_IN_RECIPE
                    else "not a flag of bin/train")
            raise UsageError(f"--allow_changes: {name!r} is not a result-changing flag ({hint})")
    return names


def flag_values_text():
    """Our flags (not absl's or TensorFlow's) with their values, in flagfile syntax (flags.txt)."""
    lines = [flag.serialize() for flag in _our_flags()]
    return "".join(f"{line}\n" for line in lines if line)


class UsageError(UserError):
    """A bad flag value: printed as one line, exit status 2, no traceback."""


def run(main):
    """absl app.run with user errors (UserError and its kin) as one clean line, exit status 2."""

    def wrapped(argv):
        try:
            return main(argv)
        except (UserError, FileNotFoundError) as error:
            if FLAGS.verbosity >= logging.DEBUG:  # --verbosity=1 shows the traceback
                raise
            print(f"error: {error}", file=sys.stderr)
            logging.flush()
            sys.exit(2)

    # absl logs INFO by default, which buries the progress bar under TF's save/load chatter.
    FLAGS.set_default("verbosity", logging.WARNING)
    app.run(wrapped, flags_parser=_parse_flags)


def _parse_flags(argv):
    """absl's flag parsing, with a bad flag (unknown flag, missing --flagfile, value out of an
    enum) reported as one 'error:' line and exit status 2 like the other user errors (absl's
    own parser prints two lines and exits 1)."""
    try:
        argv = FLAGS(argv)
        if FLAGS["verbosity"].using_default_value:
            # Assigned, not left at its default: app.run raises a default verbosity to INFO.
            FLAGS.verbosity = FLAGS["verbosity"].default
        return argv
    except flags.Error as error:
        message = _value_message(" ".join(str(error).replace("ERROR:: ", "").split()))
        print(f"error: {message} (--helpshort lists the flags)", file=sys.stderr)
        sys.exit(2)
    except SystemExit as done:
        # absl prints --help/--helpshort/--helpfull and exits 1; asking for help is no failure.
        if done.code == 1 and HELP_FLAGS & {arg.split("=")[0].lstrip("-") for arg in argv[1:]}:
            sys.exit(0)
        raise


HELP_FLAGS = {"help", "helpshort", "helpfull", "helpxml", "?", "h"}


def _value_message(message):
    """absl's 'flag --x=0: 0 is not a positive integer' (and NumberParser's 'flag --x=v: must
    be ...') -> '--x must be a positive integer, got 0', the wording of the config checks."""
    match = re.fullmatch(r"flag --(\w+)=(.*?): (.*)", message)
    if not match:
        return message
    name, reason = match.group(1), match.group(3)
    bound = re.fullmatch(r"(\S+) is not (an? .*)", reason)
    if bound:
        return f"--{name} must be {bound.group(2)}, got {bound.group(1)}"
    if reason.startswith("must be"):
        return f"--{name} {reason}"
    return message


# bin/evaluate ------------------------------------------------------------------------------------

EVAL_DEFAULT_ATTACKS = list(cfg.DEFAULT_ATTACKS)


def define_evaluate_flags():
    """Flags of bin/evaluate; unset attack settings take the dataset's literature defaults."""
    flags.DEFINE_string("model_dir", None, "A bin/train run: its latest checkpoint (or its "
                        "saved_model/) is evaluated; recipe.json gives the dataset.")
    flags.DEFINE_string("saved_model", None, "Evaluate this SavedModel instead (signature "
                        "serving_default: images [N,H,W,C] in [0,1] -> logits, embedding). "
                        "SECURITY: a SavedModel is a program (its ops can read and write files); "
                        "evaluate one you did not make only in a sandbox without secrets or "
                        "network (README, Security).")
    flags.DEFINE_string("dataset", None, "Dataset, a name of bin/train's --dataset (default: the "
                        "run's recipe.json; required for a SavedModel outside a run).")
    _define_data_location_flags()
    flags.DEFINE_string("split", None, "Split to evaluate (default: the test split).")
    flags.DEFINE_integer("num_examples", None, "Evaluate only the first N examples.",
                         lower_bound=1)
    flags.DEFINE_integer("batch_size", 200, "Examples per attack call on each replica (a shard: "
                         "results do not depend on the number of replicas or workers).",
                         lower_bound=1)
    flags.DEFINE_enum("strategy", "auto", list(cfg.EVAL_STRATEGIES), "Devices: auto = all "
                      "local GPUs (else the CPU); mirrored = all GPUs or all logical CPUs; "
                      "multi_worker = the TF_CONFIG workers share the examples, each on its "
                      "local devices, through the output folder (a file system all see); the "
                      "chief writes the report. A re-run resumes from the finished shards.")
    flags.DEFINE_float("worker_timeout", 120.0, "Seconds without a heartbeat from a worker "
                       "whose shards are missing before the others give up on it.",
                       lower_bound=1.0)
    flags.DEFINE_string("output", None, "report.json path (default: "
                        "<model_dir>/evaluation/report.json); figures go next to it.")
    flags.DEFINE_list("attacks", EVAL_DEFAULT_ATTACKS, "Attacks at --eps: names of the attack "
                      "registry (fgsm, pgd, mifgsm, ...) or <name>_<loss> (pgd_cw).")
    define_number("eps", None, "Threat-model radius on the [0,1] image scale (default: MNIST "
                  "0.3, CIFAR 8/255).", cfg.UNIT)
    define_number("step_size", None, "PGD step size (default: MNIST 0.01, CIFAR 1/255).",
                  cfg.POSITIVE)
    flags.DEFINE_integer("steps", None, "PGD steps (default: MNIST 100, CIFAR 20).",
                         lower_bound=1)
    flags.DEFINE_enum("norm", "linf", ["linf", "l2"], "Threat-model norm.")
    flags.DEFINE_integer("restarts", 1, "Random restarts of each PGD attack at --eps.",
                         lower_bound=1)
    flags.DEFINE_bool("random_start", True, "PGD starts at a random point of the ball.")
    flags.DEFINE_list("eps_sweep", None, "PGD radii of the eps sweep, each in [0, 1]; empty to "
                      "skip (default: MNIST 0,0.1,...,0.4; CIFAR 0,2/255,...,16/255).")
    flags.DEFINE_list("steps_sweep", None, "PGD step counts of the steps sweep, each >= 1; empty "
                      "to skip (default: MNIST 1,10,20,40,100; CIFAR 1,5,10,20,50).")
    define_number("large_eps", 0.5, "L-inf radius of the 'unbounded attack' sanity check "
                  "(accuracy must fall near 0).", cfg.Range(0.0, 1.0, low_open=True))
    flags.DEFINE_integer("seed", 0, "Seed of the attacks' random starts.", **SEED_RANGE)
    flags.DEFINE_bool("detection", False, "Also run detection in the embedding space as the TLA "
                      "paper (Gaussian and kNN detectors, adaptive attack, ROC PNG).")
    flags.DEFINE_enum("detector", "gaussian", ["gaussian", "knn"], "Detector that heads the "
                      "detection report (both are scored): gaussian = class-conditional "
                      "Gaussians, the paper's; knn = k nearest neighbours.")
    flags.DEFINE_list("detection_eps", None, "PGD radii scored by the detectors, each in [0, 1] "
                      "(default, the paper's: MNIST 0.3; CIFAR and Tiny ImageNet 25/255).")
    flags.DEFINE_integer("detection_steps", None, "PGD steps of the detection attacks (default, "
                         "the paper's: MNIST 100, CIFAR 20, Tiny ImageNet 30).", lower_bound=1)
    flags.DEFINE_enum("detection_covariance", None, ["per_class", "tied"], "Gaussian detector "
                      "covariance (default: per_class; tied for Tiny ImageNet).")
    flags.DEFINE_list("detection_weights", ["0.1", "1", "10"], "Weights c of the adaptive "
                      "attack on each detector (margin + c x detector confidence); empty to "
                      "skip it.")
    flags.DEFINE_integer("detection_reference", 5000, "Clean training examples in the kNN "
                         "reference.", lower_bound=1)
    flags.DEFINE_integer("detection_k", 50, "Neighbours of the kNN detector.", lower_bound=1)
    flags.DEFINE_enum("detection_score", "agreement", ["agreement", "similarity"],
                      "kNN detection score (see detection.KnnDetector).")
    flags.DEFINE_enum("suite", "none", list(cfg.SUITES), "Also run a standard attack "
                      "suite into the worst case: autoattack = APGD-CE, APGD-T (DLR), FAB-T, Square "
                      "(Croce & Hein 2020) at --eps/--norm/--seed; report.json 'suite' section.")
    flags.DEFINE_enum("suite_version", "standard", list(cfg.SUITE_VERSIONS), "AutoAttack version "
                      "(plus: + APGD-DLR, 5 restarts; rand: APGD-CE and APGD-DLR averaging 20 "
                      "samples of a randomised model per gradient; untargeted FAB is not "
                      "implemented).")
    flags.DEFINE_integer("suite_steps", 100, "APGD and FAB-T iterations of the suite (paper: "
                         "100; fewer for a quick, weaker check).", lower_bound=1)
    flags.DEFINE_integer("suite_queries", 5000, "Square queries of the suite (paper: 5000).",
                         lower_bound=1)
    flags.DEFINE_bool("progress", True, "Show a progress bar.")
    flags.DEFINE_bool("tensorboard", True, "Write TensorBoard summaries.")


def evaluate_config():
    """Parsed flags -> config.EvaluateRun (UsageError with one line on bad values)."""
    if bool(FLAGS.model_dir) == bool(FLAGS.saved_model):
        raise UsageError("pass exactly one of --model_dir and --saved_model")
    for name in ("model_dir", "saved_model"):  # before the TensorFlow import: a typo fails fast
        path = getattr(FLAGS, name)
        if path and not os.path.exists(path):
            raise UsageError(f"--{name} {path} does not exist")
    dataset = FLAGS.dataset
    if dataset:
        _check_dataset(dataset)
    if FLAGS.strategy == "multi_worker":
        from tf_metric_robust import distribute  # its TF_CONFIG helpers do not import TensorFlow

        if "TF_CONFIG" not in os.environ:
            raise UsageError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                             "(the cluster and this worker's task), as for bin/train")
        distribute.cluster_from_env()  # malformed JSON: one line, before TensorFlow
    sweeps = dict(eps_sweep=_numbers(FLAGS.eps_sweep, "eps_sweep", valid=cfg.UNIT),
                  steps_sweep=_numbers(FLAGS.steps_sweep, "steps_sweep", int,
                                      cfg.Range(1, high_open=True)),
                  detection_eps=_numbers(FLAGS.detection_eps, "detection_eps", valid=cfg.UNIT),
                  detection_weights=_numbers(FLAGS.detection_weights, "detection_weights",
                                             valid=cfg.NON_NEGATIVE))
    from tf_metric_robust import attacks
    from tf_metric_robust.evaluation import plan as evaluation_plan

    attack_names = tuple(a.strip() for a in FLAGS.attacks if a.strip())
    for name in attack_names:
        evaluation_plan.resolve_attack(name, attacks.ATTACKS)
    try:
        config = cfg.EvalConfig(
            eps=FLAGS.eps, step_size=FLAGS.step_size, steps=FLAGS.steps, norm=FLAGS.norm,
            restarts=FLAGS.restarts, random_start=FLAGS.random_start, attacks=attack_names,
            large_eps=FLAGS.large_eps, seed=FLAGS.seed, detection=FLAGS.detection, **sweeps,
            detection_reference=FLAGS.detection_reference, detection_k=FLAGS.detection_k,
            detection_score=FLAGS.detection_score, detector=FLAGS.detector,
            detection_steps=FLAGS.detection_steps,
            detection_covariance=FLAGS.detection_covariance, suite=FLAGS.suite,
            suite_version=FLAGS.suite_version, suite_steps=FLAGS.suite_steps,
            suite_queries=FLAGS.suite_queries)
        return cfg.EvaluateRun(
            model_dir=FLAGS.model_dir, saved_model=FLAGS.saved_model, dataset=FLAGS.dataset,
            data_dir=FLAGS.data_dir, download=FLAGS.download, split=FLAGS.split,
            num_examples=FLAGS.num_examples, batch_size=FLAGS.batch_size, output=FLAGS.output,
            progress=FLAGS.progress, tensorboard=FLAGS.tensorboard, config=config,
            strategy=FLAGS.strategy, worker_timeout=FLAGS.worker_timeout)
    except ValueError as error:
        raise UsageError(str(error)) from None


# bin/export --------------------------------------------------------------------------------------


def define_export_flags():
    """Flags of bin/export (SavedModel for TF Serving with a detector inside)."""
    flags.DEFINE_string("model_dir", None, "A bin/train run: its latest checkpoint is exported; "
                        "recipe.json gives the model and the dataset of the detection reference.")
    flags.DEFINE_string("export_dir", None, "TF Serving model base path; the export goes to "
                        "<export_dir>/<version>/ (default: <model_dir>/saved_model).")
    flags.DEFINE_integer("version", None, "Version folder to write (default: the largest "
                         "existing version + 1); an existing version is never overwritten.",
                         lower_bound=1)
    _define_data_location_flags(" (detection reference)")
    flags.DEFINE_enum("detector", "gaussian", ["gaussian", "knn"], "Detector behind the "
                      "detection_score output: gaussian (the TLA paper's) or knn.")
    flags.DEFINE_enum("detection_covariance", None, ["per_class", "tied"], "Gaussian detector "
                      "covariance (default: per_class; tied for Tiny ImageNet).")
    flags.DEFINE_integer("detection_reference", 5000, "Clean training examples the detector is "
                         "fitted on (split evenly over the classes; bin/evaluate takes the same).",
                         lower_bound=1)
    flags.DEFINE_integer("detection_k", 50, "Neighbours of the kNN detector.", lower_bound=1)
    flags.DEFINE_enum("detection_score", "agreement", ["agreement", "similarity"],
                      "kNN detection score (see detection.KnnDetector).")
    flags.DEFINE_bool("warmup", True, "Write assets.extra/tf_serving_warmup_requests.")


def export_config():
    """Parsed flags -> config.ExportConfig (raises UsageError with one line on bad values)."""
    import os  # local: this section is appended to the module without touching its imports

    if not FLAGS.model_dir:
        raise UsageError("--model_dir is required (a bin/train run)")
    if not os.path.isdir(FLAGS.model_dir):  # checked before importing TensorFlow: fails fast
        raise UsageError(f"--model_dir {FLAGS.model_dir} does not exist")
    from tf_metric_robust.config import ExportConfig

    try:
        return ExportConfig(
            model_dir=FLAGS.model_dir, export_dir=FLAGS.export_dir, version=FLAGS.version,
            data_dir=FLAGS.data_dir, download=FLAGS.download,
            detection_reference=FLAGS.detection_reference, detection_k=FLAGS.detection_k,
            detection_score=FLAGS.detection_score, detector=FLAGS.detector,
            detection_covariance=FLAGS.detection_covariance, warmup=FLAGS.warmup)
    except ValueError as error:
        raise UsageError(str(error)) from None


# bin/compare -------------------------------------------------------------------------------------

COMPARE_FLAGS = ("modes", "seeds", "output", "mode_flags", "evaluate_examples", "evaluate_flags",
                 "parallel", "only", "collect", "reference")


def define_compare_flags():
    """Flags of bin/compare, plus bin/train's: a recipe's --flagfile parses, and every training
    flag given (in the flagfile or on the command line) is passed on to each run's bin/train."""
    define_train_flags()
    flags.DEFINE_list("modes", ["natural", "pgd", "tla", "trades", "mart"], "Entries to compare: "
                      f"modes of bin/train ({', '.join(cfg.MODES)}), the variant tla_authors "
                      "(TLA with the authors' negatives and positives) or names defined in "
                      "--mode_flags.")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds: each entry trains once per seed.")
    flags.DEFINE_string("output", "runs/compare", "Folder of the comparison: <entry>/seed<k>/ "
                        "model_dirs, logs/, results.json, results.md, PNGs, HParams.")
    flags.DEFINE_string("mode_flags", "", "Per-entry bin/train flags, ';'-separated: "
                        "'trades:--beta=1;tla:--margin=0.1'; 'NAME=MODE:--flag=v' defines a new "
                        "entry (e.g. 'tla_long=tla:--train_steps=2400').")
    flags.DEFINE_integer("evaluate_examples", 0, "Test examples of the shared evaluation (the "
                         "first N; 0 = the whole test split).", lower_bound=0)
    flags.DEFINE_string("evaluate_flags", "", "Extra bin/evaluate flags for every run, e.g. "
                        "'--detection_weights=1 --suite_steps=20'.")
    flags.DEFINE_integer("parallel", 1, "Runs at once on this machine (CPU threads are split "
                         "between them).", lower_bound=1)
    flags.DEFINE_list("only", [], "Train and evaluate only these ENTRY:SEED pairs (one job of "
                      "a cluster; aggregate with --collect afterwards).")
    flags.DEFINE_bool("collect", False, "Train nothing: aggregate the finished runs found in "
                      "--output into results.json/.md, figures and HParams.")
    flags.DEFINE_string("reference", "pgd", "Entry the results are relative to (PGD-AT).")


def compare_config():
    """Parsed flags -> config.CompareConfig; the plan is checked too (TF-free, one-line errors)."""
    import shlex  # local: this section is appended to the module without touching its imports

    from tf_metric_robust.compare import plan

    seeds = _numbers(FLAGS.seeds, "seeds", int, cfg.Range(0, SEED_RANGE["upper_bound"]))
    forwarded = ("mode", "seed", "model_dir")  # set per run by bin/compare
    train_args = tuple(flag.serialize() for flag in _our_flags()
                       if flag.present and flag.name not in COMPARE_FLAGS + forwarded)
    try:
        config = cfg.CompareConfig(
            output=FLAGS.output, entries=tuple(m.strip() for m in FLAGS.modes if m.strip()),
            seeds=tuple(seeds), train_args=train_args, mode_flags=FLAGS.mode_flags,
            evaluate_examples=FLAGS.evaluate_examples,
            evaluate_args=tuple(shlex.split(FLAGS.evaluate_flags)), parallel=FLAGS.parallel,
            only=plan.parse_only(FLAGS.only), collect=FLAGS.collect, reference=FLAGS.reference)
        plan.build(config, cfg.MODES)
        return config
    except ValueError as error:
        raise UsageError(str(error)) from None
