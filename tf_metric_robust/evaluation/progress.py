"""What an evaluation tells its caller while it runs: a header naming every part it will run and
one line per finished run or part, each with its time, handed to a `progress` callable (bin/evaluate
passes print; the library itself never prints), so a long evaluation into a log file shows where
it is."""

from tf_metric_robust.config import DETECTORS
from tf_metric_robust.evaluation import sanity

# Report groups of a plan's runs (plan.Plan.add) as the header and the run lines name them.
PARTS = {
    "attacks": "attacks",
    "eps_sweep": "eps sweep",
    "steps_sweep": "steps sweep",
    "sanity": "sanity checks",
    "detection": "detection",
}


def quiet(line):
    """The default `progress`: drops every line."""
    del line


def _numbers(values, fmt="{:.4g}"):
    return ", ".join(fmt.format(v) for v in values) or "skipped"


def header(config, plan, num_examples, suite_members=()):
    """The lines naming every part of an evaluation before it starts.

    config: the resolved EvalConfig; plan: its plan.Plan; suite_members: the AutoAttack attacks
    when config.suite is set.
    """
    c = config
    restarts = f", {c.restarts} restarts" if c.restarts > 1 else ""
    lines = [
        f"Evaluation plan: {num_examples} examples, threat model {c.norm} eps {c.eps:.4g} "
        f"(PGD-{c.steps}, step {c.step_size:.4g}{restarts})",
        f"  attacks: {', '.join(plan.main)}",
        f"  eps sweep (PGD): eps {_numbers(c.eps_sweep)}",
        f"  steps sweep (PGD): steps {_numbers(c.steps_sweep, '{}')}",
        f"  sanity checks (Carlini et al. 2019): their PGD runs at eps 0 (1 step), random and "
        f"zero start and linf eps {c.large_eps:.4g} (PGD-{sanity.check_steps(c.steps)})",
    ]
    if c.suite != "none":
        lines.append(f"  AutoAttack ({c.suite_version}): {', '.join(suite_members)}")
    if c.detection:
        others = [d for d in DETECTORS if d != c.detector]
        adaptive = (
            f"; adaptive attack on each detector at c {_numbers(c.detection_weights, '{:g}')}"
            if c.detection_weights
            else "; no adaptive attack"
        )
        lines.append(
            f"  detection ({', '.join([c.detector, *others])}): PGD-{c.detection_steps} at eps "
            f"{_numbers(c.detection_eps)}{adaptive}"
        )
    adaptive_runs = (
        len(DETECTORS) * len(c.detection_eps) * len(c.detection_weights) if c.detection else 0
    )
    lines.append(
        f"  {len(plan.specs)} attack runs (runs with equal settings serve several parts)"
        + (f", then {len(suite_members)} AutoAttack members" if c.suite != "none" else "")
        + (f", then {adaptive_runs} adaptive attack runs" if adaptive_runs else "")
    )
    return lines


def run_line(index, count, name, spec, accuracy, seconds):
    """'[2/12] pgd (attacks, eps sweep): accuracy 0.8120 (37.2 s)' for a finished plan run."""
    parts = ", ".join(PARTS.get(group, group) for group in dict.fromkeys(spec.groups))
    return f"[{index}/{count}] {name} ({parts}): accuracy {accuracy:.4f} ({seconds:.1f} s)"


def timed(text, seconds):
    """`text` with its time: 'clean: accuracy 0.9900 (2.1 s)'."""
    return f"{text} ({seconds:.1f} s)"


def sanity_line(checks, seconds):
    """The sanity checks' verdict; `seconds`: the time of the runs only they asked for."""
    counts = {
        verdict: sum(check["passed"] is value for check in checks)
        for verdict, value in (("passed", True), ("failed", False), ("skipped", None))
    }
    failed = [check["name"] for check in checks if check["passed"] is False]
    return timed(
        "sanity checks: "
        + ", ".join(f"{n} {verdict}" for verdict, n in counts.items())
        + (f"; failed: {', '.join(failed)}" if failed else ""),
        seconds,
    )


def detection_line(section, seconds):
    """Per detection eps, each detector's paper-protocol AUC under plain PGD and adaptive."""

    def auc(result, kind):
        if result[kind] is None:  # no adaptive sweep
            return ""
        value = result[kind]["auc_misclassified_vs_correct_all"]
        return f" {kind} {'n/a' if value is None else f'{value:.4f}'}"

    entries = [
        f"eps {entry['eps']:.4g} "
        + ", ".join(
            f"{name} AUC{auc(result, 'plain')}{auc(result, 'adaptive')}"
            for name, result in entry["detectors"].items()
        )
        for entry in section["attacks"]
    ]
    return timed("detection: " + "; ".join(entries), seconds)


__all__ = ["PARTS", "detection_line", "header", "quiet", "run_line", "sanity_line", "timed"]
