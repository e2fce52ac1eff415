"""APGD, Square and AutoAttack on a tiny CNN trained for one epoch on the real MNIST-5k digits."""

import importlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_metric_robust.attacks.apgd import apgd, apgd_targeted
from tf_metric_robust.attacks.apgd_loop import checkpoints, dlr_loss, dlr_targeted_loss
from tf_metric_robust.attacks.autoattack import VERSIONS, autoattack, diagnose, gradient_members
from tf_metric_robust.attacks.square import p_schedule, square

pytestmark = (
    pytest.mark.slow
)  # trains beyond a few steps or runs full attacks (make test-fast skips)

# Small budgets shared by all tests, so each compiled attack is traced once per model.
STEPS, TARGETS, QUERIES = 10, 3, 300
EPS = {"linf": 0.2, "l2": 2.5}


@pytest.fixture(scope="module")
def trained(trained_small_cnn):
    """(logits model, x [64, 28, 28, 1], y [64]): the session's small CNN, held-out digits."""
    network, x, y = trained_small_cnn
    logits_model = keras.Model(network.input, network.output["logits"])
    rows = np.random.RandomState(0).permutation(len(y))[:64]
    return logits_model, x[rows], y[rows]


@pytest.fixture(scope="module")
def model_fn(trained):
    model = trained[0]
    return lambda x: model(x, training=False)


@pytest.fixture(scope="module")
def masked_fn(trained):
    """The same model behind an input quantiser with no gradient: classic gradient masking."""
    model = trained[0]
    return lambda x: model(tf.stop_gradient(tf.round(x * 32.0) / 32.0), training=False)


def accuracy(fn, x, y):
    return float(np.mean(np.argmax(fn(tf.constant(x)), -1) == y))


def assert_in_threat_model(x_adv, x, eps, norm):
    x_adv = np.asarray(x_adv)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    delta = (x_adv.astype(np.float64) - x).reshape(len(x), -1)
    size = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert size.max() <= eps + 1e-5


def test_checkpoints_and_schedules():
    # Intervals 22, 19, 16, 13, 10, 7, 6, 6 (paper: p_{j+1} = p_j + max(p_j - p_{j-1} - .03, .06)).
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]
    assert checkpoints(1) == [1]
    assert p_schedule(0, 10000, 0.8) == 0.8 and p_schedule(11, 10000, 0.8) == 0.4
    assert p_schedule(9000, 10000, 0.8) == pytest.approx(0.8 / 512)
    assert p_schedule(100, 1000, 0.8) == 0.8 / 16  # rescaled: 1000 of 10000 -> 4 halvings


def test_dlr_losses_match_numpy():
    z = np.random.RandomState(0).normal(size=(8, 10)).astype(np.float32)
    y = np.arange(8) % 10
    t = (y + 3) % 10
    s = -np.sort(-z, axis=1)
    other = np.where(np.argmax(z, 1) == y, s[:, 1], s[:, 0])
    zy = z[np.arange(8), y]
    np.testing.assert_allclose(
        dlr_loss(z, tf.constant(y)), -(zy - other) / (s[:, 0] - s[:, 2] + 1e-12), rtol=1e-5
    )
    np.testing.assert_allclose(
        dlr_targeted_loss(z, tf.constant(y), tf.constant(t)),
        -(zy - z[np.arange(8), t]) / (s[:, 0] - (s[:, 2] + s[:, 3]) / 2 + 1e-12),
        rtol=1e-5,
    )


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("variant", ["ce", "dlr", "targeted"])
def test_apgd_stays_in_threat_model_and_fools(model_fn, trained, norm, variant):
    _, x, y = trained
    if variant == "targeted":
        x_adv = apgd_targeted(
            model_fn,
            x,
            y,
            eps=EPS[norm],
            steps=STEPS,
            norm=norm,
            num_target_classes=TARGETS,
            seed=1,
        )
    else:
        x_adv = apgd(model_fn, x, y, eps=EPS[norm], steps=STEPS, norm=norm, loss=variant, seed=1)
    assert_in_threat_model(x_adv, x, EPS[norm], norm)
    assert accuracy(model_fn, x_adv, y) < accuracy(model_fn, x, y) - 0.3


