"""CleverHans-style attack matrix for FGSM, PGD and MI-FGSM on a small CNN trained on MNIST-5k."""

import gc
import weakref

import numpy as np
import pytest
import tensorflow as tf

from tf_metric_robust import attacks
from tf_metric_robust.attacks import fab, gradient_loop, objectives

# Per-dtype slack for the ball check: x +- eps is itself rounded to the image dtype.
_TOL = {tf.float32: 1e-6, tf.float16: 2e-3, tf.bfloat16: 1e-2}


@pytest.fixture(scope="module")
def trained(trained_small_cnn):
    """(model_fn, x [200,28,28,1], y [200]): the session's small CNN and its held-out digits."""
    network, x, y = trained_small_cnn
    return (lambda z: network(z, training=False)["logits"]), tf.constant(x), tf.constant(y)


def _accuracy(model_fn, x, y):
    return float(np.mean(np.argmax(model_fn(x).numpy(), axis=-1) == y.numpy()))


def _mean_ce(model_fn, x, y):
    return float(tf.reduce_mean(objectives.objective(model_fn(x), y, "ce", targeted=False)))


def _attack(name, model_fn, x, y, **kwargs):
    if name == "fgsm":
        for key in ("step_size", "steps", "restarts", "seed", "random_start"):
            kwargs.pop(key, None)
    if name == "mifgsm":
        kwargs.pop("restarts", None)
    return attacks.ATTACKS[name](model_fn, x, y, **kwargs)


def _assert_in_bounds(x_adv, x, eps, norm):
    assert x_adv.dtype == x.dtype and x_adv.shape == x.shape
    tol = _TOL[x.dtype]
    delta = x_adv.numpy().astype(np.float64) - x.numpy().astype(np.float64)
    if norm == "linf":
        size = np.max(np.abs(delta), axis=(1, 2, 3))
    else:
        size = np.sqrt(np.sum(np.square(delta), axis=(1, 2, 3)))
    assert np.all(size <= eps * (1 + tol) + tol), size.max()
    assert np.min(x_adv.numpy()) >= 0.0 and np.max(x_adv.numpy()) <= 1.0


