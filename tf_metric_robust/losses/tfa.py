"""TensorFlow Addons' batch triplet losses, same values and gradients as TFA 0.23.

FaceNet semi-hard mining (Schroff et al. 2015) and batch-hard mining (Hermans et al. 2017),
checked against values dumped from real TFA (TFA is end-of-life and does not import on TF >= 2.16).
Computed in float32, whatever the input dtype.
"""

import keras
import tensorflow as tf

from tf_metric_robust.losses.distances import (
    cosine_similarity,
    safe_sqrt,
    squared_l2_matrix,
    to_float32,
)

TFA_DISTANCE_METRICS = ("L2", "squared-L2", "angular")


def _tfa_distance_matrix(embeddings, distance_metric):
    """TFA's [B, B] distance matrix: L2 has a zero diagonal; 'angular' is 1 - cos clamped at 0."""
    if callable(distance_metric):
        return to_float32(distance_metric(embeddings))
    if distance_metric not in TFA_DISTANCE_METRICS:
        raise ValueError(
            f"distance_metric must be one of {TFA_DISTANCE_METRICS} or a callable, "
            f"got {distance_metric!r}"
        )
    if distance_metric == "angular":
        return tf.maximum(1.0 - cosine_similarity(embeddings, embeddings, pairwise=True), 0.0)
    squared = squared_l2_matrix(embeddings, embeddings)
    matrix = squared if distance_metric == "squared-L2" else safe_sqrt(squared)
    off_diagonal = 1.0 - tf.eye(tf.shape(embeddings)[0])
    return matrix * off_diagonal


def _masked_max(values, mask):
    """Max over the last axis of `values` where float `mask` is 1; the plain min if none is.

    TFA's formulation (shift by the minimum, multiply by the mask), kept so gradients match TFA's,
    including how ties and empty masks route them.
    """
    low = tf.reduce_min(values, axis=-1, keepdims=True)
    return tf.reduce_max((values - low) * mask, axis=-1) + low[..., 0]


def _masked_min(values, mask):
    """Min over the last axis of `values` where float `mask` is 1; the plain max if none is."""
    high = tf.reduce_max(values, axis=-1, keepdims=True)
    return tf.reduce_min((values - high) * mask, axis=-1) + high[..., 0]


def _batch_setup(labels, embeddings, distance_metric):
    embeddings = to_float32(embeddings)
    labels = tf.reshape(tf.convert_to_tensor(labels), [-1])
    same = tf.equal(labels[:, tf.newaxis], labels[tf.newaxis, :])
    positives = tf.cast(same, tf.float32) - tf.eye(tf.shape(labels)[0])  # same class, not self
    return _tfa_distance_matrix(embeddings, distance_metric), same, positives


def triplet_semihard_loss(labels, embeddings, margin=1.0, distance_metric="L2"):
    """TFA's triplet loss with FaceNet semi-hard negatives -> float32 scalar.

    For each anchor-positive pair (a, p) the negative is the closest other-class embedding farther
    from a than p (else the farthest negative); hinge [D(a,p) - D(a,n) + margin]_+ averaged over
    all positive pairs. Differs from TFA only where TFA gives NaN (no positive pair: we return 0)
    and in dtype (TFA casts float16/bfloat16 results back; we keep float32).

    Args:
      labels: int [B] (or [B, 1]) class labels.
      embeddings: float [B, D], any float dtype.
      margin: the hinge margin.
      distance_metric: 'L2', 'squared-L2', 'angular' (1 - cos) or a callable [B, D] -> [B, B].
    """
    dist, same, positives = _batch_setup(labels, embeddings, distance_metric)
    negatives = tf.logical_not(same)
    # farther[a, p, n]: n is a negative of anchor a lying farther from a than positive p.
    farther = tf.logical_and(
        negatives[:, tf.newaxis, :], dist[:, tf.newaxis, :] > dist[:, :, tf.newaxis]
    )
    semihard = _masked_min(dist[:, tf.newaxis, :], tf.cast(farther, tf.float32))  # [a, p]
    farthest = _masked_max(dist, tf.cast(negatives, tf.float32))  # [a]
    chosen = tf.where(tf.reduce_any(farther, axis=-1), semihard, farthest[:, tf.newaxis])
    per_pair = to_float32(margin) + (dist - chosen)
    total = tf.reduce_sum(tf.maximum(per_pair * positives, 0.0))
    return tf.math.divide_no_nan(total, tf.reduce_sum(positives))


def triplet_hard_loss(labels, embeddings, margin=1.0, soft=False, distance_metric="L2"):
    """TFA's batch-hard triplet loss -> float32 scalar.

    Per anchor: farthest same-class embedding and closest other-class one; hinge
    [D(a,p) - D(a,n) + margin]_+ (or softplus(D(a,p) - D(a,n)) when `soft`), averaged over anchors.
    Arguments as `triplet_semihard_loss`.
    """
    dist, same, positives = _batch_setup(labels, embeddings, distance_metric)
    hardest_negative = _masked_min(dist, 1.0 - tf.cast(same, tf.float32))
    hardest_positive = _masked_max(dist, positives)
    gap = hardest_positive - hardest_negative
    if soft:
        per_anchor = tf.math.log1p(tf.exp(gap))
    else:
        per_anchor = tf.maximum(gap + to_float32(margin), 0.0)
    return tf.reduce_mean(per_anchor)


class _BatchTripletLoss(keras.losses.Loss):
    """Keras wrapper: y_true = labels [B], y_pred = embeddings [B, D]."""

    def call(self, y_true, y_pred):
        # Keras divides a reduced loss by the replica count (it sums replica gradients), but skips
        # reduction, and with it that division, for scalars: hand it a [1] tensor instead.
        return tf.reshape(self._loss(y_true, y_pred), [1])


@keras.saving.register_keras_serializable(package="tf_metric_robust")
class TripletSemiHardLoss(_BatchTripletLoss):
    """`triplet_semihard_loss` as a `keras.losses.Loss` (TFA's `TripletSemiHardLoss`)."""

    def __init__(self, margin=1.0, distance_metric="L2", name="triplet_semihard_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.margin = margin
        self.distance_metric = distance_metric

    def _loss(self, labels, embeddings):
        return triplet_semihard_loss(labels, embeddings, self.margin, self.distance_metric)

    def get_config(self):
        return {
            **super().get_config(),
            "margin": self.margin,
            "distance_metric": self.distance_metric,
        }


@keras.saving.register_keras_serializable(package="tf_metric_robust")
class TripletHardLoss(_BatchTripletLoss):
    """`triplet_hard_loss` as a `keras.losses.Loss` (TFA's `TripletHardLoss`)."""

    def __init__(
        self, margin=1.0, soft=False, distance_metric="L2", name="triplet_hard_loss", **kwargs
    ):
        super().__init__(name=name, **kwargs)
        self.margin = margin
        self.soft = soft
        self.distance_metric = distance_metric

    def _loss(self, labels, embeddings):
        return triplet_hard_loss(labels, embeddings, self.margin, self.soft, self.distance_metric)

    def get_config(self):
        return {
            **super().get_config(),
            "margin": self.margin,
            "soft": self.soft,
            "distance_metric": self.distance_metric,
        }
