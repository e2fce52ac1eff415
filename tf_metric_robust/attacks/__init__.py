"""Adversarial attacks on any callable mapping images to logits.

Every attack is `attack(model_fn, x, y, *, eps, ...) -> x_adv` (same shape and dtype as x, inside
the eps-ball and [clip_min, clip_max]). `ATTACKS` maps the names used by the `--attacks` flag and
evaluation reports to the functions.
"""

from tf_metric_robust.attacks.gradient import fgsm, mifgsm, pgd

ATTACKS = {
    "fgsm": fgsm,
    "pgd": pgd,
    "mifgsm": mifgsm,
}

__all__ = ["ATTACKS", "fgsm", "mifgsm", "pgd"]
