"""Detectors of adversarial inputs in the embedding space, ROC AUC and the TLA detection protocol.

TLA (Mao et al., "Metric Learning for Adversarial Robustness", NeurIPS 2019, arXiv 1909.00900,
section 5.3 and Figure 5) follows Zheng & Hong (NeurIPS 2018, "Robust detection of adversarial
attacks by modeling the intrinsic properties of deep neural networks"): model the clean training
embeddings of each class with a Gaussian; an input whose best class density is low is flagged.
The ROC runs over ALL clean and adversarial test images, misclassified = positive. Figure 5 AUCs
(undefended / AT / ALP / TLA): MNIST 94.83 / 91.25 / 89.77 / 94.94, CIFAR-10 23.95 / 61.07 /
63.15 / 69.60 (targets, not our results). The authors' repository
(columbia/Metric_Learning_Adversarial_Robustness) ships no detection code, only tSNE.py.

`GaussianDetector` is that model; `KnnDetector` is the k-nearest-neighbour alternative (and
Table 4's kNN classifier). Both are tf.Modules with `score(embeddings, predictions)` -> float32
[N] (higher = more suspicious), TF ops only, savable in a SavedModel, and a differentiable
`confidence` that attacks/adaptive.py maximises.
"""

import numpy as np
import tensorflow as tf

from tf_metric_robust.config import COVARIANCES, DETECTORS, SCORE_TYPES

# Whitening factors above this many bytes (C x D x D float64) are refused: use 'tied'.
_MAX_FACTOR_BYTES = 1 << 30


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


def _checked_reference(embeddings, labels, num_classes):
    """(embeddings [R, D], labels int64 [R], num_classes) or ValueError."""
    if embeddings.ndim != 2 or labels.shape != (embeddings.shape[0],):
        raise ValueError(f"need embeddings [R, D] and labels [R], got {embeddings.shape} and "
                         f"{labels.shape}")
    if labels.size == 0 or labels.min() < 0:
        raise ValueError("reference labels must be non-empty and >= 0")
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if labels.max() >= num_classes:
        raise ValueError(f"reference label {labels.max()} >= num_classes {num_classes}")
    if not np.all(np.isfinite(embeddings)):
        raise ValueError("reference embeddings must be finite")
    return embeddings, labels, num_classes


def _checked_query(embeddings, predicted_labels, dim, num_classes):
    """(float32 embeddings [N, D], int32 predictions [N]) with run-time checks (tf.function-safe)."""
    embeddings = tf.ensure_shape(tf.cast(embeddings, tf.float32), [None, dim])
    predicted_labels = tf.cast(predicted_labels, tf.int32)
    tf.debugging.assert_equal(tf.shape(predicted_labels), tf.shape(embeddings)[:1],
                              message="one predicted label per embedding")
    tf.debugging.assert_non_negative(predicted_labels, message="predicted labels < 0")
    tf.debugging.assert_less(predicted_labels, num_classes,
                             message="predicted labels >= num_classes")
    return embeddings, predicted_labels


def _map_chunks(fn, embeddings, predicted_labels, chunk_size, dtype=tf.float32):
    """fn(chunk [C, D], labels [C]) -> [C] over zero-padded chunks: memory stays bounded for any N."""
    n, dim = tf.shape(embeddings)[0], embeddings.shape[1]
    padded = (n + chunk_size - 1) // chunk_size * chunk_size
    chunks = tf.reshape(tf.pad(embeddings, [[0, padded - n], [0, 0]]), [-1, chunk_size, dim])
    labels = tf.reshape(tf.pad(predicted_labels, [[0, padded - n]]), [-1, chunk_size])
    out = tf.map_fn(lambda args: fn(*args), (chunks, labels),
                    fn_output_signature=tf.TensorSpec([chunk_size], dtype),
                    parallel_iterations=1)
    return tf.reshape(out, [-1])[:n]


