"""TLA's "other" clean positive drawn from the data: an independent image of the anchor's class
(Mao et al., NeurIPS 2019; the authors' train_update_fast_triplet.py:641-645,
`cifar_aux.train_data.get_next_data_basedon_class(y_batch)`).

Where each class's examples sit in a split, and a stateless draw among the others of a class, so a
resumed run draws the same positives.
"""

import numpy as np
import tensorflow as tf


class ClassIndex:
    """Where each class's examples sit in a split: what `other_index` draws from.

    Args:
      labels: int [M] labels of the split, in file order.
    """

    def __init__(self, labels):
        labels = np.asarray(labels, np.int64).reshape(-1)
        order = np.argsort(labels, kind="stable")  # example indices grouped by class
        classes = int(labels.max()) + 1 if labels.size else 0
        counts = np.bincount(labels, minlength=classes)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.empty_like(order)
        rank[order] = np.arange(labels.size) - starts[labels[order]]  # position within its class
        self.order = tf.constant(order, tf.int64)
        self.starts = tf.constant(starts, tf.int64)
        self.counts = tf.constant(counts, tf.int64)
        self.rank = tf.constant(rank, tf.int64)
        self.labels = tf.constant(labels, tf.int64)


def other_index(index, class_index, seed):
    """For each example index, a uniform draw among the OTHER examples of its class -> int64 [N].

    An example alone in its class gets its own index back (no other image exists).

    Args:
      index: int [N] indices of examples into the split.
      class_index: a `ClassIndex` of the split.
      seed: int [2] key of the stateless draw.
    """
    index = tf.cast(tf.reshape(index, [-1]), tf.int64)
    label = tf.gather(class_index.labels, index)
    count = tf.gather(class_index.counts, label)
    others = tf.maximum(count - 1, 1)
    draw = tf.random.stateless_uniform(tf.shape(index), seed=seed, minval=0, maxval=1)
    pick = tf.minimum(tf.cast(tf.floor(draw * tf.cast(others, tf.float32)), tf.int64), others - 1)
    rank = tf.gather(class_index.rank, index)
    pick += tf.cast(pick >= rank, tf.int64)  # skip the example itself
    chosen = tf.gather(class_index.order, tf.gather(class_index.starts, label) + pick)
    return tf.where(count > 1, chosen, index)
