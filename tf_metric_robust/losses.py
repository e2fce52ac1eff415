"""Embedding distances, TFA's batch triplet losses, and the TLA adversarial triplet loss.

TLA: Mao, Zhong, Yang, Vondrick, Ray, "Metric Learning for Adversarial Robustness", NeurIPS 2019
(arXiv 1909.00900). `triplet_semihard_loss` / `triplet_hard_loss` reproduce TensorFlow Addons 0.23
(FaceNet semi-hard mining, Schroff et al. 2015; batch-hard mining, Hermans et al. 2017), checked
against values dumped from real TFA. Everything is computed in float32, whatever the input dtype.
"""

import keras
import tensorflow as tf

DISTANCES = ("l2", "squared_l2", "cosine", "abs_cosine")
TFA_DISTANCE_METRICS = ("L2", "squared-L2", "angular")


def _float32(x):
    return tf.cast(tf.convert_to_tensor(x), tf.float32)


def _check_distance(distance):
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")


def _safe_sqrt(squared):
    """sqrt that is 0 with a 0 (not NaN/inf) gradient where `squared` <= 0."""
    positive = squared > 0.0
    return tf.where(positive, tf.sqrt(tf.where(positive, squared, 1.0)), 0.0)


def _cosine(a, b, pairwise):
    # l2_normalize divides by sqrt(max(|x|^2, 1e-12)): a zero vector stays zero, no NaN.
    a = tf.math.l2_normalize(a, axis=-1)
    b = tf.math.l2_normalize(b, axis=-1)
    if pairwise:
        return tf.matmul(a, b, transpose_b=True)
    return tf.reduce_sum(a * b, axis=-1)


def _squared_l2_matrix(a, b):
    """|a_i|^2 + |b_j|^2 - 2 a_i.b_j clamped at 0 (rounding), [N, M]."""
    squared = (tf.reduce_sum(tf.square(a), axis=1, keepdims=True)
               + tf.reduce_sum(tf.square(b), axis=1)[tf.newaxis, :]
               - 2.0 * tf.matmul(a, b, transpose_b=True))
    return tf.maximum(squared, 0.0)


def _from_parts(distance, squared, cosine):
    if distance == "squared_l2":
        return squared
    if distance == "l2":
        return _safe_sqrt(squared)
    if distance == "cosine":
        return 1.0 - cosine
    return 1.0 - tf.abs(cosine)  # 'abs_cosine', the authors' choice


def pairwise_distance(a, b, distance="abs_cosine"):
    """Distances between every row of `a` [N, D] and of `b` [M, D] -> float32 [N, M].

    `distance`: 'l2', 'squared_l2', 'cosine' (1 - cos) or 'abs_cosine' (1 - |cos|, TLA's authors).
    """
    _check_distance(distance)
    a, b = _float32(a), _float32(b)
    squared = _squared_l2_matrix(a, b) if "l2" in distance else None
    cosine = _cosine(a, b, pairwise=True) if "cosine" in distance else None
    return _from_parts(distance, squared, cosine)


def rowwise_distance(a, b, distance="abs_cosine"):
    """Distance between row i of `a` and row i of `b` (both [N, D]) -> float32 [N]."""
    _check_distance(distance)
    a, b = _float32(a), _float32(b)
    squared = tf.reduce_sum(tf.square(a - b), axis=-1) if "l2" in distance else None
    cosine = _cosine(a, b, pairwise=False) if "cosine" in distance else None
    return _from_parts(distance, squared, cosine)


# ---------------------------------------------------------------------------------------------
# TensorFlow Addons' batch triplet losses (same values and gradients as TFA 0.23).


def _tfa_distance_matrix(embeddings, distance_metric):
    """TFA's [B, B] distance matrix: L2 has a zero diagonal; 'angular' is 1 - cos clamped at 0."""
    if callable(distance_metric):
        return _float32(distance_metric(embeddings))
    if distance_metric not in TFA_DISTANCE_METRICS:
        raise ValueError(f"distance_metric must be one of {TFA_DISTANCE_METRICS} or a callable, "
                         f"got {distance_metric!r}")
    if distance_metric == "angular":
        return tf.maximum(1.0 - _cosine(embeddings, embeddings, pairwise=True), 0.0)
    squared = _squared_l2_matrix(embeddings, embeddings)
    matrix = squared if distance_metric == "squared-L2" else _safe_sqrt(squared)
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
    embeddings = _float32(embeddings)
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
    farther = tf.logical_and(negatives[:, tf.newaxis, :],
                             dist[:, tf.newaxis, :] > dist[:, :, tf.newaxis])
    semihard = _masked_min(dist[:, tf.newaxis, :], tf.cast(farther, tf.float32))  # [a, p]
    farthest = _masked_max(dist, tf.cast(negatives, tf.float32))  # [a]
    chosen = tf.where(tf.reduce_any(farther, axis=-1), semihard, farthest[:, tf.newaxis])
    per_pair = _float32(margin) + (dist - chosen)
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
        per_anchor = tf.maximum(gap + _float32(margin), 0.0)
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
        return {**super().get_config(), "margin": self.margin,
                "distance_metric": self.distance_metric}


