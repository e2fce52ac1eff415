"""Robustness evaluation: clean and worst-case robust accuracy over a plan of attacks, eps and steps
sweeps, built-in sanity checks and detection (detection_protocol.py: the TLA paper's protocol, an
adaptive attack on each detector), as one JSON-ready report.

Defaults follow the literature: MNIST PGD-100, step 0.01, eps 0.3 (Madry et al., ICLR 2018);
CIFAR-10 PGD-20, step 1/255, eps 8/255 (TLA evaluation, Mao et al., NeurIPS 2019). Robust accuracy
per example is the logical AND of clean correctness and every attack run inside the threat model
(AutoAttack's convention, Croce & Hein 2020): the plan's runs, the suite and the detection's
adaptive attacks. The checks are Carlini et al. 2019, "On Evaluating Adversarial Robustness"
(see sanity.py).

evaluate() gathers the shared evidence (evidence.py: the clean pass and the plan's runs), runs the
evaluators the config asks for (evaluators.py: one section each) and assembles the report
(report_schema.py declares it).

    result = evaluate(network, (x_test, y_test), EvalConfig(), dataset="mnist")
    result.report["robust_accuracy"]
"""

import dataclasses
import time

import keras
import numpy as np
import tensorflow as tf

from tf_metric_robust.evaluation import evaluators as evaluators_lib
from tf_metric_robust.evaluation import progress as progress_lines
from tf_metric_robust.evaluation.evidence import gather
from tf_metric_robust.evaluation.report_schema import SCHEMA_VERSION, check_report

__all__ = ["EvaluationResult", "evaluate", "versions"]


@dataclasses.dataclass
class EvaluationResult:
    """`report`: the JSON-ready report; `correct`: per-example bool arrays (name -> [N]);
    `roc_curves`: detection label -> (fpr, tpr, auc) for plots."""

    report: dict
    correct: dict
    roc_curves: dict


def versions():
    """Library versions that shape the numbers (for the report)."""
    import platform

    import tf_metric_robust

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf_metric_robust": tf_metric_robust.__version__,
    }


def evaluate(
    model,
    data,
    config=None,
    *,
    dataset=None,
    num_examples=None,
    reference=None,
    registry=None,
    progress=None,
    **runner_options,
):
    """Evaluates any model on (x, y) arrays or a tf.data.Dataset; returns an EvaluationResult.

    Args: model: a Keras network / callable (see ModelFns) or a ModelFns; config: EvalConfig
    (None fields take `dataset`'s literature defaults); num_examples: the first N of `data`;
    reference: clean training (x, y) or a dataset, needed when config.detection (the detectors
    cover the model's logit classes); registry: attack name -> function (default
    attacks.ATTACKS); progress: a callable taking each progress line (progress.py: the plan
    first, then one line per finished run or part with its time; bin/evaluate passes print).
    config.suite runs AutoAttack after the plan (suite.py) on all N examples held in memory, into
    the worst case, as are the detection's adaptive runs inside the threat model.
    runner_options: shards.ShardRunner's batch_size (examples per shard, the unit every replica
    attacks; default 100), strategy (the local replicas; default one device), store (a
    shard_store.ShardStore: files, resume, several workers) and progress_bar (a bar per run). The
    per-example results do not depend on strategy or store. The report's 'model' section is left
    for the caller (evaluation/run.py) to fill.
    """
    started = time.perf_counter()
    progress = progress or progress_lines.quiet
    evidence = gather(
        model,
        data,
        config,
        dataset=dataset,
        num_examples=num_examples,
        reference=reference,
        registry=registry,
        progress=progress,
        **runner_options,
    )
    parts = {e.key: e.run(evidence, progress) for e in evaluators_lib.chosen(evidence.config)}
    result = _assemble(evidence, parts, dataset)
    result.report["seconds"] = round(time.perf_counter() - started, 2)
    result.report["compile_seconds"] = round(compile_seconds(evidence.runner.call_seconds), 2)
    check_report(result.report)
    return result


def compile_seconds(call_seconds):
    """Tracing and graph optimisation in an evaluation, estimated per run (plan, suite,
    detection) as its first step call minus the median of its later calls; runs of one call
    count nothing (no steady call to subtract)."""
    return float(
        sum(
            max(0.0, calls[0] - float(np.median(calls[1:])))
            for calls in call_seconds.values()
            if len(calls) > 1
        )
    )


def _assemble(evidence, parts, dataset):
    """The report from the evidence and the evaluators' Parts: each Part's section, and what the
    Parts add to the worst case, per_example, the metrics, the sanity checks and the ROC curves."""
    config, plan, runner, labels = evidence.config, evidence.plan, evidence.runner, evidence.labels
    # Per example the worst case: clean AND every run inside the threat model (the plan's, then
    # those the evaluators add: the suite, the adaptive detection runs).
    correct = dict(evidence.correct)
    robust_attacks = [name for name, spec in plan.specs.items() if spec.counts_for_robust]
    predictions = dict(evidence.runs["predictions"])
    for part in parts.values():
        for name, run in part.runs.items():
            correct[name] = run.correct
            if run.counts_for_robust:
                robust_attacks.append(name)
            if run.predictions is not None:
                predictions[name] = run.predictions
    clean_correct = evidence.clean_correct
    robust = clean_correct.copy()
    for name in robust_attacks:
        robust &= correct[name]
    sections = {e.key: None for e in evaluators_lib.EVALUATORS}
    sections.update({key: part.section for key, part in parts.items()})
    added_checks = [check for part in parts.values() for check in part.checks]
    sections["sanity"] = evaluators_lib.sanity_section(sections["sanity"]["checks"] + added_checks)
    clean_accuracy, robust_accuracy = float(clean_correct.mean()), float(robust.mean())
    report = {
        "schema_version": SCHEMA_VERSION,
        "versions": versions(),
        "model": {},
        "data": {
            "dataset": dataset,
            "num_examples": int(labels.size),
            "batch_size": runner.shard_size,
        },
        "threat_model": {
            "norm": config.norm,
            "eps": config.eps,
            "step_size": config.step_size,
            "steps": config.steps,
            "restarts": config.restarts,
            "random_start": config.random_start,
            "seed": config.seed,
        },
        "config": dataclasses.asdict(config),
        "clean_accuracy": clean_accuracy,
        "robust_accuracy": robust_accuracy,
        "robust_attacks": robust_attacks,
        **sections,
        "metrics": {
            "eval/clean_accuracy": clean_accuracy,
            "eval/robust_accuracy": robust_accuracy,
            **{name: value for part in parts.values() for name, value in part.metrics.items()},
        },
        "distribution": {
            "replicas": runner.replicas,
            "workers": runner.store.num_workers,
            "resumed_shards": runner.resumed,
        },
        "per_example": {
            "labels": labels.tolist(),
            "clean_predictions": evidence.runs["clean_predictions"].tolist(),
            "robust": robust.tolist(),
            "predictions": {name: pred.tolist() for name, pred in predictions.items()},
            "suite_fooled_by": None,
            **{key: value for part in parts.values() for key, value in part.per_example.items()},
        },
        "figures": {},  # file names, filled by outputs.write_figures
    }
    curves = {label: curve for part in parts.values() for label, curve in part.curves.items()}
    return EvaluationResult(
        report=report,
        correct={"clean": clean_correct, "robust": robust, **correct},
        roc_curves=curves,
    )
