"""Robustness evaluation: clean and worst-case robust accuracy over a plan of attacks, eps and steps
sweeps, built-in sanity checks and detection (detection_protocol.py: the TLA paper's protocol, an
adaptive attack on each detector), as one JSON-ready report.

Defaults follow the literature: MNIST PGD-100, step 0.01, eps 0.3 (Madry et al., ICLR 2018);
CIFAR-10 PGD-20, step 1/255, eps 8/255 (TLA evaluation, Mao et al., NeurIPS 2019). Robust accuracy
per example is the logical AND of clean correctness and every attack run inside the threat model
(AutoAttack's convention, Croce & Hein 2020): the plan's runs, the suite and the detection's
adaptive attacks. The checks are Carlini et al. 2019, "On Evaluating Adversarial Robustness"
(see sanity.py).

    result = evaluate(network, (x_test, y_test), EvalConfig(), dataset="mnist")
    result.report["robust_accuracy"]
"""

import dataclasses
import time

import keras
import numpy as np
import tensorflow as tf

from tf_metric_robust import attacks as attacks_lib
from tf_metric_robust.config import EvalConfig, UserError
from tf_metric_robust.evaluation import detection_protocol, sanity, suite
from tf_metric_robust.evaluation import progress as progress_lines
from tf_metric_robust.evaluation.evidence import load_examples, run_plan
from tf_metric_robust.evaluation.model_fns import ModelFns
from tf_metric_robust.evaluation.plan import build_plan, call_settings
from tf_metric_robust.evaluation.shards import ShardRunner

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


