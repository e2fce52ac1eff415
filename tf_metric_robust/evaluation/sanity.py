"""Sanity checks run by every evaluation, from the checklist of Carlini et al. 2019, "On Evaluating
Adversarial Robustness" (arXiv 1902.06705, Sec. 4-5): eps = 0 is clean accuracy, accuracy falls with
eps and with steps, attacks never help the model, adversarial examples stay in the eps-ball and
[0, 1], input gradients are finite and non-zero (no gradient masking), an unbounded attack breaks
the model, and a random start changes little over a zero start.

Each check is a dict {'name', 'passed' (True, False, or None when skipped), 'value', 'threshold',
'detail'}; a failure means the evaluation, not the model, is suspect.

The checks' own PGD runs (`plan_runs`) are the cheapest that show what each check must show, so
together they cost at most half the main attack (PGD-100 on MNIST: 1 + 3 x 10 steps, 0.31x;
bench/evaluate_cost.py measures it); runs that differ only in eps, step size, steps or the
random start share one compiled graph (gradient_loop.py).
"""

import logging

import numpy as np
import tensorflow as tf

from tf_metric_robust.attacks import objectives

_LOG = logging.getLogger(__name__)


def check_steps(steps):
    """Steps of the start-gap and large-eps runs: as many as fit three of them and the eps-0
    step into half the main attack's steps (1 + 3k <= steps / 2), at most 10, and at least 3 (or
    the main attack's own count if smaller), so PGD from x is more than one gradient sign. With
    Madry et al.'s step 2.5 eps / k, k steps cross the ball from either start."""
    return max(min(steps, 3), min(10, (steps // 2 - 1) // 3))


def plan_runs(config):
    """The sanity checks' own PGD runs: [(role, name, changes to the threat model's PGD)].

    eps_zero: an attack with eps 0 must return x (predictions = clean); that is the projection's
    job, not the search's, so one step (from the random start, whose projection is checked too).
    random_start / zero_start: the same short PGD (check_steps steps of 2.5 eps / k, Madry et
    al. 2018) from a random point and from x; a large accuracy gap means gradients are masked at
    the data points. large_eps: L-inf PGD at `large_eps`, the same short schedule, must drive
    accuracy near 0. Costs 1 + 3 k steps, at most half the main attack's for steps >= 20
    (PGD-100: 31 steps; PGD-20: 10).
    """
    c = config
    k = check_steps(c.steps)

    def short(eps, **changes):
        return dict(eps=eps, steps=k, step_size=2.5 * eps / k, **changes)

    return [
        ("eps_zero", "pgd_eps0", dict(eps=0.0, steps=1)),
        ("random_start", "pgd_random_start", short(c.eps, random_start=True)),
        ("zero_start", "pgd_zero_start", short(c.eps, random_start=False)),
        ("large_eps", "pgd_large_eps", short(c.large_eps, norm="linf", random_start=True)),
    ]


def gradient_stats(logits_fn, x, y, max_examples=100):
    """Counts examples whose input gradient of CE or of the CW margin is all zero or non-finite.

    Exact zeros signal masked gradients (quantisation, saturated softmax, stop_gradient tricks).
    Returns {'examples', 'zero_ce', 'zero_cw', 'nonfinite'} as Python ints.
    """
    x, y = tf.convert_to_tensor(x[:max_examples]), tf.cast(y[:max_examples], tf.int64)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        logits = tf.cast(logits_fn(x), tf.float32)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        cw = objectives.margin(logits, y)
    axes = list(range(1, x.shape.rank))
    stats = {"examples": int(x.shape[0]), "zero_ce": 0, "zero_cw": 0, "nonfinite": 0}
    for key, loss in (("zero_ce", ce), ("zero_cw", cw)):
        grad = tape.gradient(loss, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        stats[key] = int(tf.reduce_sum(tf.cast(tf.reduce_all(grad == 0, axes), tf.int32)))
        finite = tf.reduce_all(tf.math.is_finite(grad), axes)
        stats["nonfinite"] += int(tf.reduce_sum(tf.cast(~finite, tf.int32)))
    return stats


def bound_violations(x_adv, x, eps, norm, clip_min=0.0, clip_max=1.0):
    """Per example, how far x_adv lies outside the eps-ball around x or the box: float64 [N],
    >= 0, inf where x_adv is not finite (in-graph, so every replica checks its own shard)."""
    x_adv, x = tf.cast(x_adv, tf.float64), tf.cast(x, tf.float64)
    rows = tf.shape(x)[0]
    delta = tf.reshape(x_adv - x, [rows, -1])
    flat = tf.reshape(x_adv, [rows, -1])
    size = tf.reduce_max(tf.abs(delta), 1) if norm == "linf" else tf.norm(delta, axis=1)
    box = tf.maximum(clip_min - tf.reduce_min(flat, 1), tf.reduce_max(flat, 1) - clip_max)
    violation = tf.maximum(tf.maximum(size - tf.cast(eps, tf.float64), box), 0.0)
    finite = tf.reduce_all(tf.math.is_finite(flat), 1)
    return tf.where(finite, violation, tf.constant(np.inf, tf.float64))


def _check(name, passed, value, threshold, detail):
    return {
        "name": name,
        "passed": None if passed is None else bool(passed),
        "value": value,
        "threshold": threshold,
        "detail": detail,
    }


def _monotone(name, points, tol, what):
    """Accuracy must not rise by more than tol between consecutive points sorted by `what`."""
    if len(points) < 2:
        return _check(name, None, None, tol, f"skipped: fewer than two {what} values")
    points = sorted(points)
    rises = [(b[1] - a[1], a[0], b[0]) for a, b in zip(points, points[1:])]
    rise, lo, hi = max(rises)
    return _check(
        name,
        rise <= tol,
        rise,
        tol,
        f"largest accuracy rise {rise:+.4f} from {what} {lo:.4g} to {hi:.4g}",
    )


def run_checks(
    *,
    clean_correct,
    clean_predictions,
    predictions,
    correct,
    plan,
    violations,
    gradients,
    thresholds,
):
    """All checks from an evaluation's per-example evidence (see evaluation.run_plan)."""
    t = thresholds
    n = len(clean_correct)
    tol = max(t.accuracy_tolerance, 1.0 / n)
    acc = {name: float(c.mean()) for name, c in correct.items()}
    clean = float(clean_correct.mean())
    roles = plan.roles
    checks = []
    differ = int(np.sum(predictions[roles["eps_zero"]] != clean_predictions))
    checks.append(
        _check(
            "eps_zero_is_clean",
            differ == 0,
            differ,
            0,
            f"{differ} of {n} predictions change under an eps = 0 attack",
        )
    )
    checks.append(
        _monotone(
            "accuracy_non_increasing_in_eps",
            [(e, acc[name]) for e, name in plan.eps_sweep],
            tol,
            "eps",
        )
    )
    checks.append(
        _monotone(
            "accuracy_non_increasing_in_steps",
            [(s, acc[name]) for s, name in plan.steps_sweep],
            tol,
            "steps",
        )
    )
    attacked = {
        name: acc[name] - clean for name, spec in plan.specs.items() if spec.kwargs["eps"] > 0
    }
    worst = max(attacked, key=attacked.get)
    checks.append(
        _check(
            "robust_not_above_clean",
            attacked[worst] <= tol,
            attacked[worst],
            tol,
            f"{worst} accuracy minus clean accuracy {attacked[worst]:+.4f}",
        )
    )
    far = max(violations, key=violations.get)
    checks.append(
        _check(
            "inside_eps_ball_and_box",
            violations[far] <= t.bound_tolerance,
            violations[far],
            t.bound_tolerance,
            f"largest distance outside the eps-ball or [0,1]: {far} {violations[far]:.3g}",
        )
    )
    g = gradients
    zero = max(g["zero_ce"], g["zero_cw"]) / g["examples"]
    checks.append(
        _check(
            "input_gradients_nonzero_finite",
            g["nonfinite"] == 0 and zero <= t.max_zero_gradient_fraction,
            zero,
            t.max_zero_gradient_fraction,
            f"of {g['examples']} examples: all-zero CE gradient {g['zero_ce']}, all-zero CW gradient "
            f"{g['zero_cw']}, non-finite {g['nonfinite']}",
        )
    )
    large = acc[roles["large_eps"]]
    eps = plan.specs[roles["large_eps"]].kwargs["eps"]
    checks.append(
        _check(
            "large_eps_breaks_model",
            large <= t.large_eps_max_accuracy,
            large,
            t.large_eps_max_accuracy,
            f"accuracy {large:.4f} under L-inf PGD at eps {eps:g}",
        )
    )
    gap = abs(acc[roles["random_start"]] - acc[roles["zero_start"]])
    gap_tol = max(t.start_gap_tolerance, 1.0 / n)
    checks.append(
        _check(
            "random_vs_zero_start_gap",
            gap <= gap_tol,
            gap,
            gap_tol,
            f"PGD accuracy random start {acc[roles['random_start']]:.4f}, zero "
            f"start {acc[roles['zero_start']]:.4f}",
        )
    )
    return checks


def warn_failures(checks):
    """Logs one warning per failed check (Python logging; absl shows it on stderr)."""
    for check in checks:
        if check["passed"] is False:
            _LOG.warning(
                "sanity check %s FAILED: %s (threshold %s)",
                check["name"],
                check["detail"],
                check["threshold"],
            )
