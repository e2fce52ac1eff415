"""Fast adversarial training: FGSM-RS, N-FGSM and the overfitting guard.

FGSM-RS: Wong et al. 2020, locuslab/fast_adversarial CIFAR10/train_fgsm.py:107-118.
N-FGSM: de Jorge et al. 2022, pdejorge/N-FGSM train.py:218-233.
"""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_metric_robust import data, distribute, models
from tf_metric_robust.attacks import fast as fast_attacks
from tf_metric_robust.config import AttackConfig, UserError
from tf_metric_robust.config import training as training_config
from tf_metric_robust.training import AdversarialTrainer, overfit_guard

pytestmark = (
    pytest.mark.slow
)  # trains beyond a few steps or runs full attacks (make test-fast skips)

EPS = 8 / 255


class Linear:
    """logits = flatten(x) @ w + b: its input gradient has a closed form for the NumPy check."""

    def __init__(self, shape, classes=10, seed=0):
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=(int(np.prod(shape)), classes)).astype(np.float32)
        self.b = rng.normal(size=classes).astype(np.float32)

    def __call__(self, x):
        return tf.reshape(x, [tf.shape(x)[0], -1]) @ self.w + self.b

    def input_gradient(self, x, y):
        """d CE / d x in NumPy: (softmax(z) - onehot(y)) w^T."""
        z = x.reshape(len(x), -1) @ self.w + self.b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[np.arange(len(y)), y] -= 1.0
        return (p @ self.w.T).reshape(x.shape)


def _batch(n=64, shape=(4, 4, 3), seed=1):
    rng = np.random.default_rng(seed)
    # Pixels near 0 and 1 too, so the [0, 1] clip matters.
    x = np.clip(rng.uniform(-0.1, 1.1, size=(n, *shape)), 0, 1).astype(np.float32)
    return x, rng.integers(0, 10, n)


def _start_of(attack, x, y, seed, **kwargs):
    """The attack's random start: its step is zero on a model whose logits ignore the input."""

    def flat(images):
        return tf.zeros([tf.shape(images)[0], 10]) + 0.0 * tf.reduce_sum(images)

    return attack(flat, x, y, seed=seed, **kwargs).numpy()


def test_fgsm_rs_equals_numpy_on_a_linear_model():
    x, y = _batch()
    model, seed = Linear(x.shape[1:]), tf.constant([3, 4], tf.int64)
    start = _start_of(fast_attacks.fgsm_rs, x, y, seed, eps=EPS)
    # The start: uniform in the eps-ball, clipped to [0, 1] (train_fgsm.py:107-110).
    assert np.all(np.abs(start - x) <= EPS + 1e-7) and start.min() >= 0 and start.max() <= 1
    assert np.abs(start - x).max() > 0.9 * EPS  # it fills the ball
    step = 1.25 * EPS * np.sign(model.input_gradient(start, y))
    expected = np.clip(np.clip(start + step, x - EPS, x + EPS), 0, 1)  # lines 117-118
    got = fast_attacks.fgsm_rs(model, x, y, eps=EPS, seed=seed).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_n_fgsm_equals_numpy_on_a_linear_model():
    x, y = _batch(seed=2)
    model, seed = Linear(x.shape[1:], seed=1), tf.constant([5, 6], tf.int64)
    start = _start_of(fast_attacks.n_fgsm, x, y, seed, eps=EPS)
    # Noise U(-2 eps, 2 eps), clipped to [0, 1] only (train.py:218-221).
    delta = np.abs(start - x)
    assert delta.max() <= 2 * EPS + 1e-7 and delta.max() > 1.8 * EPS
    assert np.mean(delta > EPS) > 0.3  # about half the pixels lie outside the eps-ball
    expected = np.clip(start + EPS * np.sign(model.input_gradient(start, y)), 0, 1)  # 229-231
    got = fast_attacks.n_fgsm(model, x, y, eps=EPS, seed=seed).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_bounds(norm):
    """FGSM-RS stays in the eps-ball; N-FGSM within its documented 2 eps + step, leaves the
    eps-ball (no projection), and both stay in [0, 1]."""
    x, y = _batch(n=128, shape=(8, 8, 1), seed=3)
    model = Linear(x.shape[1:], seed=2)
    eps = EPS if norm == "linf" else 0.5
    size = (
        (lambda d: np.abs(d).reshape(len(d), -1).max(1))
        if norm == "linf"
        else (lambda d: np.sqrt((d.reshape(len(d), -1) ** 2).sum(1)))
    )
    rs = fast_attacks.fgsm_rs(model, x, y, eps=eps, norm=norm, seed=tf.constant([1, 1])).numpy()
    noisy = fast_attacks.n_fgsm(model, x, y, eps=eps, norm=norm, seed=tf.constant([1, 2])).numpy()
    for adv in (rs, noisy):
        assert adv.min() >= 0 and adv.max() <= 1 and adv.dtype == np.float32
    assert size(rs - x).max() <= eps * (1 + 1e-5)
    assert size(noisy - x).max() <= (2 * eps + eps) * (1 + 1e-5)
    assert size(noisy - x).max() > 1.05 * eps