def test_apgd_targeted_caps_targets_at_other_classes(model_fn, trained):
    _, x, y = trained
    x_adv = apgd_targeted(model_fn, x, y, eps=0.1, steps=STEPS, num_target_classes=50)
    assert_in_threat_model(x_adv, x, 0.1, "linf")


def test_apgd_is_seeded(model_fn, trained):
    _, x, y = trained
    first, second = (apgd(model_fn, x, y, eps=0.1, steps=STEPS, seed=7) for _ in range(2))
    np.testing.assert_array_equal(first, second)


def test_apgd_at_least_as_strong_as_pgd(model_fn, trained):
    _, x, y = trained
    eps = 0.05  # small enough that neither attack fools everything
    try:
        from tf_metric_robust.attacks import pgd
    except ImportError:  # written in parallel: fall back to a plain PGD loop
        pgd = None
    if pgd is not None:
        x_pgd = pgd(
            model_fn, x, y, eps=eps, step_size=eps / 4, steps=STEPS, seed=tf.constant([1, 2])
        )
    else:
        x_pgd = tf.clip_by_value(x + tf.random.uniform(x.shape, -eps, eps, seed=1), 0.0, 1.0)
        for _ in range(STEPS):
            with tf.GradientTape() as tape:
                tape.watch(x_pgd)
                loss = tf.reduce_sum(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(y, model_fn(x_pgd))
                )
            x_pgd = x_pgd + eps / 4 * tf.sign(tape.gradient(loss, x_pgd))
            x_pgd = tf.clip_by_value(tf.clip_by_value(x_pgd, x - eps, x + eps), 0.0, 1.0)
    x_apgd = apgd(model_fn, x, y, eps=eps, steps=STEPS, seed=1)
    pgd_acc, apgd_acc = accuracy(model_fn, x_pgd, y), accuracy(model_fn, x_apgd, y)
    assert apgd_acc <= pgd_acc + 1 / len(y), (apgd_acc, pgd_acc)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_stays_in_threat_model_and_fools(model_fn, trained, norm):
    _, x, y = trained
    x_adv = square(model_fn, x, y, eps=EPS[norm], queries=QUERIES, norm=norm, seed=3)
    assert_in_threat_model(x_adv, x, EPS[norm], norm)
    assert accuracy(model_fn, x_adv, y) < accuracy(model_fn, x, y) - 0.2


def test_eps_zero_returns_inputs(model_fn, trained):
    _, x, y = trained
    for attack in (
        lambda: apgd(model_fn, x, y, eps=0.0),
        lambda: apgd_targeted(model_fn, x, y, eps=0.0, norm="l2"),
        lambda: square(model_fn, x, y, eps=0.0),
    ):
        np.testing.assert_array_equal(attack(), x)
    result = autoattack(
        model_fn, x, y, eps=0.0, steps=STEPS, queries=QUERIES, num_target_classes=TARGETS
    )
    assert result.robust_accuracy == result.clean_accuracy
    np.testing.assert_array_equal(result.x_adv, x)


def test_autoattack_reports_worst_case(model_fn, trained):
    _, x, y = trained
    kwargs = dict(eps=0.1, steps=STEPS, queries=QUERIES, num_target_classes=TARGETS, seed=0)
    # batch_size = N: later attacks get padded batches of the shape the tests above compiled.
    kwargs["batch_size"] = len(x)
    result = autoattack(model_fn, x, y, pgd_accuracy=1.0, **kwargs)
    accs = list(result.attack_accuracy.values())
    assert list(result.attack_accuracy) == ["apgd_ce", "apgd_t", "fab_t", "square"]
    assert result.clean_accuracy > 0.85 and result.robust_accuracy == accs[-1]
    assert all(a >= b for a, b in zip([result.clean_accuracy] + accs, accs))
    assert_in_threat_model(result.x_adv, x, 0.1, "linf")
    predicted = np.argmax(model_fn(tf.constant(result.x_adv)), -1)
    np.testing.assert_array_equal(predicted == y, result.fooled_by == "")
    assert any(w.startswith("apgd found much more than pgd") for w in result.warnings)
    again = autoattack(model_fn, x, y, pgd_accuracy=result.robust_accuracy, **kwargs)
    assert not any(w.startswith("apgd found much more") for w in again.warnings)
    assert set(result.as_dict()) >= {"clean_accuracy", "robust_accuracy", "attack_accuracy"}