def _attack_entry(spec, registry, accuracy, evidence, name):
    """The report entry of one run: its settings as called, accuracy, bounds, time."""
    return {
        "attack": spec.attack,
        "groups": list(spec.groups),
        "settings": call_settings(registry[spec.attack], spec.kwargs),
        "accuracy": accuracy,
        "counts_for_robust": spec.counts_for_robust,
        "max_bound_violation": evidence["violations"][name],
        "seconds": round(evidence["seconds"][name], 3),
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
    config = (config or EvalConfig()).resolve(dataset)
    wants_detectors = config.detection or "adaptive_detector" in config.attacks
    if wants_detectors and reference is None:
        raise UserError("detection and adaptive_detector need reference (clean training) examples")
    registry = dict(attacks_lib.ATTACKS if registry is None else registry)
    fns = model if isinstance(model, ModelFns) else ModelFns(model)
    detectors = None
    if wants_detectors:  # fitted first: the adaptive attack in the plan needs them
        detectors = detection_protocol.build_detectors(fns, reference, config, dataset=dataset)
        # The report's config names the covariance the rule chose (config.detector_settings).
        config = dataclasses.replace(config, detection_covariance=detectors["gaussian"].covariance)
        registry["adaptive_detector"] = detection_protocol.bound_adaptive_attack(
            fns, detectors[config.detector]
        )
    plan = build_plan(config, registry)
    runner = ShardRunner(seed=config.seed, **runner_options)
    x, y = load_examples(data, runner.shard_size, num_examples)
    members = suite.VERSIONS[config.suite_version] if config.suite != "none" else ()
    for line in progress_lines.header(config, plan, len(y), members):
        progress(line)
    evidence = run_plan(runner, fns, x, y, plan, registry=registry, progress=progress)
    labels = evidence["labels"]
    clean_correct = evidence["clean_predictions"] == labels
    correct = {name: pred == labels for name, pred in evidence["predictions"].items()}
    accuracy = lambda name: float(correct[name].mean())  # noqa: E731
    checks = sanity.run_checks(
        clean_correct=clean_correct,
        clean_predictions=evidence["clean_predictions"],
        predictions=evidence["predictions"],
        correct=correct,
        plan=plan,
        violations=evidence["violations"],
        gradients=evidence["gradients"],
        thresholds=config.thresholds,
    )
    sanity.warn_failures(checks)  # the suite's own warnings are already logged by autoattack
    own_runs = [name for name, spec in plan.specs.items() if spec.groups[0] == "sanity"]
    progress(progress_lines.sanity_line(checks, sum(runner.seconds[n] for n in own_runs)))
    # Per example the worst case: clean AND every run inside the threat model (below: the suite
    # and the adaptive detection runs too).
    robust_attacks = [name for name, spec in plan.specs.items() if spec.counts_for_robust]
    suite_section, suite_correct, suite_checks = None, {}, []
    if config.suite != "none":
        pgd_attack, pgd_accuracy = suite.weakest_pgd(plan, accuracy)
        suite_section, suite_fooled_by, suite_checks = suite.run_suite(
            runner,
            fns,
            x,
            y,
            evidence["clean_predictions"],
            config,
            pgd_attack=pgd_attack,
            pgd_accuracy=pgd_accuracy,
            progress=progress,
        )
        suite_correct[config.suite] = suite_fooled_by == ""
        robust_attacks.append(config.suite)
        progress(
            progress_lines.timed(
                f"AutoAttack ({config.suite_version}): robust accuracy "
                f"{suite_section['robust_accuracy']:.4f}",
                sum(suite_section["seconds"].values()),
            )
        )
    checks += suite_checks
    detection_section, curves, adaptive_predictions = None, {}, {}
    if config.detection:
        detection_started = time.perf_counter()
        detection_section, curves, adaptive_runs = detection_protocol.run_detection(
            runner, fns, evidence, plan, config, detectors, progress=progress
        )
        progress(
            progress_lines.detection_line(
                detection_section, time.perf_counter() - detection_started
            )
        )
        for name, run in adaptive_runs.items():
            adaptive_predictions[name] = run["predictions"]
            correct[name] = run["predictions"] == labels
            if run["norm"] == config.norm and run["eps"] <= config.eps + 1e-9:  # as plan.Plan.add
                robust_attacks.append(name)
    robust, every = clean_correct.copy(), {**correct, **suite_correct}
    for name in robust_attacks:
        robust &= every[name]
    report = {
        "schema_version": 1,
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
        "clean_accuracy": float(clean_correct.mean()),
        "robust_accuracy": float(robust.mean()),
        "robust_attacks": robust_attacks,
        "attacks": {
            name: _attack_entry(spec, registry, accuracy(name), evidence, name)
            for name, spec in plan.specs.items()
        },
        "sweeps": {
            "eps": [{"eps": e, "attack": n, "accuracy": accuracy(n)} for e, n in plan.eps_sweep],
            "steps": [
                {"steps": s, "attack": n, "accuracy": accuracy(n)} for s, n in plan.steps_sweep
            ],
        },
        "suite": suite_section,
    }
    report["metrics"] = {
        "eval/clean_accuracy": report["clean_accuracy"],
        "eval/robust_accuracy": report["robust_accuracy"],
        **{f"eval/{n}_accuracy": accuracy(n) for n in plan.main},
        **(
            {f"eval/{config.suite}_accuracy": suite_section["robust_accuracy"]}
            if suite_section
            else {}
        ),
    }
    report["sanity"] = {"passed": all(c["passed"] is not False for c in checks), "checks": checks}
    report["detection"] = detection_section
    report["distribution"] = {
        "replicas": runner.replicas,
        "workers": runner.store.num_workers,
        "resumed_shards": runner.resumed,
    }
    predictions = {**evidence["predictions"], **adaptive_predictions}
    report["per_example"] = {
        "labels": labels.tolist(),
        "clean_predictions": evidence["clean_predictions"].tolist(),
        "robust": robust.tolist(),
        "predictions": {name: pred.tolist() for name, pred in predictions.items()},
        "suite_fooled_by": suite_fooled_by.tolist() if suite_section else None,
    }
    report["figures"] = {}  # file names, filled by outputs.write_figures
    report["seconds"] = round(time.perf_counter() - started, 2)
    return EvaluationResult(
        report=report,
        correct={"clean": clean_correct, "robust": robust, **correct, **suite_correct},
        roc_curves=curves,
    )