def test_attack_config_selects_the_fast_attacks():
    fast = AttackConfig(eps=EPS, step_size=10 / 255, steps=1, method="fgsm_rs")
    assert fast.kwargs() == AttackConfig(eps=EPS, step_size=10 / 255, steps=1).kwargs()
    noisy = AttackConfig(eps=EPS, step_size=EPS, steps=1, method="n_fgsm").kwargs()
    assert noisy["start_scale"] == fast_attacks.N_FGSM_NOISE == training_config.N_FGSM_NOISE
    assert noisy["project_to_ball"] is False
    with pytest.raises(UserError, match="--steps=1"):
        AttackConfig(eps=EPS, step_size=EPS, steps=7, method="n_fgsm")
    with pytest.raises(UserError, match="train_attack"):
        AttackConfig(eps=EPS, step_size=EPS, steps=1, method="fgsm")


def _digits(n=400):
    images, labels = data.read_mnist5k()
    return images[:n].astype(np.float32) / 255.0, labels[:n]


def _trainer(mode, method, step_size):
    keras.utils.set_random_seed(0)
    network = models.build("small_cnn", 10, (28, 28, 1), embedding_dim=32)
    attack = AttackConfig(eps=0.1, step_size=step_size, steps=1, method=method)
    trainer = AdversarialTrainer(
        network,
        mode=mode,
        attack=attack,
        eval_attack=AttackConfig(eps=0.1, step_size=0.025, steps=4),
    )
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    return trainer


