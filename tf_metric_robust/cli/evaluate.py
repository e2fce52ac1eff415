"""bin/evaluate's flags -> config.EvaluateRun; unset attack settings take the dataset's defaults."""

import os

from tf_metric_robust import config as cfg
from tf_metric_robust.cli.common import (
    UsageError,
    check_dataset,
    check_multi_worker_env,
    config_from_flags,
    define_flags,
)


def define_evaluate_flags():
    """Flags of bin/evaluate: every setting of EvaluateRun and its EvalConfig; unset attack
    settings take the dataset's literature defaults (EvalConfig.resolve)."""
    define_flags(cfg.EvaluateRun)


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
    """Parsed flags -> config.EvaluateRun (UsageError with one line on bad values); what needs
    no TensorFlow (paths, the run's record, TF_CONFIG) is checked before it is imported."""
    request = config_from_flags(cfg.EvaluateRun)
    for name in ("model_dir", "saved_model"):
        path = getattr(request, name)
        if path and not os.path.exists(path):
            raise UsageError(f"--{name} {path} does not exist")
    if request.dataset:
        check_dataset(request.dataset)
    if request.strategy == "multi_worker":
        check_multi_worker_env()  # missing or malformed TF_CONFIG: one line, before TensorFlow
    if request.saved_model:
        _check_saved_model(request.saved_model)
    else:
        from tf_metric_robust import run_folder  # reads the record without TensorFlow

        run_folder.read_recipe(request.model_dir)  # UserError for a folder that is not a run
    # The attack registry imports TensorFlow: the names are checked last.
    from tf_metric_robust import attacks
    from tf_metric_robust.evaluation import plan as evaluation_plan

    for name in request.config.attacks:
        evaluation_plan.resolve_attack(name, attacks.ATTACKS)
    return request
