"""Detection of adversarial inputs by k-nearest neighbours in the embedding space, and ROC AUC.

TLA (Mao et al., "Metric Learning for Adversarial Robustness", NeurIPS 2019, arXiv 1909.00900)
pulls adversarial embeddings back to their true class, so an input whose nearest clean training
embeddings disagree with the model's prediction is suspicious. The paper reports the ROC AUC of
flagging misclassified adversarial inputs (PGD at the training eps and a larger one): MNIST TLA
94.94 vs Madry AT 91.25, CIFAR-10 TLA 69.60 vs AT 61.07 (targets, not our results).
"""

import numpy as np
import tensorflow as tf

SCORE_TYPES = ("agreement", "similarity")


def subsample_per_class(embeddings, labels, max_per_class, seed=0):
    """Keeps at most `max_per_class` random rows of every class (every class keeps >= 1 row).

    Returns (embeddings [M, D], labels [M]) as NumPy arrays, rows grouped in class order.
    """
    embeddings, labels = np.asarray(embeddings), np.asarray(labels)
    if max_per_class is None:
        return embeddings, labels
    if max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:max_per_class] for c in np.unique(labels)]
    keep = np.concatenate(keep)
    return embeddings[keep], labels[keep]


class KnnDetector(tf.Module):
    """Scores inputs by their k nearest clean reference embeddings (cosine similarity).

    score_type 'agreement' (default; our reading of the TLA paper's kNN detection, consistency of
    the embedding's neighbours with the prediction): 1 - (fraction of the k neighbours whose label
    is the predicted label), plus a tie-breaker (1 - mean neighbour cosine) / (2 (k + 1)), smaller
    than one agreement step 1/k, so it only orders inputs with equal agreement (far from all
    references = more suspicious).
    score_type 'similarity': 1 - mean cosine of the k nearest references of the predicted class,
    in [0, 2]; needs k <= the smallest per-class reference count.
    Higher score = more likely adversarial. The reference lives in non-trainable tf.Variables, so
    the detector can be saved inside a SavedModel; `score` uses TF ops only (tf.function-safe).
    """

    def __init__(self, reference_embeddings, reference_labels, *, k=50, score_type="agreement",
                 num_classes=None, max_reference=None, chunk_size=256, seed=0, name=None):
        """Builds the detector from clean training embeddings [R, D] and their int labels [R].

        `max_reference` keeps at most that many random references per class (a compact reference
        for export); `chunk_size` queries are compared with the whole reference at once, which
        bounds memory to chunk_size x R floats.
        """
        super().__init__(name=name)
        if score_type not in SCORE_TYPES:
            raise ValueError(f"score_type must be one of {SCORE_TYPES}, got {score_type!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        embeddings, labels = subsample_per_class(
            np.asarray(reference_embeddings, np.float32),
            np.asarray(reference_labels).astype(np.int64), max_reference, seed)
        if embeddings.ndim != 2 or labels.shape != (embeddings.shape[0],):
            raise ValueError(f"need embeddings [R, D] and labels [R], got {embeddings.shape} and "
                             f"{labels.shape}")
        if labels.size == 0 or labels.min() < 0:
            raise ValueError("reference labels must be non-empty and >= 0")
        num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
        if labels.max() >= num_classes:
            raise ValueError(f"reference label {labels.max()} >= num_classes {num_classes}")
        counts = np.bincount(labels, minlength=num_classes)
        limit = counts[counts > 0].min() if score_type == "similarity" else labels.size
        if not 1 <= k <= limit:
            raise ValueError(f"k must be in [1, {limit}] for score_type {score_type!r} "
                             f"(reference counts per class: {counts.tolist()}), got {k}")
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        self.k, self.score_type, self.chunk_size = int(k), score_type, int(chunk_size)
        self.num_classes, self.dim = num_classes, embeddings.shape[1]
        self.reference_embeddings = tf.Variable(
            embeddings / np.maximum(norms, 1e-12), trainable=False, name="reference_embeddings")
        self.reference_labels = tf.Variable(
            labels.astype(np.int32), trainable=False, name="reference_labels")

    def score(self, embeddings, predicted_labels):
        """Detection scores float32 [N] for embeddings [N, D] and the model's predictions [N]."""
        embeddings = tf.ensure_shape(tf.cast(embeddings, tf.float32), [None, self.dim])
        predicted_labels = tf.cast(predicted_labels, tf.int32)
        tf.debugging.assert_equal(tf.shape(predicted_labels), tf.shape(embeddings)[:1],
                                  message="one predicted label per embedding")
        tf.debugging.assert_non_negative(predicted_labels, message="predicted labels < 0")
        tf.debugging.assert_less(predicted_labels, self.num_classes,
                                 message="predicted labels >= num_classes")
        queries = tf.math.l2_normalize(embeddings, axis=1)
        # Pad to whole chunks and map over them: memory stays chunk_size x R for any N.
        n = tf.shape(queries)[0]
        padded = (n + self.chunk_size - 1) // self.chunk_size * self.chunk_size
        queries = tf.reshape(tf.pad(queries, [[0, padded - n], [0, 0]]),
                             [-1, self.chunk_size, self.dim])
        predicted_labels = tf.reshape(tf.pad(predicted_labels, [[0, padded - n]]),
                                      [-1, self.chunk_size])
        scores = tf.map_fn(lambda args: self._score_chunk(*args), (queries, predicted_labels),
                           fn_output_signature=tf.TensorSpec([self.chunk_size], tf.float32),
                           parallel_iterations=1)
        return tf.reshape(scores, [-1])[:n]

    def _score_chunk(self, queries, predicted_labels):
        """Scores one chunk: unit queries [C, D] against the unit reference [R, D]."""
        similarities = tf.matmul(queries, self.reference_embeddings, transpose_b=True)  # [C, R]
        same_class = tf.equal(self.reference_labels[tf.newaxis, :], predicted_labels[:, tf.newaxis])
        if self.score_type == "similarity":
            # Cosines are >= -1, so -3 puts other classes behind every same-class reference (a
            # predicted class without references therefore scores 4, the most suspicious).
            masked = tf.where(same_class, similarities, -3.0)
            return 1.0 - tf.reduce_mean(tf.math.top_k(masked, self.k).values, axis=1)
        top = tf.math.top_k(similarities, self.k)
        neighbour_labels = tf.gather(self.reference_labels, top.indices)  # [C, k]
        agrees = tf.equal(neighbour_labels, predicted_labels[:, tf.newaxis])
        agreement = tf.reduce_mean(tf.cast(agrees, tf.float32), axis=1)
        tie_breaker = (1.0 - tf.reduce_mean(top.values, axis=1)) / (2.0 * (self.k + 1))
        return 1.0 - agreement + tie_breaker


