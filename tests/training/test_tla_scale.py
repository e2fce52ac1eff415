"""TLA at the batch of the generated-data recipes (512-1024 over several GPUs): its negative
search, the authors' extra pool and the memory bank work per replica.

On 2 logical CPUs (conftest.py) one SGD step at global batch 512 gives the mean of the steps each
replica's half takes alone on one device: each replica searches negatives among its own 256 rows
(its own pool share, its own bank) and its loss is scaled by the global batch exactly once. A
global batch the replicas cannot split evenly is refused in one line, by training.train (bin/train)
and by AdversarialTrainer.fit.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_metric_robust import distribute, models, training
from tf_metric_robust.config import AttackConfig, TrainConfig, TripletConfig, UserError
from tf_metric_robust.training import AdversarialTrainer
from tf_metric_robust.training.inputs import replica_major

BATCH = 512
# No random start: the attack must not depend on the replica id (its starts are seeded per
# replica), so the 2-replica step and the per-replica steps attack alike.
ATTACK = AttackConfig(eps=0.1, step_size=0.05, steps=1, random_start=False)
LEARNING_RATE = 0.5  # plain SGD: a step moves the weights by -lr x the gradient, nothing else


def _two_cpus():
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(cpus) >= 2, "conftest.py should split the CPU into two logical devices"
    return distribute.mirrored_strategy(cpus[:2])


def _one_step(strategy, triplet, rows):
    """(weights after one TLA step on `rows`, the trainer); the same initial weights every time."""
    with strategy.scope():
        keras.utils.set_random_seed(0)
        network = models.build("small_cnn", 10, (28, 28, 1), embedding_dim=16)
        trainer = AdversarialTrainer(network, mode="tla", attack=ATTACK, triplet=triplet, seed=0)
        trainer.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE))
    trainer.fit(tf.data.Dataset.from_tensors(rows), epochs=1, verbose=0, shuffle=False)
    assert int(trainer.optimizer.iterations.numpy()) == 1
    return [w.numpy() for w in network.trainable_weights], trainer


def _rows(mnist5k_arrays, count):
    images, labels = mnist5k_arrays
    order = np.random.default_rng(0).permutation(len(labels))[:count]
    return tf.constant(images[order]), tf.constant(labels[order], tf.int64)


POOLS = {
    "batch": TripletConfig(negative_pool="batch"),
    "bank": TripletConfig(negative_pool="bank", bank_size=1024),
    "extra": TripletConfig(negative_pool="extra", pool_multiplier=1),
}


@pytest.mark.slow  # four to five compiled steps at batch 512 per pool, ~30 s each here
@pytest.mark.parametrize("pool", sorted(POOLS))
def test_two_replica_step_at_batch_512_is_the_mean_of_the_replicas_steps(mnist5k_arrays, pool):
    triplet = POOLS[pool]
    # With the extra pool a step reads [batch; pool], reordered so each replica gets its share
    # of both (what training.inputs does).
    count = BATCH * (1 + triplet.pool_multiplier) if pool == "extra" else BATCH
    images, labels = _rows(mnist5k_arrays, count)
    if pool == "extra":
        images, labels = (replica_major(x, BATCH, 2) for x in (images, labels))
    half = count // 2
    halves = [
        (images[r * half : (r + 1) * half], labels[r * half : (r + 1) * half]) for r in (0, 1)
    ]

    double, trainer = _one_step(_two_cpus(), triplet, (images, labels))
    single = tf.distribute.get_strategy()
    alone = [_one_step(single, triplet, rows)[0] for rows in halves]
    for got, first, second in zip(double, *alone):
        np.testing.assert_allclose(got, (first + second) / 2, rtol=1e-4, atol=2e-6)

    if pool == "bank":  # each replica banked its own 256 clean rows, nothing of the other's
        strategy = trainer.distribute_strategy
        banks = strategy.experimental_local_results(strategy.run(lambda: trainer.bank.read()))
        for (_, bank_labels, valid), (_, own) in zip(banks, halves):
            assert int(tf.reduce_sum(tf.cast(valid, tf.int32))) == half
            np.testing.assert_array_equal(bank_labels[:half], own)
    if pool == "batch":
        # The test can tell: one device searching the whole 512 finds other negatives.
        whole, _ = _one_step(single, triplet, (images, labels))
        gap = max(float(np.max(np.abs(a - b))) for a, b in zip(whole, double))
        assert gap > 1e-3  # measured 0.03, against 3e-8 between the two sides above


def test_a_global_batch_the_replicas_cannot_split_is_refused_in_one_line(
    tmp_path, mnist5k_data_dir
):
    """training.train (bin/train's path) refuses it before writing anything; bin/train under
    --strategy=multi_worker refuses a batch the workers cannot split before TensorFlow is imported
    (tests/cli/test_cli_validation.py, BAD_VALUES: 'is not divisible')."""
    config = TrainConfig(
        model_dir=str(tmp_path / "run"),
        dataset="mnist5k",
        data_dir=mnist5k_data_dir,
        mode="tla",
        batch_size=511,
        train_steps=1,
        strategy="mirrored",  # every logical CPU: 2 replicas here
    )
    with pytest.raises(UserError) as error:
        training.train(config)
    message = str(error.value)
    assert message == (
        "batch_size 511 is not divisible by the 2 replicas of the strategy; use a multiple of 2"
    )
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_the_trainer_refuses_a_dataset_batch_the_replicas_cannot_split():
    """AdversarialTrainer.fit (the Python API) refuses it in one line before any step; without
    the check the 2-replica step failed with 'Inputs to operation AddN ... [8,28,28,1] !=
    [7,28,28,1]'."""
    images = tf.zeros([15, 28, 28, 1])
    labels = tf.range(15, dtype=tf.int64) % 10
    strategy = _two_cpus()
    with strategy.scope():
        network = models.build("small_cnn", 10, (28, 28, 1), embedding_dim=16)
        trainer = AdversarialTrainer(network, mode="tla", attack=ATTACK, triplet=POOLS["batch"])
        trainer.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE))
    with pytest.raises(UserError, match="batch_size 15 is not divisible by the 2 replicas"):
        trainer.fit(tf.data.Dataset.from_tensors((images, labels)), epochs=1, verbose=0)
    assert int(trainer.optimizer.iterations.numpy()) == 0
    # An even batch of the same data trains.
    trainer.fit(tf.data.Dataset.from_tensors((images[:14], labels[:14])), epochs=1, verbose=0)
    assert int(trainer.optimizer.iterations.numpy()) == 1


def test_other_positives_from_the_data_train_on_two_replicas(mnist5k_arrays):
    """The input ((images, other images), labels) of --other_positive=data: under a real strategy
    Keras first calls the model on (images, other images) to build it (this failed with 'Layer
    "small_cnn" expects 1 named input(s) ... but it received 2 input tensors')."""
    images, labels = _rows(mnist5k_arrays, 64)
    triplet = TripletConfig(positive="both", other_positive="data")
    rows = ((images[:32], images[32:]), labels[:32])
    weights, _ = _one_step(_two_cpus(), triplet, rows)
    assert all(np.isfinite(w).all() for w in weights)