def test_plus_runs_the_reference_list_with_its_restarts(model_fn, trained, monkeypatch):
    """'plus' (fra31/auto-attack autoattack.py:322-329): APGD-CE, APGD-DLR, FAB, Square, APGD-T,
    FAB-T in that order; 5 runs of APGD-CE, APGD-DLR and FAB, one of each target of APGD-T and
    FAB-T; each member only on what the earlier ones left robust."""
    autoattack_module = importlib.import_module("tf_metric_robust.attacks.autoattack")
    calls = []
    member_attack = autoattack_module.member_attack

    def recording(name, **settings):
        calls.append((name, settings["restarts"]))
        return member_attack(name, **settings)

    monkeypatch.setattr(autoattack_module, "member_attack", recording)
    _, x, y = trained
    result = autoattack(
        model_fn,
        x[:32],
        y[:32],
        eps=0.1,
        version="plus",
        steps=STEPS,
        queries=QUERIES,
        num_target_classes=TARGETS,
        seed=0,
        batch_size=32,
    )
    order = ["apgd_ce", "apgd_dlr", "fab", "square", "apgd_t", "fab_t"]
    assert list(result.attack_accuracy) == order
    assert calls == [(name, 5) for name in order]  # restarts: used by apgd_ce, apgd_dlr, fab
    accs = [result.clean_accuracy] + list(result.attack_accuracy.values())
    assert all(a >= b for a, b in zip(accs, accs[1:]))
    predicted = np.argmax(model_fn(tf.constant(result.x_adv)), -1)
    np.testing.assert_array_equal(predicted == y[:32], result.fooled_by == "")
    assert_in_threat_model(result.x_adv, x[:32], 0.1, "linf")


def test_in_plus_the_apgd_check_ignores_what_square_found():
    """'plus' runs APGD-T and FAB-T after Square: their cumulative accuracy includes Square's
    finds, so the APGD-vs-PGD gap is read before Square (gradient_members); Square's own gain
    still gets its warning."""
    names = VERSIONS["plus"]
    assert gradient_members(names) == ["apgd_ce", "apgd_dlr", "fab"]
    assert gradient_members(VERSIONS["standard"]) == ["apgd_ce", "apgd_t", "fab_t"]
    after = dict(zip(names, (0.78, 0.78, 0.78, 0.70, 0.70, 0.70)))
    warnings = diagnose(names, 0.97, after, 0.80, 0.05, 0.002)
    assert [w.split(":")[0] for w in warnings] == ["square beat the gradient attacks"]
    after["fab"] = 0.74  # now the gradient attacks alone are 6 points below PGD
    warnings = diagnose(names, 0.97, after, 0.80, 0.05, 0.002)
    assert any(w.startswith("apgd found much more than pgd") for w in warnings)


