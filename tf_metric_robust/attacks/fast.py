"""The single-step training attacks of fast adversarial training, as settings of the PGD loop.

FGSM-RS: Wong, Rice, Kolter, "Fast is better than free", ICLR 2020 (locuslab/fast_adversarial).
N-FGSM: de Jorge et al., "Make some noise", NeurIPS 2022 (pdejorge/N-FGSM).
"""

from tf_metric_robust.attacks.gradient import pgd

FGSM_RS_STEP = 1.25  # FGSM-RS step / eps: 10/255 at eps 8/255 (train_fgsm.py:30-31)
N_FGSM_NOISE = 2.0  # N-FGSM start noise / eps: U(-2 eps, 2 eps) (N-FGSM train.py:51-56)


def _one_step(model_fn, x, y, **options):
    """One PGD step from a uniform random start: what FGSM-RS and N-FGSM share."""
    return pgd(model_fn, x, y, steps=1, random_start=True, **options)


def fgsm_rs(model_fn, x, y, *, eps, step_size=None, **options):
    """FGSM with a random start: a uniform start in the eps-ball clipped to the box, one step of
    step_size (None: 1.25 eps), projected back to the ball and the box (train_fgsm.py:107-118).

    `options`: loss, norm, clip_min, clip_max, seed as `pgd`; the result lies in the eps-ball.
    """
    step_size = FGSM_RS_STEP * eps if step_size is None else step_size
    return _one_step(model_fn, x, y, eps=eps, step_size=step_size, **options)


def n_fgsm(model_fn, x, y, *, eps, step_size=None, noise_scale=N_FGSM_NOISE, **options):
    """N-FGSM: noise U(-noise_scale eps, noise_scale eps) clipped to the box, one step of
    step_size (None: eps), clipped to the box only, no projection to the eps-ball
    (pdejorge/N-FGSM train.py:218-233, --clip -1).

    The result lies within (noise_scale * eps + step_size) of x (linf; 3 eps by default) and in
    [clip_min, clip_max]. `options`: loss, norm, clip_min, clip_max, seed as `pgd`.
    """
    step_size = eps if step_size is None else step_size
    return _one_step(
        model_fn,
        x,
        y,
        eps=eps,
        step_size=step_size,
        start_scale=noise_scale,
        project_to_ball=False,
        **options,
    )
