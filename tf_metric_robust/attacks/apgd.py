"""Auto-PGD: PGD without a step-size parameter (APGD-CE, APGD-DLR, APGD-T).

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (arXiv 2003.01690), Algorithm 1 and Sec. 3-4. The step size
starts at 2 * eps and is halved per example at checkpoints w_j = ceil(p_j * steps) when fewer than
rho of the steps since the last checkpoint raised the loss, or when neither step size nor best loss
changed since then; a halving restarts from the best point. Steps carry momentum alpha = 0.75.
The iterations are in apgd_loop.py; this module checks the arguments and runs them.
"""

import functools
import numbers

import tensorflow as tf

from tf_metric_robust.attacks import _plumbing
from tf_metric_robust.attacks.apgd_loop import LOSSES, apgd_graph


def apgd(
    model_fn,
    x,
    y,
    *,
    eps,
    steps=100,
    loss="ce",
    norm="linf",
    restarts=1,
    clip_min=0.0,
    clip_max=1.0,
    seed=None,
    rho=0.75,
    eot_iter=1,
    num_target_classes=None,
):
    """APGD (Croce & Hein 2020) with the CE or DLR loss in the linf or l2 eps-ball.

    Args: model_fn maps images to logits [N, C]; x images [N, ...] (float dtype, kept); y int
    labels [N]; eps on the image scale; `restarts` random starts, each on the examples not yet
    fooled; seed None (random), an int, or an int tensor [2] (stateless, reproducible);
    eot_iter: gradients averaged over that many calls of a randomised model (AutoAttack 'rand':
    20); num_target_classes None (untargeted) or k: APGD-T, see `apgd_targeted` (`restarts` is
    then not used). Returns adversarial images of x's shape and dtype inside the ball and
    [clip_min, clip_max].
    """
    targeted = num_target_classes is not None
    runs = num_target_classes if targeted else restarts
    _plumbing.check_int("num_target_classes" if targeted else "restarts", runs, 1)
    _plumbing.check_norm(norm)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    _plumbing.check_int("steps", steps, 1)
    _plumbing.check_int("eot_iter", eot_iter, 1)
    if not isinstance(rho, numbers.Real) or not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho!r}")
    x, y, scalars, seed, eps_is_zero, checks = _plumbing.prepare_inputs(
        x, y, eps, clip_min, clip_max, seed, norm=norm
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


# The variants are apgd with other defaults (as AutoAttack's APGDAttack(loss='dlr') and
# APGDAttack_targeted): their signatures, which evaluation.plan reads, are apgd's.
apgd_dlr = functools.partial(apgd, loss="dlr")
apgd_dlr.__doc__ = (
    "APGD-DLR (Croce & Hein 2020): `apgd` with the DLR loss, robust to logit rescaling."
)

apgd_targeted = functools.partial(apgd, loss="dlr", num_target_classes=9)
apgd_targeted.__doc__ = """APGD-T (Croce & Hein 2020): one targeted APGD run per top-k wrong class.

k = min(`num_target_classes`, C - 1) (the paper's 9 for 10 classes); the targets are the classes
with the 2nd, 3rd, ... highest clean logit, and each run attacks only the examples earlier runs
left correctly classified. Loss 'dlr' (targeted DLR, the paper's; needs C >= 4) or 'ce' (CE toward
the target). Success means misclassified. Other arguments as in `apgd`.
"""
