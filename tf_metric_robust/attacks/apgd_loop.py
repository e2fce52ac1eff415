"""APGD's iterations: checkpoints, the DLR losses and the compiled loop over runs and steps.

One tf.function per attack call (all restarts / target classes, cached per model_fn): a
tf.while_loop over runs attacks only the examples no earlier run has fooled, and each run is a
tf.while_loop over steps with per-example step sizes (faster to build than an unrolled loop and
no slower to run here; see _single_run). Croce & Hein 2020, Algorithm 1 and Sec. 3-4.
"""

import math

import tensorflow as tf

from tf_metric_robust.attacks import _plumbing, objectives

LOSSES = ("ce", "dlr")
_ALPHA = 0.75  # momentum weight of the new projected step (paper, Sec. 3.2)
_DLR_TINY = 1e-12  # keeps the DLR denominator positive when the top logits tie


def checkpoints(steps):
    """Iterations w_j = ceil(p_j * steps) <= steps where APGD may halve its step (sorted, unique).

    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (paper, Sec. 3.2).
    """
    p_prev, p, points = 0.0, 0.22, []
    while p <= 1.0:
        w = math.ceil(round(p * steps, 6))  # round: 0.22 * 100 must give 22, not 23
        if 0 < w <= steps and (not points or w > points[-1]):
            points.append(w)
        p_prev, p = p, p + max(p - p_prev - 0.03, 0.06)
    return points


def _sorted_logits(logits, min_classes):
    logits = tf.cast(logits, tf.float32)
    classes = logits.shape[-1]
    if classes is not None and classes < min_classes:
        raise ValueError(f"the DLR loss needs at least {min_classes} classes, got {classes}")
    return logits, tf.sort(logits, axis=-1, direction="DESCENDING")


def dlr_loss(logits, labels):
    """Untargeted DLR loss -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3), float32 [N] (paper, eq. 6).

    Invariant to shifting and rescaling the logits; needs >= 3 classes.
    """
    logits, top = _sorted_logits(logits, 3)
    true_logit = tf.gather(logits, labels, axis=-1, batch_dims=1)
    is_top = tf.equal(tf.argmax(logits, axis=-1, output_type=labels.dtype), labels)
    other_logit = tf.where(is_top, top[:, 1], top[:, 0])
    return -(true_logit - other_logit) / (top[:, 0] - top[:, 2] + _DLR_TINY)


def dlr_targeted_loss(logits, labels, targets):
    """Targeted DLR loss -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), float32 [N] (paper, eq. 7).

    Needs >= 4 classes.
    """
    logits, top = _sorted_logits(logits, 4)
    true_logit = tf.gather(logits, labels, axis=-1, batch_dims=1)
    target_logit = tf.gather(logits, targets, axis=-1, batch_dims=1)
    return -(true_logit - target_logit) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _DLR_TINY)


def _loss_value(logits, labels, targets, loss, targeted):
    """Per-example loss APGD maximises, float32 [N]."""
    if loss == "dlr":
        return dlr_targeted_loss(logits, labels, targets) if targeted else dlr_loss(logits, labels)
    if targeted:  # CE toward the target class, as in the authors' 'ce-targeted'
        return objectives.objective(logits, targets, "ce", targeted=True)
    return objectives.objective(logits, labels, "ce", targeted=False)


