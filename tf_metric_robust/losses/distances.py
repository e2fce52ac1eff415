"""Embedding distances for metric learning: L2, squared L2, 1 - cos and the TLA authors' 1 - |cos|.

Mao et al., NeurIPS 2019 (arXiv 1909.00900) use 1 - |cos| ('cos' in their utils.py:122-128).
Everything is computed in float32, whatever the input dtype; no NaN at zero vectors.
"""

import tensorflow as tf

DISTANCES = ("l2", "squared_l2", "cosine", "abs_cosine")


def to_float32(x):
    """`x` as a float32 tensor (losses and distances are computed in float32)."""
    return tf.cast(tf.convert_to_tensor(x), tf.float32)


def _check_distance(distance):
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")


def safe_sqrt(squared):
    """sqrt that is 0 with a 0 (not NaN/inf) gradient where `squared` <= 0."""
    positive = squared > 0.0
    return tf.where(positive, tf.sqrt(tf.where(positive, squared, 1.0)), 0.0)


def cosine_similarity(a, b, pairwise):
    """cos between rows of a and b: [N, M] if pairwise, else row i with row i, [N]."""
    # l2_normalize divides by sqrt(max(|x|^2, 1e-12)): a zero vector stays zero, no NaN.
    a = tf.math.l2_normalize(a, axis=-1)
    b = tf.math.l2_normalize(b, axis=-1)
    if pairwise:
        return tf.matmul(a, b, transpose_b=True)
    return tf.reduce_sum(a * b, axis=-1)


def squared_l2_matrix(a, b):
    """|a_i|^2 + |b_j|^2 - 2 a_i.b_j clamped at 0 (rounding), [N, M]."""
    squared = (
        tf.reduce_sum(tf.square(a), axis=1, keepdims=True)
        + tf.reduce_sum(tf.square(b), axis=1)[tf.newaxis, :]
        - 2.0 * tf.matmul(a, b, transpose_b=True)
    )
    return tf.maximum(squared, 0.0)


def _from_parts(distance, squared, cosine):
    if distance == "squared_l2":
        return squared
    if distance == "l2":
        return safe_sqrt(squared)
    if distance == "cosine":
        return 1.0 - cosine
    return 1.0 - tf.abs(cosine)  # 'abs_cosine', the authors' choice


def pairwise_distance(a, b, distance="abs_cosine"):
    """Distances between every row of `a` [N, D] and of `b` [M, D] -> float32 [N, M].

    `distance`: 'l2', 'squared_l2', 'cosine' (1 - cos) or 'abs_cosine' (1 - |cos|, TLA's authors).
    """
    _check_distance(distance)
    a, b = to_float32(a), to_float32(b)
    squared = squared_l2_matrix(a, b) if "l2" in distance else None
    cosine = cosine_similarity(a, b, pairwise=True) if "cosine" in distance else None
    return _from_parts(distance, squared, cosine)


def rowwise_distance(a, b, distance="abs_cosine"):
    """Distance between row i of `a` and row i of `b` (both [N, D]) -> float32 [N]."""
    _check_distance(distance)
    a, b = to_float32(a), to_float32(b)
    squared = tf.reduce_sum(tf.square(a - b), axis=-1) if "l2" in distance else None
    cosine = cosine_similarity(a, b, pairwise=False) if "cosine" in distance else None
    return _from_parts(distance, squared, cosine)
