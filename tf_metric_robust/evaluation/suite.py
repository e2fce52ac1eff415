"""A standard attack suite inside an evaluation: AutoAttack on every evaluated example.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (arXiv 2003.01690). The suite runs `attacks.autoattack` with
the paper's fixed hyper-parameters (APGD-CE, APGD-T on the DLR loss with 9 target classes,
100 iterations each, FAB-T with 9 target classes and 100 iterations, Square with 5000 queries;
'plus' adds APGD-DLR and 5 restarts), each attack
only on the points every earlier one left correct, at the evaluation's threat model and seed. Its
per-example result joins the evaluation's worst case, its numbers go to the report's `suite`
section, and its two reliability diagnostics (Square beating the gradient attacks: masked
gradients; APGD far below the evaluation's PGD: PGD overstated robustness) become warnings and
sanity checks. The 'rand' version (for randomised defences) and untargeted FAB are not
implemented.
"""

import logging

import numpy as np

from tf_metric_robust import attacks
from tf_metric_robust.attacks.autoattack import GRADIENT_ATTACKS, VERSIONS
from tf_metric_robust.config import UserError
NUM_TARGET_CLASSES = 9  # APGD-T and FAB-T targets: the 9 most likely wrong classes (Croce & Hein)
PGD_GAP = 0.05  # warn when APGD's robust accuracy is this far below PGD's
SQUARE_GAP = 0.002  # warn when Square lowers the gradient attacks' accuracy by more (the paper's)

_LOG = logging.getLogger(__name__)


def weakest_pgd(plan, accuracy):
    """(name, accuracy) of the lowest-accuracy PGD run of the attack list inside the threat model,
    or (None, None): the PGD number the suite's APGD is compared with."""
    runs = {name: accuracy(name) for name in plan.main
            if plan.specs[name].attack == "pgd" and plan.specs[name].counts_for_robust}
    if not runs:
        return None, None
    name = min(runs, key=runs.get)
    return name, runs[name]


def run_suite(logits_fn, x, y, config, *, batch_size, pgd_attack=None, pgd_accuracy=None,
              progress=False):
    """Runs config.suite on all of (x, y); returns (report section, correct bool [N], checks).

    Args:
      logits_fn: images -> logits [N, C] (keep one per model: compiled attacks are cached on it).
      x, y: NumPy images [N, H, W, C] in [0, 1] and int labels [N] (the whole evaluation set).
      config: a resolved EvalConfig (eps, norm, seed, suite, suite_version, suite_steps,
        suite_queries).
      batch_size: points per attack call.
      pgd_attack, pgd_accuracy: the evaluation's PGD run and its accuracy (fraction), or None.
    """
    if progress:
        names = ", ".join(VERSIONS[config.suite_version])
        print(f"AutoAttack ({config.suite_version}: {names}) on {len(y)} examples", flush=True)
    settings = dict(eps=config.eps, norm=config.norm, version=config.suite_version,
                    steps=config.suite_steps, queries=config.suite_queries,
                    num_target_classes=NUM_TARGET_CLASSES, seed=config.seed)
    try:
        result = attacks.autoattack(logits_fn, x, y, batch_size=batch_size,
                                    pgd_accuracy=pgd_accuracy, pgd_gap=PGD_GAP,
                                    square_gap=SQUARE_GAP, **settings)
    except ValueError as error:
        raise UserError(f"suite: {error}") from None
    correct = result.fooled_by == ""
    fooled, counts = result.fooled_by, {}
    for name in ("clean", *result.attack_accuracy):
        counts[name] = int(np.sum(fooled == name))
    section = {"name": config.suite, **settings, "batch_size": batch_size,
               "attacks": list(result.attack_accuracy),
               "clean_accuracy": result.clean_accuracy,
               "attack_accuracy": dict(result.attack_accuracy),
               "robust_accuracy": result.robust_accuracy, "fooled_by": counts,
               "pgd_attack": pgd_attack, "pgd_accuracy": pgd_accuracy,
               "warnings": list(result.warnings),
               "seconds": {k: round(v, 3) for k, v in result.seconds.items()}}
    return section, correct, suite_checks(section)


def _check(name, passed, value, threshold, detail):
    return {"name": name, "passed": passed, "value": value, "threshold": threshold,
            "detail": detail}


def suite_checks(section):
    """The suite's diagnostics as sanity checks (sanity.py format): failed exactly when the
    corresponding autoattack warning fired."""
    accuracy, order = section["attack_accuracy"], section["attacks"]
    checks = []
    if "square" in order:
        index = order.index("square")
        before = accuracy[order[index - 1]] if index else section["clean_accuracy"]
        gain = before - accuracy["square"]
        checks.append(_check(
            "suite_square_not_beating_gradient_attacks", gain <= SQUARE_GAP, gain, SQUARE_GAP,
            f"Square lowered robust accuracy from {before:.4f} to {accuracy['square']:.4f} on "
            f"points the attacks before it left robust (more: gradient masking)"))
    gradient = [accuracy[n] for n in order if n in GRADIENT_ATTACKS]
    pgd = section["pgd_accuracy"]
    if pgd is None or not gradient:
        checks.append(_check("suite_apgd_not_far_below_pgd", None, None, PGD_GAP,
                             "skipped: no PGD run in the attack list or no APGD in the suite"))
    else:
        gap = pgd - min(gradient)
        checks.append(_check(
            "suite_apgd_not_far_below_pgd", gap <= PGD_GAP, gap, PGD_GAP,
            f"robust accuracy {min(gradient):.4f} after APGD vs {pgd:.4f} under "
            f"{section['pgd_attack']} (more: the PGD evaluation overstates robustness)"))
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


__all__ = ["NUM_TARGET_CLASSES", "PGD_GAP", "SQUARE_GAP", "run_suite", "suite_checks",
           "summary_lines", "weakest_pgd"]
