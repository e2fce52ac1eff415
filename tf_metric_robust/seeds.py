"""The one seed rule: every random draw is keyed on (run seed, named root, indices).

`key(seed, "training.attack", step, replica)` starts from the root's own key [seed, root id] and
folds in each index with `tf.random.experimental.stateless_fold_in`, so draws from different
roots, steps, batches or replicas never share a key, a draw depends only on its own coordinates
(resume replays it exactly; the number of replicas or batches before it does not matter), and no
index arithmetic (`seed * 1000 + i`) can collide. The root ids are fixed here, never reused:
the data roots keep the ids data.py used before this module, so the data streams are unchanged.
"""

import tensorflow as tf

ROOTS = {
    "data.shuffle": 0,  # epoch permutations (data.train_dataset)
    "data.augment": 1,  # crops and flips per batch
    "data.other_positive": 2,  # TLA's other-image positive drawn from the data
    "training.attack": 3,  # random starts of the training attack, per step and replica
    "training.partner": 4,  # same-class partner (TLA positive 'other'/'both' from the batch)
    "training.positive_noise": 5,  # noise of TLA's own positive (--positive_noise)
    "evaluation.attack": 6,  # evaluation attacks, per (batch, attack)
    "evaluation.adaptive": 7,  # adaptive detector attack of the detection protocol, per batch
    "autoattack": 8,  # AutoAttack members, per (member, batch)
    "detection.reference": 9,  # the detector's per-class reference subsample
    "training.probe": 11,  # the catastrophic-overfitting probe's attack starts (10: unused)
    "data.extra": 12,  # the extra (generated) examples of each batch, their crops and positives
}


def key(seed, root, *indices):
    """Stateless key int64 [2] for a draw under `root` at `indices` (ints or int scalar tensors).

    Args: seed: the run's --seed (int or int scalar tensor); root: a name in ROOTS; indices:
    the draw's coordinates, outermost first (e.g. step, replica).
    """
    if root not in ROOTS:
        raise ValueError(f"unknown seed root {root!r}; add it to seeds.ROOTS (one id per use)")
    current = tf.stack([tf.cast(seed, tf.int64), tf.constant(ROOTS[root], tf.int64)])
    for index in indices:
        current = tf.random.experimental.stateless_fold_in(current, tf.cast(index, tf.int64))
    return current


def numpy_seed(seed, root, *indices):
    """The same rule for NumPy draws outside graphs: a Python int from `key` (for default_rng)."""
    first, second = key(seed, root, *indices).numpy().tolist()
    return (first % 2**32) * 2**32 + second % 2**32
