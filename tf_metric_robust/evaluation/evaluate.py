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
import json
import time

import keras
import numpy as np
import tensorflow as tf

from tf_metric_robust import attacks as attacks_lib
from tf_metric_robust.config import EvalConfig, UserError
from tf_metric_robust.evaluation import detection_protocol, sanity, suite
from tf_metric_robust.evaluation.model_fns import ModelFns
from tf_metric_robust.evaluation.plan import build_plan, call_settings
from tf_metric_robust.evaluation.shards import DYNAMIC_SETTINGS, ShardRunner

__all__ = ["EvaluationResult", "attack_fn", "evaluate", "load_examples", "run_plan", "versions"]


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


def load_examples(data, batch_size, num_examples=None):
    """(x float32 [N, ...], y int64 [N]) NumPy arrays from arrays or a tf.data.Dataset (batched
    or not), at most num_examples of them: the whole set is held so shards can be cut anywhere."""
    if not isinstance(data, tf.data.Dataset):
        x, y = (np.asarray(v) for v in data)
        return x[:num_examples].astype(np.float32), y[:num_examples].astype(np.int64)
    if data.element_spec[0].shape.rank == 3:
        data = data.batch(batch_size)
    images, labels, seen = [], [], 0
    for x, y in data:
        if num_examples is not None and seen >= num_examples:
            break
        images.append(np.asarray(x, np.float32))
        labels.append(np.asarray(y, np.int64))
        seen += len(labels[-1])
    if not labels:
        raise UserError("no examples to evaluate (empty dataset or num_examples 0)")
    return np.concatenate(images)[:num_examples], np.concatenate(labels)[:num_examples]


def _clean_fn(fns):
    def clean(x, y, key, params):
        del y, key, params
        logits, embedding = fns.outputs(x)
        out = {"predictions": tf.argmax(logits, -1)}
        if embedding is not None:
            out["embedding"] = embedding
        return out

    return clean


def attack_fn(fns, attack, static, *, takes_seed, keep_embedding, norm):
    """A shard function (shards.ShardRunner) running `attack` with its static settings and the
    dynamic ones from params: per example the prediction on x_adv, its distance outside the
    threat model and box (sanity.bound_violations), and the embedding when kept."""

    def run(x, y, key, params):
        x_adv = attack(
            fns.logits, x, y, **static, **params, **({"seed": key} if takes_seed else {})
        )
        logits, embedding = fns.outputs(x_adv)
        out = {
            "predictions": tf.argmax(logits, -1),
            "violation": sanity.bound_violations(x_adv, x, params["eps"], norm),
        }
        if keep_embedding:
            out["embedding"] = embedding
        return out

    return run