def _single_run(
    model_fn,
    x,
    y,
    targets,
    eps,
    clip_min,
    clip_max,
    seed,
    *,
    steps,
    norm,
    loss,
    targeted,
    rho,
    eot_iter,
):
    """One APGD run from a random start. Returns (x_adv, fooled bool [N], best loss float32 [N]).

    With eot_iter > 1 each iterate's gradient is the mean over eot_iter calls of a randomised
    model_fn (expectation over transformation) and its loss and prediction those of the last
    call, as fra31/auto-attack `autoattack/autopgd_base.py:266-282` (start) and `:364-379`
    (steps).

    x_adv is, per example, the first misclassified iterate if any, else the highest-loss iterate.
    The steps run in a tf.while_loop: measured here (small CNN, batch 256, 100 steps) it ran as
    fast as the Python-unrolled loop and traced in 3-4 s instead of 30-50 s.
    """
    expand = lambda v: tf.reshape(v, [-1] + [1] * (x.shape.rank - 1))
    pick = lambda cond, a, b: tf.where(expand(cond), a, b)
    project = lambda v: objectives.project(v, x, eps, norm, clip_min, clip_max)

    @_plumbing.separate_function
    def evaluate(x_adv):
        grad = tf.zeros(tf.shape(x), tf.float32)
        for _ in range(eot_iter):  # unrolled: eot_iter is a small Python int (1, or 20)
            with tf.GradientTape() as tape:
                tape.watch(x_adv)
                logits = objectives.logits_of(model_fn, x_adv)
                value = _loss_value(logits, y, targets, loss, targeted)
                total = tf.reduce_sum(value)
            sample = tape.gradient(total, x_adv)
            # No gradient path at all (e.g. a stop_gradient input quantiser) reads as zero.
            if sample is not None:
                grad += tf.cast(sample, tf.float32)
        grad = grad / float(eot_iter) if eot_iter > 1 else grad
        fooled = tf.not_equal(tf.argmax(logits, axis=-1, output_type=y.dtype), y)
        return value, grad, fooled

    # Static tables indexed by the iteration count: is it a checkpoint, and the interval length.
    points = checkpoints(steps)
    is_check = tf.constant([k in points for k in range(steps + 1)])
    interval = [0.0] * (steps + 1)
    for previous, w in zip([0] + points, points):
        interval[w] = float(w - previous)
    interval = tf.constant(interval)

    # The loop state, by role: the iterate (x_adv, x_prev, grad, value_prev), the best point so
    # far (best, x_best, grad_best), the first fooling point (x_found, found), and the step-size
    # schedule (step, increases since the last checkpoint, best and halved at that checkpoint).
    def body(k, iterate, best_point, first_found, schedule):
        x_adv, x_prev, grad, value_prev = iterate
        best, x_best, grad_best = best_point
        x_found, found = first_found
        step, increases, best_at_check, halved_at_check = schedule
        alpha = tf.where(k == 0, 1.0, _ALPHA)  # the first step has no momentum
        z = project(x_adv + tf.cast(expand(step) * objectives.step_direction(grad, norm), x.dtype))
        x_new = project(
            x_adv
            + tf.cast(alpha, x.dtype) * (z - x_adv)
            + tf.cast(1.0 - alpha, x.dtype) * (x_adv - x_prev)
        )
        value, grad, fooled = evaluate(x_new)
        x_found = pick(fooled & ~found, x_new, x_found)
        found = found | fooled
        increases += tf.cast(value > value_prev, tf.float32)
        improved = value > best
        x_best, grad_best = pick(improved, x_new, x_best), pick(improved, grad, grad_best)
        best = tf.where(improved, value, best)
        x_prev, x_adv, value_prev = x_adv, x_new, value
        check = is_check[k + 1]
        halve = check & (
            (increases < rho * interval[k + 1]) | (~halved_at_check & (best <= best_at_check))
        )
        step = tf.where(halve, 0.5 * step, step)
        # Restart from the best point, with no momentum carried over.
        x_adv, x_prev = pick(halve, x_best, x_adv), pick(halve, x_best, x_prev)
        grad, value_prev = pick(halve, grad_best, grad), tf.where(halve, best, value_prev)
        halved_at_check = tf.where(check, halve, halved_at_check)
        best_at_check = tf.where(check, best, best_at_check)
        increases = tf.where(check, 0.0, increases)
        return (
            k + 1,
            (x_adv, x_prev, grad, value_prev),
            (best, x_best, grad_best),
            (x_found, found),
            (step, increases, best_at_check, halved_at_check),
        )

    x_adv = project(objectives.random_start(x, eps, norm, seed))
    value, grad, found = evaluate(x_adv)
    state = (
        tf.constant(0),
        (x_adv, x_adv, grad, value),
        (value, x_adv, grad),
        (x_adv, found),
        (2.0 * eps * tf.ones_like(value), tf.zeros_like(value), value, tf.zeros_like(found)),
    )
    _, _, (best, x_best, _), (x_found, found), _ = tf.while_loop(
        lambda k, *_: k < steps, body, state
    )
    return pick(found, x_found, x_best), found, best


def apgd_graph(model_fn, x, y, eps, clip_min, clip_max, runs, seed, *, targeted, **settings):
    """`runs` (int32 scalar) APGD runs, restarts or one per target class, on the examples still
    classified right; `settings` (steps, norm, loss, rho, eot_iter) go to each run.

    Examples misclassified on x are returned unchanged. Per example the result is the first
    successful run's point, else the highest-loss point over runs.
    """
    if seed is None:
        seed = tf.random.uniform([2], maxval=tf.int64.max, dtype=tf.int64)
    clean_logits = objectives.logits_of(model_fn, x)
    found = tf.not_equal(tf.argmax(clean_logits, axis=-1, output_type=y.dtype), y)
    # Targets: the 2nd, 3rd, ... highest clean logits (paper, Sec. 4).
    ranked = tf.argsort(clean_logits, axis=-1, direction="DESCENDING")
    if targeted:  # at most C - 1 wrong classes to target
        runs = tf.minimum(runs, tf.shape(clean_logits)[-1] - 1)
    best = tf.fill(tf.shape(y), -float("inf"))

    def body(r, x_out, found, best):
        idx = tf.where(~found)[:, 0]
        sub_y = tf.gather(y, idx)
        sub_t = tf.gather(tf.cast(ranked[:, r + 1], y.dtype), idx) if targeted else sub_y
        sub_x = tf.gather(x, idx)
        x_r, found_r, best_r = _single_run(
            model_fn,
            sub_x,
            sub_y,
            sub_t,
            eps,
            clip_min,
            clip_max,
            tf.random.experimental.stateless_fold_in(seed, r),
            targeted=targeted,
            **settings,
        )
        take = found_r | (best_r > tf.gather(best, idx))
        rows = idx[:, None]
        x_keep = tf.where(
            tf.reshape(take, [-1] + [1] * (x.shape.rank - 1)), x_r, tf.gather(x_out, idx)
        )
        x_out = tf.tensor_scatter_nd_update(x_out, rows, x_keep)
        best = tf.tensor_scatter_nd_update(best, rows, tf.where(take, best_r, tf.gather(best, idx)))
        return r + 1, x_out, tf.tensor_scatter_nd_update(found, rows, found_r), best

    _, x_out, _, _ = tf.while_loop(
        lambda r, x_out, found, best: (r < runs) & tf.reduce_any(~found),
        body,
        (tf.constant(0), x, found, best),
    )
    return x_out
