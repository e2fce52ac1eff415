"""A standard attack suite inside an evaluation: AutoAttack on every evaluated example.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (arXiv 2003.01690). The suite runs the sequence of
`attacks.autoattack` with the paper's fixed hyper-parameters (APGD-CE, APGD-T on the DLR loss
with 9 target classes, 100 iterations each, FAB-T with 9 target classes and 100 iterations,
Square with 5000 queries; 'plus' is the reference's longer list: APGD-CE, APGD-DLR and untargeted
FAB with 5 restarts, Square, APGD-T, FAB-T), each attack only on the points every earlier one left
correct, at the evaluation's threat model and seed. Its
per-example result joins the evaluation's worst case, its numbers go to the report's `suite`
section, and its two reliability diagnostics (Square beating the gradient attacks: masked
gradients; APGD far below the evaluation's PGD: PGD overstated robustness) become warnings and
sanity checks. The 'rand' version (for randomised defences) runs APGD-CE and APGD-DLR with 20
samples of the model per gradient.
"""

import numpy as np
import tensorflow as tf
from absl import logging

from tf_metric_robust.attacks.autoattack import (
    EOT_ITER,
    MEMBER_ID,
    RESTARTS,
    VERSIONS,
    diagnose,
    gradient_members,
    log_member,
    member_attack,
)
from tf_metric_robust.evaluation import progress as progress_lines
from tf_metric_robust.evaluation import sanity

NUM_TARGET_CLASSES = 9  # APGD-T and FAB-T targets: the 9 most likely wrong classes (Croce & Hein)
PGD_GAP = 0.05  # warn when APGD's robust accuracy is this far below PGD's
SQUARE_GAP = 0.002  # warn when Square lowers the gradient attacks' accuracy by more (the paper's)
BOUND_TOLERANCE = 1e-5  # a member's result outside the threat model by more is a bug


def weakest_pgd(plan, accuracy):
    """(name, accuracy) of the lowest-accuracy PGD run of the attack list inside the threat model,
    or (None, None): the PGD number the suite's APGD is compared with."""
    runs = {
        name: accuracy(name)
        for name in plan.main
        if plan.specs[name].attack == "pgd" and plan.specs[name].counts_for_robust
    }
    if not runs:
        return None, None
    name = min(runs, key=runs.get)
    return name, runs[name]


def _member_fn(fns, attack, eps, norm):
    """A shard function (shards.ShardRunner) running one AutoAttack member: per example the
    prediction on its result and the result's distance outside the threat model."""

    def run(x, y, key, params):
        del params
        x_adv = attack(fns.logits, x, y, key)
        return {
            "predictions": tf.argmax(fns.outputs(x_adv)[0], -1),
            "violation": sanity.bound_violations(x_adv, x, eps, norm),
        }

    return run


