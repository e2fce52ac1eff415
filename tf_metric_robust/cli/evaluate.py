"""bin/evaluate's flags -> config.EvaluateRun; unset attack settings take the dataset's defaults."""

import os

from absl import flags

from tf_metric_robust import config as cfg
from tf_metric_robust.cli.common import (
    FLAGS,
    SEED_RANGE,
    UsageError,
    check_dataset,
    check_multi_worker_env,
    config_from_flags,
    define_data_location_flags,
    define_detector_flags,
    define_number,
    number_list,
)

EVAL_DEFAULT_ATTACKS = list(cfg.DEFAULT_ATTACKS)


def define_evaluate_flags():
    """Flags of bin/evaluate; unset attack settings take the dataset's literature defaults."""
    flags.DEFINE_string(
        "model_dir",
        None,
        "A bin/train run: its latest checkpoint (or its "
        "saved_model/) is evaluated; recipe.json gives the dataset.",
    )
    flags.DEFINE_string(
        "saved_model",
        None,
        "Evaluate this SavedModel instead (signature "
        "serving_default: images [N,H,W,C] in [0,1] -> logits, embedding). "
        "SECURITY: a SavedModel is a program (its ops can read and write files); "
        "evaluate one you did not make only in a sandbox without secrets or "
        "network (README, Security).",
    )
    flags.DEFINE_string(
        "dataset",
        None,
        "Dataset, a name of bin/train's --dataset (default: the "
        "run's recipe.json; required for a SavedModel outside a run).",
    )
    define_data_location_flags()
    flags.DEFINE_string("split", None, "Split to evaluate (default: the test split).")
    flags.DEFINE_integer("num_examples", None, "Evaluate only the first N examples.", lower_bound=1)
    flags.DEFINE_integer(
        "batch_size",
        200,
        "Examples per attack call on each replica (a shard: "
        "results do not depend on the number of replicas or workers).",
        lower_bound=1,
    )
    flags.DEFINE_enum(
        "strategy",
        "auto",
        list(cfg.EVAL_STRATEGIES),
        "Devices: auto = all "
        "local GPUs (else the CPU); mirrored = all GPUs or all logical CPUs; "
        "multi_worker = the TF_CONFIG workers share the examples, each on its "
        "local devices, through the output folder (a file system all see); the "
        "chief writes the report. A re-run resumes from the finished shards.",
    )
    define_number(
        "worker_timeout",
        120.0,
        "Seconds without a heartbeat from a worker "
        "whose shards are missing before the others give up on it.",
        cfg.Range(1.0),
    )
    flags.DEFINE_string(
        "output",
        None,
        "report.json path (default: <model_dir>/evaluation/report.json); figures go next to it.",
    )
    flags.DEFINE_list(
        "attacks",
        EVAL_DEFAULT_ATTACKS,
        "Attacks at --eps: names of the attack "
        "registry (fgsm, pgd, mifgsm, ...) or <name>_<loss> (pgd_cw).",
    )
    define_number(
        "eps",
        None,
        "Threat-model radius on the [0,1] image scale (default: MNIST 0.3, CIFAR 8/255).",
        cfg.UNIT,
    )
    define_number(
        "step_size", None, "PGD step size (default: MNIST 0.01, CIFAR 1/255).", cfg.POSITIVE
    )
    flags.DEFINE_integer("steps", None, "PGD steps (default: MNIST 100, CIFAR 20).", lower_bound=1)
    flags.DEFINE_enum("norm", "linf", ["linf", "l2"], "Threat-model norm.")
    flags.DEFINE_integer(
        "restarts", 1, "Random restarts of each PGD attack at --eps.", lower_bound=1
    )
    flags.DEFINE_bool("random_start", True, "PGD starts at a random point of the ball.")
    flags.DEFINE_list(
        "eps_sweep",
        None,
        "PGD radii of the eps sweep, each in [0, 1]; empty to "
        "skip (default: MNIST 0,0.1,...,0.4; CIFAR 0,2/255,...,16/255).",
    )
    flags.DEFINE_list(
        "steps_sweep",
        None,
        "PGD step counts of the steps sweep, each >= 1; empty "
        "to skip (default: MNIST 1,10,20,40,100; CIFAR 1,5,10,20,50).",
    )
    define_number(
        "large_eps",
        0.5,
        "L-inf radius of the 'unbounded attack' sanity check (accuracy must fall near 0).",
        cfg.Range(0.0, 1.0, low_open=True),
    )
    flags.DEFINE_integer("seed", 0, "Seed of the attacks' random starts.", **SEED_RANGE)
    flags.DEFINE_bool(
        "detection",
        False,
        "Also run detection in the embedding space as the TLA "
        "paper (Gaussian and kNN detectors, adaptive attack, ROC PNG).",
    )
    define_detector_flags(
        "Detector that heads the detection report (both are scored): gaussian = "
        "class-conditional Gaussians, the paper's; knn = k nearest neighbours.",
        "Clean training examples the detectors are fitted on (split evenly over the classes).",
    )
    flags.DEFINE_list(
        "detection_eps",
        None,
        "PGD radii scored by the detectors, each in [0, 1] "
        "(default, the paper's: MNIST 0.3; CIFAR and Tiny ImageNet 25/255).",
    )
    flags.DEFINE_integer(
        "detection_steps",
        None,
        "PGD steps of the detection attacks (default, "
        "the paper's: MNIST 100, CIFAR 20, Tiny ImageNet 30).",
        lower_bound=1,
    )
    flags.DEFINE_list(
        "detection_weights",
        ["0.1", "1", "10"],
        "Weights c of the adaptive "
        "attack on each detector (margin + c x detector confidence); empty to "
        "skip it.",
    )
    flags.DEFINE_enum(
        "suite",
        "none",
        list(cfg.SUITES),
        "Also run a standard attack "
        "suite into the worst case: autoattack = APGD-CE, APGD-T (DLR), FAB-T, Square "
        "(Croce & Hein 2020) at --eps/--norm/--seed; report.json 'suite' section.",
    )
    flags.DEFINE_enum(
        "suite_version",
        "standard",
        list(cfg.SUITE_VERSIONS),
        "AutoAttack version "
        "(plus: + APGD-DLR, 5 restarts; rand: APGD-CE and APGD-DLR averaging 20 "
        "samples of a randomised model per gradient; untargeted FAB is not "
        "implemented).",
    )
    flags.DEFINE_integer(
        "suite_steps",
        100,
        "APGD and FAB-T iterations of the suite (paper: 100; fewer for a quick, weaker check).",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "suite_queries", 5000, "Square queries of the suite (paper: 5000).", lower_bound=1
    )
    flags.DEFINE_bool("progress", True, "Show a progress bar.")
    flags.DEFINE_bool("tensorboard", True, "Write TensorBoard summaries.")


