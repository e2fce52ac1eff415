"""What both detectors share: reference checks and subsampling, query checks, chunked scoring."""

import numpy as np
import tensorflow as tf

from tf_metric_robust import seeds


def subsample_per_class(embeddings, labels, max_per_class, seed=0):
    """Keeps at most `max_per_class` random rows of every class (every class keeps >= 1 row).

    Returns (embeddings [M, D], labels [M]) as NumPy arrays, rows grouped in class order.
    """
    embeddings, labels = np.asarray(embeddings), np.asarray(labels)
    if max_per_class is None:
        return embeddings, labels
    if max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
    rng = np.random.default_rng(seeds.numpy_seed(seed, "detection.reference"))
    keep = [rng.permutation(np.flatnonzero(labels == c))[:max_per_class] for c in np.unique(labels)]
    keep = np.concatenate(keep)
    return embeddings[keep], labels[keep]


def checked_reference(embeddings, labels, num_classes):
    """(embeddings [R, D], labels int64 [R], num_classes) or ValueError."""
    if embeddings.ndim != 2 or labels.shape != (embeddings.shape[0],):
        raise ValueError(
            f"need embeddings [R, D] and labels [R], got {embeddings.shape} and {labels.shape}"
        )
    if labels.size == 0 or labels.min() < 0:
        raise ValueError("reference labels must be non-empty and >= 0")
    num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if labels.max() >= num_classes:
        raise ValueError(f"reference label {labels.max()} >= num_classes {num_classes}")
    if not np.all(np.isfinite(embeddings)):
        raise ValueError("reference embeddings must be finite")
    return embeddings, labels, num_classes


def checked_query(embeddings, predicted_labels, dim, num_classes):
    """(float32 embeddings [N, D], int32 predictions [N]) with run-time checks (tf.function-safe)."""
    embeddings = tf.ensure_shape(tf.cast(embeddings, tf.float32), [None, dim])
    predicted_labels = tf.cast(predicted_labels, tf.int32)
    tf.debugging.assert_equal(
        tf.shape(predicted_labels),
        tf.shape(embeddings)[:1],
        message="one predicted label per embedding",
    )
    tf.debugging.assert_non_negative(predicted_labels, message="predicted labels < 0")
    tf.debugging.assert_less(
        predicted_labels, num_classes, message="predicted labels >= num_classes"
    )
    return embeddings, predicted_labels


def map_chunks(fn, embeddings, predicted_labels, chunk_size, dtype=tf.float32):
    """fn(chunk [C, D], labels [C]) -> [C] over zero-padded chunks: memory stays bounded for any N."""
    n, dim = tf.shape(embeddings)[0], embeddings.shape[1]
    padded = (n + chunk_size - 1) // chunk_size * chunk_size
    chunks = tf.reshape(tf.pad(embeddings, [[0, padded - n], [0, 0]]), [-1, chunk_size, dim])
    labels = tf.reshape(tf.pad(predicted_labels, [[0, padded - n]]), [-1, chunk_size])
    out = tf.map_fn(
        lambda args: fn(*args),
        (chunks, labels),
        fn_output_signature=tf.TensorSpec([chunk_size], dtype),
        parallel_iterations=1,
    )
    return tf.reshape(out, [-1])[:n]