def run_suite(
    runner,
    fns,
    x,
    y,
    clean_predictions,
    config,
    *,
    pgd_attack=None,
    pgd_accuracy=None,
    progress=progress_lines.quiet,
):
    """Runs config.suite on all of (x, y); returns (report section, fooled_by [N], checks).

    The AutoAttack sequence of attacks.autoattack (each member only on the points every earlier
    one left correct), with its members run shard by shard through `runner`: shard j of a
    member's remaining points draws from seeds.key(seed, "autoattack", member, j), the draw of
    attacks.autoattack's batch j with batch_size = the shard size, on any number of replicas
    and workers. fooled_by: per point 'clean', the first member that fooled it, or ''.

    Args:
      runner: a shards.ShardRunner; fns: the model's ModelFns.
      x, y: NumPy images [N, H, W, C] in [0, 1] and int labels [N] (the whole evaluation set).
      clean_predictions: the evaluation's clean predictions [N].
      config: a resolved EvalConfig (eps, norm, seed, suite, suite_version, suite_steps,
        suite_queries).
      pgd_attack, pgd_accuracy: the evaluation's PGD run and its accuracy (fraction), or None.
      progress: takes one line per finished member (progress.py).
    """
    names = VERSIONS[config.suite_version]
    logging.info(
        "AutoAttack (%s: %s) on %d examples", config.suite_version, ", ".join(names), len(y)
    )
    # What every member runs with; the report section records it with the version and seed.
    member_settings = dict(
        eps=config.eps,
        norm=config.norm,
        steps=config.suite_steps,
        queries=config.suite_queries,
        num_target_classes=NUM_TARGET_CLASSES,
    )
    settings = dict(member_settings, version=config.suite_version, seed=config.seed)
    fooled_by = np.where(clean_predictions != y, "clean", "").astype(object)
    clean_accuracy = float(np.mean(fooled_by == ""))
    attack_accuracy, seconds, call_times = {}, {}, {}
    for name in names:
        attack = member_attack(
            name,
            **member_settings,
            restarts=RESTARTS[config.suite_version],
            clip_min=0.0,
            clip_max=1.0,
            eot_iter=EOT_ITER[config.suite_version],
        )
        rows = np.flatnonzero(fooled_by == "")
        run = f"autoattack.{config.suite_version}.{name}"
        if len(rows):
            out = runner.run(
                run,
                _member_fn(fns, attack, config.eps, config.norm),
                x,
                y,
                rows=rows,
                root="autoattack",
                seed_id=MEMBER_ID[name],
            )
            if out["violation"].max() > BOUND_TOLERANCE:
                raise RuntimeError(
                    f"{name} returned points outside the {config.norm} ball of "
                    f"radius {config.eps} or the box [0, 1]"
                )
            fooled_by[rows[out["predictions"] != y[rows]]] = name
        attack_accuracy[name] = float(np.mean(fooled_by == ""))
        seconds[name] = runner.seconds.get(run, 0.0)
        call_times[name] = runner.call_times(run)
        log_member(name, attack_accuracy[name], seconds[name])
        progress(
            progress_lines.timed(
                f"AutoAttack {name}: robust accuracy {attack_accuracy[name]:.4f}", seconds[name]
            )
        )
    warnings = diagnose(names, clean_accuracy, attack_accuracy, pgd_accuracy, PGD_GAP, SQUARE_GAP)
    fooled_by = fooled_by.astype(str)
    counts = {name: int(np.sum(fooled_by == name)) for name in ("clean", *names)}
    section = {
        "name": config.suite,
        **settings,
        "batch_size": runner.shard_size,
        "attacks": list(names),
        "clean_accuracy": clean_accuracy,
        "attack_accuracy": attack_accuracy,
        "robust_accuracy": attack_accuracy[names[-1]],
        "fooled_by": counts,
        "pgd_attack": pgd_attack,
        "pgd_accuracy": pgd_accuracy,
        "warnings": list(warnings),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "call_times": call_times,
    }
    return section, fooled_by, suite_checks(section)


def _check(name, passed, value, threshold, detail):
    return {
        "name": name,
        "passed": passed,
        "value": value,
        "threshold": threshold,
        "detail": detail,
    }


def suite_checks(section):
    """The suite's diagnostics as sanity checks (sanity.py format): failed exactly when the
    corresponding autoattack warning fired."""
    accuracy, order = section["attack_accuracy"], section["attacks"]
    checks = []
    if "square" in order:
        index = order.index("square")
        before = accuracy[order[index - 1]] if index else section["clean_accuracy"]
        gain = before - accuracy["square"]
        checks.append(
            _check(
                "suite_square_not_beating_gradient_attacks",
                gain <= SQUARE_GAP,
                gain,
                SQUARE_GAP,
                f"Square lowered robust accuracy from {before:.4f} to {accuracy['square']:.4f} on "
                f"points the attacks before it left robust (more: gradient masking)",
            )
        )
    gradient = [accuracy[n] for n in gradient_members(order)]
    pgd = section["pgd_accuracy"]
    if pgd is None or not gradient:
        checks.append(
            _check(
                "suite_apgd_not_far_below_pgd",
                None,
                None,
                PGD_GAP,
                "skipped: no PGD run in the attack list or no APGD in the suite",
            )
        )
    else:
        gap = pgd - min(gradient)
        checks.append(
            _check(
                "suite_apgd_not_far_below_pgd",
                gap <= PGD_GAP,
                gap,
                PGD_GAP,
                f"robust accuracy {min(gradient):.4f} after APGD vs {pgd:.4f} under "
                f"{section['pgd_attack']} (more: the PGD evaluation overstates robustness)",
            )
        )
    return checks


def summary_lines(section):
    """Human-readable lines of a report's suite section (bin/evaluate's summary)."""
    if not section:
        return []
    lines = [f"suite {section['name']} ({section['version']}, eps {section['eps']:.4g}):"]
    lines.append(f"  {'clean':<25} {section['clean_accuracy']:.4f}")
    for name, value in section["attack_accuracy"].items():
        lines.append(f"  {'+ ' + name:<25} {value:.4f}")
    lines.append(f"  {'robust accuracy':<25} {section['robust_accuracy']:.4f}")
    lines += [f"  WARNING: {message}" for message in section["warnings"]]
    return lines


__all__ = [
    "NUM_TARGET_CLASSES",
    "PGD_GAP",
    "SQUARE_GAP",
    "run_suite",
    "suite_checks",
    "summary_lines",
    "weakest_pgd",
]