def test_square_exposes_gradient_masking(masked_fn, trained):
    _, x, y = trained
    result = autoattack(
        masked_fn,
        x,
        y,
        eps=0.15,
        steps=STEPS,
        # Twice the module's budget: with 300 queries Square ends at 0.64, within a few examples
        # of the 0.3 gap on either kernel path (oneDNN on or off); 600 clear it.
        queries=2 * QUERIES,
        num_target_classes=TARGETS,
        seed=0,
        batch_size=32,
    )
    after_gradient = result.attack_accuracy["apgd_t"]
    assert after_gradient > 0.6  # no gradient: APGD only has its random start
    assert result.attack_accuracy["square"] < after_gradient - 0.3
    assert any(w.startswith("square beat the gradient attacks") for w in result.warnings)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda f, x, y: apgd(f, x, y, eps=0.1, norm="l1"), "norm"),
        (lambda f, x, y: apgd(f, x, y, eps=0.1, loss="cw"), "loss"),
        (lambda f, x, y: apgd(f, x, y, eps=-0.1), "eps"),
        (lambda f, x, y: apgd(f, x, y, eps=0.1, steps=0), "steps"),
        (lambda f, x, y: apgd(f, x, y, eps=0.1, restarts=1.5), "restarts"),
        (lambda f, x, y: apgd(f, x, y, eps=0.1, rho=1.5), "rho"),
        (lambda f, x, y: apgd(f, x, y, eps=0.1, clip_min=1.0, clip_max=0.0), "clip_min"),
        (lambda f, x, y: apgd(f, x, y, eps=0.1, seed=[1, 2, 3]), "seed"),
        (lambda f, x, y: apgd_targeted(f, x, y, eps=0.1, num_target_classes=0), "num_target"),
        (lambda f, x, y: square(f, x, y, eps=0.1, queries=0), "queries"),
        (lambda f, x, y: square(f, x, y, eps=0.1, p_init=0.0), "p_init"),
        (lambda f, x, y: square(f, x.reshape(len(x), -1), y, eps=0.1), "images"),
        (lambda f, x, y: autoattack(f, x, y, eps=0.1, version="custom"), "version"),
        (lambda f, x, y: apgd(f, x, y, eps=0.1, eot_iter=0), "eot_iter"),
        (lambda f, x, y: autoattack(f, x, y, eps=0.1, attacks=("fab", "fab")), "attacks"),
        (lambda f, x, y: autoattack(f, x, y, eps=0.1, attacks=("fab_u",)), "attacks"),
        (lambda f, x, y: autoattack(f, x, y[:3], eps=0.1), "labels"),
    ],
)
def test_bad_arguments_raise(model_fn, trained, call, message):
    _, x, y = trained
    with pytest.raises(ValueError, match=message):
        call(model_fn, x[:4], y[:4])


def _noisy_linear(sigma, dims=50):
    """A randomised model, class 1 vs 0 (class 2 never wins): logit margin (w + sigma * n) . (x - 0.5) + 3, fresh Gaussian n
    per call; its expected margin is w . (x - 0.5) + 3 (w = +-1), which an L-inf eps of 0.1 can
    push below 0 only if >= 80% of the perturbation signs are right."""
    w = tf.constant(np.where(np.arange(dims) % 2, 1.0, -1.0), tf.float32)

    def logits(x):
        flat = tf.reshape(x, [tf.shape(x)[0], dims]) - 0.5
        noise = sigma * tf.random.normal(tf.shape(flat))
        margin = tf.reduce_sum((w + noise) * flat, 1) + 3.0
        return tf.stack([tf.zeros_like(margin), margin, tf.fill(tf.shape(margin), -10.0)], 1)

    return logits


def test_eot_averages_the_gradients_of_a_randomised_model():
    """AutoAttack 'rand' (fra31/auto-attack autoattack.py:334-337): APGD with 20 model calls
    per gradient finds what one call per gradient misses; on a deterministic model EOT changes
    nothing."""
    keras.utils.set_random_seed(0)
    x = np.full((100, 5, 10, 1), 0.5, np.float32)
    y = np.ones(100, np.int64)
    expected = _noisy_linear(0.0)
    robust = {}
    for eot_iter in (1, 20):
        adv = apgd(_noisy_linear(3.0), x, y, eps=0.1, steps=20, eot_iter=eot_iter, seed=0)
        robust[eot_iter] = float(np.mean(np.argmax(expected(adv), 1) == 1))
    assert robust[20] < robust[1] - 0.3, robust
    same = [apgd(expected, x[:10], y[:10], eps=0.1, steps=5, eot_iter=k, seed=1) for k in (1, 4)]
    np.testing.assert_array_equal(same[0], same[1])
    result = autoattack(_noisy_linear(3.0), x[:20], y[:20], eps=0.1, version="rand", steps=5)
    assert tuple(result.attack_accuracy) == ("apgd_ce", "apgd_dlr")