@pytest.mark.parametrize("name", ["fgsm", "pgd", "mifgsm"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_zero_returns_input(trained, name, norm):
    model_fn, x, y = trained
    x_adv = _attack(name, model_fn, x[:16], y[:16], eps=0.0, step_size=0.1, steps=2, norm=norm)
    np.testing.assert_array_equal(x_adv.numpy(), x[:16].numpy())


@pytest.mark.parametrize(
    "name,norm,loss,targeted,restarts,dtype",
    [
        ("pgd", "linf", "ce", False, 1, tf.float32),
        ("pgd", "l2", "ce", False, 1, tf.float32),
        ("pgd", "linf", "cw", False, 1, tf.float32),
        ("pgd", "l2", "cw", True, 1, tf.float32),
        ("pgd", "linf", "ce", True, 2, tf.float32),
        ("pgd", "l2", "ce", False, 2, tf.float32),
        ("pgd", "linf", "ce", False, 1, tf.bfloat16),
        ("pgd", "l2", "cw", False, 1, tf.float16),
        ("fgsm", "linf", "ce", False, 1, tf.float32),
        ("fgsm", "l2", "cw", False, 1, tf.bfloat16),
        ("mifgsm", "linf", "ce", False, 1, tf.float32),
        ("mifgsm", "l2", "ce", True, 1, tf.float16),
    ],
)
def test_results_inside_ball_and_box(trained, name, norm, loss, targeted, restarts, dtype):
    model_fn, x, y = trained
    x, y = tf.cast(x[:32], dtype), (y[:32] + 3) % 10 if targeted else y[:32]
    eps = 0.1 if norm == "linf" else 1.0
    x_adv = _attack(
        name,
        model_fn,
        x,
        y,
        eps=eps,
        step_size=eps / 2,
        steps=3,
        norm=norm,
        loss=loss,
        targeted=targeted,
        restarts=restarts,
    )
    _assert_in_bounds(x_adv, x, eps, norm)
    assert np.any(x_adv.numpy() != x.numpy())


def test_fgsm_is_one_signed_gradient_step(trained):
    model_fn, x, y = trained
    x, y = x[:16], y[:16]
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(objectives.objective(model_fn(x), y, "ce", targeted=False))
    expected = tf.clip_by_value(x + 0.1 * tf.sign(tape.gradient(loss, x)), 0.0, 1.0)
    np.testing.assert_allclose(attacks.fgsm(model_fn, x, y, eps=0.1), expected, atol=1e-6)


def test_mifgsm_without_momentum_is_iterative_fgsm(trained):
    model_fn, x, y = trained
    kwargs = dict(eps=0.1, step_size=0.02, steps=4)
    expected = attacks.pgd(model_fn, x[:32], y[:32], random_start=False, **kwargs)
    np.testing.assert_allclose(
        attacks.mifgsm(model_fn, x[:32], y[:32], decay=0.0, **kwargs), expected, atol=1e-6
    )


def test_cw_margin_matches_numpy():
    logits = np.array([[1.0, 3.0, 2.0], [0.5, -1.0, 0.0]], np.float32)
    labels = np.array([1, 2])
    np.testing.assert_allclose(objectives.margin(logits, labels), [2.0 - 3.0, 0.5 - 0.0])


@pytest.mark.slow
def test_pgd_raises_loss_and_beats_fgsm(trained):
    model_fn, x, y = trained
    x_fgsm = attacks.fgsm(model_fn, x, y, eps=0.1)
    x_pgd = attacks.pgd(model_fn, x, y, eps=0.1, step_size=0.025, steps=10, seed=[0, 1])
    clean, fgsm_acc, pgd_acc = (_accuracy(model_fn, v, y) for v in (x, x_fgsm, x_pgd))
    assert clean > 0.85
    assert _mean_ce(model_fn, x_pgd, y) > _mean_ce(model_fn, x_fgsm, y) > _mean_ce(model_fn, x, y)
    assert pgd_acc < fgsm_acc - 0.1, (clean, fgsm_acc, pgd_acc)


@pytest.mark.parametrize("loss", ["ce", "cw"])
@pytest.mark.slow
def test_restarts_never_worse_than_one(trained, loss):
    model_fn, x, y = trained
    kwargs = dict(eps=0.1, step_size=0.02, steps=2, loss=loss, seed=tf.constant([3, 4]))
    one = attacks.pgd(model_fn, x, y, restarts=1, **kwargs)
    three = attacks.pgd(model_fn, x, y, restarts=3, **kwargs)
    logits_one, logits_three = model_fn(one), model_fn(three)
    hit_one = objectives.success(logits_one, y, targeted=False).numpy()
    hit_three = objectives.success(logits_three, y, targeted=False).numpy()
    assert np.all(hit_three >= hit_one)
    # Where success is the same, the kept run has the higher objective (restart 0 is `one`).
    value_one = objectives.objective(logits_one, y, loss, targeted=False).numpy()
    value_three = objectives.objective(logits_three, y, loss, targeted=False).numpy()
    same = hit_one == hit_three
    assert np.all(value_three[same] >= value_one[same] - 1e-4)
    assert np.mean(value_three) > np.mean(value_one)


def test_targeted_pgd_reaches_target(trained):
    model_fn, x, y = trained
    x, target = x[::2], (y[::2] + 1) % 10
    for loss in ("ce", "cw"):
        x_adv = attacks.pgd(
            model_fn, x, target, eps=0.3, step_size=0.05, steps=8, loss=loss, targeted=True
        )
        reached = np.mean(np.argmax(model_fn(x_adv), -1) == target.numpy())
        assert reached > 0.75, (loss, reached)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(eps=-0.1), "eps"),
        (dict(eps=tf.constant(-0.1)), "eps"),
        (dict(step_size=0.0), "step_size"),
        (dict(steps=0), "steps"),
        (dict(steps=2.0), "steps"),
        (dict(restarts=0), "restarts"),
        (dict(norm="l1"), "norm"),
        (dict(loss="mse"), "loss"),
        (dict(clip_min=1.0, clip_max=0.0), "clip_min"),
        (dict(seed=[1, 2, 3]), "seed"),
    ],
)
def test_bad_arguments_raise(trained, kwargs, match):
    model_fn, x, y = trained
    args = dict(eps=0.1, step_size=0.01, steps=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        attacks.pgd(model_fn, x[:4], y[:4], **args)


def test_bad_arguments_raise_in_fgsm_and_mifgsm(trained):
    model_fn, x, y = trained
    with pytest.raises(ValueError, match="norm"):
        attacks.fgsm(model_fn, x[:4], y[:4], eps=0.1, norm="l0")
    with pytest.raises(ValueError, match="decay"):
        attacks.mifgsm(model_fn, x[:4], y[:4], eps=0.1, step_size=0.01, steps=1, decay=-1.0)


@pytest.mark.slow
def test_runtime_eps_is_checked_inside_tf_function(trained):
    model_fn, x, y = trained
    attack = tf.function(
        lambda eps: attacks.pgd(model_fn, x[:4], y[:4], eps=eps, step_size=0.01, steps=1)
    )
    attack(tf.constant(0.1))
    attack(tf.constant(1.0))  # the whole box
    for eps in (-0.1, 8.0):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"eps must be in \[0, clip_max"):
            attack(tf.constant(eps))