@pytest.mark.parametrize("mode,method,step", [("pgd", "fgsm_rs", 0.125), ("tla", "n_fgsm", 0.1)])
def test_fast_attacks_train_pgd_and_tla(mode, method, step):
    """Each fast attack trains its mode on real digits: the loss falls over 24 steps."""
    images, labels = _digits()
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).repeat().batch(50)
    trainer = _trainer(mode, method, step)
    history = trainer.fit(dataset, steps_per_epoch=8, epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < 0.8 * history[0]


@pytest.mark.parametrize("mode", ["trades", "mart"])
def test_fast_attacks_keep_their_own_start_in_the_kl_modes(mode):
    """TRADES/MART's PGD starts at x + 0.001 N(0, 1); N-FGSM keeps its 2 eps noise there, so its
    one step of eps reaches well beyond eps (from the Gaussian start it could not)."""
    images, labels = _digits(64)
    trainer = _trainer(mode, "n_fgsm", 0.1)
    trainer.optimizer.build(trainer.network.trainable_variables)
    adversarial = trainer._training_attack(tf.constant(images), tf.constant(labels)).numpy()
    distance = np.abs(adversarial - images).reshape(len(images), -1).max(axis=1)
    assert distance.max() <= 0.3 + 1e-6 and np.median(distance) > 0.15


# ----------------------------------------------------------------------------- overfitting guard
def test_collapse_detector_on_a_synthetic_run():
    """Rising PGD accuracy is good; a fall of > 0.2 with FGSM accuracy climbing is overfitting;
    a fall with FGSM falling too is divergence (not flagged, not good)."""
    detector = overfit_guard.CollapseDetector(drop=0.2)
    sequence = [  # (pgd, fgsm) per probe
        (0.20, 0.30),
        (0.35, 0.45),
        (0.40, 0.50),
        (0.30, 0.55),  # a dip within 0.2: still good
        (0.05, 0.85),  # catastrophic overfitting: PGD -0.35 from best, FGSM up
        (0.38, 0.50),  # after a restore
        (0.10, 0.20),  # PGD and FGSM both fall: divergence, not overfitting
    ]
    checks = [detector.update(i, pgd, fgsm) for i, (pgd, fgsm) in enumerate(sequence)]
    assert [c.good for c in checks] == [True, True, True, True, False, True, False]
    assert [c.overfit for c in checks] == [False] * 4 + [True, False, False]
    assert checks[4].best_pgd_accuracy == 0.40
    with pytest.raises(ValueError):
        overfit_guard.CollapseDetector(drop=0)


def test_guard_replays_its_record_on_resume(tmp_path):
    """A resumed run continues with the step size and best accuracy the record holds."""

    class Stub:
        attack = AttackConfig(eps=0.3, step_size=0.375, steps=1, method="fgsm_rs")
        retraced = 0

        def make_train_function(self, force=False):
            self.retraced += force

    lines = [
        dict(step=4, pgd_accuracy=0.5, fgsm_accuracy=0.5, step_size=0.375),
        dict(step=8, pgd_accuracy=0.1, fgsm_accuracy=0.9, step_size=0.3),
    ]
    (tmp_path / overfit_guard.RECORD).write_text("".join(json.dumps(x) + "\n" for x in lines))
    trainer = Stub()
    guard = overfit_guard.OverfitGuard(
        trainer, np.zeros((2, 4, 4, 1)), np.zeros(2), check_every=4, record_dir=str(tmp_path)
    )
    assert trainer.attack.step_size == 0.3 and trainer.retraced == 1
    assert guard.detector.best_pgd == 0.5


def test_guard_restores_the_last_good_weights_end_to_end(monkeypatch, mnist5k_run_config):
    """Through training.train on mnist5k: the probe's accuracies are scripted (a collapse at
    the third probe); restoring the weights of the second probe, shrinking the step, retracing
    the step and training on are real."""
    from tf_metric_robust import training
    from tf_metric_robust.config.training import OverfitConfig

    script = iter([(0.30, 0.40), (0.45, 0.50), (0.05, 0.90), (0.40, 0.50)])
    snapshots = {}
    real_check = overfit_guard.OverfitGuard.check

    def scripted_probe(logits_fn, images, labels, **kwargs):
        return next(script)

    def recording_check(self, step):
        before = [v.numpy().copy() for v in self.trainer.network.weights]
        verdict = real_check(self, step)
        snapshots[step] = (before, [v.numpy().copy() for v in self.trainer.network.weights])
        return verdict

    monkeypatch.setattr(overfit_guard, "probe_accuracies", scripted_probe)
    monkeypatch.setattr(overfit_guard.OverfitGuard, "check", recording_check)
    config = mnist5k_run_config(
        batch_size=20,
        train_steps=16,
        examples=20,
        eval_every=16,
        attack=AttackConfig(eps=0.3, step_size=0.375, steps=1, method="fgsm_rs"),
        eval_attack=AttackConfig(eps=0.3, step_size=0.1, steps=2),
        export=False,
        model_kwargs={"embedding_dim": 16},
        overfit=OverfitConfig(check_every=4, action="restore"),
    )
    training.train(config)
    assert sorted(snapshots) == [4, 8, 12, 16]
    # At step 12 the weights went back to those of step 8 (the last good probe).
    for restored, good in zip(snapshots[12][1], snapshots[8][1]):
        np.testing.assert_array_equal(restored, good)
    assert any(not np.array_equal(a, b) for a, b in zip(snapshots[12][0], snapshots[8][1]))
    with open(os.path.join(config.model_dir, overfit_guard.RECORD)) as f:
        record = [json.loads(line) for line in f]
    assert [line["overfit"] for line in record] == [False, False, True, False]
    assert record[2]["restores"] == 1
    assert record[2]["step_size"] == pytest.approx(0.375 * overfit_guard.STEP_FACTOR)
    # Training went on after the restore with the smaller step (a retraced train step).
    assert record[3]["step"] == 16
    assert os.path.exists(os.path.join(config.model_dir, "metrics.json"))
    assert dataclasses.asdict(config.attack)["step_size"] == 0.375  # the config is untouched


def test_guard_restores_under_a_two_replica_strategy(monkeypatch):
    """MirroredStrategy (2 logical CPUs, conftest): the restore reaches every replica's copy."""
    strategy = distribute.mirrored_strategy(["/cpu:0", "/cpu:1"])
    script = iter([(0.3, 0.4), (0.5, 0.5), (0.05, 0.9), (0.4, 0.5)])
    monkeypatch.setattr(overfit_guard, "probe_accuracies", lambda *a, **k: next(script))
    with strategy.scope():
        trainer = _trainer("pgd", "fgsm_rs", 0.125)
    images, labels = _digits(40)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).repeat().batch(20)
    guard = overfit_guard.OverfitGuard(
        trainer, images[:8], labels[:8], check_every=2, action="restore"
    )
    weights = {}
    real_check = guard.check

    def recording_check(step):
        verdict = real_check(step)
        weights[step] = [v.value.values for v in trainer.network.weights]  # per replica
        weights[step] = [[r.numpy().copy() for r in replicas] for replicas in weights[step]]
        return verdict

    guard.check = recording_check
    trainer.fit(dataset, steps_per_epoch=8, epochs=1, callbacks=[guard], verbose=0)
    assert [c.overfit for c in guard.checks] == [False, False, True, False]
    for restored, good in zip(weights[6], weights[4]):
        for replica in restored:  # every replica holds the weights of the last good probe
            np.testing.assert_array_equal(replica, good[0])
