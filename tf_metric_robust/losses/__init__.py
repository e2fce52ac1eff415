"""Losses of adversarial training: the TLA adversarial triplet term, TRADES and MART; with the
embedding distances and TFA's batch triplet losses re-exported (distances.py, tfa.py).

TLA: Mao, Zhong, Yang, Vondrick, Ray, "Metric Learning for Adversarial Robustness", NeurIPS 2019
(arXiv 1909.00900). Everything is computed in float32, whatever the input dtype.
"""

import tensorflow as tf

from tf_metric_robust.losses.distances import (  # noqa: F401 (re-exported: the losses API)
    DISTANCES,
    to_float32,
    pairwise_distance,
    rowwise_distance,
)
from tf_metric_robust.losses.tfa import (  # noqa: F401 (re-exported: the losses API)
    TFA_DISTANCE_METRICS,
    TripletHardLoss,
    TripletSemiHardLoss,
    triplet_hard_loss,
    triplet_semihard_loss,
)

# ---------------------------------------------------------------------------------------------
# TLA (Mao et al. 2019): per-example terms; the caller reduces them with
# tf.nn.compute_average_loss (Keras 3 sums replica gradients, so scale exactly once).


def hardest_negative_index(
    anchor_embedding,
    anchor_labels,
    pool_embedding,
    pool_labels,
    distance="abs_cosine",
    pool_valid=None,
):
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
    dist = pairwise_distance(
        tf.stop_gradient(anchor_embedding), tf.stop_gradient(pool_embedding), distance
    )
    anchor_labels = tf.cast(tf.reshape(anchor_labels, [-1]), tf.int64)
    pool_labels = tf.cast(tf.reshape(pool_labels, [-1]), tf.int64)
    candidate = tf.not_equal(anchor_labels[:, tf.newaxis], pool_labels[tf.newaxis, :])
    if pool_valid is not None:
        candidate = tf.logical_and(candidate, tf.reshape(pool_valid, [1, -1]))
    dist = tf.where(candidate, dist, float("inf"))
    index = tf.argmin(dist, axis=1, output_type=tf.int32)
    found = tf.reduce_any(candidate, axis=1)
    return tf.where(found, index, 0), found


def tla_triplet_loss(
    anchor_embedding,
    positive_embedding,
    negative_embedding,
    *,
    margin,
    distance="abs_cosine",
    lambda_norm=0.0,
    valid=None,
):
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
    anchor, positive, negative = (
        to_float32(e) for e in (anchor_embedding, positive_embedding, negative_embedding)
    )
    positive_distance = rowwise_distance(anchor, positive, distance)
    negative_distance = rowwise_distance(anchor, negative, distance)
    norm = embedding_norm_loss(anchor, positive, negative)
    loss = tf.nn.relu(positive_distance - negative_distance + to_float32(margin))
    loss += to_float32(lambda_norm) * norm
    if valid is not None:
        loss = tf.where(tf.reshape(valid, [-1]), loss, 0.0)
    return loss, {
        "positive_distance": positive_distance,
        "negative_distance": negative_distance,
        "norm": norm,
    }


def same_class_partner_index(labels, seed):
    """For each example, a uniformly random OTHER example of its class in the batch -> int32 [N].

    TLA's "another clean image of the same class" positive. An example without a partner gets its
    own index. `seed`: int32/int64 [2] for stateless random ops (deterministic given the seed).
    """
    labels = tf.reshape(labels, [-1])
    n = tf.shape(labels)[0]
    positions = tf.range(n)
    partner = tf.logical_and(
        tf.equal(labels[:, tf.newaxis], labels[tf.newaxis, :]),
        tf.not_equal(positions[:, tf.newaxis], positions[tf.newaxis, :]),
    )
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
    return tf.add_n([tf.reduce_mean(tf.square(to_float32(e)), axis=-1) for e in embeddings])


# ---------------------------------------------------------------------------------------------
# TRADES (Zhang et al., ICML 2019) and MART (Wang et al., ICLR 2020): per-example losses; the
# caller reduces them with tf.nn.compute_average_loss. Both KL terms let gradients flow into the
# clean and the adversarial logits, as the references' nn.KLDivLoss does on modern PyTorch.