def test_stateless_seed_is_reproducible(trained):
    model_fn, x, y = trained
    run = lambda seed, norm="linf": attacks.pgd(
        model_fn, x[:32], y[:32], eps=0.1, step_size=0.02, steps=2, norm=norm, seed=seed
    )
    np.testing.assert_array_equal(run(tf.constant([7, 8])), run(tf.constant([7, 8])))
    np.testing.assert_array_equal(run([7, 8], "l2"), run([7, 8], "l2"))
    assert np.any(run(tf.constant([7, 8])).numpy() != run(tf.constant([7, 9])).numpy())
    assert np.any(run(None).numpy() != run(None).numpy())


def test_inside_outer_tf_function_matches_eager(trained):
    model_fn, x, y = trained
    kwargs = dict(eps=0.1, step_size=0.02, steps=2, restarts=2, seed=tf.constant([5, 6]))

    @tf.function
    def outer(images, labels):
        return attacks.pgd(model_fn, images, labels, **kwargs)

    np.testing.assert_allclose(
        outer(x[:32], y[:32]), attacks.pgd(model_fn, x[:32], y[:32], **kwargs), atol=1e-6
    )


class _Counting:
    """A model wrapper counting Python calls: those happen only while tracing."""

    def __init__(self, model_fn):
        self.model_fn, self.calls = model_fn, 0

    def logits(self, x):
        self.calls += 1
        return self.model_fn(x)


def test_repeated_eager_calls_do_not_retrace(trained):
    model_fn, x, y = trained
    counting = _Counting(model_fn)
    for i, eps in enumerate([0.1, 0.2, tf.constant(0.05)]):
        attacks.pgd(counting.logits, x[:16], y[:16], eps=eps, step_size=eps / 4, steps=3)
        attacks.fgsm(counting.logits, x[:16], y[:16], eps=eps)
        if i == 0:
            traced = counting.calls
            # One trace: every step of the loop bodies calls the one separate function that
            # holds the model's pass; FGSM (one step, no random start) is a setting of the same
            # graph.
            assert traced == 1
    # Step count, random start and eps are tensors of the same graph: still no retrace.
    for steps in (1, 7, 40):
        for random_start in (True, False):
            attacks.pgd(
                counting.logits,
                x[:16],
                y[:16],
                eps=0.1,
                step_size=0.01,
                steps=steps,
                random_start=random_start,
            )
    assert counting.calls == traced
    # The cache holds model_fn owners weakly: dropping the wrapper frees it.
    owner = weakref.ref(counting)
    del counting
    gc.collect()
    assert owner() is None


def test_tensor_steps_and_start_switch_equal_the_python_settings(trained):
    """An evaluation passes steps and random_start as float32 tensors (shards.DYNAMIC_SETTINGS):
    same result as the Python settings, eagerly and as symbolic tensors inside a tf.function."""
    model_fn, x, y = trained
    x, y = x[:16], y[:16]
    seed = tf.constant([1, 2], tf.int64)

    def run(steps, random_start):
        return attacks.pgd(
            model_fn,
            x,
            y,
            eps=0.2,
            step_size=0.05,
            steps=steps,
            random_start=random_start,
            seed=seed,
        )

    traced = tf.function(run, autograph=False)
    for steps, start in ((3, True), (6, False)):
        expected = run(steps, start)
        np.testing.assert_array_equal(
            run(tf.constant(float(steps)), tf.constant(float(start))), expected
        )
        np.testing.assert_array_equal(
            traced(tf.constant(float(steps)), tf.constant(float(start))), expected
        )
    assert np.any(run(3, True).numpy() != run(3, False).numpy())
    with pytest.raises(ValueError, match="whole number"):
        run(tf.constant(2.5), True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="whole number"):
        traced(tf.constant(2.5), tf.constant(1.0))


