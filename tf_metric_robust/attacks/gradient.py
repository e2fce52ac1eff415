"""FGSM, PGD and MI-FGSM: settings of one iterative gradient loop, compiled once per model.

PGD: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.
FGSM: Goodfellow et al., ICLR 2015 (one step of size eps from x). MI-FGSM: Dong et al., "Boosting
Adversarial Attacks with Momentum", CVPR 2018 (momentum on L1-normalised gradients).
Fast adversarial training's attacks are one step of the same loop (fast.py). This module checks
the arguments and runs the loop of gradient_loop.py. Each public attack declares its own keyword
API (evaluation.plan reads it to know what an attack takes); `_plumbing.arguments_to` hands the
arguments of a call to `_run`.
"""

import numbers

import numpy as np
import tensorflow as tf

from tf_metric_robust.attacks import _plumbing, objectives
from tf_metric_robust.attacks.gradient_loop import attack_graph


def _run(
    model_fn,
    x,
    y,
    *,
    eps,
    step_size,
    steps,
    random_start,
    clip_min,
    clip_max,
    seed,
    decay=None,
    start_scale=1.0,
    restarts=1,
    **static,
):
    """Validates, converts arguments to tensors and runs the (cached) compiled loop.

    step_size None steps by eps (FGSM); decay None turns momentum off (PGD). `static`: the
    loop's graph settings (gradient_loop.attack_graph): norm, loss, targeted, project_to_ball
    (True). steps and restarts (Python ints), eps, step_size, decay, start_scale and whether a
    random start is on go to the loop as tensors, so changing them does not retrace; a Gaussian
    start (random_start a float) and restarts > 1 change the graph. A callable loss (a custom
    objective, adaptive.py) runs one start, like 'kl': no labels tell which one won.
    """
    start = _start(random_start)
    loss = static["loss"]
    steps, checks = _steps(steps)
    static.update(
        targeted=bool(static["targeted"]),
        start="gaussian" if isinstance(start, float) else "uniform",
        momentum=decay is not None,
        keep_best=restarts != 1,
        project_to_ball=static.get("project_to_ball", True),
    )
    _plumbing.check_norm(static["norm"])
    if not callable(loss) and loss not in objectives.LOSSES:
        raise ValueError(f"loss must be one of {objectives.LOSSES}, got {loss!r}")
    if (callable(loss) or loss == "kl") and restarts != 1:
        raise ValueError(f"loss {loss!r} runs one start (restarts=1), got restarts={restarts!r}")
    _plumbing.check_int("restarts", restarts, 1)
    decay = 0.0 if decay is None else decay
    checks += _plumbing.check_number("decay", decay, 0.0, strict=False)
    checks += _plumbing.check_number("start_scale", start_scale, 0.0, strict=True)
    if step_size is not None:
        checks += _plumbing.check_number("step_size", step_size, 0.0, strict=True)
    x, y, threat, seed, _, eps_checks = _plumbing.prepare_inputs(
        x, y, eps, clip_min, clip_max, seed, "kl" if loss == "kl" else "ce", static["norm"]
    )
    step_size = eps if step_size is None else step_size
    start_size = start if static["start"] == "gaussian" else start_scale
    scalars = [tf.cast(v, tf.float32) for v in (step_size, decay, start_size)]
    start_on = tf.not_equal(start, 0) if tf.is_tensor(start) else tf.constant(bool(start))
    counts = [start_on, steps, tf.constant(restarts, tf.int32)]
    with tf.control_dependencies(checks + eps_checks):
        x_adv = _plumbing.run_compiled(
            attack_graph, model_fn, static, x, y, threat, seed, *scalars, *counts
        )
    # The result is data, not a function of the model weights (keeps outer tapes clean).
    return tf.stop_gradient(x_adv)


def _steps(steps):
    """(steps as an int32 scalar, run-time checks): a Python int >= 1, or a scalar tensor (an
    evaluation passes its settings as float32 tensors, shards.DYNAMIC_SETTINGS) whose value
    must be a whole number >= 1."""
    if not tf.is_tensor(steps):
        _plumbing.check_int("steps", steps, 1)
        return tf.constant(steps, tf.int32), []
    known = tf.get_static_value(steps)
    if known is not None:
        if np.ndim(known) != 0 or known != int(known) or known < 1:
            raise ValueError(f"steps must be a whole number >= 1, got {known!r}")
        return tf.constant(int(known), tf.int32), []
    count = tf.cast(tf.round(tf.cast(steps, tf.float64)), tf.int32)
    whole = tf.equal(tf.cast(count, tf.float64), tf.cast(steps, tf.float64))
    return count, [
        tf.debugging.assert_greater_equal(count, 1, message="steps must be >= 1"),
        tf.debugging.Assert(whole, ["steps must be a whole number, got", steps]),
    ]


def _start(random_start):
    """True/False, a Gaussian start's std as a float > 0 (a bool is never read as a number), or
    a scalar tensor switching a uniform start on (!= 0) or off (0), which never retraces."""
    if tf.is_tensor(random_start):
        return random_start
    if isinstance(random_start, (bool, np.bool_)) or random_start is None:
        return bool(random_start)
    if not isinstance(random_start, numbers.Real) or not random_start > 0:
        raise ValueError(f"random_start must be True, False or a std > 0, got {random_start!r}")
    return float(random_start)


@_plumbing.arguments_to(_run)
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
    `restarts` random starts keep per example the successful / highest-loss result; steps a
    Python int or a scalar tensor holding a whole number, random_start also a scalar tensor
    (!= 0: a uniform start): as tensors they never retrace (an evaluation passes them so); seed None
    (stateful random) or an int tensor [2] (stateless, reproducible). Fast training attacks:
    start_scale (> 0) sets the uniform start's radius to start_scale * eps (N-FGSM: 2);
    project_to_ball False keeps only the [clip_min, clip_max] clip (N-FGSM; see attacks/fast.py).
    loss may also be a callable (outputs, labels) -> [N] maximised as is (adaptive.py).
    Returns adversarial images, same shape and dtype as x, inside the ball (unless
    project_to_ball is False) and [clip_min, clip_max].
    """


@_plumbing.arguments_to(_run, step_size=None, steps=1, random_start=False, seed=None)
def fgsm(
    model_fn, x, y, *, eps, loss="ce", norm="linf", targeted=False, clip_min=0.0, clip_max=1.0
):
    """Fast gradient (sign) method (Goodfellow et al. 2015): one step of size eps from x.

    For norm='l2' the step is eps * grad / ||grad||_2. Same arguments and result as `pgd`.
    """


@_plumbing.arguments_to(_run)
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
