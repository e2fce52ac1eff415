"""The schedules of a run (training/optimizer.py, training/ema.py): the one-cycle learning rate
and momentum against PyTorch's OneCycleLR, Nesterov reaching Keras' SGD, the EMA's warm-up."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_metric_robust.config import OptimizerConfig, TrainConfig, UserError
from tf_metric_robust.training import ema
from tf_metric_robust.training.optimizer import CycledMomentumSGD, OneCycle, make_optimizer


def _torch_one_cycle(step_num, total_steps, max_lr, pct_start=0.025):
    """OneCycleLR.get_lr and its momentum (torch/optim/lr_scheduler.py), two phases, 'cos',
    defaults div_factor 25, final_div_factor 1e4, momentum 0.85..0.95, re-stated in Python."""
    initial_lr = max_lr / 25.0
    group = dict(
        initial_lr=initial_lr,
        max_lr=max_lr,
        min_lr=initial_lr / 1e4,
        max_momentum=0.95,
        base_momentum=0.85,
    )
    phases = [
        dict(end_step=float(pct_start * total_steps) - 1, start_lr="initial_lr", end_lr="max_lr",
             start_momentum="max_momentum", end_momentum="base_momentum"),
        dict(end_step=total_steps - 1, start_lr="max_lr", end_lr="min_lr",
             start_momentum="base_momentum", end_momentum="max_momentum"),
    ]  # fmt: skip

    def anneal(start, end, pct):
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    start_step = 0.0
    for i, phase in enumerate(phases):
        end_step = phase["end_step"]
        if step_num <= end_step or i == len(phases) - 1:
            pct = (step_num - start_step) / (end_step - start_step)
            return (
                anneal(group[phase["start_lr"]], group[phase["end_lr"]], pct),
                anneal(group[phase["start_momentum"]], group[phase["end_momentum"]], pct),
            )
        start_step = phase["end_step"]


# DM-Improves-AT's CIFAR-10 run: lr 0.2, 400 epochs of ceil(50000 / 512) = 98 steps, the
# schedule stepped once per epoch (core/utils/train.py:92-94, watrain.py:136-137).
EPOCHS, EPOCH_STEPS, MAX_LR = 400, 98, 0.2


def test_one_cycle_per_epoch_equals_pytorch_onecycle_and_the_closed_form():
    schedule = OneCycle(MAX_LR, EPOCHS * EPOCH_STEPS, 0.025, update_every=EPOCH_STEPS)
    for epoch in (0, 1, 5, 9, 10, 100, 204, 300, 399):
        torch_lr, _ = _torch_one_cycle(epoch, EPOCHS, MAX_LR)
        for step in (epoch * EPOCH_STEPS, epoch * EPOCH_STEPS + EPOCH_STEPS - 1):
            np.testing.assert_allclose(float(schedule(step)), torch_lr, rtol=1e-5)
    # The closed form at chosen epochs: warm-up end W = 0.025 * 400 - 1 = 9.
    np.testing.assert_allclose(float(schedule(0)), 0.2 / 25, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(9 * EPOCH_STEPS)), 0.2, rtol=1e-6)
    rising = 0.2 + (0.008 - 0.2) / 2 * (1 + math.cos(math.pi * 5 / 9))
    np.testing.assert_allclose(float(schedule(5 * EPOCH_STEPS + 3)), rising, rtol=1e-5)
    middle = (0.2 + 0.2 / 25 / 1e4) / 2  # epoch 204: (204 - 9) / (399 - 9) = 1/2
    np.testing.assert_allclose(float(schedule(204 * EPOCH_STEPS)), middle, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(399 * EPOCH_STEPS)), 8e-7, rtol=1e-4)
    # Past the end (a resumed run with more steps) it stays at the last value.
    np.testing.assert_allclose(float(schedule(10**6)), 8e-7, rtol=1e-4)


def test_one_cycle_per_step():
    schedule = OneCycle(0.1, 1000, 0.1)  # W = 99 steps
    for step in (0, 1, 50, 99, 100, 101, 550, 999):
        np.testing.assert_allclose(
            float(schedule(tf.constant(step, tf.int64))),
            _torch_one_cycle(step, 1000, 0.1, 0.1)[0],
            rtol=1e-5,
        )


def _minimise_once(optimizer):
    """w after one update from w = 1 on the loss w^2 / 2 (gradient w)."""
    w = keras.Variable(np.array([1.0], np.float32))
    optimizer.build([w])
    optimizer.apply([tf.convert_to_tensor(w)], [w])
    return [float(w.numpy()[0])]


def test_nesterov_reaches_the_optimizer():
    plain = make_optimizer(OptimizerConfig(learning_rate=0.1, momentum=0.9), 10)
    nesterov = make_optimizer(OptimizerConfig(learning_rate=0.1, momentum=0.9, nesterov=True), 10)
    assert not plain.nesterov and nesterov.nesterov
    # v = -lr g = -0.1; plain w = 1 + v = 0.9; Nesterov w = 1 + mu v - lr g = 1 - 0.09 - 0.1.
    np.testing.assert_allclose(_minimise_once(plain), [0.9], rtol=1e-6)
    np.testing.assert_allclose(_minimise_once(nesterov), [0.81], rtol=1e-6)


def test_cycled_momentum_follows_onecycle_in_the_update():
    config = OptimizerConfig(
        learning_rate=0.1, lr_schedule="one_cycle", lr_warmup_fraction=0.5, cycle_momentum=True
    )
    optimizer = make_optimizer(config, 4)  # W = 0.5 * 4 - 1 = 1 step
    assert isinstance(optimizer, CycledMomentumSGD) and not optimizer.nesterov
    assert _torch_one_cycle(1, 4, 0.1, 0.5)[1] == pytest.approx(0.85)  # at the peak
    w = keras.Variable(np.array([1.0], np.float32))
    optimizer.build([w])
    expected_w, velocity = 1.0, 0.0
    for step in range(4):
        lr, mu = _torch_one_cycle(step, 4, 0.1, 0.5)
        np.testing.assert_allclose(float(optimizer.learning_rate), lr, rtol=1e-5)
        np.testing.assert_allclose(float(optimizer.current_momentum()), mu, rtol=1e-6)
        optimizer.apply([tf.convert_to_tensor(w)], [w])
        velocity = mu * velocity - lr * expected_w  # Keras' SGD rule with this step's momentum
        expected_w += velocity
        np.testing.assert_allclose(float(w.numpy()[0]), expected_w, rtol=1e-5)


def test_optimizer_settings_are_checked():
    with pytest.raises(UserError, match="one_cycle"):
        OptimizerConfig(lr_schedule="one_cycle", lr_boundaries=(10,), lr_values=(0.1, 0.01))
    with pytest.raises(UserError, match="lr_schedule=one_cycle"):
        OptimizerConfig(cycle_momentum=True)
    with pytest.raises(UserError, match="lr_schedule=one_cycle"):
        OptimizerConfig(lr_update_every=98)
    with pytest.raises(UserError, match="SGD"):
        OptimizerConfig(name="adam", nesterov=True)
    with pytest.raises(UserError, match="lr_warmup_fraction"):
        OptimizerConfig(lr_schedule="one_cycle", lr_warmup_fraction=1.5)


# ------------------------------------------------------------------------------- weight EMA


def _bn_network():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.BatchNormalization()(keras.layers.Dense(4)(inputs)))


def test_ema_warmup_decay_is_dm_improves_at_ema_update():
    """watrain.py:244-258 with warmup_steps 10, tau 0.995: 0 before step 10, then
    min(tau, (1 + delta) / (10 + delta)), delta = step - 10."""
    average = ema.WeightAverage(_bn_network(), decay=0.995, warmup_steps=10)
    expected = {1: 0.0, 9: 0.0, 10: 0.1, 11: 2 / 11, 20: 11 / 20, 2000: 0.995}
    for step, decay in expected.items():
        np.testing.assert_allclose(float(average.decay_at(step)), decay, rtol=1e-6)
    # Without warm-up: the num_updates rule, d = min(decay, (1 + n) / (10 + n)).
    plain = ema.WeightAverage(_bn_network(), decay=0.995)
    np.testing.assert_allclose(float(plain.decay_at(1)), 2 / 11, rtol=1e-6)


def test_ema_is_the_weights_during_warmup_then_averages():
    network = _bn_network()
    average = ema.WeightAverage(network, decay=0.9, warmup_steps=3)
    rng = np.random.default_rng(0)
    trainable = [w for w in network.weights if w.trainable]
    for step in (1, 2):
        for weight in network.weights:
            weight.assign(rng.normal(size=weight.shape).astype(np.float32))
        average.update(step)
        for value, weight in zip(average.averages, network.weights):
            np.testing.assert_array_equal(value.numpy(), weight.numpy())
    before = [v.numpy() for v in average.averages]
    for weight in trainable:
        weight.assign(weight + 1.0)
    average.update(3)  # d = min(0.9, 1/10) = 0.1
    kernel = network.weights.index(trainable[0])
    np.testing.assert_allclose(
        average.averages[kernel].numpy(),
        0.1 * before[kernel] + 0.9 * trainable[0].numpy(),
        rtol=1e-6,
    )


def test_ema_copies_or_averages_batch_norm_statistics():
    for mode in ("copy", "average"):
        network = _bn_network()
        average = ema.WeightAverage(network, decay=0.9, batch_norm=mode)
        statistics = [i for i, w in enumerate(network.weights) if not w.trainable]
        assert len(statistics) == 2  # BN moving mean and variance
        old = [average.averages[i].numpy() for i in statistics]
        for i in statistics:
            network.weights[i].assign(network.weights[i] + 2.0)
        average.update(100)  # d = 0.9
        for i, previous in zip(statistics, old):
            value = average.averages[i].numpy()
            if mode == "copy":
                np.testing.assert_array_equal(value, network.weights[i].numpy())
            else:
                np.testing.assert_allclose(value, previous + 0.1 * 2.0, rtol=1e-6)
    with pytest.raises(ValueError, match="batch_norm"):
        ema.WeightAverage(_bn_network(), decay=0.9, batch_norm="freeze")


def test_ema_settings_need_the_ema():
    with pytest.raises(UserError, match="--ema_decay"):
        TrainConfig(model_dir="unused", mode="natural", ema_warmup_steps=10)
    with pytest.raises(UserError, match="--ema_decay"):
        TrainConfig(model_dir="unused", mode="natural", ema_batch_norm="copy")


def test_trainer_takes_the_ema_settings_from_the_config():
    from tf_metric_robust import models
    from tf_metric_robust.training import AdversarialTrainer

    config = TrainConfig(
        model_dir="unused",
        mode="natural",
        ema_decay=0.995,
        ema_warmup_steps=980,
        ema_batch_norm="copy",
    )
    network = models.build("small_cnn", 10, (28, 28, 1), embedding_dim=8)
    trainer = AdversarialTrainer.from_config(network, config)
    assert (trainer.ema.decay, trainer.ema.warmup_steps, trainer.ema.batch_norm) == (
        0.995,
        980,
        "copy",
    )


def test_cycled_momentum_sgd_on_two_replicas_equals_one_device():
    """The cycled momentum read inside Keras' distributed update: 2 replicas (logical CPUs) each
    with half the batch give the one-device update of the whole batch."""
    from tf_metric_robust import distribute

    config = OptimizerConfig(
        learning_rate=0.1, lr_schedule="one_cycle", lr_warmup_fraction=0.5, cycle_momentum=True
    )
    x = np.arange(8, dtype=np.float32).reshape(4, 2) / 8.0

    def train(strategy):
        with strategy.scope():
            w = keras.Variable(np.array([[1.0], [-1.0]], np.float32))
            optimizer = make_optimizer(config, 4)
            optimizer.build([w])

        @tf.function
        def step(inputs):
            def replica_step(batch):
                with tf.GradientTape() as tape:
                    loss = tf.nn.compute_average_loss(
                        tf.square(batch @ w)[:, 0], global_batch_size=4
                    )
                optimizer.apply([tape.gradient(loss, w)], [w])

            strategy.run(replica_step, args=(inputs,))

        data = strategy.experimental_distribute_dataset(
            tf.data.Dataset.from_tensors(x).unbatch().batch(4)
        )
        batch = next(iter(data))
        for _ in range(3):
            step(batch)
        return np.asarray(w.numpy())

    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    single = train(tf.distribute.get_strategy())
    mirrored = train(distribute.mirrored_strategy(cpus[:2]))
    np.testing.assert_allclose(mirrored, single, rtol=1e-5)
    assert not np.allclose(single, [[1.0], [-1.0]])