def ledoit_wolf_shrinkage(centered):
    """Ledoit & Wolf (2004) shrinkage of the sample covariance of centered rows [n, d] toward
    mu I (mu = trace / d): min(beta^2, delta^2) / delta^2, as sklearn.covariance.ledoit_wolf."""
    n, d = centered.shape
    covariance = centered.T @ centered / n
    mu = np.trace(covariance) / d
    delta2 = np.sum((covariance - mu * np.eye(d)) ** 2) / d
    beta2 = (np.sum(np.sum(centered ** 2, axis=1) ** 2) - n * np.sum(covariance ** 2)) / (n * n * d)
    return 0.0 if delta2 <= 0 else float(min(max(beta2, 0.0), delta2) / delta2)


def shrunk_covariance(centered, shrinkage="ledoit_wolf"):
    """(1 - s) S + s mu I for centered rows [n, d] (float64), and s; S = X^T X / n (MLE)."""
    centered = np.asarray(centered, np.float64)
    n, d = centered.shape
    s = ledoit_wolf_shrinkage(centered) if shrinkage == "ledoit_wolf" else float(shrinkage)
    covariance = centered.T @ centered / n
    mu = np.trace(covariance) / d
    return (1.0 - s) * covariance + s * mu * np.eye(d), s


class GaussianDetector(tf.Module):
    """Class-conditional Gaussians on clean embeddings; score = -max_c log N(e; mu_c, Sigma_c).

    covariance 'per_class' (default): one full covariance per class, as Zheng & Hong (one density
    model per class, fitted on that class's training outputs) and the TLA paper ("a Gaussian per
    class") did; 'tied': one pooled within-class covariance (Lee et al. 2018's LDA form), for
    many classes with few references each (Tiny ImageNet: 200 classes, 25 references each).
    Each covariance is shrunk toward (trace / D) I by Ledoit-Wolf (2004) (or a fixed `shrinkage`
    in [0, 1]), which keeps it invertible when D >= references per class (640-d or 2048-d from
    500 images), plus a 1e-9 relative ridge for the degenerate case. Fitted in float64 NumPy;
    Cholesky factors stored as float64 tf.Variables; densities computed in float64.
    """

    def __init__(self, reference_embeddings, reference_labels, *, covariance="per_class",
                 shrinkage="ledoit_wolf", num_classes=None, chunk_size=256, name=None):
        super().__init__(name=name)
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
        if shrinkage != "ledoit_wolf" and not 0.0 <= float(shrinkage) <= 1.0:
            raise ValueError(f"shrinkage must be 'ledoit_wolf' or in [0, 1], got {shrinkage!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        embeddings, labels, num_classes = _checked_reference(
            np.asarray(reference_embeddings, np.float64),
            np.asarray(reference_labels).astype(np.int64), num_classes)
        dim = embeddings.shape[1]
        factors = num_classes if covariance == "per_class" else 1
        if factors * dim * dim * 8 > _MAX_FACTOR_BYTES:
            raise ValueError(f"{factors} covariances of {dim}x{dim} float64 exceed "
                             f"{_MAX_FACTOR_BYTES >> 20} MiB; use covariance='tied'")
        counts = np.bincount(labels, minlength=num_classes)
        needed = 2 if covariance == "per_class" else 1
        short = np.flatnonzero(counts < needed)
        if short.size:
            raise ValueError(f"covariance {covariance!r} needs >= {needed} references of every "
                             f"class; {short.size} classes have fewer (first: class {short[0]}, "
                             f"{counts[short[0]]} references)")
        means = np.stack([embeddings[labels == c].mean(axis=0) for c in range(num_classes)])
        centered = embeddings - means[labels]
        if covariance == "per_class":
            fitted = [shrunk_covariance(centered[labels == c], shrinkage)
                      for c in range(num_classes)]
        else:
            fitted = [shrunk_covariance(centered, shrinkage)]
        whitening, half_log_dets = [], []
        for sigma, _ in fitted:
            ridge = 1e-9 * max(np.trace(sigma) / dim, 1e-30)
            cholesky = np.linalg.cholesky(sigma + ridge * np.eye(dim))  # Sigma = L L^T
            whitening.append(np.linalg.inv(cholesky))  # L^-1: |L^-1 (e - mu)|^2 = Mahalanobis^2
            half_log_dets.append(np.sum(np.log(np.diag(cholesky))))  # 0.5 log det Sigma
        whitening = np.stack(whitening)
        self.covariance, self.dim, self.num_classes = covariance, dim, num_classes
        self.chunk_size = int(chunk_size)
        self.shrinkage = shrinkage
        self.shrinkages = [s for _, s in fitted]
        self.means = tf.Variable(means, trainable=False, name="means")
        self.whitening = tf.Variable(whitening, trainable=False, name="whitening")
        # L_c^-1 mu_c: the per-class shift of the whitened embedding.
        self.whitened_means = tf.Variable(np.einsum("kij,cj->ci", whitening, means)
                                          if covariance == "tied" else
                                          np.einsum("cij,cj->ci", whitening, means),
                                          trainable=False, name="whitened_means")
        self.log_normalizers = tf.Variable(
            np.broadcast_to(np.asarray(half_log_dets), [num_classes])
            + 0.5 * dim * np.log(2.0 * np.pi), trainable=False, name="log_normalizers")

    def log_densities(self, embeddings):
        """log N(e; mu_c, Sigma_c) float64 [N, C] for embeddings [N, D] (differentiable)."""
        e = tf.cast(tf.ensure_shape(embeddings, [None, self.dim]), tf.float64)
        if self.covariance == "tied":
            # |W e - W mu_c|^2 expanded, so memory is [N, C] (float64 keeps the cancellation small).
            whitened = tf.matmul(e, self.whitening[0], transpose_b=True)  # [N, D]
            squared = (tf.reduce_sum(tf.square(whitened), axis=1, keepdims=True)
                       - 2.0 * tf.matmul(whitened, self.whitened_means, transpose_b=True)
                       + tf.reduce_sum(tf.square(self.whitened_means), axis=1)[tf.newaxis])
            squared = tf.maximum(squared, 0.0)
        else:
            whitened = tf.einsum("cij,nj->nci", self.whitening, e) - self.whitened_means
            squared = tf.reduce_sum(tf.square(whitened), axis=2)  # [N, C]
        return -0.5 * squared - self.log_normalizers[tf.newaxis]

    def confidence(self, embeddings, predicted_labels):
        """max_c log-density / D, float32 [N]: the differentiable quantity an adaptive attack
        raises (= -score / D; per dimension so attack weights carry over between models)."""
        del predicted_labels  # the paper's confidence is the best class, whatever the prediction
        best = tf.reduce_max(self.log_densities(embeddings), axis=1)
        return tf.cast(best / self.dim, tf.float32)

    def score(self, embeddings, predicted_labels):
        """Detection scores float32 [N] = -max_c log N(e; mu_c, Sigma_c); predictions [N] are
        checked (the interface of KnnDetector) but not used."""
        embeddings, predicted_labels = _checked_query(embeddings, predicted_labels, self.dim,
                                                      self.num_classes)
        return _map_chunks(
            lambda chunk, _: tf.cast(-tf.reduce_max(self.log_densities(chunk), axis=1),
                                     tf.float32),
            embeddings, predicted_labels, self.chunk_size)

    def describe(self):
        """JSON-ready settings (for reports and the export's detector.json)."""
        return {"detector": "gaussian", "covariance": self.covariance, "dim": self.dim,
                "num_classes": self.num_classes, "shrinkage": self.shrinkage,
                "shrinkage_values": [round(s, 6) for s in self.shrinkages],
                "score": "-max_c log N(embedding; mu_c, Sigma_c)"}


