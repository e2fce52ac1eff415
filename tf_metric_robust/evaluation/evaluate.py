"""Robustness evaluation: clean and worst-case robust accuracy over a plan of attacks, eps and steps
sweeps, built-in sanity checks and detection (detection_protocol.py: the TLA paper's protocol, an
adaptive attack on each detector), as one JSON-ready report.

Defaults follow the literature: MNIST PGD-100, step 0.01, eps 0.3 (Madry et al., ICLR 2018);
CIFAR-10 PGD-20, step 1/255, eps 8/255 (TLA evaluation, Mao et al., NeurIPS 2019). Robust accuracy
per example is the logical AND of clean correctness and every attack run inside the threat model
(AutoAttack's convention, Croce & Hein 2020). The checks are Carlini et al. 2019, "On Evaluating
Adversarial Robustness" (see sanity.py).

    result = evaluate(network, (x_test, y_test), EvalConfig(), dataset="mnist")
    result.report["robust_accuracy"]
"""

import dataclasses
import inspect
import time

import keras
import numpy as np
import tensorflow as tf

from tf_metric_robust import attacks as attacks_lib
from tf_metric_robust.config import EvalConfig, UserError
from tf_metric_robust.evaluation import detection_protocol, sanity, suite
from tf_metric_robust.evaluation.model_fns import ModelFns
from tf_metric_robust.evaluation.plan import build_plan, call_settings

__all__ = ["EvaluationResult", "evaluate", "run_plan", "versions"]


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

    return {"python": platform.python_version(), "numpy": np.__version__,
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "tf_metric_robust": tf_metric_robust.__version__}


def _batches(data, batch_size):
    """(x, y) arrays or a tf.data.Dataset (batched or not) -> batched dataset of (x, y)."""
    if isinstance(data, tf.data.Dataset):
        if data.element_spec[0].shape.rank == 3:
            data = data.batch(batch_size)
        return data
    x, y = data
    return tf.data.Dataset.from_tensor_slices((np.asarray(x, np.float32), np.asarray(y))).batch(
        batch_size)


def _take(batches, num_examples):
    """Yields (x, y int64) batches, the last one truncated so at most num_examples come out."""
    seen = 0
    for x, y in batches:
        if num_examples is not None:
            if seen >= num_examples:
                return
            x, y = x[:num_examples - seen], y[:num_examples - seen]
        seen += int(tf.shape(y)[0])
        yield x, tf.cast(y, tf.int64)


def _progbar(batches, num_examples, batch_size, enabled):
    if not enabled:
        return None
    count = int(batches.cardinality()) if isinstance(batches, tf.data.Dataset) else -1
    target = count * batch_size if count >= 0 else None
    if num_examples is not None:
        target = num_examples if target is None else min(target, num_examples)
    return keras.utils.Progbar(target, unit_name="example", stateful_metrics=["clean", "robust"])