def run_plan(runner, fns, x, y, plan, *, registry):
    """Runs the clean pass and every attack of `plan` on every shard of (x, y).

    Returns per-example evidence as NumPy arrays: 'labels' [N], 'images' [N, H, W, C],
    'clean_predictions' [N], 'clean_embedding' [N, D] or None, 'predictions' name -> [N],
    'embeddings' name -> [N, D] (attacks with keep_embedding), 'violations' name -> max distance
    outside the eps-ball/[0,1], 'seconds' name -> float, 'gradients' (sanity.gradient_stats on
    the first shard).
    """
    if not len(y):
        raise UserError("no examples to evaluate (empty dataset or num_examples 0)")
    clean = runner.run("clean", _clean_fn(fns), x, y)
    first = slice(0, runner.shard_size)
    gradients = sanity.gradient_stats(fns.logits, tf.constant(x[first]), tf.constant(y[first]))
    preds, embs, violations = {}, {}, {}
    for name, spec in plan.specs.items():
        attack = registry[spec.attack]
        params = {k: v for k, v in spec.kwargs.items() if k in DYNAMIC_SETTINGS}
        static = {k: v for k, v in spec.kwargs.items() if k not in DYNAMIC_SETTINGS}
        takes_seed = "seed" in inspect.signature(attack).parameters
        fn = attack_fn(
            fns,
            attack,
            static,
            takes_seed=takes_seed,
            keep_embedding=spec.keep_embedding,
            norm=spec.kwargs.get("norm", "linf"),
        )
        trace_key = json.dumps([spec.attack, static, spec.keep_embedding], sort_keys=True)
        out = runner.run(name, fn, x, y, params=params, trace_key=trace_key)
        preds[name] = out["predictions"]
        violations[name] = float(out["violation"].max())
        if spec.keep_embedding:
            embs[name] = out["embedding"]
    return {
        "labels": y,
        "images": x,
        "clean_predictions": clean["predictions"],
        "clean_embedding": clean.get("embedding"),
        "gradients": gradients,
        "predictions": preds,
        "embeddings": embs,
        "violations": violations,
        "seconds": {name: runner.seconds[name] for name in plan.specs},
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
    num_classes=None,
    batch_size=100,
    num_examples=None,
    reference=None,
    registry=None,
    extra_attacks=(),
    progress=False,
    model_info=None,
    data_info=None,
    strategy=None,
    store=None,
):
    """Evaluates any model on (x, y) arrays or a tf.data.Dataset; returns an EvaluationResult.

    Args: model: a Keras network / callable (see ModelFns) or a ModelFns; config: EvalConfig
    (None fields take `dataset`'s literature defaults); reference: clean training (x, y) or a
    dataset, needed when config.detection; registry: attack name -> function (default
    attacks.ATTACKS); extra_attacks: (name, attack, kwargs) runs that slot into the worst case;
    model_info, data_info: identity dicts copied into the report. config.suite runs AutoAttack
    after the plan (suite.py) on all N examples held in memory, into the worst case.
    batch_size: examples per shard, the unit every replica attacks (shards.py); strategy: the
    local replicas (default: one device); store: a shard_store.ShardStore (files: resume and
    several workers). The per-example results do not depend on strategy or store.
    """
    started = time.perf_counter()
    config = (config or EvalConfig()).resolve(dataset)
    wants_detectors = config.detection or "adaptive_detector" in config.attacks
    if wants_detectors and reference is None:
        raise UserError("detection and adaptive_detector need reference (clean training) examples")
    registry = dict(attacks_lib.ATTACKS if registry is None else registry)
    fns = model if isinstance(model, ModelFns) else ModelFns(model)
    detectors = None
    if wants_detectors:  # fitted first: the adaptive attack in the plan needs them
        detectors = detection_protocol.build_detectors(fns, reference, config, num_classes)
        registry["adaptive_detector"] = detection_protocol.bound_adaptive_attack(
            fns, detectors[config.detector]
        )
    plan = build_plan(config, registry, extra_attacks)
    runner = ShardRunner(batch_size, config.seed, strategy=strategy, store=store, progress=progress)
    x, y = load_examples(data, batch_size, num_examples)
    evidence = run_plan(runner, fns, x, y, plan, registry=registry)
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
        suite_section, suite_fooled_by, suite_checks = suite.run_suite(
            runner,
            fns,
            x,
            y,
            evidence["clean_predictions"],
            config,
            pgd_attack=pgd_attack,
            pgd_accuracy=pgd_accuracy,
        )
        suite_correct[config.suite] = suite_fooled_by == ""
        robust &= suite_correct[config.suite]
    report = {
        "schema_version": 1,
        "versions": versions(),
        "model": dict(model_info or {}),
        "data": {
            **(data_info or {}),
            "dataset": dataset,
            "num_examples": int(labels.size),
            "batch_size": batch_size,
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
        "robust_attacks": [name for name, spec in plan.specs.items() if spec.counts_for_robust]
        + list(suite_correct),
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
    checks += suite_checks
    report["sanity"] = {"passed": all(c["passed"] is not False for c in checks), "checks": checks}
    curves = {}
    report["detection"] = None
    if config.detection:
        report["detection"], curves = detection_protocol.run_detection(
            runner, fns, evidence, plan, config, detectors
        )
    report["distribution"] = {
        "replicas": runner.replicas,
        "workers": runner.store.num_workers,
        "resumed_shards": runner.resumed,
    }
    report["per_example"] = {
        "labels": labels.tolist(),
        "clean_predictions": evidence["clean_predictions"].tolist(),
        "robust": robust.tolist(),
        "predictions": {name: pred.tolist() for name, pred in evidence["predictions"].items()},
        "suite_fooled_by": suite_fooled_by.tolist() if suite_section else None,
    }
    report["figures"] = {}  # file names, filled by outputs.write_figures
    report["seconds"] = round(time.perf_counter() - started, 2)
    return EvaluationResult(
        report=report,
        correct={"clean": clean_correct, "robust": robust, **correct, **suite_correct},
        roc_curves=curves,
    )
