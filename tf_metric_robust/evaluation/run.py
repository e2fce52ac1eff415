"""An evaluation run of a training run's model_dir or a SavedModel: load the model and the data,
evaluate (evaluation.py), and write report.json, PNG figures and TensorBoard summaries.

Outputs (`bin/evaluate --model_dir=DIR [--output=report.json]`): every evaluation keeps its own
folder, DIR/evaluation/<name>/ with report.json and the figures beside it, and
DIR/evaluation/latest links to the newest; --output names the report (or its folder) instead. The
name says when and what: '<UTC time>-<norm, eps, steps, attacks, suite, detection>-<hash of the
settings>'. TensorBoard gets one run per evaluation under that name: DIR/tensorboard/evaluate/<name>
in the run's own logdir, or with --output beside the report, <report stem>_tensorboard/<name>, so
two evaluations never write into one another. --robustbench_json also writes the AutoAttack
result as a RobustBench model_info file (robustbench.py), after report.json.
"""

import dataclasses
import hashlib
import json
import os
import re
import sys
import time

import keras

from tf_metric_robust import atomic_io, data, export, run_folder
from tf_metric_robust.config import UserError
from tf_metric_robust.evaluation import cluster, robustbench
from tf_metric_robust.evaluation.evaluate import evaluate
from tf_metric_robust.evaluation.model_fns import ModelFns
from tf_metric_robust.evaluation.outputs import (
    remove_stale_figures,
    write_figures,
    write_tensorboard,
)
from tf_metric_robust.evaluation.report_schema import check_report


def _run_dir_of(saved_model):
    """The training run holding a SavedModel (DIR/saved_model[/<version>]), else None."""
    path = os.path.abspath(saved_model.rstrip("/"))
    for _ in range(2):
        path = os.path.dirname(path)
        if os.path.exists(os.path.join(path, run_folder.RECIPE_FILE)):
            return path
    return None


def load_model(run):
    """(ModelFns, model identity dict, dataset name, run directory or None)."""
    model_dir, saved_model = run.model_dir, run.saved_model
    if model_dir:
        if not os.path.isdir(model_dir):
            raise UserError(f"--model_dir {model_dir} does not exist")
        # Checkpoint files on disk, not the 'checkpoint' state file (which may be damaged);
        # load_network skips unreadable ones for the previous checkpoint.
        if run_folder.checkpoint_paths(run_folder.checkpoint_dir(model_dir)):
            network, recipe, checkpoint = run_folder.load_network(model_dir)
            step = re.search(r"-(\d+)$", checkpoint)
            info = {
                "source": "checkpoint",
                "model_dir": os.path.abspath(model_dir),
                "checkpoint": os.path.abspath(checkpoint),
                "recipe": recipe,
                "step": int(step.group(1)) if step else None,
            }
            return ModelFns(network), info, run.dataset or recipe["dataset"], model_dir
        base = os.path.join(model_dir, "saved_model")
        saved_model = export.latest_version(base)
        if saved_model is None:
            raise UserError(
                f"{model_dir}: no checkpoint in {run_folder.checkpoint_dir(model_dir)}"
                f" and no SavedModel in {base}"
            )
    else:
        given, saved_model = saved_model, export.latest_version(saved_model)
        if saved_model is None:
            raise UserError(
                f"--saved_model {given}: no saved_model.pb there nor in a version folder below it"
            )
    run_dir = model_dir or _run_dir_of(saved_model)
    has_recipe = run_dir and os.path.exists(os.path.join(run_dir, run_folder.RECIPE_FILE))
    recipe = run_folder.read_recipe(run_dir) if has_recipe else None
    dataset = run.dataset or (recipe or {}).get("dataset")
    if dataset is None:
        raise UserError("--dataset is required with a SavedModel outside a training run")
    info = {
        "source": "saved_model",
        "saved_model": os.path.abspath(saved_model),
        "model_dir": os.path.abspath(run_dir) if run_dir else None,
        "recipe": recipe,
        "step": None,
    }
    return ModelFns.from_saved_model(saved_model), info, dataset, run_dir


EVALUATIONS = "evaluation"  # DIR/evaluation/<name>/ of a training run
LATEST = "latest"  # DIR/evaluation/latest -> the newest <name>


def _plan_label(config, dataset):
    """'linf-eps0.3-steps100-fgsm+pgd+pgd_cw+mifgsm[-autoattack][-detection]': what a run ran."""
    try:
        config = config.resolve(dataset)
    except UserError:  # no dataset defaults (output_paths before the model's dataset is known)
        pass
    attacks = "+".join(config.attacks)
    if len(attacks) > 40:
        attacks = "+".join(config.attacks[:3]) + f"+{len(config.attacks) - 3}more"
    parts = [
        config.norm,
        *([f"eps{config.eps:.4g}"] if config.eps is not None else []),
        *([f"steps{config.steps}"] if config.steps is not None else []),
        attacks,
        *([config.suite] if config.suite != "none" else []),
        *(["detection"] if config.detection else []),
    ]
    return re.sub(r"[^A-Za-z0-9._+-]", "_", "-".join(parts))