class KnnDetector(tf.Module):
    """Scores inputs by their k nearest clean reference embeddings (cosine similarity).

    score_type 'agreement' (default; consistency of the embedding's neighbours with the
    prediction): 1 - (fraction of the k neighbours whose label is the predicted label), plus a
    tie-breaker (1 - mean neighbour cosine) / (2 (k + 1)), smaller than one agreement step 1/k,
    so it only orders inputs with equal agreement (far from all references = more suspicious).
    score_type 'similarity': 1 - mean cosine of the k nearest references of the predicted class,
    in [0, 2]; needs k <= the smallest per-class reference count.
    Higher score = more likely adversarial. The reference lives in non-trainable tf.Variables, so
    the detector can be saved inside a SavedModel; `score` uses TF ops only (tf.function-safe).
    `classify` is the k-NN classifier of TLA's Table 4 (k = 50; adversarial / clean accuracy).
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
        embeddings, labels, num_classes = _checked_reference(embeddings, labels, num_classes)
        counts = np.bincount(labels, minlength=num_classes)
        limit = counts[counts > 0].min() if score_type == "similarity" else labels.size
        if not 1 <= k <= limit:
            raise ValueError(f"k must be in [1, {limit}] for score_type {score_type!r} "
                             f"(reference counts per class: {counts.tolist()}), got {k}")
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        self.k, self.score_type, self.chunk_size = int(k), score_type, int(chunk_size)
        self.num_classes, self.dim = num_classes, embeddings.shape[1]
        self._confidence_k = int(min(k, counts[counts > 0].min()))
        self.reference_embeddings = tf.Variable(
            embeddings / np.maximum(norms, 1e-12), trainable=False, name="reference_embeddings")
        self.reference_labels = tf.Variable(
            labels.astype(np.int32), trainable=False, name="reference_labels")

    def score(self, embeddings, predicted_labels):
        """Detection scores float32 [N] for embeddings [N, D] and the model's predictions [N]."""
        embeddings, predicted_labels = _checked_query(embeddings, predicted_labels, self.dim,
                                                      self.num_classes)
        return _map_chunks(self._score_chunk, tf.math.l2_normalize(embeddings, axis=1),
                           predicted_labels, self.chunk_size)

    def classify(self, embeddings):
        """Majority label int32 [N] of the k nearest references (ties: the smallest label)."""
        embeddings = tf.ensure_shape(tf.cast(embeddings, tf.float32), [None, self.dim])
        queries = tf.math.l2_normalize(embeddings, axis=1)

        def chunk(rows, _):
            top = tf.math.top_k(tf.matmul(rows, self.reference_embeddings, transpose_b=True),
                                self.k)
            votes = tf.reduce_sum(tf.one_hot(tf.gather(self.reference_labels, top.indices),
                                             self.num_classes), axis=1)
            return tf.argmax(votes, axis=1, output_type=tf.int32)

        return _map_chunks(chunk, queries, tf.zeros(tf.shape(queries)[:1], tf.int32),
                           self.chunk_size, tf.int32)

    def confidence(self, embeddings, predicted_labels):
        """Mean cosine of the k nearest references of the predicted class, float32 [N]: a
        differentiable stand-in for the neighbour vote that an adaptive attack raises."""
        queries = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=1)
        similarities = tf.matmul(queries, self.reference_embeddings, transpose_b=True)
        same_class = tf.equal(self.reference_labels[tf.newaxis, :],
                              tf.cast(predicted_labels, tf.int32)[:, tf.newaxis])
        top = tf.math.top_k(tf.where(same_class, similarities, -3.0), self._confidence_k)
        return tf.reduce_mean(top.values, axis=1)

    def describe(self):
        """JSON-ready settings (for reports and the export's detector.json)."""
        return {"detector": "knn", "k": self.k, "score_type": self.score_type, "dim": self.dim,
                "num_classes": self.num_classes,
                "reference_size": int(self.reference_labels.shape[0]), "distance": "cosine"}

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