def test_graph_loop_equals_the_unrolled_steps(trained):
    """The while_loop over unrolled blocks runs the same steps as a fully unrolled loop, bit for
    bit, for step counts below, at and above the block size, with restarts and momentum."""
    model_fn, x, y = trained
    x, y = x[:16], y[:16]
    threat = tuple(tf.constant(v) for v in (0.1, 0.0, 1.0))
    seed = tf.constant([3, 4], tf.int64)

    def run(steps, unroll, known, restarts=1, momentum=False, random_start=True):
        def graph(steps_t):
            return gradient_loop.attack_graph(
                model_fn,
                x,
                y,
                threat,
                seed,
                tf.constant(0.02),
                tf.constant(1.0),
                tf.constant(1.0),
                tf.constant(random_start),
                steps_t,
                tf.constant(restarts),
                norm="linf",
                loss="ce",
                targeted=False,
                start="uniform",
                momentum=momentum,
                keep_best=restarts > 1,
                unroll=unroll,
            )

        if known:
            return tf.function(lambda: graph(tf.constant(steps)), autograph=False)().numpy()
        return tf.function(graph, autograph=False)(tf.constant(steps)).numpy()

    for steps in (1, 3, 4, 9):
        reference = run(steps, unroll=steps, known=True)  # one unrolled Python loop
        np.testing.assert_array_equal(run(steps, gradient_loop.UNROLL, known=False), reference)
        np.testing.assert_array_equal(run(steps, 2, known=True), reference)
    np.testing.assert_array_equal(
        run(6, 6, True, restarts=2, momentum=True, random_start=False),
        run(6, gradient_loop.UNROLL, False, restarts=2, momentum=True, random_start=False),
    )
    assert np.any(run(9, 9, True) != run(8, 8, True))  # the step count is honoured


_LOOP_ATTACKS = {
    "pgd": lambda f, x, y: attacks.pgd(f, x, y, eps=0.1, step_size=0.01, steps=10),  # 2 loop blocks
    "apgd_ce": lambda f, x, y: attacks.apgd(f, x, y, eps=0.1, steps=3),
    "apgd_t": lambda f, x, y: attacks.apgd_targeted(f, x, y, eps=0.1, steps=3),
    "fab_t": lambda f, x, y: attacks.fab_targeted(f, x, y, eps=0.1, steps=3),
    "fab_untargeted": lambda f, x, y: fab.fab_untargeted(f, x, y, eps=0.1, steps=3, restarts=1),
}


@pytest.mark.parametrize("name", sorted(_LOOP_ATTACKS))
def test_loop_attacks_take_model_gradients_in_separate_functions(trained, name):
    """Inlined into a tf.while_loop body, the small CNN's MaxPoolGrad gets oneDNN's kernel in some
    processes and the 10x slower Eigen one in others (attacks/_plumbing.separate_function): every
    graph that holds one must be a function of its own, never inlined."""
    model_fn, x, y = trained
    run = tf.function(lambda images: _LOOP_ATTACKS[name](model_fn, images, y[:4]))
    graph = run.get_concrete_function(x[:4]).graph.as_graph_def()
    holders = [f for f in graph.library.function if any(n.op == "MaxPoolGrad" for n in f.node_def)]
    assert holders, "the attack took no gradient of the small CNN"
    assert all(f.attr["_noinline"].b for f in holders), [f.signature.name for f in holders]
    assert not any(n.op == "MaxPoolGrad" for n in graph.node)


