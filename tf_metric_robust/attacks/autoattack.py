"""AutoAttack: a fixed, parameter-free ensemble run in sequence, worst case per example.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (arXiv 2003.01690). Version 'standard': APGD-CE (100 steps,
1 run), APGD-T (targeted DLR, 9 target classes, 100 steps each), FAB-T (minimum-norm, 9 target
classes, 100 iterations; fab.py) and Square (5000 queries), the order of the reference
(fra31/auto-attack `autoattack/autoattack.py:307`); each attack only sees the points every
earlier attack left correctly classified. Version 'rand', for randomised defences: APGD-CE and
APGD-DLR, 1 run each, every gradient averaged over 20 calls of the model (expectation over
transformation), as the reference sets it (`autoattack/autoattack.py:334-337`). Version 'plus',
the reference's list and settings (`autoattack/autoattack.py:322-329`): APGD-CE and APGD-DLR
with 5 restarts, untargeted FAB with 5 restarts, Square (5000 queries, 1 run: its constructor's
n_restarts, :42-43), APGD-T (9 target classes, 1 run each) and FAB-T (9 target classes, 1 run:
:211-216), in that order, all with 100 iterations. Two diagnostics flag an unreliable evaluation:
Square
(gradient-free) fooling points the gradient attacks left robust is the signature of gradient
masking, and APGD beating a PGD evaluation by a wide margin means that PGD number overstated
robustness.

Runs eagerly (a Python loop over batches of still-robust points); each attack call is one
compiled tf.function, cached per model_fn.
"""

import dataclasses
import numbers
import time

import numpy as np
import tensorflow as tf
from absl import logging

from tf_metric_robust import seeds
from tf_metric_robust.attacks import _plumbing, objectives
from tf_metric_robust.attacks.apgd import apgd, apgd_dlr, apgd_targeted
from tf_metric_robust.attacks.fab import fab_targeted, fab_untargeted
from tf_metric_robust.attacks.square import square

GRADIENT_ATTACKS = ("apgd_ce", "apgd_dlr", "fab", "apgd_t", "fab_t")
# Attack sequences per version, the reference's (autoattack.py:307, 323, 335).
VERSIONS = {
    "standard": ("apgd_ce", "apgd_t", "fab_t", "square"),
    "plus": ("apgd_ce", "apgd_dlr", "fab", "square", "apgd_t", "fab_t"),
    "rand": ("apgd_ce", "apgd_dlr"),
}
# Each member's index under the seed root "autoattack" (seeds.key), fixed per name (not per
# position), so adding or dropping a member leaves the others' random draws unchanged.
MEMBER_ID = {"apgd_ce": 0, "apgd_t": 1, "square": 2, "apgd_dlr": 3, "fab_t": 4, "fab": 5}
# Runs of the untargeted APGD and FAB members (autoattack.py:309, 324-325, 336).
RESTARTS = {"standard": 1, "plus": 5, "rand": 1}
EOT_ITER = {"standard": 1, "plus": 1, "rand": 20}  # model calls averaged per APGD gradient


@dataclasses.dataclass
class AutoAttackResult:
    """What `autoattack` found. Accuracies are fractions in [0, 1] of all N points.

    attack_accuracy: attack name -> robust accuracy after that attack (cumulative, in run order).
    fooled_by: per point, 'clean' (misclassified without attack), the first attack that fooled
    it, or '' (still robust). x_adv: adversarial points (x itself where nothing was found).
    """

    clean_accuracy: float
    robust_accuracy: float
    attack_accuracy: dict
    x_adv: np.ndarray
    fooled_by: np.ndarray
    warnings: list
    seconds: dict

    def as_dict(self):
        """JSON-friendly summary (no arrays), for evaluation reports."""
        return {
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "attack_accuracy": dict(self.attack_accuracy),
            "warnings": list(self.warnings),
            "seconds": dict(self.seconds),
        }


def _argmax_graph(model_fn, x):
    return tf.argmax(model_fn(x), axis=-1)


