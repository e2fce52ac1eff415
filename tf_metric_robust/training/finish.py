"""The evaluations of a training run and its end: the final evaluation on the test split, the
projector data, metrics.json and the SavedModel export.

metrics.json is written after the projector data and before the export: its presence marks a
finished evaluation. A run that trained exports a new version (export/ never overwrites one); a
run killed during export exports when re-run. The export is bin/export's
(export.export_with_detector with ExportConfig's defaults: the same detector, threshold and
detector.json), except that a detector that cannot be fitted is left out, not an error.
"""

import dataclasses
import json
import os
from typing import Any, Callable

import tensorflow as tf
from absl import logging

from tf_metric_robust import atomic_io, data, export, models, run_folder
from tf_metric_robust.config import ExportConfig, covariance_problem, detector_settings
from tf_metric_robust.training import ema, inputs, summaries


@dataclasses.dataclass(frozen=True)
class RunParts:
    """What a run's evaluations work with: its TrainConfig, the compiled trainer, the TensorBoard
    writer, the step guard (stop signals), the folder it writes (model_dir, or a non-chief
    worker's scratch folder) and `report`, which takes each progress line."""

    config: Any
    trainer: Any
    writer: Any
    guard: Any
    output_dir: str
    report: Callable


def evaluate_on(run, dataset, num_examples):
    """(Keras evaluate results, number of examples they average), warning on a short count.

    The count is the clean-accuracy tracker's: every accuracy in a report says what it is over.
    """
    config = run.config
    results = run.trainer.evaluate(dataset, return_dict=True, verbose=0, callbacks=[run.guard])
    count = int(run.trainer.trackers["clean_accuracy"].count.numpy())
    expected = data.eval_size(
        config.dataset,
        num_examples=num_examples,
        data_dir=config.data_dir,
        download=config.download,
    )
    if count != expected:
        logging.warning(
            f"the evaluation scored {count} of {expected} test examples; its "
            "accuracies average those only"
        )
    return results, count


def _export_is_stale(model_dir):
    """True without a SavedModel version newer than metrics.json (e.g. killed during export)."""
    latest = export.latest_version(os.path.join(model_dir, "saved_model"))
    metrics_path = os.path.join(model_dir, "metrics.json")
    return latest is None or (
        os.path.exists(metrics_path) and os.path.getmtime(latest) < os.path.getmtime(metrics_path)
    )


def finish(run, step, *, trained, seconds, best=None):
    """Final evaluation on the test split -> projector data, metrics.json, SavedModel; returns
    the metrics dict. `trained`: this run took steps; `seconds`: its training time; `best`: the
    run's run.BestCheckpoint with --select_best, else None."""
    config = run.config
    metrics_path = os.path.join(config.model_dir, "metrics.json")
    # Decided before any collective, from the (shared) model_dir: every worker takes the same path.
    reuse_metrics = os.path.exists(metrics_path) and not trained
    needs_export = config.export and (trained or _export_is_stale(config.model_dir))
    # --select_best: the final evaluation and the export use the selected weights (the EMA's,
    # if on: the selection evaluated those); else the EMA's, if on.
    selected = best.restore(run.trainer.network) if best is not None else None
    if selected:
        run.report(
            f"Selected the checkpoint of step {selected['step']} (validation PGD accuracy "
            f"{selected['validation_pgd_accuracy']:.4f})"
        )
    with ema.maybe_swapped_in(None if selected else run.trainer.ema):
        if reuse_metrics:
            with open(metrics_path) as f:
                metrics = json.load(f)
        else:
            metrics = _final_metrics(run, step, selected, seconds)
        if needs_export:
            run.guard.check()
            _export(run, best.directory if selected else None)
    return metrics


def _final_metrics(run, step, selected, seconds):
    """Evaluates on the test split; writes the projector data and metrics.json."""
    config = run.config
    final_data = inputs.eval_input(config, config.final_eval_examples)
    results, count = evaluate_on(run, final_data, config.final_eval_examples)
    robust = f"eval/{summaries.attack_label(config.eval_attack)}_accuracy"
    attack = dataclasses.asdict(config.eval_attack)
    split = data.dataset_info(config.dataset).test_split
    metrics = {
        "step": step,
        "dataset": config.dataset,
        "model": config.model,
        "mode": config.mode,
        # Keras' float32 means: a fraction of `count` examples, free of float32 noise
        # (0.973, not 0.9729999899864197).
        "eval/clean_accuracy": round(float(results["clean_accuracy"]), 6),
        robust: round(float(results["pgd_accuracy"]), 6),
        "eval_attack": attack,
        "num_examples": count,
        # What each number is: the attack behind it and how many test examples it averages.
        "accuracies": {
            "eval/clean_accuracy": {"attack": None, "num_examples": count, "split": split},
            robust: {"attack": {"name": "pgd", **attack}, "num_examples": count, "split": split},
        },
        "train_seconds_this_run": round(seconds, 1),
        "weights": "ema" if config.ema_decay else "trained",  # which weights scored
    }
    if selected:
        metrics["selected_checkpoint"] = selected
    summaries.log_projector(run.writer.logdir, run.trainer.network, final_data, step=step)
    run.guard.check()
    atomic_io.write_json_atomic(os.path.join(run.output_dir, "metrics.json"), metrics)
    return metrics


def export_settings(config):
    """The ExportConfig of a training run's own export: bin/export's defaults for its model_dir
    and data."""
    return ExportConfig(
        model_dir=config.model_dir, data_dir=config.data_dir, download=config.download
    )


def check_export(config, network, report):
    """Before training: says in one line when the export at the end cannot hold the detector
    for this network's class count and embedding size (config.covariance_problem's memory
    limit), so that it is known before a long run, not after it."""
    if not config.export:
        return
    num_classes = int(network.get_layer("logits").units)
    dim = models.embedding_dim(network)
    options = detector_settings(
        export_settings(config), config.dataset, num_classes=num_classes, embedding_dim=dim
    )
    problem = options["detector"] == "gaussian" and covariance_problem(
        options["covariance"], num_classes, dim
    )
    if problem:
        report(f"The export at the end will have no detector: {problem}")
    else:
        logging.info(f"export: {options['detector']} detector, covariance {options['covariance']}")


def _export(run, best_dir):
    """The SavedModel with its detector, threshold and detector.json, as bin/export writes them
    (a detector that cannot be fitted is left out, said in one line); `best_dir`: the folder of
    --select_best's checkpoint when its weights are exported, else None."""
    config = run.config
    folder = best_dir or run_folder.checkpoint_dir(run.output_dir)
    # Written to a hidden folder and renamed into place (export/folders.py): never half a version.
    export.export_with_detector(
        run.trainer.network,
        config.dataset,
        export_settings(config),
        checkpoint=tf.train.latest_checkpoint(folder),
        export_dir=os.path.join(run.output_dir, "saved_model"),
        detector_required=False,
        report=run.report,
    )
