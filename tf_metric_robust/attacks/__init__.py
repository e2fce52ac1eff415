"""Adversarial attacks on any callable mapping images to logits.

Every attack is `attack(model_fn, x, y, *, eps, ...) -> x_adv` (same shape and dtype as x, inside
the eps-ball and [clip_min, clip_max]). `ATTACKS` maps the names used by the `--attacks` flag and
evaluation reports to the functions. `adaptive_detector` needs a detector and a model_fn that
returns (logits, embedding): evaluation.evaluate binds both when it is listed.
"""

from tf_metric_robust.attacks.adaptive import adaptive_detector
from tf_metric_robust.attacks.apgd import apgd, apgd_dlr, apgd_targeted
from tf_metric_robust.attacks.autoattack import AutoAttackResult, autoattack
from tf_metric_robust.attacks.fab import fab_minimum_norm, fab_targeted
from tf_metric_robust.attacks.gradient import fgsm, mifgsm, pgd
from tf_metric_robust.attacks.square import square

ATTACKS = {
    "fgsm": fgsm,
    "pgd": pgd,
    "mifgsm": mifgsm,
    "apgd_ce": apgd,
    "apgd_dlr": apgd_dlr,
    "apgd_t": apgd_targeted,
    "square": square,
    "fab_t": fab_targeted,
    "adaptive_detector": adaptive_detector,
}

__all__ = [
    "ATTACKS",
    "AutoAttackResult",
    "adaptive_detector",
    "apgd",
    "apgd_dlr",
    "apgd_targeted",
    "autoattack",
    "fab_minimum_norm",
    "fab_targeted",
    "fgsm",
    "mifgsm",
    "pgd",
    "square",
]
