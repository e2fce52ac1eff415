"""Tests for tf_metric_robust.training.memory_bank: FIFO ring buffer, no gradient, 2 replicas, checkpoints."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_metric_robust import distribute, losses
from tf_metric_robust.training.memory_bank import EmbeddingBank


def _rows(labels, dim=2):
    """Embeddings whose entries all equal the label, so a row shows where it came from."""
    labels = np.asarray(labels, np.int64)
    return np.repeat(labels[:, None], dim, axis=1).astype(np.float32), labels


def test_fifo_order_wrap_around_and_valid_mask():
    bank = EmbeddingBank(size=5, dim=2)
    embeddings, labels, valid = bank.read()
    assert embeddings.shape == (5, 2) and labels.dtype == tf.int64
    np.testing.assert_array_equal(valid, [False] * 5)

    bank.enqueue(*_rows([10, 11, 12]))
    embeddings, labels, valid = bank.read()
    np.testing.assert_array_equal(labels, [10, 11, 12, -1, -1])
    np.testing.assert_array_equal(valid, [True, True, True, False, False])
    np.testing.assert_array_equal(embeddings[:3, 0], [10, 11, 12])

    bank.enqueue(*_rows([13, 14, 15, 16]))  # slots 3, 4, then wraps to 0, 1
    embeddings, labels, valid = bank.read()
    np.testing.assert_array_equal(labels, [15, 16, 12, 13, 14])
    np.testing.assert_array_equal(embeddings[:, 1], [15, 16, 12, 13, 14])
    assert valid.numpy().all() and int(bank.pointer.numpy()) == 2

    # More rows than slots: as if written one by one from slot 2, so the last 5 survive.
    bank.enqueue(*_rows([20, 21, 22, 23, 24, 25, 26]))
    _, labels, _ = bank.read()
    np.testing.assert_array_equal(labels, [23, 24, 25, 26, 22])
    assert int(bank.pointer.numpy()) == (2 + 7) % 5


def test_enqueue_in_tf_function_and_bad_shape():
    bank = EmbeddingBank(size=4, dim=3)

    @tf.function
    def step(embeddings, labels):
        bank.enqueue(embeddings, labels)
        return bank.read()

    for start in (0, 3):
        embeddings, labels, _ = step(*_rows([start, start + 1, start + 2], dim=3))
    np.testing.assert_array_equal(labels, [4, 5, 2, 3])
    np.testing.assert_array_equal(embeddings[:, 2], [4, 5, 2, 3])
    with pytest.raises(ValueError, match="embeddings must be"):
        bank.enqueue(np.zeros([2, 5], np.float32), [0, 1])
    with pytest.raises(ValueError):
        EmbeddingBank(size=0, dim=3)


def test_low_precision_embeddings_are_stored_as_float32():
    bank = EmbeddingBank(size=3, dim=2)
    bank.enqueue(tf.constant([[1.5, -2.0]], tf.bfloat16), tf.constant([4], tf.int32))
    embeddings, labels, _ = bank.read()
    assert embeddings.dtype == tf.float32
    np.testing.assert_array_equal(embeddings[0], [1.5, -2.0])
    np.testing.assert_array_equal(labels, [4, -1, -1])


def test_no_gradient_through_bank():
    bank = EmbeddingBank(size=4, dim=2)
    assert not bank.trainable_weights
    x = tf.constant([[1.0, 2.0], [3.0, 4.0]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        bank.enqueue(3.0 * x, [0, 1])
        embeddings, _, _ = bank.read()
        total = tf.reduce_sum(embeddings)
    assert tape.gradient(total, x) is None
    assert float(total) == 30.0


def test_bank_as_negative_pool_skips_empty_slots():
    bank = EmbeddingBank(size=4, dim=2)
    bank.enqueue(np.array([[1.0, 0.1], [0.0, 1.0]], np.float32), [1, 2])
    pool, pool_labels, valid = bank.read()
    # Empty slots hold zero vectors with label -1; they must never be picked.
    index, found = losses.hardest_negative_index(
        [[1.0, 0.0]], [0], pool, pool_labels, distance="l2", pool_valid=valid
    )
    np.testing.assert_array_equal(index, [0])
    np.testing.assert_array_equal(found, [True])


def test_two_replicas_keep_their_own_bank_without_collectives():
    strategy = distribute.mirrored_strategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        bank = EmbeddingBank(size=3, dim=2)

    def replica_batch(step):
        def fn(context):
            base = 100 * step + 10 * context.replica_id_in_sync_group
            return _rows([base, base + 1])

        return strategy.experimental_distribute_values_from_function(fn)

    @tf.function
    def train_step(embeddings, labels):
        def replica_fn(embeddings, labels):
            bank.enqueue(embeddings, labels)
            return bank.read()

        return strategy.run(replica_fn, args=(embeddings, labels))

    for step in range(2):  # 2 rows x 2 steps = 4 rows in 3 slots per replica: wraps around
        outputs = train_step(*replica_batch(step))
    # Replica r wrote [10r, 10r+1] to slots 0-1, then [100+10r, 101+10r] to slots 2, 0.
    for replica, (embeddings, labels, valid) in enumerate(
        zip(*(strategy.experimental_local_results(o) for o in outputs))
    ):
        expected = [101 + 10 * replica, 1 + 10 * replica, 100 + 10 * replica]
        np.testing.assert_array_equal(labels, expected)
        np.testing.assert_array_equal(embeddings[:, 0], expected)
        assert valid.numpy().all()
    # Cross-replica reads (what a checkpoint saves) see the first replica's bank.
    np.testing.assert_array_equal(bank.labels.numpy(), [101, 1, 100])
    assert int(bank.pointer.numpy()) == 4 % 3


def test_checkpoint_round_trip(tmp_path):
    bank = EmbeddingBank(size=4, dim=2)
    bank.enqueue(*_rows([1, 2, 3]))
    path = tf.train.Checkpoint(bank=bank).write(str(tmp_path / "bank"))

    restored = EmbeddingBank(size=4, dim=2)
    tf.train.Checkpoint(bank=restored).read(path).assert_consumed()
    for a, b in zip(bank.read(), restored.read()):
        np.testing.assert_array_equal(a, b)
    restored.enqueue(*_rows([4, 5]))  # the pointer came back too: continues at slot 3
    np.testing.assert_array_equal(restored.read()[1], [5, 2, 3, 4])


def test_bank_weights_belong_to_the_owning_model(tmp_path):
    class Owner(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)
            self.bank = EmbeddingBank(size=3, dim=2)

        def call(self, x):
            return self.dense(x)

    model = Owner()
    model(np.zeros([1, 4], np.float32))
    assert len(model.non_trainable_weights) == 3
    model.bank.enqueue(*_rows([7]))
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "model"))
    fresh = Owner()
    fresh(np.zeros([1, 4], np.float32))
    tf.train.Checkpoint(model=fresh).read(path).assert_consumed()
    np.testing.assert_array_equal(fresh.bank.read()[1], [7, -1, -1])
    config = model.bank.get_config()
    assert EmbeddingBank.from_config(config).size == 3