@keras.saving.register_keras_serializable(package="tf_metric_robust")
class TripletHardLoss(_BatchTripletLoss):
    """`triplet_hard_loss` as a `keras.losses.Loss` (TFA's `TripletHardLoss`)."""

    def __init__(self, margin=1.0, soft=False, distance_metric="L2", name="triplet_hard_loss",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.margin = margin
        self.soft = soft
        self.distance_metric = distance_metric

    def _loss(self, labels, embeddings):
        return triplet_hard_loss(labels, embeddings, self.margin, self.soft, self.distance_metric)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "soft": self.soft,
                "distance_metric": self.distance_metric}


# ---------------------------------------------------------------------------------------------
# TLA (Mao et al. 2019): per-example terms; the caller reduces them with
# tf.nn.compute_average_loss (Keras 3 sums replica gradients, so scale exactly once).


def hardest_negative_index(anchor_embedding, anchor_labels, pool_embedding, pool_labels,
                           distance="abs_cosine", pool_valid=None):
    """Index of the pool entry of another class most similar to each anchor (TLA's negative).

    Args:
      anchor_embedding: float [N, D], e.g. embeddings of the adversarial examples.
      anchor_labels: int [N].
      pool_embedding: float [M, D] clean embeddings (a clean pool or a memory bank).
      pool_labels: int [M].
      distance: one of `DISTANCES`; "most similar" = smallest distance.
      pool_valid: optional bool [M]; False entries (e.g. empty memory-bank slots) are never chosen.

    Returns:
      (index int32 [N] into the pool, found bool [N]); found is False (and index 0) when an anchor
      has no valid other-class entry. No gradient flows: only indices come out.
    """
    dist = pairwise_distance(tf.stop_gradient(anchor_embedding), tf.stop_gradient(pool_embedding),
                             distance)
    anchor_labels = tf.cast(tf.reshape(anchor_labels, [-1]), tf.int64)
    pool_labels = tf.cast(tf.reshape(pool_labels, [-1]), tf.int64)
    candidate = tf.not_equal(anchor_labels[:, tf.newaxis], pool_labels[tf.newaxis, :])
    if pool_valid is not None:
        candidate = tf.logical_and(candidate, tf.reshape(pool_valid, [1, -1]))
    dist = tf.where(candidate, dist, float("inf"))
    index = tf.argmin(dist, axis=1, output_type=tf.int32)
    found = tf.reduce_any(candidate, axis=1)
    return tf.where(found, index, 0), found


def tla_triplet_loss(anchor_embedding, positive_embedding, negative_embedding, *, margin,
                     distance="abs_cosine", lambda_norm=0.0, valid=None):
    """One TLA triplet term per example, with the authors' norm part inside (Mao et al. 2019).

    loss_i = [D(a_i, p_i) - D(a_i, n_i) + margin]_+ + lambda_norm * mean_d(a_i^2 + p_i^2 + n_i^2),
    so the batch mean equals the authors' `utils.triplet_loss(a, p, n, loss_type,
    regularize=lambda_norm, margin=margin)[0]` (utils.py:116-157 of
    columbia/Metric_Learning_Adversarial_Robustness): its norm part, `reduce_mean(a*a + p*p +
    n*n)` (utils.py:154), is the SUM of the three mean squares. 'abs_cosine' is their 'cos'
    (utils.py:122-128), 'squared_l2' their 'l2' (utils.py:130-132). The caller weights each term
    by lambda_triplet (train_update_fast_triplet.py:372, 376).

    Args:
      anchor_embedding: float [N, D], embeddings of the adversarial examples.
      positive_embedding: float [N, D], clean embeddings of the same class.
      negative_embedding: float [N, D], clean embeddings of the chosen negatives.
      margin: alpha (authors: 0.03 CIFAR-10, 0.05 MNIST for 'abs_cosine').
      distance: one of `DISTANCES`.
      lambda_norm: weight of the embedding-norm part (authors' regularize_lambda).
      valid: optional bool [N]; the whole term is 0 where False (e.g. no negative was found).

    Returns:
      (loss float32 [N], {'positive_distance': [N], 'negative_distance': [N], 'norm': [N]}).
    """
    anchor, positive, negative = (_float32(e) for e in (anchor_embedding, positive_embedding,
                                                        negative_embedding))
    positive_distance = rowwise_distance(anchor, positive, distance)
    negative_distance = rowwise_distance(anchor, negative, distance)
    norm = embedding_norm_loss(anchor, positive, negative)
    loss = tf.nn.relu(positive_distance - negative_distance + _float32(margin))
    loss += _float32(lambda_norm) * norm
    if valid is not None:
        loss = tf.where(tf.reshape(valid, [-1]), loss, 0.0)
    return loss, {"positive_distance": positive_distance, "negative_distance": negative_distance,
                  "norm": norm}


