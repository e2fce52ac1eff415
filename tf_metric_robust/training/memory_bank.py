"""A FIFO memory bank of recent clean embeddings and labels: a cheap negative pool for TLA.

TLA (Mao et al., NeurIPS 2019) searches each adversarial anchor's negative among clean embeddings
of other classes; the authors embed an extra clean pool of 10 x batch per step. A queue of the
clean embeddings the training step computes anyway (as MoCo's queue, He et al. 2020) gives a pool
of the same size with no extra forward pass; its entries are a few steps stale and carry no
gradient.
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tf_metric_robust")
class EmbeddingBank(keras.layers.Layer):
    """Ring buffer of `size` embeddings [size, dim] float32 with int64 labels (-1 = empty slot).

    A Keras layer so its variables are part of the owning model's weights and checkpoints. Under a
    `tf.distribute` strategy each replica keeps its own bank of the embeddings it computed
    (sync-on-read variables, like per-GPU queues): no collective runs in the step, whose order
    could clash with the gradient all-reduce. A checkpoint stores the first replica's bank.
    """

    def __init__(self, size, dim, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if size < 1 or dim < 1:
            raise ValueError(f"size and dim must be >= 1, got size={size}, dim={dim}")
        self.size = int(size)
        self.dim = int(dim)
        # Sync-on-read: assignments in replica context stay local to the replica; reading in
        # cross-replica context (checkpoints) gives the first replica's copy.
        # (Layer.add_weight does not take `synchronization`; keras.Variable does and is tracked.)
        common = dict(trainable=False, synchronization="on_read", aggregation="only_first_replica")
        self.embeddings = keras.Variable(
            keras.initializers.Zeros()((self.size, self.dim)),
            dtype="float32",
            autocast=False,
            name="embeddings",
            **common,
        )
        self.labels = keras.Variable(
            keras.initializers.Constant(-1)((self.size,), "int64"),
            dtype="int64",
            name="labels",
            **common,
        )
        self.pointer = keras.Variable(0, dtype="int64", name="pointer", **common)
        self.built = True

    def enqueue(self, embeddings, labels):
        """Writes a batch (embeddings [N, dim], int labels [N]) over the oldest entries (FIFO).

        Each replica writes its own rows into its own bank. If more than `size` rows arrive at
        once, only the last `size` are kept. No gradient flows into the bank.
        """
        embeddings = tf.stop_gradient(tf.cast(embeddings, tf.float32))
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int64)
        if embeddings.shape.rank != 2 or embeddings.shape[-1] not in (None, self.dim):
            raise ValueError(f"embeddings must be [N, {self.dim}], got shape {embeddings.shape}")
        tf.debugging.assert_equal(
            tf.shape(embeddings)[0],
            tf.shape(labels)[0],
            message="enqueue: embeddings and labels differ in length",
        )
        count = tf.shape(labels, out_type=tf.int64)[0]
        kept = tf.minimum(count, self.size)
        pointer = tf.convert_to_tensor(self.pointer)
        # Rows dropped when count > size would have been overwritten by later rows anyway.
        slots = (pointer + count - kept + tf.range(kept)) % self.size
        slots = slots[:, tf.newaxis]
        self.embeddings.assign(
            tf.tensor_scatter_nd_update(
                tf.convert_to_tensor(self.embeddings), slots, embeddings[count - kept :]
            )
        )
        self.labels.assign(
            tf.tensor_scatter_nd_update(
                tf.convert_to_tensor(self.labels), slots, labels[count - kept :]
            )
        )
        self.pointer.assign((pointer + count) % self.size)

    def read(self):
        """Returns (embeddings float32 [size, dim], labels int64 [size], valid bool [size])."""
        labels = tf.convert_to_tensor(self.labels)
        return tf.convert_to_tensor(self.embeddings), labels, labels >= 0

    def get_config(self):
        return {**super().get_config(), "size": self.size, "dim": self.dim}