def _check_saved_model(path):
    """UsageError unless `path` holds saved_model.pb, itself or in a version folder (the TF
    Serving layout export/folders.py writes); the message points at what `path` is instead."""
    folders = [path]
    if os.path.isdir(path):
        folders += [os.path.join(path, n) for n in os.listdir(path) if n.isdigit()]
    if any(os.path.exists(os.path.join(folder, "saved_model.pb")) for folder in folders):
        return
    hint = ""
    if os.path.exists(os.path.join(path, "recipe.json")):
        hint = f"; it is a training run: pass --model_dir={path}"
        if os.path.isdir(os.path.join(path, "saved_model")):
            hint += f" or --saved_model={os.path.join(path, 'saved_model')}"
    raise UsageError(
        f"--saved_model {path}: no saved_model.pb there nor in a version folder below it{hint}"
    )


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
        check_dataset(dataset)
    if FLAGS.strategy == "multi_worker":
        check_multi_worker_env()  # missing or malformed TF_CONFIG: one line, before TensorFlow
    sweeps = dict(
        eps_sweep=number_list(FLAGS.eps_sweep, "eps_sweep", valid=cfg.UNIT),
        steps_sweep=number_list(
            FLAGS.steps_sweep, "steps_sweep", int, cfg.Range(1, high_open=True)
        ),
        detection_eps=number_list(FLAGS.detection_eps, "detection_eps", valid=cfg.UNIT),
        detection_weights=number_list(
            FLAGS.detection_weights, "detection_weights", valid=cfg.NON_NEGATIVE
        ),
    )
    attack_names = tuple(a.strip() for a in FLAGS.attacks if a.strip())
    config = config_from_flags(cfg.EvalConfig, attacks=attack_names, **sweeps)
    request = config_from_flags(cfg.EvaluateRun, config=config)
    if FLAGS.saved_model:
        _check_saved_model(FLAGS.saved_model)
    else:
        from tf_metric_robust import run_folder  # reads the record without TensorFlow

        run_folder.read_recipe(FLAGS.model_dir)  # UserError for a folder that is not a run
    # The attack registry imports TensorFlow: the names are checked last.
    from tf_metric_robust import attacks
    from tf_metric_robust.evaluation import plan as evaluation_plan

    for name in attack_names:
        evaluation_plan.resolve_attack(name, attacks.ATTACKS)
    return request
