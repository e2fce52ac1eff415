"""Auto-PGD: PGD without a step-size parameter (APGD-CE, APGD-DLR, APGD-T).

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (arXiv 2003.01690), Algorithm 1 and Sec. 3-4. The step size
starts at 2 * eps and is halved per example at checkpoints w_j = ceil(p_j * steps) when fewer than
rho of the steps since the last checkpoint raised the loss, or when neither step size nor best loss
changed since then; a halving restarts from the best point. Steps carry momentum alpha = 0.75.
The iterations are in apgd_loop.py; this module checks the arguments and runs them.
"""

import numbers

import tensorflow as tf

from tf_metric_robust.attacks import _plumbing
from tf_metric_robust.attacks.apgd_loop import LOSSES, apgd_graph


def _run(
    model_fn,
    x,
    y,
    *,
    eps,
    steps,
    norm,
    loss,
    targeted,
    runs,
    rho,
    seed,
    clip_min,
    clip_max,
    eot_iter=1,
):
    """Validates arguments, converts them to tensors and runs the cached compiled attack."""
    _plumbing.check_norm(norm)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    _plumbing.check_int("steps", steps, 1)
    _plumbing.check_int("eot_iter", eot_iter, 1)
    if not isinstance(rho, numbers.Real) or not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho!r}")
    x, y, scalars, seed, eps_is_zero, checks = _plumbing.prepare_inputs(
        x, y, eps, clip_min, clip_max, seed
    )
    if eps_is_zero:
        return tf.identity(x)
    # The run count is a tensor: other restart / target counts reuse the compiled graph.
    static = dict(
        steps=steps, norm=norm, loss=loss, targeted=targeted, rho=float(rho), eot_iter=eot_iter
    )
    with tf.control_dependencies(checks):
        x_adv = _plumbing.run_compiled(
            apgd_graph, model_fn, static, x, y, *scalars, tf.constant(runs, tf.int32), seed
        )
    # The result is data, not a function of the model weights (keeps outer tapes clean).
    return tf.stop_gradient(x_adv)


def apgd(
    model_fn,
    x,
    y,
    *,
    eps,
    steps=100,
    norm="linf",
    loss="ce",
    restarts=1,
    seed=None,
    clip_min=0.0,
    clip_max=1.0,
    rho=0.75,
    eot_iter=1,
):
    """Untargeted APGD (Croce & Hein 2020) with the CE or DLR loss in the linf or l2 eps-ball.

    Args: model_fn maps images to logits [N, C]; x images [N, ...] (float dtype, kept); y int
    labels [N]; eps on the image scale; `restarts` random starts, each on the examples not yet
    fooled; seed None (random), an int, or an int tensor [2] (stateless, reproducible);
    eot_iter: gradients averaged over that many calls of a randomised model (AutoAttack 'rand':
    20). Returns adversarial images of x's shape and dtype inside the ball and [clip_min, clip_max].
    """
    _plumbing.check_int("restarts", restarts, 1)
    return _run(
        model_fn,
        x,
        y,
        eps=eps,
        steps=steps,
        norm=norm,
        loss=loss,
        targeted=False,
        runs=restarts,
        rho=rho,
        seed=seed,
        clip_min=clip_min,
        clip_max=clip_max,
        eot_iter=eot_iter,
    )


def apgd_dlr(
    model_fn,
    x,
    y,
    *,
    eps,
    steps=100,
    norm="linf",
    restarts=1,
    seed=None,
    clip_min=0.0,
    clip_max=1.0,
    rho=0.75,
    eot_iter=1,
):
    """APGD-DLR (Croce & Hein 2020): `apgd` with the DLR loss, robust to logit rescaling."""
    return apgd(
        model_fn,
        x,
        y,
        eps=eps,
        steps=steps,
        norm=norm,
        loss="dlr",
        restarts=restarts,
        seed=seed,
        clip_min=clip_min,
        clip_max=clip_max,
        rho=rho,
        eot_iter=eot_iter,
    )


def apgd_targeted(
    model_fn,
    x,
    y,
    *,
    eps,
    steps=100,
    norm="linf",
    num_target_classes=9,
    loss="dlr",
    seed=None,
    clip_min=0.0,
    clip_max=1.0,
    rho=0.75,
):
    """APGD-T (Croce & Hein 2020): one targeted APGD run per each of the top-k wrong classes.

    k = min(`num_target_classes`, C - 1) (the paper's 9 for 10 classes); the targets are the
    classes with the 2nd, 3rd, ... highest clean logit, and each run attacks only the examples
    earlier runs left correctly classified. Loss 'dlr' (targeted DLR, the paper's; needs C >= 4)
    or 'ce' (CE toward the target). Success means misclassified. Other arguments as in `apgd`.
    """
    _plumbing.check_int("num_target_classes", num_target_classes, 1)
    return _run(
        model_fn,
        x,
        y,
        eps=eps,
        steps=steps,
        norm=norm,
        loss=loss,
        targeted=True,
        runs=num_target_classes,
        rho=rho,
        seed=seed,
        clip_min=clip_min,
        clip_max=clip_max,
    )