def test_model_fn_contract(trained):
    model_fn, x, y = trained
    # No gradient path reads as a zero gradient: the random start is returned, inside the ball.
    frozen = lambda z: model_fn(tf.stop_gradient(z))  # noqa: E731
    _assert_in_bounds(
        attacks.pgd(frozen, x[:8], y[:8], eps=0.1, step_size=0.05, steps=1), x[:8], 0.1, "linf"
    )
    with pytest.raises(TypeError, match="logits"):
        attacks.fgsm(lambda z: {"logits": model_fn(z)}, x[:8], y[:8], eps=0.1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_model_ignoring_its_input_gets_a_zero_gradient(trained, norm):
    """Logits that do not depend on x (a constant classifier): every attack runs, no step moves."""
    _, x, y = trained
    bias = tf.Variable(tf.range(10, dtype=tf.float32))
    constant = lambda z: tf.tile(bias[tf.newaxis], [tf.shape(z)[0], 1])  # noqa: E731
    np.testing.assert_array_equal(attacks.fgsm(constant, x[:8], y[:8], eps=0.1, norm=norm), x[:8])
    np.testing.assert_array_equal(
        attacks.mifgsm(constant, x[:8], y[:8], eps=0.1, step_size=0.05, steps=2, norm=norm), x[:8]
    )
    x_adv = attacks.pgd(
        constant,
        x[:8],
        y[:8],
        eps=0.1,
        step_size=0.05,
        steps=2,
        norm=norm,
        restarts=2,
        seed=tf.constant([1, 2]),
    )
    assert np.all(np.isfinite(x_adv.numpy()))
    _assert_in_bounds(x_adv, x[:8], 0.1, norm)


# ------------------------------------------------------- images outside [clip_min, clip_max]
def _linear_model():
    """A tiny linear classifier on 28x28x1 images: the range check fires before any training."""
    kernel = tf.Variable(tf.random.stateless_normal([784, 10], seed=[1, 2]) * 0.01)
    return lambda z: tf.matmul(tf.reshape(tf.cast(z, tf.float32), [-1, 784]), kernel)


_RANGE_CALLS = {
    "fgsm": lambda f, x, y: attacks.fgsm(f, x, y, eps=0.3),
    "pgd": lambda f, x, y: attacks.pgd(f, x, y, eps=0.3, step_size=0.01, steps=2),
    "mifgsm": lambda f, x, y: attacks.mifgsm(f, x, y, eps=0.3, step_size=0.01, steps=2),
    "apgd": lambda f, x, y: attacks.apgd(f, x, y, eps=0.3, steps=2),
    "apgd_dlr": lambda f, x, y: attacks.apgd_dlr(f, x, y, eps=0.3, steps=2),
    "apgd_targeted": lambda f, x, y: attacks.apgd_targeted(
        f, x, y, eps=0.3, steps=2, num_target_classes=2
    ),
    "square": lambda f, x, y: attacks.square(f, x, y, eps=0.3, queries=2),
    "autoattack": lambda f, x, y: attacks.autoattack(f, x, y, eps=0.3, steps=2, queries=2),
}


@pytest.fixture(scope="module")
def pixels_0_255():
    """Four real digits as float 0-255 pixels: read_mnist5k()'s uint8 cast without the / 255."""
    from tf_metric_robust import data

    images, labels = data.read_mnist5k()
    return images[:4].astype(np.float32), labels[:4]


@pytest.mark.parametrize("name", sorted(_RANGE_CALLS))
def test_0_255_pixels_are_refused_by_every_attack(name, pixels_0_255):
    """The false-robustness trap: eps 0.3 on 0-255 floats attacks nothing; refuse, say why."""
    x, y = pixels_0_255
    assert x.max() > 250
    with pytest.raises(ValueError, match=r"0-255 pixels: divide by 255"):
        _RANGE_CALLS[name](_linear_model(), x, y)


def test_slightly_negative_images_are_refused_without_blaming_pixels():
    x = tf.fill([2, 28, 28, 1], -0.01)
    with pytest.raises(ValueError, match=r"outside \[clip_min, clip_max\] = \[0, 1\]") as error:
        attacks.pgd(_linear_model(), x, [0, 1], eps=0.1, step_size=0.01, steps=1)
    assert "255" not in str(error.value)
    with pytest.raises(ValueError, match="values in"):  # NaN is outside every box
        attacks.fgsm(_linear_model(), tf.fill([2, 28, 28, 1], float("nan")), [0, 1], eps=0.1)


@pytest.mark.slow
def test_images_outside_the_box_fail_inside_tf_function():
    model_fn = _linear_model()
    attack = tf.function(
        lambda images: attacks.pgd(
            model_fn, images, tf.constant([0, 1]), eps=0.3, step_size=0.1, steps=2
        )
    )
    inside = tf.random.stateless_uniform([2, 28, 28, 1], seed=[3, 4])
    x_adv = attack(inside)  # valid inputs are unaffected
    assert float(tf.reduce_max(tf.abs(x_adv - inside))) <= 0.3 + 1e-6
    with pytest.raises(tf.errors.InvalidArgumentError, match="0-255 pixels"):
        attack(inside * 255.0)
    apgd = tf.function(
        lambda images: attacks.apgd(model_fn, images, tf.constant([0, 1]), eps=0.3, steps=2)
    )
    apgd(inside)
    with pytest.raises(tf.errors.InvalidArgumentError, match="clip_min, clip_max"):
        apgd(inside * 255.0)


class _SilentDetector:
    """A detector whose confidence is 0 everywhere: enough for adaptive_detector to run."""

    def confidence(self, embedding, predictions):
        return tf.zeros(tf.shape(embedding)[:1])


def _eps_call(name):
    """(model_fn, x, y, eps) -> x_adv for every attack of the registry and autoattack, with the
    fewest steps, queries and target classes each allows."""
    steps = dict(step_size=0.01, steps=1)
    settings = {
        "fgsm": {},
        "pgd": steps,
        "mifgsm": steps,
        "apgd_ce": dict(steps=1),
        "apgd_dlr": dict(steps=1),
        "apgd_t": dict(steps=1, num_target_classes=2),
        "square": dict(queries=2),
        "fab_t": dict(steps=1, num_target_classes=2),
        "adaptive_detector": dict(steps, detector=_SilentDetector()),
        "autoattack": dict(steps=1, queries=2, num_target_classes=2),
    }[name]
    attack = attacks.autoattack if name == "autoattack" else attacks.ATTACKS[name]

    def call(model_fn, x, y, eps):
        if name == "adaptive_detector":  # it attacks (logits, embedding)
            logits_fn = model_fn
            model_fn = lambda z: (logits_fn(z), tf.reshape(z, [-1, 784]))
        result = attack(model_fn, x, y, eps=eps, **settings)
        return result.x_adv if name == "autoattack" else result

    return call


_EPS_ATTACKS = sorted(attacks.ATTACKS) + ["autoattack"]


@pytest.mark.parametrize("name", _EPS_ATTACKS)
@pytest.mark.slow
def test_every_attack_refuses_eps_outside_the_box_width(name):
    """eps 8 on [0, 1] images (8/255 meant on the 0-255 scale) and a negative eps are refused
    with the argument and its range; eps = clip_max - clip_min, the whole box, still runs."""
    x = tf.random.stateless_uniform([2, 28, 28, 1], seed=[5, 6])
    y = tf.constant([0, 1])
    call = _eps_call(name)
    for eps in (8.0, -0.1):
        with pytest.raises(
            ValueError, match=r"eps must be in \[0, clip_max - clip_min\] = \[0, 1\]"
        ):
            call(_linear_model(), x, y, eps)
    x_adv = np.asarray(call(_linear_model(), x, y, 1.0))
    assert x_adv.shape == (2, 28, 28, 1) and x_adv.min() >= 0.0 and x_adv.max() <= 1.0


def test_every_attack_of_the_registry_is_checked_for_eps():
    assert set(_EPS_ATTACKS) == set(attacks.ATTACKS) | {"autoattack"}


def test_eps_bounds_follow_the_box_and_the_norm():
    """The bound is the box's widest distance: clip_max - clip_min for linf (255 on 0-255
    pixels), the diagonal (clip_max - clip_min) * sqrt(784) = 28 for l2 on 28x28 images."""
    model_fn, y = _linear_model(), tf.constant([0, 1])
    x = tf.random.stateless_uniform([2, 28, 28, 1], seed=[5, 6])
    run = lambda images, **kwargs: attacks.pgd(
        model_fn, images, y, step_size=0.1, steps=1, **kwargs
    )
    run(x * 255.0, eps=255.0, clip_max=255.0)
    with pytest.raises(ValueError, match=r"= \[0, 255\] for norm 'linf', got 256"):
        run(x * 255.0, eps=256.0, clip_max=255.0)
    run(x, eps=2.0, norm="l2")  # a common l2 radius on MNIST
    with pytest.raises(ValueError, match=r"sqrt\(values per example\)\] = \[0, 28\] for norm 'l2'"):
        run(x, eps=30.0, norm="l2")


def test_custom_box_is_respected():
    x = tf.fill([2, 28, 28, 1], 100.0)
    x_adv = attacks.pgd(
        _linear_model(), x, [0, 1], eps=3.0, step_size=1.0, steps=2, clip_min=0.0, clip_max=255.0
    )
    assert float(tf.reduce_max(x_adv)) <= 103.0 and float(tf.reduce_min(x_adv)) >= 97.0
