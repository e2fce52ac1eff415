"""FGSM, PGD and MI-FGSM: one iterative gradient loop, compiled once per model and settings.

PGD: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.
FGSM: Goodfellow et al., ICLR 2015 (one step of size eps from x). MI-FGSM: Dong et al., "Boosting
Adversarial Attacks with Momentum", CVPR 2018 (momentum on L1-normalised gradients).
Fast adversarial training's attacks are one step of the same loop: FGSM-RS (Wong et al., "Fast is
better than free", ICLR 2020) from a uniform start in the ball, and N-FGSM (de Jorge et al., "Make
Some Noise", NeurIPS 2022) from a start in a 2 eps box, never projected back to the eps-ball.

The step loop is a Python loop unrolled inside one tf.function: on CPU this costs the same as k
separate input gradients, while a tf.while_loop is slower (DESIGN.md, "The stack").
"""

import numbers

import numpy as np
import tensorflow as tf

from tf_metric_robust.attacks import _plumbing, objectives


def validate_args(*, eps, step_size, steps, restarts, norm, loss, clip_min, clip_max, decay=0.0):
    """Raises ValueError on bad arguments; returns assertions for values only known at run time.

    `steps` and `restarts` must be Python ints: they are unrolled into the graph. step_size None
    means "steps by eps" (FGSM) and is not checked.
    """
    _plumbing.check_norm(norm)
    if loss not in objectives.LOSSES:
        raise ValueError(f"loss must be one of {objectives.LOSSES}, got {loss!r}")
    if loss == "kl" and restarts != 1:  # no labels to tell which restart succeeded
        raise ValueError(f"loss 'kl' runs one start (restarts=1), got restarts={restarts!r}")
    _plumbing.check_int("steps", steps, 1)
    _plumbing.check_int("restarts", restarts, 1)
    checks = _plumbing.check_number("eps", eps, 0.0, strict=False)
    if step_size is not None:
        checks += _plumbing.check_number("step_size", step_size, 0.0, strict=True)
    checks += _plumbing.check_number("decay", decay, 0.0, strict=False)
    lo, hi = (tf.get_static_value(v) if tf.is_tensor(v) else v for v in (clip_min, clip_max))
    if lo is not None and hi is not None and not lo < hi:
        raise ValueError(f"clip_min must be < clip_max, got {lo} and {hi}")
    return checks


def _clip_to_box(x_adv, clip_min, clip_max):
    """x_adv clipped to [clip_min, clip_max] only (N-FGSM: no eps-ball), dtype kept."""
    dtype = x_adv.dtype
    return tf.clip_by_value(x_adv, tf.cast(clip_min, dtype), tf.cast(clip_max, dtype))


def attack_graph(
    model_fn,
    x,
    y,
    eps,
    step_size,
    decay,
    clip_min,
    clip_max,
    seed,
    start_scale=1.0,
    *,
    steps,
    norm,
    loss,
    targeted,
    random_start,
    momentum,
    restarts,
    ball=True,
):
    """The shared loop: `restarts` runs of `steps` projected ascent steps, worst case per example.

    eps, step_size, decay, clip_min, clip_max, start_scale: float32 scalars; seed: None or int
    [2]. A uniform random start lies in the ball of radius start_scale * eps; `ball` False clips
    the start and every step to [clip_min, clip_max] only (N-FGSM), never to the eps-ball.
    """

    def constrain(x_adv):
        if ball:
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


def _run(
    model_fn,
    x,
    y,
    *,
    eps,
    step_size,
    steps,
    random_start,
    loss,
    norm,
    restarts,
    targeted,
    clip_min,
    clip_max,
    seed,
    decay,
    start_scale=1.0,
    ball=True,
):
    """Validates, converts arguments to tensors and runs the (cached) compiled attack.

    step_size None steps by eps (FGSM); decay None turns momentum off (PGD).
    """
    checks = validate_args(
        eps=eps,
        step_size=step_size,
        steps=steps,
        restarts=restarts,
        norm=norm,
        loss=loss,
        clip_min=clip_min,
        clip_max=clip_max,
        decay=0.0 if decay is None else decay,
    )
    checks += _plumbing.check_number("start_scale", start_scale, 0.0, strict=True)
    x, y = objectives.images_and_labels(x, y, clip_min, clip_max, loss)
    step_size = eps if step_size is None else step_size
    decay_value = 0.0 if decay is None else decay
    scalars = [tf.cast(v, tf.float32) for v in (eps, step_size, decay_value, clip_min, clip_max)]
    seed = _plumbing.stateless_seed(seed)
    static = dict(
        steps=steps,
        norm=norm,
        loss=loss,
        targeted=bool(targeted),
        random_start=_start(random_start),
        momentum=decay is not None,
        restarts=restarts,
        ball=bool(ball),
    )
    with tf.control_dependencies(checks):
        x_adv = _plumbing.run_compiled(
            attack_graph, model_fn, static, x, y, *scalars, seed, tf.cast(start_scale, tf.float32)
        )
    # The result is data, not a function of the model weights (keeps outer tapes clean).
    return tf.stop_gradient(x_adv)