def run_plan(fns, data, plan, *, registry, seed=0, num_examples=None, batch_size=100,
             progress=False, keep_images=False):
    """Runs every attack of `plan` on every batch; returns per-example evidence as NumPy arrays.

    Returns a dict: 'labels' [N], 'images' [N, H, W, C] (None unless keep_images: for a suite
    that needs the whole set), 'clean_predictions' [N], 'clean_embedding' [N, D] or None,
    'predictions' name -> [N], 'embeddings' name -> [N, D] (attacks with keep_embedding),
    'violations' name -> max distance outside the eps-ball/[0,1], 'seconds' name -> float,
    'gradients' (sanity.gradient_stats on the first batch).
    """
    batches = _batches(data, batch_size)
    bar = _progbar(batches, num_examples, batch_size, progress)
    labels, images, clean_pred, clean_emb, gradients = [], [], [], [], None
    preds = {name: [] for name in plan.specs}
    embs = {name: [] for name, spec in plan.specs.items() if spec.keep_embedding}
    violations = {name: 0.0 for name in plan.specs}
    seconds = {name: 0.0 for name in plan.specs}
    robust_so_far, done = 0, 0
    takes_seed = {name: "seed" in inspect.signature(registry[spec.attack]).parameters
                  for name, spec in plan.specs.items()}
    for b, (x, y) in enumerate(_take(batches, num_examples)):
        logits, embedding = fns.outputs(x)
        if gradients is None:
            gradients = sanity.gradient_stats(fns.logits, x, y)
        robust = tf.equal(tf.argmax(logits, -1), y).numpy()
        labels.append(y.numpy())
        if keep_images:
            images.append(x.numpy())
        clean_pred.append(tf.argmax(logits, -1).numpy())
        if embedding is not None:
            clean_emb.append(embedding.numpy())
        for i, (name, spec) in enumerate(plan.specs.items()):
            started = time.perf_counter()
            attack = registry[spec.attack]
            kwargs = dict(spec.kwargs)
            if takes_seed[name]:
                kwargs["seed"] = tf.constant([seed, b * 10_000 + i], tf.int64)
            x_adv = attack(fns.logits, x, y, **kwargs)
            adv_logits, adv_embedding = fns.outputs(x_adv)
            predicted = tf.argmax(adv_logits, -1).numpy()
            seconds[name] += time.perf_counter() - started
            preds[name].append(predicted)
            if name in embs:
                embs[name].append(adv_embedding.numpy())
            violations[name] = max(violations[name], sanity.bound_violation(
                x_adv, x, spec.kwargs["eps"], spec.kwargs.get("norm", "linf")))
            if spec.counts_for_robust:
                robust &= predicted == y.numpy()
        done += len(robust)
        robust_so_far += int(robust.sum())
        if bar is not None:
            clean_acc = np.mean(np.concatenate(clean_pred) == np.concatenate(labels))
            bar.add(len(robust), [("clean", clean_acc), ("robust", robust_so_far / done)])
    if not labels:
        raise UserError("no examples to evaluate (empty dataset or num_examples 0)")
    join = lambda parts: np.concatenate(parts) if parts else None  # noqa: E731
    return {"labels": join(labels), "images": join(images), "clean_predictions": join(clean_pred),
            "clean_embedding": join(clean_emb), "gradients": gradients,
            "predictions": {k: join(v) for k, v in preds.items()},
            "embeddings": {k: join(v) for k, v in embs.items()},
            "violations": violations, "seconds": seconds}


def _attack_entry(spec, registry, accuracy, evidence, name):
    """The report entry of one run: its settings as called, accuracy, bounds, time."""
    return {"attack": spec.attack, "groups": list(spec.groups),
            "settings": call_settings(registry[spec.attack], spec.kwargs), "accuracy": accuracy,
            "counts_for_robust": spec.counts_for_robust,
            "max_bound_violation": evidence["violations"][name],
            "seconds": round(evidence["seconds"][name], 3)}