def _kl_clean_to_adversarial(clean_logits, adversarial_log_probs):
    """sum_j p(x)_j (log p(x)_j - adversarial_log_probs_j) -> [N]: nn.KLDivLoss(input=
    adversarial_log_probs, target=softmax(clean_logits)) summed over classes. log p(x) comes from
    log_softmax, so a probability that underflows to 0 contributes 0, as KLDivLoss's 0 log 0."""
    clean_probs = tf.nn.softmax(clean_logits)
    return tf.reduce_sum(
        clean_probs * (tf.nn.log_softmax(clean_logits) - adversarial_log_probs), axis=-1
    )


def trades_loss(labels, clean_logits, adversarial_logits, *, beta, label_smoothing=0.0):
    """TRADES per example: CE_s(f(x), y) + beta * KL(p(x) || p(x')) -> float32 [N].

    yaodongyu/TRADES trades.py:79-83 (CE of the clean logits averaged over the batch, KLDivLoss
    summed and divided by the batch size, so the batch mean of this is their loss); beta 6 for
    CIFAR-10 (train_trades_cifar10.py:36), 1 for MNIST (train_trades_mnist.py:34).

    With `label_smoothing` s > 0 the natural term is DM-Improves-AT's SmoothCrossEntropyLoss
    (core/utils/utils.py:10-30, used for the natural term only at
    gowal21uncovering/utils/trades.py:42, 110): (1 - s) * CE(f(x), y) + s * mean_j(-log p(x)_j),
    i.e. CE against (1 - s) one_hot(y) + s / C. The KL term is never smoothed (trades.py:112);
    s = 0 is plain TRADES.

    Args:
      labels: int [N]. clean_logits, adversarial_logits: float [N, C], any float dtype.
      beta: weight of the KL term (1/lambda in the paper).
      label_smoothing: s in [0, 1) of the natural term (DM-Improves-AT: 0.1, parser.py:71).
    """
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int64)
    clean, adversarial = to_float32(clean_logits), to_float32(adversarial_logits)
    natural = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=clean)
    if label_smoothing:
        uniform = -tf.reduce_mean(tf.nn.log_softmax(clean), axis=-1)
        smoothing = to_float32(label_smoothing)
        natural = (1.0 - smoothing) * natural + smoothing * uniform
    robust = _kl_clean_to_adversarial(clean, tf.nn.log_softmax(adversarial))
    return natural + to_float32(beta) * robust


def mart_loss(labels, clean_logits, adversarial_logits, *, beta):
    """MART per example -> float32 [N], YisenWang/MART mart.py:38-56 with its constants:

    CE(f(x'), y) - log(1.0001 - p(x')_{y*} + 1e-12) + beta * KL(p(x) || p(x')) * (1.0000001 -
    p(x)_y), y* = the most likely class of x' other than y (mart.py:44-46), the KL taken against
    log(p(x') + 1e-12) (mart.py:55). beta 6 (mart.py:14, train_wideresnet.py:41). Batch mean = their
    loss. Arguments as `trades_loss`.
    """
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int64)
    clean, adversarial = to_float32(clean_logits), to_float32(adversarial_logits)
    adversarial_probs = tf.nn.softmax(adversarial)
    # The two most likely classes of x'; y* is the first that is not y (mart.py:44-46).
    top2 = tf.math.top_k(adversarial_probs, k=2).indices
    top2 = tf.cast(top2, tf.int64)
    other = tf.where(tf.equal(top2[:, 0], labels), top2[:, 1], top2[:, 0])
    other_prob = tf.gather(adversarial_probs, other, batch_dims=1)
    boosted_ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=adversarial
    ) - tf.math.log(1.0001 - other_prob + 1e-12)
    kl = _kl_clean_to_adversarial(clean, tf.math.log(adversarial_probs + 1e-12))
    true_prob = tf.gather(tf.nn.softmax(clean), labels, batch_dims=1)
    return boosted_ce + to_float32(beta) * kl * (1.0000001 - true_prob)