def _start(random_start):
    """True/False, or a Gaussian start's std as a float > 0 (a bool is never read as a number)."""
    if isinstance(random_start, (bool, np.bool_)) or random_start is None:
        return bool(random_start)
    if not isinstance(random_start, numbers.Real) or not random_start > 0:
        raise ValueError(f"random_start must be True, False or a std > 0, got {random_start!r}")
    return float(random_start)


def pgd(
    model_fn,
    x,
    y,
    *,
    eps,
    step_size,
    steps,
    random_start=True,
    loss="ce",
    norm="linf",
    restarts=1,
    targeted=False,
    clip_min=0.0,
    clip_max=1.0,
    seed=None,
    start_scale=1.0,
    project_to_ball=True,
):
    """Projected gradient descent (Madry et al. 2018) in the linf or l2 eps-ball around x.

    Args: model_fn maps images to logits [N, C]; x images [N, ...] (any float dtype, kept);
    y int labels [N] (the targets if `targeted`; with loss 'kl' the clean logits [N, C], TRADES'
    inner maximisation); eps, step_size on the image scale ([0, 1]); random_start True (uniform
    in the ball), False, or a float std: x + std N(0, 1) (TRADES, MART: TRADES_START_STD);
    `restarts` random starts keep per example the successful / highest-loss result; seed None
    (stateful random) or an int tensor [2] (stateless, reproducible). Fast training attacks:
    start_scale (> 0) sets the uniform start's radius to start_scale * eps (N-FGSM: 2);
    project_to_ball False keeps only the [clip_min, clip_max] clip (N-FGSM; see attacks/fast.py).
    Returns adversarial images, same shape and dtype as x, inside the ball (unless
    project_to_ball is False) and [clip_min, clip_max].
    """
    return _run(
        model_fn,
        x,
        y,
        eps=eps,
        step_size=step_size,
        steps=steps,
        random_start=random_start,
        loss=loss,
        norm=norm,
        restarts=restarts,
        targeted=targeted,
        clip_min=clip_min,
        clip_max=clip_max,
        seed=seed,
        decay=None,
        start_scale=start_scale,
        ball=project_to_ball,
    )


def fgsm(
    model_fn, x, y, *, eps, loss="ce", norm="linf", targeted=False, clip_min=0.0, clip_max=1.0
):
    """Fast gradient (sign) method (Goodfellow et al. 2015): one step of size eps from x.

    For norm='l2' the step is eps * grad / ||grad||_2. Same arguments and result as `pgd`.
    """
    return _run(
        model_fn,
        x,
        y,
        eps=eps,
        step_size=None,
        steps=1,
        random_start=False,
        loss=loss,
        norm=norm,
        restarts=1,
        targeted=targeted,
        clip_min=clip_min,
        clip_max=clip_max,
        seed=None,
        decay=None,
    )


def mifgsm(
    model_fn,
    x,
    y,
    *,
    eps,
    step_size,
    steps,
    decay=1.0,
    loss="ce",
    norm="linf",
    targeted=False,
    clip_min=0.0,
    clip_max=1.0,
    seed=None,
    random_start=False,
):
    """Momentum iterative FGSM (Dong et al. 2018): steps along accumulated L1-normalised gradients.

    g_{t+1} = decay * g_t + grad / ||grad||_1; the step is step_size * sign(g) (linf) or
    step_size * g / ||g||_2 (l2). The paper starts at x; `random_start` (default off) and `seed`
    work as in `pgd`. Dong et al. use decay 1.0 and step_size eps / steps.
    """
    return _run(
        model_fn,
        x,
        y,
        eps=eps,
        step_size=step_size,
        steps=steps,
        random_start=random_start,
        loss=loss,
        norm=norm,
        restarts=1,
        targeted=targeted,
        clip_min=clip_min,
        clip_max=clip_max,
        seed=seed,
        decay=decay,
    )