def _check_binary_problem(scores, is_positive):
    """Returns (scores float64 [N], is_positive bool [N]); ValueError unless both classes occur."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    is_positive = np.asarray(is_positive, bool).reshape(-1)
    if scores.shape != is_positive.shape:
        raise ValueError(f"scores {scores.shape} and is_positive {is_positive.shape} differ")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    if is_positive.all() or not is_positive.any():
        raise ValueError("ROC needs at least one positive and one negative example")
    return scores, is_positive


def roc_curve(scores, is_positive):
    """ROC curve of flagging `score >= threshold` as positive, one point per distinct score.

    Returns (fpr, tpr, thresholds) float64 arrays starting at (0, 0) with threshold +inf and
    ending at (1, 1); tied scores form one (diagonal) segment, so its trapezoid area is roc_auc.
    """
    scores, is_positive = _check_binary_problem(scores, is_positive)
    order = np.argsort(-scores, kind="stable")
    scores, is_positive = scores[order], is_positive[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    true_positives = np.cumsum(is_positive)[last_of_run]
    false_positives = (last_of_run + 1) - true_positives
    fpr = np.r_[0.0, false_positives / false_positives[-1]]
    tpr = np.r_[0.0, true_positives / true_positives[-1]]
    return fpr, tpr, np.r_[np.inf, scores[last_of_run]]


def roc_auc(scores, is_positive):
    """Area under the ROC curve = P(score of a positive > score of a negative) + P(tie) / 2.

    Mann-Whitney U from mid-ranks (ties count 1/2), O(N log N); float in [0, 1].
    """
    scores, is_positive = _check_binary_problem(scores, is_positive)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mid_ranks = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each value
    num_pos = np.count_nonzero(is_positive)
    num_neg = is_positive.size - num_pos
    u_statistic = mid_ranks[inverse][is_positive].sum() - num_pos * (num_pos + 1) / 2.0
    return float(u_statistic / (num_pos * num_neg))


def _roc_entry(scores, is_positive):
    """(auc, {'fpr', 'tpr', 'thresholds'}) or (None, None) when a class is empty."""
    if is_positive.all() or not is_positive.any():
        return None, None
    fpr, tpr, thresholds = roc_curve(scores, is_positive)
    return roc_auc(scores, is_positive), {"fpr": fpr, "tpr": tpr, "thresholds": thresholds}


def detection_report(detector, clean_embeddings, clean_predictions, clean_labels,
                     adversarial_embeddings, adversarial_predictions, labels):
    """Scores clean and adversarial inputs with `detector` and returns ROC AUCs, counts and curves.

    'auc_clean_vs_adversarial': positives every adversarial input, negatives every clean input.
    'auc_misclassified_adversarial' (our reading of the TLA paper's detection task: flag the
    attacks that succeed, leave correct clean inputs alone): positives adversarial inputs with
    prediction != `labels` (their true labels), negatives clean inputs with prediction ==
    `clean_labels`. 'auc_adversarial_misclassified_vs_correct' restricts both to adversarial inputs.
    An AUC whose positives or negatives are empty is None; 'roc_*' hold NumPy fpr/tpr/thresholds.
    """
    clean_scores = detector.score(clean_embeddings, clean_predictions).numpy().astype(np.float64)
    adv_scores = detector.score(adversarial_embeddings, adversarial_predictions).numpy().astype(
        np.float64)
    clean_correct = np.ravel(clean_predictions) == np.ravel(clean_labels)
    adv_wrong = np.ravel(adversarial_predictions) != np.ravel(labels)
    if clean_correct.shape != clean_scores.shape or adv_wrong.shape != adv_scores.shape:
        raise ValueError("predictions and labels must have one entry per embedding")

    def binary(positive_scores, negative_scores):
        scores = np.concatenate([positive_scores, negative_scores])
        is_positive = np.arange(scores.size) < positive_scores.size
        return _roc_entry(scores, is_positive)

    auc_all, roc_all = binary(adv_scores, clean_scores)
    auc_task, roc_task = binary(adv_scores[adv_wrong], clean_scores[clean_correct])
    auc_adv, roc_adv = binary(adv_scores[adv_wrong], adv_scores[~adv_wrong])
    return {
        "auc_clean_vs_adversarial": auc_all,
        "auc_misclassified_adversarial": auc_task,
        "auc_adversarial_misclassified_vs_correct": auc_adv,
        "num_clean": int(clean_scores.size),
        "num_clean_correct": int(clean_correct.sum()),
        "num_adversarial": int(adv_scores.size),
        "num_adversarial_misclassified": int(adv_wrong.sum()),
        "mean_score_clean": float(clean_scores.mean()) if clean_scores.size else None,
        "mean_score_adversarial": float(adv_scores.mean()) if adv_scores.size else None,
        "k": detector.k,
        "score_type": detector.score_type,
        "roc_clean_vs_adversarial": roc_all,
        "roc_misclassified_adversarial": roc_task,
        "roc_adversarial_misclassified_vs_correct": roc_adv,
    }
