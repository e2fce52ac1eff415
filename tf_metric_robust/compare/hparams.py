"""TensorBoard HParams for a comparison: every run's hyper-parameters and final numbers.

Each finished run gets an HParams session in its own TensorBoard folder (`<model_dir>/tensorboard`,
beside its training scalars) with the final numbers as `compare/*` scalars; the comparison's
folder gets the experiment (`hparams_config`: which hyper-parameters and metrics the table shows),
so `tensorboard --logdir <output>` lists every run in the HParams table and parallel coordinates.
API: tensorboard.plugins.hparams.api (hp.hparams, hp.hparams_config).
"""

import os

from tf_metric_robust.compare import report, table

TAG_PREFIX = "compare/"


def run_hparams(run):
    """{name: bool/int/float/str}: entry, mode, seed and every setting of recipe.json."""
    values = {"entry": run["entry"], "mode": run["mode"], "seed": run["seed"]}
    recipe = report._read_json(os.path.join(run["model_dir"], "recipe.json")) or {}
    for name, value in sorted((recipe.get("settings") or {}).items()):
        if name in values:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        elif value is None:
            value = "none"
        values[name] = value
    return values


def run_metrics(run):
    """{compare/<metric>: float} of the numbers the run has (accuracies as fractions)."""
    keys = [key for key, _, _ in table.METRICS] + [
        "robust_accuracy",
        "adaptive_detection_auc",
        "adaptive_undetected_at_5pct_fpr",
    ]
    return {
        TAG_PREFIX + key: float(run["numbers"][key])
        for key in keys
        if run["numbers"].get(key) is not None
    }


def write_run(run):
    """One HParams session with the run's final numbers in <model_dir>/tensorboard; the path."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    logdir = os.path.join(run["model_dir"], "tensorboard")
    step = int((run.get("train_metrics") or {}).get("step") or 0)
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default(step=step):
        hp.hparams(run_hparams(run), trial_id=f"{run['entry']}:{run['seed']}")
        for tag, value in run_metrics(run).items():
            tf.summary.scalar(tag, value)
    writer.close()
    return logdir


def write_experiment(output, runs):
    """The experiment summary in <output>, the top folder (as in TensorBoard's HParams guide):
    the hyper-parameters that differ between the runs (plus entry, mode, seed) and the compare/*
    metrics, so the table opens on what varies."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    every = [run_hparams(run) for run in runs]
    names = ["entry", "mode", "seed"] + sorted(
        name
        for name in {n for values in every for n in values} - {"entry", "mode", "seed"}
        if len({repr(values.get(name)) for values in every}) > 1
    )
    hparams = []
    for name in names:
        seen = sorted({values[name] for values in every if name in values}, key=repr)
        if seen and all(isinstance(v, str) for v in seen):
            hparams.append(hp.HParam(name, hp.Discrete(seen)))
        else:
            hparams.append(hp.HParam(name))
    metrics = [hp.Metric(TAG_PREFIX + key, display_name=title) for key, title, _ in table.METRICS]
    writer = tf.summary.create_file_writer(output)
    with writer.as_default():
        hp.hparams_config(hparams=hparams, metrics=metrics)
    writer.close()
    return output


__all__ = ["TAG_PREFIX", "run_hparams", "run_metrics", "write_experiment", "write_run"]