def build(kind, embeddings, labels, *, num_classes=None, k=50, score_type="agreement",
          covariance="per_class"):
    """The detector `kind` ('gaussian' or 'knn') fitted on clean reference embeddings [R, D] and
    labels [R]: the one constructor bin/evaluate and bin/export share."""
    if kind == "gaussian":
        return GaussianDetector(embeddings, labels, covariance=covariance, num_classes=num_classes)
    if kind == "knn":
        return KnnDetector(embeddings, labels, k=min(k, len(labels)), score_type=score_type,
                           num_classes=num_classes)
    raise ValueError(f"detector must be one of {DETECTORS}, got {kind!r}")


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


# The TLA detection protocol ------------------------------------------------------------------

FALSE_POSITIVE_RATE = 0.05  # the operating point of 'tpr_at_5pct_fpr' and the export threshold


def threshold_at_fpr(clean_scores, fpr=FALSE_POSITIVE_RATE):
    """The smallest clean score t such that flagging `score > t` flags at most `fpr` of
    `clean_scores` (about 5% of clean images with the default)."""
    scores = np.sort(np.asarray(clean_scores, np.float64).reshape(-1))
    if scores.size == 0 or not 0.0 <= fpr < 1.0:
        raise ValueError(f"need clean scores and fpr in [0, 1), got {scores.size} and {fpr}")
    allowed_below = int(np.ceil((1.0 - fpr) * scores.size - 1e-9))  # kept at or below t
    return float(scores[max(allowed_below, 1) - 1])


