"""k-nearest-neighbour detector and classifier on cosine similarity (TLA paper Table 4)."""

import numpy as np
import tensorflow as tf

from tf_metric_robust.config import DEFAULT_DETECTION_K, SCORE_TYPES
from tf_metric_robust.detection.common import (
    checked_query,
    checked_reference,
    map_chunks,
    subsample_per_class,
)


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

    def __init__(
        self,
        reference_embeddings,
        reference_labels,
        *,
        k=DEFAULT_DETECTION_K,
        score_type="agreement",
        num_classes=None,
        max_reference=None,
        chunk_size=256,
        seed=0,
        name=None,
    ):
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
            np.asarray(reference_labels).astype(np.int64),
            max_reference,
            seed,
        )
        embeddings, labels, num_classes = checked_reference(embeddings, labels, num_classes)
        counts = np.bincount(labels, minlength=num_classes)
        limit = counts[counts > 0].min() if score_type == "similarity" else labels.size
        if not 1 <= k <= limit:
            raise ValueError(
                f"k must be in [1, {limit}] for score_type {score_type!r} "
                f"(reference counts per class: {counts.tolist()}), got {k}"
            )
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        self.k, self.score_type, self.chunk_size = int(k), score_type, int(chunk_size)
        self.num_classes, self.dim = num_classes, embeddings.shape[1]
        self._confidence_k = int(min(k, counts[counts > 0].min()))
        self.reference_embeddings = tf.Variable(
            embeddings / np.maximum(norms, 1e-12), trainable=False, name="reference_embeddings"
        )
        self.reference_labels = tf.Variable(
            labels.astype(np.int32), trainable=False, name="reference_labels"
        )

    def score(self, embeddings, predicted_labels):
        """Detection scores float32 [N] for embeddings [N, D] and the model's predictions [N]."""
        embeddings, predicted_labels = checked_query(
            embeddings, predicted_labels, self.dim, self.num_classes
        )
        return map_chunks(
            self._score_chunk,
            tf.math.l2_normalize(embeddings, axis=1),
            predicted_labels,
            self.chunk_size,
        )

    def classify(self, embeddings):
        """Majority label int32 [N] of the k nearest references (ties: the smallest label)."""
        embeddings = tf.ensure_shape(tf.cast(embeddings, tf.float32), [None, self.dim])
        queries = tf.math.l2_normalize(embeddings, axis=1)

        def chunk(rows, _):
            top = tf.math.top_k(
                tf.matmul(rows, self.reference_embeddings, transpose_b=True), self.k
            )
            votes = tf.reduce_sum(
                tf.one_hot(tf.gather(self.reference_labels, top.indices), self.num_classes), axis=1
            )
            return tf.argmax(votes, axis=1, output_type=tf.int32)

        return map_chunks(
            chunk, queries, tf.zeros(tf.shape(queries)[:1], tf.int32), self.chunk_size, tf.int32
        )

    def confidence(self, embeddings, predicted_labels):
        """Mean cosine of the k nearest references of the predicted class, float32 [N]: a
        differentiable stand-in for the neighbour vote that an adaptive attack raises."""
        queries = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=1)
        similarities = tf.matmul(queries, self.reference_embeddings, transpose_b=True)
        same_class = tf.equal(
            self.reference_labels[tf.newaxis, :], tf.cast(predicted_labels, tf.int32)[:, tf.newaxis]
        )
        top = tf.math.top_k(tf.where(same_class, similarities, -3.0), self._confidence_k)
        return tf.reduce_mean(top.values, axis=1)

    def describe(self):
        """JSON-ready settings (for reports and the export's detector.json)."""
        return {
            "detector": "knn",
            "k": self.k,
            "score_type": self.score_type,
            "dim": self.dim,
            "num_classes": self.num_classes,
            "reference_size": int(self.reference_labels.shape[0]),
            "distance": "cosine",
        }

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
