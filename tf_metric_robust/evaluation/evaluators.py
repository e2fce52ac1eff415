"""The evaluators of an evaluation: small classes, each with one `run(evidence, progress)` that
reads the shared evidence (evidence.py) and gives one section of the report (report_schema.py),
as big_vision's evaluators each give one part of the metrics.

What an evaluator adds to the parts all of them feed (the worst case and per_example, the sanity
checks, the TensorBoard metrics, the ROC figure) comes back beside its section in a Part;
evaluate.py assembles the report from the Parts.
"""

import dataclasses
import time

import numpy as np

from tf_metric_robust.evaluation import detection_protocol, sanity, suite
from tf_metric_robust.evaluation import progress as progress_lines
from tf_metric_robust.evaluation.plan import call_settings


@dataclasses.dataclass
class Run:
    """A per-example result beyond the plan's runs: correctness, whether it lies inside the threat
    model (then it joins the worst case) and the predictions kept in per_example, if any."""

    correct: np.ndarray
    counts_for_robust: bool
    predictions: np.ndarray | None = None


@dataclasses.dataclass
class Part:
    """One evaluator's result: report[key] and what it adds to the shared parts."""

    section: object
    runs: dict = dataclasses.field(default_factory=dict)  # name -> Run
    per_example: dict = dataclasses.field(default_factory=dict)  # extra per_example entries
    checks: list = dataclasses.field(default_factory=list)  # sanity checks (sanity.py format)
    metrics: dict = dataclasses.field(default_factory=dict)  # 'eval/...' -> float
    curves: dict = dataclasses.field(default_factory=dict)  # ROC label -> (fpr, tpr, auc)


class AttackAccuracy:
    """Accuracy of every run of the plan, with its settings as called, bound check and time."""

    key = "attacks"

    def run(self, evidence, progress):
        del progress  # run_plan printed a line per run
        plan, registry = evidence.plan, evidence.registry
        entries = {
            name: {
                "attack": spec.attack,
                "groups": list(spec.groups),
                "settings": call_settings(registry[spec.attack], spec.kwargs),
                "accuracy": evidence.accuracy(name),
                "counts_for_robust": spec.counts_for_robust,
                "max_bound_violation": evidence.runs["violations"][name],
                "seconds": round(evidence.runs["seconds"][name], 3),
                **evidence.runner.call_times(name),
            }
            for name, spec in plan.specs.items()
        }
        metrics = {f"eval/{name}_accuracy": evidence.accuracy(name) for name in plan.main}
        return Part(entries, metrics=metrics)


class Sweeps:
    """PGD accuracy against eps and against steps."""

    key = "sweeps"

    def run(self, evidence, progress):
        del progress
        plan, accuracy = evidence.plan, evidence.accuracy
        return Part(
            {
                "eps": [
                    {"eps": e, "attack": n, "accuracy": accuracy(n)} for e, n in plan.eps_sweep
                ],
                "steps": [
                    {"steps": s, "attack": n, "accuracy": accuracy(n)} for s, n in plan.steps_sweep
                ],
            }
        )


class SanityChecks:
    """Carlini et al. (2019)'s checks on the plan's runs (sanity.py); failures logged."""

    key = "sanity"

    def run(self, evidence, progress):
        runs, plan = evidence.runs, evidence.plan
        checks = sanity.run_checks(
            clean_correct=evidence.clean_correct,
            clean_predictions=runs["clean_predictions"],
            predictions=runs["predictions"],
            correct=evidence.correct,
            plan=plan,
            violations=runs["violations"],
            gradients=runs["gradients"],
            thresholds=evidence.config.thresholds,
        )
        sanity.warn_failures(checks)  # the suite's own warnings are logged by autoattack
        own_runs = [name for name, spec in plan.specs.items() if spec.groups[0] == "sanity"]
        seconds = sum(evidence.runner.seconds[name] for name in own_runs)
        progress(progress_lines.sanity_line(checks, seconds))
        return Part(sanity_section(checks))


class AutoAttackSuite:
    """AutoAttack on every example (suite.py): into the worst case, its diagnostics into the
    sanity checks."""

    key = "suite"

    def run(self, evidence, progress):
        config, runs = evidence.config, evidence.runs
        pgd_attack, pgd_accuracy = suite.weakest_pgd(evidence.plan, evidence.accuracy)
        section, fooled_by, checks = suite.run_suite(
            evidence.runner,
            evidence.fns,
            runs["images"],
            evidence.labels,
            runs["clean_predictions"],
            config,
            pgd_attack=pgd_attack,
            pgd_accuracy=pgd_accuracy,
            progress=progress,
        )
        progress(
            progress_lines.timed(
                f"AutoAttack ({config.suite_version}): robust accuracy "
                f"{section['robust_accuracy']:.4f}",
                sum(section["seconds"].values()),
            )
        )
        return Part(
            section,
            runs={config.suite: Run(fooled_by == "", counts_for_robust=True)},
            per_example={"suite_fooled_by": fooled_by.tolist()},
            checks=checks,
            metrics={f"eval/{config.suite}_accuracy": section["robust_accuracy"]},
        )


class Detection:
    """The TLA paper's detection protocol and the adaptive attack on each detector
    (detection_protocol.py); adaptive runs inside the threat model join the worst case."""

    key = "detection"

    def run(self, evidence, progress):
        config, labels = evidence.config, evidence.labels
        started = time.perf_counter()
        section, curves, adaptive_runs = detection_protocol.run_detection(
            evidence.runner,
            evidence.fns,
            evidence.runs,
            evidence.plan,
            config,
            evidence.detectors,
            progress=progress,
        )
        progress(progress_lines.detection_line(section, time.perf_counter() - started))
        runs = {
            name: Run(
                run["predictions"] == labels,
                # inside the threat model, as plan.Plan.add decides for the plan's runs
                counts_for_robust=run["norm"] == config.norm and run["eps"] <= config.eps + 1e-9,
                predictions=run["predictions"],
            )
            for name, run in adaptive_runs.items()
        }
        return Part(section, runs=runs, curves=curves)


# Every evaluator, in the order they run; a section whose evaluator does not run is None.
EVALUATORS = (AttackAccuracy, Sweeps, SanityChecks, AutoAttackSuite, Detection)


def chosen(config):
    """The evaluators a resolved EvalConfig asks for, in EVALUATORS order."""
    wanted = {AutoAttackSuite: config.suite != "none", Detection: config.detection}
    return [evaluator() for evaluator in EVALUATORS if wanted.get(evaluator, True)]


def sanity_section(checks):
    """report['sanity']: passed unless a check failed (a skipped one does not fail)."""
    return {"passed": all(c["passed"] is not False for c in checks), "checks": checks}


__all__ = [
    "EVALUATORS",
    "AttackAccuracy",
    "AutoAttackSuite",
    "Detection",
    "Part",
    "Run",
    "SanityChecks",
    "Sweeps",
    "chosen",
    "sanity_section",
]