def protocol_report(clean_scores, clean_correct, adversarial_scores, adversarial_correct,
                    threshold):
    """Detection numbers of one attack from per-image scores and correctness, as NumPy arrays.

    'auc_misclassified_vs_correct_all': the TLA paper's Figure 5 protocol: ROC over all clean AND
    adversarial images, every misclassified image positive, every correct one negative.
    'auc_clean_vs_adversarial': every adversarial image positive, every clean one negative.
    'auc_misclassified_adversarial_vs_correct_clean': successful attacks vs correct clean images.
    'auc_adversarial_misclassified_vs_correct': both sides adversarial.
    At `threshold` (flag = score > threshold, e.g. threshold_at_fpr of the clean scores):
    'tpr_at_5pct_fpr' = flagged misclassified adversarial / misclassified adversarial;
    'undetected_misclassified_at_5pct_fpr' = adversarial images both misclassified and not
    flagged / all adversarial images (the attack's success rate against model + detector).
    Returns (numbers dict, curves dict name -> ROC entry or None).
    """
    clean_scores, adversarial_scores = (np.asarray(s, np.float64).reshape(-1)
                                        for s in (clean_scores, adversarial_scores))
    clean_correct, adversarial_correct = (np.asarray(c, bool).reshape(-1)
                                          for c in (clean_correct, adversarial_correct))
    if (clean_scores.shape != clean_correct.shape
            or adversarial_scores.shape != adversarial_correct.shape):
        raise ValueError("need one correctness flag per score")
    adversarial_wrong = ~adversarial_correct
    flagged = adversarial_scores > threshold

    def binary(positive, negative):
        scores = np.concatenate([positive, negative])
        return _roc_entry(scores, np.arange(scores.size) < positive.size)

    all_scores = np.concatenate([clean_scores, adversarial_scores])
    all_wrong = ~np.concatenate([clean_correct, adversarial_correct])
    curves = {
        "misclassified_vs_correct_all": _roc_entry(all_scores, all_wrong),
        "clean_vs_adversarial": binary(adversarial_scores, clean_scores),
        "misclassified_adversarial_vs_correct_clean": binary(
            adversarial_scores[adversarial_wrong], clean_scores[clean_correct]),
        "adversarial_misclassified_vs_correct": binary(
            adversarial_scores[adversarial_wrong], adversarial_scores[adversarial_correct]),
    }
    numbers = {f"auc_{name}": auc for name, (auc, _) in curves.items()}
    numbers.update({
        "accuracy": float(adversarial_correct.mean()),
        "clean_accuracy": float(clean_correct.mean()),
        "threshold": float(threshold),
        "clean_flagged": float(np.mean(clean_scores > threshold)),
        "tpr_at_5pct_fpr": (float(flagged[adversarial_wrong].mean())
                            if adversarial_wrong.any() else None),
        "undetected_misclassified_at_5pct_fpr": float(np.mean(adversarial_wrong & ~flagged)),
        "num_clean": int(clean_scores.size),
        "num_adversarial": int(adversarial_scores.size),
        "num_adversarial_misclassified": int(adversarial_wrong.sum()),
        "mean_score_clean": float(clean_scores.mean()),
        "mean_score_adversarial": float(adversarial_scores.mean()),
    })
    return numbers, {name: roc for name, (_, roc) in curves.items()}


def strongest_per_example(candidates, threshold):
    """Index [N] of the best candidate attack per image for an attacker who knows the detector:
    misclassified and unflagged first, then misclassified with the lowest score, then the lowest
    score. candidates: list of (scores [N], correct [N]) NumPy arrays."""
    scores = np.stack([np.asarray(s, np.float64) for s, _ in candidates])
    wrong = ~np.stack([np.asarray(c, bool) for _, c in candidates])
    evades = wrong & (scores <= threshold)
    # Lexicographic: evades, then wrong, then -score (scores are finite).
    key = np.stack([evades, wrong], axis=0).astype(np.float64)
    order = np.lexsort((scores, -key[1], -key[0]), axis=0)
    return order[0]
