"""TRADES' inner maximisation on the shared PGD loop: loss 'kl' and the Gaussian start."""

import numpy as np
import pytest
import tensorflow as tf

from tf_metric_robust import attacks
from tf_metric_robust.attacks import objectives


@pytest.fixture(scope="module")
def trained(trained_small_cnn):
    network, x, y = trained_small_cnn
    model_fn = lambda z: network(z, training=False)["logits"]  # noqa: E731
    return model_fn, tf.constant(x[:32]), tf.constant(y[:32])


def _kl(model_fn, x, x_adv):
    clean = model_fn(x)
    return tf.reduce_sum(
        tf.nn.softmax(clean) * (tf.nn.log_softmax(clean) - tf.nn.log_softmax(model_fn(x_adv))),
        axis=-1,
    )


def _reference_trades_attack(model_fn, x, seed, eps, step_size, steps):
    """trades.py:31-41 transcribed: x + 0.001 N(0, 1), sign steps on the summed KL, min/max,
    clamp."""
    x_adv = objectives.gaussian_start(x, 0.001, tf.random.experimental.stateless_fold_in(seed, 0))
    for _ in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            loss = tf.reduce_sum(_kl(model_fn, x, x_adv))
        x_adv = x_adv + step_size * tf.sign(tape.gradient(loss, x_adv))
        x_adv = tf.minimum(tf.maximum(x_adv, x - eps), x + eps)
        x_adv = tf.clip_by_value(x_adv, 0.0, 1.0)
    return x_adv


def test_kl_pgd_is_the_trades_inner_loop(trained):
    model_fn, x, _ = trained
    seed = tf.constant([3, 4], tf.int64)
    kwargs = dict(eps=0.3, step_size=0.01, steps=5)
    ours = attacks.pgd(
        model_fn,
        x,
        model_fn(x),
        loss="kl",
        seed=seed,
        random_start=objectives.TRADES_START_STD,
        **kwargs,
    )
    expected = _reference_trades_attack(model_fn, x, seed, **kwargs)
    np.testing.assert_allclose(ours.numpy(), expected.numpy(), atol=1e-6)
    start_kl = _kl(model_fn, x, objectives.gaussian_start(x, 0.001, seed))
    assert float(tf.reduce_mean(_kl(model_fn, x, ours))) > 10 * float(tf.reduce_mean(start_kl))
    assert np.max(np.abs(ours.numpy() - x.numpy())) <= 0.3 + 1e-6
    assert 0.0 <= np.min(ours.numpy()) and np.max(ours.numpy()) <= 1.0


def test_kl_pgd_eps_zero_and_bad_arguments(trained):
    model_fn, x, y = trained
    clean = model_fn(x)
    x_adv = attacks.pgd(
        model_fn, x, clean, loss="kl", eps=0.0, step_size=0.01, steps=2, random_start=0.001
    )
    np.testing.assert_array_equal(x_adv.numpy(), x.numpy())
    with pytest.raises(ValueError, match="restarts"):
        attacks.pgd(model_fn, x, clean, loss="kl", eps=0.3, step_size=0.01, steps=1, restarts=2)
    with pytest.raises(ValueError, match="clean logits"):
        attacks.pgd(model_fn, x, y, loss="kl", eps=0.3, step_size=0.01, steps=1)
    with pytest.raises(ValueError, match="random_start"):
        attacks.pgd(model_fn, x, y, eps=0.3, step_size=0.01, steps=1, random_start=-0.5)


def test_gaussian_start_ce_pgd_matches_mart_inner_loop(trained):
    """MART's attack (mart.py:20-29): PGD-CE from x + 0.001 N(0, 1)."""
    model_fn, x, y = trained
    seed = tf.constant([5, 6], tf.int64)
    ours = attacks.pgd(
        model_fn, x, y, eps=0.3, step_size=0.01, steps=3, seed=seed, random_start=0.001
    )
    x_adv = objectives.gaussian_start(x, 0.001, tf.random.experimental.stateless_fold_in(seed, 0))
    for _ in range(3):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, model_fn(x_adv)))
        x_adv = tf.clip_by_value(
            x_adv + 0.01 * tf.sign(tape.gradient(loss, x_adv)), x - 0.3, x + 0.3
        )
        x_adv = tf.clip_by_value(x_adv, 0.0, 1.0)
    np.testing.assert_allclose(ours.numpy(), x_adv.numpy(), atol=1e-6)
