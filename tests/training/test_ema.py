"""The weight EMA (training/ema.py): the update rule in NumPy, exact swap, replicas agree,
checkpoints hold it, and a run evaluates and exports the averaged weights."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_metric_robust import distribute, export, models, run_folder
from tf_metric_robust.config import AttackConfig
from tf_metric_robust.training import AdversarialTrainer, ema

pytestmark = (
    pytest.mark.slow
)  # trains beyond a few steps or runs full attacks (make test-fast skips)

FIXED_START = AttackConfig(eps=0.3, step_size=0.1, steps=2, random_start=False)


def _dense_network():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    hidden = keras.layers.BatchNormalization()(keras.layers.Dense(4)(inputs))
    return keras.Model(inputs, hidden)


def test_update_follows_the_decay_with_the_num_updates_rule():
    """average <- d average + (1 - d) w, d = min(decay, (1 + n) / (10 + n)) (the rule of
    tf.train.ExponentialMovingAverage with num_updates), BN statistics included."""
    network = _dense_network()
    average = ema.WeightAverage(network, decay=0.9)
    assert len(average.averages) == len(network.weights) == 6  # with the BN moving statistics
    expected = [w.numpy().astype(np.float64) for w in network.weights]
    rng = np.random.default_rng(0)
    for step in range(1, 30):
        for weight in network.weights:
            weight.assign(rng.normal(size=weight.shape).astype(np.float32))
        average.update(step)
        decay = min(0.9, (1 + step) / (10 + step))
        expected = [decay * e + (1 - decay) * w.numpy() for e, w in zip(expected, network.weights)]
    for value, variable in zip(expected, average.averages):
        np.testing.assert_allclose(variable.numpy(), value, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="decay"):
        ema.WeightAverage(network, decay=1.0)


def test_swapped_in_evaluates_the_averages_and_restores_the_weights_exactly():
    network = _dense_network()
    average = ema.WeightAverage(network, decay=0.5)
    raw = [w.numpy() + 1.0 for w in network.weights]
    for weight, value in zip(network.weights, raw):
        weight.assign(value)
    with ema.maybe_swapped_in(average):
        for weight, variable in zip(network.weights, average.averages):
            np.testing.assert_array_equal(weight.numpy(), variable.numpy())
    for weight, value in zip(network.weights, raw):
        np.testing.assert_array_equal(weight.numpy(), value)
    with ema.maybe_swapped_in(None):  # EMA off: nothing changes
        np.testing.assert_array_equal(network.weights[0].numpy(), raw[0])


def _trainer(ema_decay):
    keras.utils.set_random_seed(0)
    network = models.build("small_cnn", 10, (28, 28, 1), embedding_dim=32)
    trainer = AdversarialTrainer(network, mode="pgd", attack=FIXED_START, ema_decay=ema_decay)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    return trainer


def test_trainer_keeps_the_ema_in_checkpoints_and_on_two_replicas(mnist5k_arrays, tmp_path):
    from tf_metric_robust.training import run

    images, labels = mnist5k_arrays
    data = tf.data.Dataset.from_tensor_slices((images[:64], labels[:64])).batch(16)
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    trainer = _trainer(0.8)
    trainer.fit(data, epochs=1, verbose=0)
    averages = [v.numpy() for v in trainer.ema.averages]
    weights = [w.numpy() for w in trainer.network.weights]
    assert any(not np.allclose(a, w) for a, w in zip(averages, weights))
    strategy = distribute.mirrored_strategy(cpus[:2])
    with strategy.scope():
        mirrored = _trainer(0.8)
    mirrored.fit(data, epochs=1, verbose=0)
    for value, variable in zip(averages, mirrored.ema.averages):
        np.testing.assert_allclose(variable.numpy(), value, rtol=1e-4, atol=1e-5)

    path = run.make_checkpoint(trainer).save(str(tmp_path / "ckpt"))
    fresh = _trainer(0.8)
    fresh.optimizer.build(fresh.network.trainable_variables)
    run.make_checkpoint(fresh).restore(path).assert_consumed()
    for value, variable in zip(averages, fresh.ema.averages):
        np.testing.assert_array_equal(variable.numpy(), value)
    bare = models.build("small_cnn", 10, (28, 28, 1), embedding_dim=32)
    assert run_folder.restore_averaged(bare, path)
    for value, weight in zip(averages, bare.weights):
        np.testing.assert_array_equal(weight.numpy(), value)
    plain = run.make_checkpoint(_trainer(0.0)).save(str(tmp_path / "plain"))
    assert not run_folder.restore_averaged(bare, plain)


def test_run_evaluates_and_exports_the_ema_weights(mnist5k_run_config):
    """training.train with --ema_decay: metrics.json says so, and the SavedModel computes the
    logits of the averaged weights in the checkpoint, not of the raw ones."""
    from tf_metric_robust import training

    attack = AttackConfig(eps=0.1, step_size=0.05, steps=1)
    config = mnist5k_run_config(
        batch_size=16,
        train_steps=4,
        examples=32,
        attack=attack,
        eval_every=4,
        checkpoint_every=4,
        eval_batch_size=32,
        ema_decay=0.5,
    )
    metrics = training.train(config)
    with open(os.path.join(config.model_dir, "metrics.json")) as f:
        assert json.load(f)["weights"] == metrics["weights"] == "ema"
    loaded, _, checkpoint = run_folder.load_network(config.model_dir)  # bin/evaluate, bin/export
    raw = run_folder.build_network(config.recipe())
    tf.train.Checkpoint(network=raw).restore(checkpoint).expect_partial()
    averaged = run_folder.build_network(config.recipe())
    assert run_folder.restore_averaged(averaged, checkpoint)
    images = tf.constant(np.random.default_rng(0).uniform(size=(4, 28, 28, 1)), tf.float32)
    served = tf.saved_model.load(
        export.latest_version(os.path.join(config.model_dir, "saved_model"))
    )
    logits = served.signatures["serving_default"](images=images)["logits"].numpy()
    np.testing.assert_allclose(logits, averaged(images)["logits"].numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(logits, raw(images)["logits"].numpy(), atol=1e-3)
    np.testing.assert_allclose(loaded(images)["logits"].numpy(), logits, rtol=1e-4, atol=1e-5)
