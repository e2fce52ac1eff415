"""Mixed precision (mixed_bfloat16 / mixed_float16) and XLA (jit_compile) in training and attacks.

The Keras mixed-precision recipe: layers compute in the low dtype, variables stay float32, logits
and losses are float32, and `compile()` wraps the optimizer in a LossScaleOptimizer for float16.
Each test restores the global float32 policy, which is process-wide state.
"""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_metric_robust import attacks, models
from tf_metric_robust.config import AttackConfig, TrainConfig, TripletConfig
from tf_metric_robust.training import AdversarialTrainer, awp

pytestmark = (
    pytest.mark.slow
)  # trains beyond a few steps or runs full attacks (make test-fast skips)

BATCH = 16
STEPS = 3
ATTACK = AttackConfig(eps=0.3, step_size=0.1, steps=2)


@pytest.fixture
def policy():
    """Sets the global dtype policy for one test and always restores float32 afterwards."""

    def set_policy(name):
        keras.mixed_precision.set_global_policy(name)

    yield set_policy
    keras.mixed_precision.set_global_policy("float32")


def _batches(mnist5k_arrays, rows):
    images, labels = mnist5k_arrays
    index = np.random.default_rng(0).permutation(len(labels))[:rows]
    return images[index], labels[index]


def _fit_tla(
    mnist5k_arrays, *, negative_pool="batch", jit_compile=False, attack=ATTACK, steps=STEPS
):
    """Builds small_cnn + TLA trainer under the current policy and fits `steps` steps."""
    keras.utils.set_random_seed(0)
    network = models.build("small_cnn", 10, (28, 28, 1))
    triplet = TripletConfig(
        negative_pool=negative_pool, positive="both", bank_size=64, pool_multiplier=1
    )
    trainer = AdversarialTrainer(network, mode="tla", attack=attack, triplet=triplet, seed=0)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=jit_compile)
    rows = BATCH * (2 if negative_pool == "extra" else 1)
    images, labels = _batches(mnist5k_arrays, rows * steps)
    history = trainer.fit(images, labels, batch_size=rows, epochs=1, shuffle=False, verbose=0)
    return trainer, history.history


def _assert_finite_run(trainer, history):
    for name in ("loss", "ce_loss", "triplet_loss", "embedding_norm"):
        value = history[name][-1]
        assert np.isfinite(value), f"{name} = {value}"
    assert history["loss"][-1] > 0
    for variable in trainer.network.trainable_variables:
        assert variable.dtype == "float32", variable.path
        assert np.all(np.isfinite(variable.numpy())), variable.path


@pytest.mark.parametrize("name,pool", [("mixed_bfloat16", "bank"), ("mixed_float16", "extra")])
def test_tla_steps_under_mixed_precision_are_finite(mnist5k_arrays, policy, name, pool):
    policy(name)
    trainer, history = _fit_tla(mnist5k_arrays, negative_pool=pool)
    _assert_finite_run(trainer, history)
    compute = name.split("_")[1]
    assert trainer.network.get_layer("conv1").compute_dtype == compute
    outputs = trainer.network(np.zeros((2, 28, 28, 1), np.float32), training=False)
    # The float32 head (models.layers.classifier_outputs) keeps softmax/CE in float32.
    assert outputs["logits"].dtype == tf.float32
    assert outputs["embedding"].dtype == tf.float32
    # Loss scaling only where it is needed: float16's narrow exponent range.
    scaled = isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (name == "mixed_float16")