def _predict(model_fn, x, batch_size):
    """Predicted classes int64 [N] for a NumPy batch of images, `batch_size` at a time."""
    batches = [tf.convert_to_tensor(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return np.concatenate(
        [_plumbing.run_compiled(_argmax_graph, model_fn, {}, b).numpy() for b in batches]
        or [np.zeros([0], np.int64)]
    )


def member_attack(
    name,
    *,
    eps,
    norm,
    restarts,
    clip_min,
    clip_max,
    eot_iter=1,
    steps=100,
    queries=5000,
    num_target_classes=9,
):
    """(x, y, seed) -> x_adv for one AutoAttack member; AutoAttack's defaults: 100 APGD and FAB-T
    steps, 5000 Square queries, 9 target classes."""
    common = dict(eps=eps, norm=norm, clip_min=clip_min, clip_max=clip_max)
    if name in ("apgd_ce", "apgd_dlr"):
        attack = apgd if name == "apgd_ce" else apgd_dlr
        return lambda m, x, y, seed: attack(
            m, x, y, steps=steps, restarts=restarts, seed=seed, eot_iter=eot_iter, **common
        )
    if name == "apgd_t":
        return lambda m, x, y, seed: apgd_targeted(
            m, x, y, steps=steps, num_target_classes=num_target_classes, seed=seed, **common
        )
    if name == "fab_t":
        return lambda m, x, y, seed: fab_targeted(
            m, x, y, steps=steps, num_target_classes=num_target_classes, **common
        )
    if name == "fab":
        return lambda m, x, y, seed: fab_untargeted(
            m, x, y, steps=steps, restarts=restarts, seed=seed, **common
        )
    return lambda m, x, y, seed: square(m, x, y, queries=queries, seed=seed, **common)


def autoattack(
    model_fn,
    x,
    y,
    *,
    eps,
    norm="linf",
    version="standard",
    seed=0,
    batch_size=None,
    attacks=None,
    clip_min=0.0,
    clip_max=1.0,
    pgd_accuracy=None,
    pgd_gap=0.05,
    square_gap=0.002,
    **member_settings,
):
    """Runs the AutoAttack sequence on (x, y) and returns an `AutoAttackResult`.

    Args:
      model_fn: callable mapping images to logits [N, C].
      x, y: images [N, H, W, C] in [clip_min, clip_max] and int labels [N] (NumPy or tensors).
      eps, norm: the threat model ('linf' or 'l2'; eps on the image scale).
      version: 'standard', 'plus' (+ APGD-DLR and untargeted FAB, 5 restarts each; VERSIONS) or
        'rand' (APGD-CE and APGD-DLR with 20 EOT samples per gradient, for randomised models);
        `attacks` (names from 'apgd_ce', 'apgd_dlr', 'fab', 'apgd_t', 'fab_t', 'square')
        overrides the sequence.
      seed: int; every attack and batch draws from it, so a run is reproducible.
      batch_size: points per attack call (None: all remaining points at once). The last batch is
        padded so that every call has the same shape and nothing retraces.
      member_settings: steps, queries, num_target_classes (APGD and FAB-T iterations, Square
        queries, APGD-T and FAB-T target classes; `member_attack` holds the defaults).
      pgd_accuracy: robust accuracy a PGD evaluation reported (fraction); warns when APGD's is
        lower by more than `pgd_gap`. square_gap: warns when Square lowers the accuracy the
        gradient attacks left by more than this (AutoAttack's own check uses 0.002).
    """
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {tuple(VERSIONS)}, got {version!r}")
    names = tuple(VERSIONS[version] if attacks is None else attacks)
    unknown = [n for n in names if n not in GRADIENT_ATTACKS + ("square",)]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(
            f"attacks must be distinct names from {GRADIENT_ATTACKS + ('square',)}, got {names!r}"
        )
    if batch_size is not None and not (
        isinstance(batch_size, numbers.Integral) and batch_size >= 1
    ):
        raise ValueError(f"batch_size must be None or an int >= 1, got {batch_size!r}")
    if not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be a Python int, got {seed!r}")
    _plumbing.check_norm(norm)
    for name in ("steps", "queries", "num_target_classes"):
        if name in member_settings:
            _plumbing.check_int(name, member_settings[name], 1)
    objectives.images_and_labels(x, np.ravel(y), clip_min, clip_max)  # 0-255 pixels fail here
    x = np.asarray(x)
    _plumbing.check_eps(eps, clip_min, clip_max, norm, x)  # before any member runs
    y = np.asarray(y).astype(np.int64)
    if x.ndim < 2 or y.shape != (len(x),):
        raise ValueError(f"x must be [N, ...] and y [N] labels, got {x.shape} and {y.shape}")
    run = {
        n: member_attack(
            n,
            eps=eps,
            norm=norm,
            restarts=RESTARTS[version],
            clip_min=clip_min,
            clip_max=clip_max,
            eot_iter=EOT_ITER[version],
            **member_settings,
        )
        for n in names
    }
    size = batch_size or max(len(x), 1)

    x_adv = x.copy()
    fooled_by = np.where(_predict(model_fn, x, size) != y, "clean", "").astype(object)
    clean_accuracy = float(np.mean(fooled_by == "")) if len(x) else 0.0
    attack_accuracy, seconds = {}, {}
    for name in names:
        start = time.time()
        todo = np.flatnonzero(fooled_by == "")
        for b, first in enumerate(range(0, len(todo), size)):
            rows = todo[first : first + size]
            padded = np.resize(rows, size) if batch_size else rows  # repeats rows; results dropped
            batch_seed = seeds.key(int(seed), "autoattack", MEMBER_ID[name], b)
            adv = np.asarray(run[name](model_fn, x[padded], y[padded], batch_seed))[: len(rows)]
            _check_bounds(name, adv, x[rows], eps, norm, clip_min, clip_max)
            fooled = _predict(model_fn, adv, size) != y[rows]
            x_adv[rows[fooled]] = adv[fooled]
            fooled_by[rows[fooled]] = name
        attack_accuracy[name] = float(np.mean(fooled_by == "")) if len(x) else 0.0
        seconds[name] = time.time() - start
        log_member(name, attack_accuracy[name], seconds[name])

    warnings = diagnose(names, clean_accuracy, attack_accuracy, pgd_accuracy, pgd_gap, square_gap)
    return AutoAttackResult(
        clean_accuracy=clean_accuracy,
        robust_accuracy=attack_accuracy[names[-1]],
        attack_accuracy=attack_accuracy,
        x_adv=x_adv,
        fooled_by=fooled_by.astype(str),
        warnings=warnings,
        seconds=seconds,
    )


def _check_bounds(name, adv, x, eps, norm, clip_min, clip_max, tolerance=1e-5):
    """RuntimeError if an attack left the threat model (a bug, never a finding)."""
    delta = (adv.astype(np.float64) - x).reshape(len(x), -1)
    size = np.abs(delta).max(1) if norm == "linf" else np.sqrt(np.square(delta).sum(1))
    if len(x) and (
        size.max() > eps + tolerance
        or adv.min() < clip_min - tolerance
        or adv.max() > clip_max + tolerance
    ):
        raise RuntimeError(
            f"{name} returned points outside the {norm} ball of radius {eps} or "
            f"the box [{clip_min}, {clip_max}]"
        )


def log_member(name, robust_accuracy, seconds):
    """One progress line per finished AutoAttack member (absl logging)."""
    logging.info(
        "autoattack %s: robust accuracy %.2f%% (%.1f s)", name, 100 * robust_accuracy, seconds
    )


def gradient_members(names):
    """The gradient attacks of a sequence whose (cumulative) accuracy owes nothing to Square:
    those before it ('plus' runs APGD-T and FAB-T after Square), for the APGD-vs-PGD check."""
    end = names.index("square") if "square" in names else len(names)
    return [n for n in names[:end] if n in GRADIENT_ATTACKS]


def diagnose(names, clean_accuracy, attack_accuracy, pgd_accuracy, pgd_gap, square_gap):
    """The two reliability warnings, as messages starting with a fixed phrase (also logged)."""
    warnings = []
    before = {}  # robust accuracy just before each attack ran
    previous = clean_accuracy
    for name in names:
        before[name], previous = previous, attack_accuracy[name]
    if "square" in names:
        gain = before["square"] - attack_accuracy["square"]
        if gain > square_gap:
            warnings.append(
                f"square beat the gradient attacks: Square lowered robust accuracy from "
                f"{before['square']:.2%} to {attack_accuracy['square']:.2%} on points the gradient "
                f"attacks left robust; gradients are likely masked or obfuscated, so trust "
                f"neither PGD nor APGD numbers for this model"
            )
    gradient = gradient_members(names)
    if pgd_accuracy is not None and gradient:
        apgd_accuracy = min(attack_accuracy[n] for n in gradient)
        if pgd_accuracy - apgd_accuracy > pgd_gap:
            warnings.append(
                f"apgd found much more than pgd: robust accuracy {apgd_accuracy:.2%} after APGD vs "
                f"{pgd_accuracy:.2%} under PGD (gap > {pgd_gap:.2%}); the PGD evaluation "
                f"overstates robustness (too few steps, a bad step size, or masked gradients)"
            )
    for message in warnings:
        logging.warning("autoattack: %s", message)
    return warnings