def evaluation_name(run, model_info, dataset, now=None):
    """'<UTC time>-<plan label>-<8 hex digits>': when, what was run (_plan_label), and a hash of
    what was evaluated how (model, data, attack settings), so equal settings share the suffix and
    a folder name sorts by time."""
    settings = {
        "config": dataclasses.asdict(run.config),
        "dataset": dataset,
        "split": run.split,
        "num_examples": run.num_examples,
        "batch_size": run.batch_size,
        "model": {k: model_info.get(k) for k in ("checkpoint", "saved_model")},
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"{stamp}-{_plan_label(run.config, dataset)}-{digest.hexdigest()[:8]}"


def output_paths(run, run_dir, name=None):
    """(report.json path, TensorBoard log directory) of an evaluation called `name`.

    --output is the report's path (*.json) or its folder, and the TensorBoard run goes beside it
    into <report stem>_tensorboard/<name>; otherwise DIR/evaluation/<name>/report.json and
    DIR/tensorboard/evaluate/<name>.
    """
    name = name or evaluation_name(run, {}, run.dataset)
    if run.output:
        report = run.output
        if not report.endswith(".json"):
            report = os.path.join(report, "report.json")
        report = os.path.abspath(report)
        stem = os.path.splitext(os.path.basename(report))[0]
        return report, os.path.join(os.path.dirname(report), f"{stem}_tensorboard", name)
    if not run_dir:
        raise UserError("--output is required with a SavedModel outside a training run")
    report = os.path.abspath(os.path.join(run_dir, EVALUATIONS, name, "report.json"))
    return report, os.path.join(run_dir, "tensorboard", "evaluate", name)


def _unique(name, run, run_dir):
    """`name`, with -2, -3, ... appended while its report folder or TensorBoard run exists."""
    candidate, number = name, 1
    while True:
        report, tensorboard = output_paths(run, run_dir, candidate)
        if not (
            os.path.exists(tensorboard)
            or (not run.output and os.path.exists(os.path.dirname(report)))
        ):
            return candidate
        number += 1
        candidate = f"{name}-{number}"


def _point_latest(evaluations, name):
    """evaluations/latest -> name (a relative symlink replaced atomically; a text file holding
    the name where the file system has no symlinks)."""
    link = os.path.join(evaluations, LATEST)
    temporary = f"{link}.tmp-{os.getpid()}"
    try:
        os.symlink(name, temporary)
    except OSError:
        atomic_io.write_text_atomic(link, name + "\n")
        return
    os.replace(temporary, link)


def run(request, progress=None):
    """Evaluates, writes report.json + figures + TensorBoard; returns the report dict.

    progress: a callable taking each progress line (bin/evaluate passes print): what is evaluated,
    the plan, one line per finished run or part with its time (evaluation/progress.py). A
    terminal also gets a progress bar per run unless request.progress is False.
    """
    keras.utils.set_random_seed(request.config.seed)
    strategy = cluster.local_strategy(request.strategy)
    _, _, chief = cluster.worker_position(request.strategy)
    with strategy.scope():  # mirrored variables: each replica reads its own copy
        fns, model_info, dataset, run_dir = load_model(request)
    # --output required outside a run: fail before evaluating
    report_path, _ = output_paths(request, run_dir)
    try:
        spec = data.dataset_info(dataset)
    except ValueError as error:
        raise UserError(str(error)) from None
    split = request.split or spec.test_split
    eval_data = data.eval_dataset(
        dataset,
        batch_size=request.batch_size,
        split=split,
        num_examples=request.num_examples,
        data_dir=request.data_dir,
        download=request.download,
    )
    reference = None
    if request.config.detection or "adaptive_detector" in request.config.attacks:
        # The selection bin/export uses too, so both fit the same detector.
        reference = export.reference_examples(
            dataset,
            size=request.config.detection_reference,
            data_dir=request.data_dir,
            download=request.download,
        )
        request = dataclasses.replace(
            request,
            config=dataclasses.replace(request.config, detection_reference=len(reference[1])),
        )
    if progress is not None:
        model = model_info.get("checkpoint") or model_info["saved_model"]
        progress(
            f"Evaluating {model} on {dataset} [{split}] ({request.num_examples or 'all'} examples)"
        )
    name = evaluation_name(request, model_info, dataset)
    store = cluster.open_store(request, report_path, settings_hash=name[-8:])
    try:
        # eval_data holds the first --num_examples; the config takes the dataset's defaults.
        result = evaluate(
            fns,
            eval_data,
            request.config.resolve(dataset),
            dataset=dataset,
            reference=reference,
            batch_size=request.batch_size,
            strategy=strategy,
            store=store,
            progress=progress,
            progress_bar=request.progress and sys.stdout.isatty() and chief,
        )
    finally:
        store.close()
    report = result.report
    report["model"] = model_info
    report["data"].update(
        dataset=dataset,
        split=split,
        data_dir=request.data_dir,
        num_examples_requested=request.num_examples,
    )
    if report["detection"] is not None:
        report["detection"]["reference_split"] = spec.train_split
    if not chief:  # the chief writes the files; this worker's shards are in the work directory
        store.mark_done()
        report["outputs"] = None
        return report
    name = _unique(name, request, run_dir)
    report_path, tensorboard_dir = output_paths(request, run_dir, name)
    directory = os.path.dirname(report_path)
    os.makedirs(directory, exist_ok=True)
    report["figures"] = write_figures(result, directory)
    remove_stale_figures(directory, report["figures"])
    report["outputs"] = {
        "name": name,
        "report": report_path,
        "tensorboard": tensorboard_dir if request.tensorboard else None,
    }
    if request.robustbench_json:
        report["outputs"]["robustbench_json"] = os.path.abspath(request.robustbench_json)
    check_report(report)  # what report_schema.py declares, before anyone reads it
    atomic_io.write_json_atomic(report_path, report)
    if request.robustbench_json:
        robustbench.write_model_info(report, report["outputs"]["robustbench_json"])
    if not request.output:
        _point_latest(os.path.dirname(directory), name)
    if request.tensorboard:
        write_tensorboard(report, tensorboard_dir, directory, step=model_info["step"] or 0)
    store.mark_done()
    store.remove_when_done(timeout=request.worker_timeout)
    return report


__all__ = ["load_model", "output_paths", "run"]