def evaluate(model, data, config=None, *, dataset=None, num_classes=None, batch_size=100,
             num_examples=None, reference=None, registry=None, extra_attacks=(), progress=False,
             model_info=None, data_info=None):
    """Evaluates any model on (x, y) arrays or a tf.data.Dataset; returns an EvaluationResult.

    Args: model: a Keras network / callable (see ModelFns) or a ModelFns; config: EvalConfig
    (None fields take `dataset`'s literature defaults); reference: clean training (x, y) or a
    dataset, needed when config.detection; registry: attack name -> function (default
    attacks.ATTACKS); extra_attacks: (name, attack, kwargs) runs that slot into the worst case;
    model_info, data_info: identity dicts copied into the report. config.suite runs AutoAttack
    after the plan (suite.py) on all N examples held in memory, into the worst case.
    """
    started = time.perf_counter()
    config = (config or EvalConfig()).resolve(dataset)
    wants_detectors = config.detection or "adaptive_detector" in config.attacks
    if wants_detectors and reference is None:
        raise UserError("detection and adaptive_detector need reference (clean training) "
                        "examples")
    registry = dict(attacks_lib.ATTACKS if registry is None else registry)
    fns = model if isinstance(model, ModelFns) else ModelFns(model)
    detectors = None
    if wants_detectors:  # fitted first: the adaptive attack in the plan needs them
        detectors = detection_protocol.build_detectors(fns, reference, config, num_classes)
        registry["adaptive_detector"] = detection_protocol.bound_adaptive_attack(
            fns, detectors[config.detector])
    plan = build_plan(config, registry, extra_attacks)
    evidence = run_plan(fns, data, plan, registry=registry, seed=config.seed,
                        num_examples=num_examples, batch_size=batch_size, progress=progress,
                        keep_images=config.suite != "none" or config.detection)
    labels = evidence["labels"]
    clean_correct = evidence["clean_predictions"] == labels
    correct = {name: pred == labels for name, pred in evidence["predictions"].items()}
    robust = clean_correct.copy()
    for name, spec in plan.specs.items():
        if spec.counts_for_robust:
            robust &= correct[name]
    accuracy = lambda name: float(correct[name].mean())  # noqa: E731
    suite_section, suite_correct, suite_checks = None, {}, []
    if config.suite != "none":
        pgd_attack, pgd_accuracy = suite.weakest_pgd(plan, accuracy)
        suite_section, suite_correct[config.suite], suite_checks = suite.run_suite(
            fns.logits, evidence["images"], labels, config, batch_size=batch_size,
            pgd_attack=pgd_attack, pgd_accuracy=pgd_accuracy, progress=progress)
        robust &= suite_correct[config.suite]
    report = {
        "schema_version": 1,
        "versions": versions(),
        "model": dict(model_info or {}),
        "data": {**(data_info or {}), "dataset": dataset, "num_examples": int(labels.size),
                 "batch_size": batch_size},
        "threat_model": {"norm": config.norm, "eps": config.eps, "step_size": config.step_size,
                         "steps": config.steps, "restarts": config.restarts,
                         "random_start": config.random_start, "seed": config.seed},
        "config": dataclasses.asdict(config),
        "clean_accuracy": float(clean_correct.mean()),
        "robust_accuracy": float(robust.mean()),
        "robust_attacks": [name for name, spec in plan.specs.items() if spec.counts_for_robust]
        + list(suite_correct),
        "attacks": {name: _attack_entry(spec, registry, accuracy(name), evidence, name)
                    for name, spec in plan.specs.items()},
        "sweeps": {"eps": [{"eps": e, "attack": n, "accuracy": accuracy(n)}
                           for e, n in plan.eps_sweep],
                   "steps": [{"steps": s, "attack": n, "accuracy": accuracy(n)}
                             for s, n in plan.steps_sweep]},
        "suite": suite_section,
    }
    report["metrics"] = {"eval/clean_accuracy": report["clean_accuracy"],
                         "eval/robust_accuracy": report["robust_accuracy"],
                         **{f"eval/{n}_accuracy": accuracy(n) for n in plan.main},
                         **({f"eval/{config.suite}_accuracy": suite_section["robust_accuracy"]}
                            if suite_section else {})}
    checks = sanity.run_checks(
        clean_correct=clean_correct, clean_predictions=evidence["clean_predictions"],
        predictions=evidence["predictions"], correct=correct, plan=plan,
        violations=evidence["violations"], gradients=evidence["gradients"],
        thresholds=config.thresholds)
    sanity.warn_failures(checks)  # the suite's own warnings are already logged by autoattack
    checks += suite_checks
    report["sanity"] = {"passed": all(c["passed"] is not False for c in checks),
                        "checks": checks}
    curves = {}
    report["detection"] = None
    if config.detection:
        report["detection"], curves = detection_protocol.run_detection(
            fns, evidence, plan, config, detectors, batch_size=batch_size)
    report["figures"] = {}  # file names, filled by outputs.write_figures
    report["seconds"] = round(time.perf_counter() - started, 2)
    return EvaluationResult(report=report, correct={"clean": clean_correct, "robust": robust,
                                                    **correct, **suite_correct},
                            roc_curves=curves)
