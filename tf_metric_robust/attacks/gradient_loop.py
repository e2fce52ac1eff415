"""The gradient attacks' loop: projected ascent steps from a start, restarts, worst case kept.

One loop serves FGSM, PGD, MI-FGSM and the fast training attacks (gradient.py, fast.py) and the
adaptive detector attack (adaptive.py). PGD: Madry et al., ICLR 2018; MI-FGSM's momentum on
L1-normalised gradients: Dong et al., CVPR 2018; N-FGSM's box-only steps: de Jorge et al., NeurIPS
2022. The step loop is a Python loop unrolled inside one tf.function: on CPU this costs the same as
k separate input gradients, while a tf.while_loop is slower (bench/pgd_overhead.py).
"""

import tensorflow as tf

from tf_metric_robust.attacks import objectives


def _clip_to_box(x_adv, clip_min, clip_max):
    """x_adv clipped to [clip_min, clip_max] only (N-FGSM: no eps-ball), dtype kept."""
    dtype = x_adv.dtype
    return tf.clip_by_value(x_adv, tf.cast(clip_min, dtype), tf.cast(clip_max, dtype))


def attack_graph(
    model_fn,
    x,
    y,
    threat,
    seed,
    step_size,
    decay,
    start_scale,
    *,
    steps,
    norm,
    loss,
    targeted,
    random_start,
    momentum,
    restarts=1,
    project_to_ball=True,
):
    """The shared loop: `restarts` runs of `steps` projected ascent steps, worst case per example.

    threat: (eps, clip_min, clip_max) and step_size, decay, start_scale: float32 scalars; seed:
    None or int [2]. A uniform random start lies in the ball of radius start_scale * eps;
    project_to_ball False clips the start and every step to [clip_min, clip_max] only (N-FGSM),
    never to the eps-ball.
    """
    eps, clip_min, clip_max = threat

    def constrain(x_adv):
        if project_to_ball:
            return objectives.project(x_adv, x, eps, norm, clip_min, clip_max)
        return _clip_to_box(x_adv, clip_min, clip_max)

    best = best_success = best_objective = None
    for restart in range(restarts):
        run_seed = None if seed is None else tf.random.experimental.stateless_fold_in(seed, restart)
        if random_start is True:
            x_adv = constrain(objectives.random_start(x, eps * start_scale, norm, run_seed))
        elif random_start:  # a float: the std of a Gaussian start, unprojected (trades.py:31-33)
            x_adv = objectives.gaussian_start(x, random_start, run_seed)
        else:
            x_adv = x
        accumulated = tf.zeros(tf.shape(x), tf.float32) if momentum else None
        for _ in range(steps):
            with tf.GradientTape() as tape:
                tape.watch(x_adv)
                total = tf.reduce_sum(
                    objectives.objective(objectives.logits_of(model_fn, x_adv), y, loss, targeted)
                )
            # No gradient path (a stop_gradient quantiser, logits that ignore the input) is a
            # zero gradient, never None: the step below then leaves x_adv where it is.
            grad = tf.cast(
                tape.gradient(total, x_adv, unconnected_gradients=tf.UnconnectedGradients.ZERO),
                tf.float32,
            )
            if momentum:
                accumulated = decay * accumulated + objectives.l1_normalize(grad)
                grad = accumulated
            step = step_size * objectives.step_direction(grad, norm)
            x_adv = constrain(x_adv + tf.cast(step, x.dtype))
        if restarts == 1:
            return x_adv
        # Keep per example the run that succeeds, ties broken by the higher objective.
        logits = objectives.logits_of(model_fn, x_adv)
        hit = objectives.success(logits, y, targeted)
        value = objectives.objective(logits, y, loss, targeted)
        if best is None:
            best, best_success, best_objective = x_adv, hit, value
            continue
        better = (hit & ~best_success) | (tf.equal(hit, best_success) & (value > best_objective))
        best = tf.where(tf.reshape(better, [-1] + [1] * (x.shape.rank - 1)), x_adv, best)
        best_success = best_success | hit
        best_objective = tf.where(better, value, best_objective)
    return best