def same_class_partner_index(labels, seed):
    """For each example, a uniformly random OTHER example of its class in the batch -> int32 [N].

    TLA's "another clean image of the same class" positive. An example without a partner gets its
    own index. `seed`: int32/int64 [2] for stateless random ops (deterministic given the seed).
    """
    labels = tf.reshape(labels, [-1])
    n = tf.shape(labels)[0]
    positions = tf.range(n)
    partner = tf.logical_and(tf.equal(labels[:, tf.newaxis], labels[tf.newaxis, :]),
                             tf.not_equal(positions[:, tf.newaxis], positions[tf.newaxis, :]))
    # argmax of i.i.d. uniform scores over the allowed entries = a uniform choice among them.
    scores = tf.where(partner, tf.random.stateless_uniform([n, n], seed=seed), -1.0)
    choice = tf.argmax(scores, axis=1, output_type=tf.int32)
    return tf.where(tf.reduce_any(partner, axis=1), choice, positions)


def embedding_norm_loss(*embeddings):
    """TLA's norm part per example -> float32 [N]: the SUM over the embeddings of their mean
    squared entry.

    With (anchor, positive, negative) its batch mean is the authors' `reduce_mean(a*a + p*p + n*n)`
    (utils.py:154); keeps the embeddings from growing to inflate the distance margin.
    """
    if not embeddings:
        raise ValueError("embedding_norm_loss needs at least one embedding tensor")
    return tf.add_n([tf.reduce_mean(tf.square(_float32(e)), axis=-1) for e in embeddings])


# ---------------------------------------------------------------------------------------------
# TRADES (Zhang et al., ICML 2019) and MART (Wang et al., ICLR 2020): per-example losses; the
# caller reduces them with tf.nn.compute_average_loss. Both KL terms let gradients flow into the
# clean and the adversarial logits, as the references' nn.KLDivLoss does on modern PyTorch.


def _kl_clean_to_adversarial(clean_logits, adversarial_log_probs):
    """sum_j p(x)_j (log p(x)_j - adversarial_log_probs_j) -> [N]: nn.KLDivLoss(input=
    adversarial_log_probs, target=softmax(clean_logits)) summed over classes. log p(x) comes from
    log_softmax, so a probability that underflows to 0 contributes 0, as KLDivLoss's 0 log 0."""
    clean_probs = tf.nn.softmax(clean_logits)
    return tf.reduce_sum(clean_probs * (tf.nn.log_softmax(clean_logits) - adversarial_log_probs),
                         axis=-1)


def trades_loss(labels, clean_logits, adversarial_logits, *, beta):
    """TRADES per example: CE(f(x), y) + beta * KL(p(x) || p(x')) -> float32 [N].

    yaodongyu/TRADES trades.py:79-83 (CE of the clean logits averaged over the batch, KLDivLoss
    summed and divided by the batch size, so the batch mean of this is their loss); beta 6 for
    CIFAR-10 (train_trades_cifar10.py:36), 1 for MNIST (train_trades_mnist.py:34).

    Args:
      labels: int [N]. clean_logits, adversarial_logits: float [N, C], any float dtype.
      beta: weight of the KL term (1/lambda in the paper).
    """
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int64)
    clean, adversarial = _float32(clean_logits), _float32(adversarial_logits)
    natural = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=clean)
    robust = _kl_clean_to_adversarial(clean, tf.nn.log_softmax(adversarial))
    return natural + _float32(beta) * robust


def mart_loss(labels, clean_logits, adversarial_logits, *, beta):
    """MART per example -> float32 [N], YisenWang/MART mart.py:38-56 with its constants:

    CE(f(x'), y) - log(1.0001 - p(x')_{y*} + 1e-12) + beta * KL(p(x) || p(x')) * (1.0000001 -
    p(x)_y), y* = the most likely class of x' other than y (mart.py:44-46), the KL taken against
    log(p(x') + 1e-12) (mart.py:55). beta 6 (mart.py:14, train_wideresnet.py:41). Batch mean = their
    loss. Arguments as `trades_loss`.
    """
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int64)
    clean, adversarial = _float32(clean_logits), _float32(adversarial_logits)
    adversarial_probs = tf.nn.softmax(adversarial)
    # The two most likely classes of x'; y* is the first that is not y (mart.py:44-46).
    top2 = tf.math.top_k(adversarial_probs, k=2).indices
    top2 = tf.cast(top2, tf.int64)
    other = tf.where(tf.equal(top2[:, 0], labels), top2[:, 1], top2[:, 0])
    other_prob = tf.gather(adversarial_probs, other, batch_dims=1)
    boosted_ce = (tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=adversarial)
                  - tf.math.log(1.0001 - other_prob + 1e-12))
    kl = _kl_clean_to_adversarial(clean, tf.math.log(adversarial_probs + 1e-12))
    true_prob = tf.gather(tf.nn.softmax(clean), labels, batch_dims=1)
    return boosted_ce + _float32(beta) * kl * (1.0000001 - true_prob)