@pytest.mark.parametrize(
    "name,mode,options",
    [
        ("mixed_float16", "trades", dict(awp_gamma=1e-2, ema_decay=0.9)),
        ("mixed_bfloat16", "mart", dict(awp_gamma=1e-2)),
        ("mixed_float16", "tla", dict(base="trades", ema_decay=0.9)),
    ],
)
def test_kl_modes_awp_and_ema_under_mixed_precision_are_finite(
    mnist5k_arrays, policy, name, mode, options
):
    """TRADES, MART and TLA on TRADES with AWP and the EMA: finite losses, float32 weights and
    averages, and a non-zero AWP perturbation under float16 loss scaling."""
    policy(name)
    keras.utils.set_random_seed(0)
    network = models.build("small_cnn", 10, (28, 28, 1))
    trainer = AdversarialTrainer(network, mode=mode, attack=ATTACK, seed=0, **options)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    images, labels = _batches(mnist5k_arrays, BATCH * STEPS)
    history = trainer.fit(
        images, labels, batch_size=BATCH, epochs=1, shuffle=False, verbose=0
    ).history
    for key in ("loss", "ce_loss", "robust_loss"):
        assert np.isfinite(history[key][-1]), key
    variables = list(trainer.network.trainable_variables)
    variables += trainer.ema.averages if trainer.ema is not None else []
    for variable in variables:
        assert variable.dtype == "float32" and np.all(np.isfinite(variable.numpy()))
    if trainer.awp is not None:
        batch = trainer._unpack((images[:BATCH], labels[:BATCH]), training=True)
        kernels = awp.perturbed_variables(trainer.network)
        perturbation = trainer._awp_perturbation(batch, batch.images, kernels)
        for kernel, v in zip(kernels, perturbation):
            np.testing.assert_allclose(
                np.linalg.norm(v.numpy()), 1e-2 * np.linalg.norm(kernel.numpy()), rtol=1e-3
            )


def test_tla_steps_with_jit_compile_are_finite(mnist5k_arrays):
    # PGD-1: XLA compiles the whole step, unrolled attack included; compile time grows with it.
    attack = AttackConfig(eps=0.3, step_size=0.3, steps=1)
    trainer, history = _fit_tla(mnist5k_arrays, jit_compile=True, attack=attack, steps=2)
    assert trainer.jit_compile is True  # Keras falls back to False if the model cannot be jitted
    _assert_finite_run(trainer, history)


@pytest.mark.parametrize("name", ["mixed_bfloat16", "mixed_float16"])
def test_pgd_under_mixed_precision_keeps_dtype_and_ball(mnist5k_arrays, policy, name):
    policy(name)
    keras.utils.set_random_seed(0)
    network = models.build("small_cnn", 10, (28, 28, 1))
    images, labels = _batches(mnist5k_arrays, BATCH)
    x_adv = attacks.pgd(
        lambda v: network(v, training=False)["logits"],
        tf.constant(images),
        labels,
        eps=0.3,
        step_size=0.1,
        steps=3,
        random_start=False,
    )
    assert x_adv.dtype == tf.float32
    x_adv = x_adv.numpy()
    assert np.abs(x_adv - images).max() <= 0.3 + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    # No random start: every moved pixel moved along a non-zero input-gradient sign, so most
    # pixels moving means the gradient did not underflow in the low dtype.
    assert np.mean(x_adv != images) > 0.3


def test_train_run_restores_the_global_policy(tmp_path, mnist5k_data_dir):
    """A --mixed_precision run leaves the process float32: the policy is process-wide state and
    a Python-API caller builds its next model after the run (also when the run fails)."""
    from tf_metric_robust import data, training

    one_batch = dict.fromkeys(("eval_examples", "final_eval_examples", "eval_batch_size"), BATCH)
    config = TrainConfig(
        model_dir=str(tmp_path / "run"),
        dataset="mnist5k",
        data_dir=mnist5k_data_dir,
        mode="natural",
        batch_size=BATCH,
        train_steps=2,
        eval_every=2,
        mixed_precision="mixed_bfloat16",
        export=False,
        **one_batch,
    )
    metrics = training.train(config)
    assert metrics["step"] == 2 and np.isfinite(metrics["eval/clean_accuracy"])
    assert keras.mixed_precision.global_policy().name == "float32"
    missing_data = dataclasses.replace(
        config, model_dir=str(tmp_path / "other"), dataset="mnist", data_dir=str(tmp_path / "empty")
    )
    with pytest.raises(data.DatasetNotFoundError):  # raised after the policy was set
        training.train(missing_data)
    assert keras.mixed_precision.global_policy().name == "float32"
