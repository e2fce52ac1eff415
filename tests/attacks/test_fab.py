"""FAB-T (attacks/fab.py): exact box-constrained projections, the closed-form minimum of a
linear classifier, the threat-model contract, and its place in the AutoAttack sequence."""

import numpy as np
import pytest
import tensorflow as tf

from tf_metric_robust.attacks import fab

pytestmark = (
    pytest.mark.slow
)  # trains beyond a few steps or runs full attacks (make test-fast skips)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_box_projection_is_the_exact_minimum(norm):
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 1, (64, 30))
    w = rng.normal(size=(64, 30)) * (rng.uniform(size=(64, 30)) > 0.2)  # some zero weights
    target = rng.uniform(0, 1, (64, 30))  # a point inside the box on each hyperplane: reachable
    b = np.sum(w * target, axis=1)
    lower, upper = np.zeros_like(points), np.ones_like(points)
    d = fab.box_projection(
        *(tf.constant(a, tf.float64) for a in (points, w, b, lower, upper)), norm
    ).numpy()
    np.testing.assert_allclose(np.sum(w * (points + d), axis=1), b, atol=1e-9)
    assert (points + d >= -1e-12).all() and (points + d <= 1 + 1e-12).all()
    for row in range(64):
        gap = b[row] - w[row] @ points[row]
        wr = w[row] * np.sign(gap)
        room = np.where(wr > 0, 1 - points[row], points[row])
        if norm == "linf":  # the smallest r with sum |w| min(r, room) = |gap|
            f = lambda r: np.sum(np.abs(wr) * np.minimum(r, room))  # noqa: E731
        else:  # the smallest mu with sum w^2 min(mu, room / |w|) = |gap|
            f = lambda r: np.sum(
                wr**2
                * np.minimum(  # noqa: E731
                    r, np.divide(room, np.abs(wr), out=np.zeros_like(room), where=wr != 0)
                )
            )
        lo, hi = 0.0, 1e6
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if f(mid) < abs(gap) else (lo, mid)
        size = np.abs(d[row]).max() if norm == "linf" else np.linalg.norm(d[row])
        expected = (
            hi
            if norm == "linf"
            else np.linalg.norm(
                wr
                * np.minimum(
                    hi, np.divide(room, np.abs(wr), out=np.zeros_like(room), where=wr != 0)
                )
            )
        )
        assert size == pytest.approx(expected, rel=1e-6, abs=1e-9), row


def _reference_projection_linf(t, w, b):
    """fra31/auto-attack autoattack/fab_projections.py:7-60 (projection_linf, box [0, 1]) in
    NumPy, line for line: the step d with w.(t + d) = b, t + d in [0, 1], smallest L-inf."""
    w, b = w.copy(), b.copy()
    sign = 2 * ((w * t).sum(1) - b >= 0) - 1
    w *= sign[:, None]
    b = b * sign
    a = (w < 0).astype(t.dtype)
    d = (a - t) * (w != 0)
    p = a - t * (2 * a - 1)
    indp = np.argsort(p, axis=1, kind="stable")
    b = b - (w * t).sum(1)
    b0 = (w * d).sum(1)
    indp2 = indp[:, ::-1]
    ws = np.take_along_axis(w, indp2, 1)
    bs2 = -ws * np.take_along_axis(d, indp2, 1)
    s = np.cumsum(np.abs(ws), axis=1)
    sb = np.cumsum(bs2, axis=1) + b0[:, None]
    b2 = sb[:, -1] - s[:, -1] * np.take_along_axis(p, indp[:, :1], 1)[:, 0]
    c_l = b - b2 > 0
    c2 = (b - b0 > 0) & ~c_l
    dim = w.shape[1]
    lb, ub = np.zeros(c2.sum()), np.full(c2.sum(), dim - 1.0)
    indp_, sb_, s_, p_, b_ = indp[c2], sb[c2], s[c2], p[c2], b[c2]
    for _ in range(int(np.ceil(np.log2(dim)))):
        counter4 = np.floor((lb + ub) / 2)
        counter2 = counter4.astype(int)[:, None]
        indcurr = np.take_along_axis(indp_, dim - 1 - counter2, 1)
        b2 = (
            np.take_along_axis(sb_, counter2, 1)
            - np.take_along_axis(s_, counter2, 1) * np.take_along_axis(p_, indcurr, 1)
        )[:, 0]
        c = b_ - b2 > 0
        lb, ub = np.where(c, counter4, lb), np.where(c, ub, counter4)
    lb = lb.astype(int)
    if c_l.any():
        lmbd = np.maximum((b[c_l] - sb[c_l, -1]) / (-s[c_l, -1]), 0)[:, None]
        d[c_l] = (2 * a[c_l] - 1) * lmbd
    rows = np.arange(c2.sum())
    lmbd = np.maximum((b[c2] - sb[c2][rows, lb]) / (-s[c2][rows, lb]), 0)[:, None]
    d[c2] = np.minimum(lmbd, d[c2]) * a[c2] + np.maximum(-lmbd, d[c2]) * (1 - a[c2])
    return d * (w != 0)


def test_box_projection_equals_the_reference_linf_projection():
    """On fixed reachable hyperplanes in [0, 1]^D (D = 784, MNIST's size) our Newton projection
    gives the reference's step (its sort and binary search), current points and inputs stacked
    as FAB-T projects them."""
    rng = np.random.default_rng(5)
    points = rng.uniform(0, 1, (48, 784))
    w = rng.normal(size=(48, 784)) * (rng.uniform(size=(48, 784)) > 0.1)
    b = np.sum(w * rng.uniform(0, 1, (48, 784)), axis=1)  # a point of the box on each plane
    ours = fab.box_projection(
        *(tf.constant(a, tf.float64) for a in (points, w, b)),
        tf.zeros([48, 784], tf.float64),
        tf.ones([48, 784], tf.float64),
        "linf",
    ).numpy()
    np.testing.assert_allclose(ours, _reference_projection_linf(points, w, b), atol=1e-9)


def test_box_projection_is_exact_when_newton_must_cross_many_breakpoints():
    """Weights falling threefold per coordinate and the root on the last of 12 segments: the
    first Newton steps land far short of it (the heavy coordinates saturate first), so stopping
    after a fixed few steps would leave the point short of the hyperplane."""
    dim = 12
    weights = 3.0 ** -np.arange(dim)
    breakpoints = np.arange(1.0, dim + 1)  # the room of each coordinate: upper bound i + 1
    root = dim - 0.5
    level = np.sum(weights * np.minimum(root, breakpoints))
    d = fab.box_projection(
        tf.zeros([1, dim], tf.float64),
        tf.constant(weights[None], tf.float64),
        tf.constant([level], tf.float64),
        tf.zeros([1, dim], tf.float64),
        tf.constant(breakpoints[None], tf.float64),
        "linf",
    ).numpy()[0]
    np.testing.assert_allclose(d, np.minimum(root, breakpoints), rtol=1e-9)


def test_unreachable_hyperplane_goes_as_far_as_the_box_allows():
    points = tf.constant([[0.5, 0.5]], tf.float64)
    w = tf.constant([[1.0, 1.0]], tf.float64)
    d = fab.box_projection(
        points,
        w,
        tf.constant([5.0], tf.float64),
        tf.zeros_like(points),
        tf.ones_like(points),
        "linf",
    )
    np.testing.assert_allclose(d.numpy(), [[0.5, 0.5]])


def _linear_model(seed, classes=10, dim=64):
    rng = np.random.default_rng(seed)
    weights = tf.constant(2 * rng.normal(size=(dim, classes)), tf.float32)
    bias = tf.constant(rng.normal(size=classes), tf.float32)
    return (
        (lambda x: tf.reshape(x, [tf.shape(x)[0], -1]) @ weights + bias),
        weights.numpy(),
        bias.numpy(),
    )


def _closed_form_minimum(logits, y, weights, norm):
    """Per row, the distance to the closest class boundary of logits W^T x + b (no box):
    min_j (z_y - z_j) / ||w_y - w_j||_* with the dual norm (L1 for L-inf, L2 for L2)."""
    dual = 1 if norm == "linf" else 2
    return np.array(
        [
            min(
                (row[label] - row[j]) / np.linalg.norm(weights[:, label] - weights[:, j], ord=dual)
                for j in range(len(row))
                if j != label
            )
            for row, label in zip(logits, y)
        ]
    )


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_linear_classifier_minimum_within_one_percent_of_closed_form(norm):
    """For logits W^T x + b the closest misclassified point is at min_j (z_y - z_j) /
    ||w_y - w_j||_* (dual norm: L1 for L-inf, L2 for L2) when the box does not bind."""
    model, weights, bias = _linear_model(0)
    rng = np.random.default_rng(1)
    x = rng.uniform(0.45, 0.55, (32, 8, 8, 1)).astype(np.float32)
    logits = x.reshape(32, -1) @ weights + bias
    y = logits.argmax(1)
    flat = x.reshape(32, -1)
    closed_form = _closed_form_minimum(logits, y, weights, norm)
    x_adv, size = fab.fab_minimum_norm(model, x, y, norm=norm, steps=100, num_target_classes=9)
    size = size.numpy()
    assert np.all(closed_form < 0.45)  # no coordinate moves 0.45: the box [0, 1] cannot bind
    assert np.all(size >= closed_form * (1 - 1e-4)), "smaller than the true minimum: a bug"
    np.testing.assert_array_less(size, closed_form * 1.01)
    predicted = (x_adv.numpy().reshape(32, -1) @ weights + bias).argmax(1)
    assert np.all(predicted != y)
    delta = x_adv.numpy().reshape(32, -1) - flat
    measured = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    np.testing.assert_allclose(measured, size, rtol=1e-5)


def test_fab_targeted_keeps_the_threat_model_and_only_counts_points_within_eps():
    model, weights, bias = _linear_model(2)
    x = np.random.default_rng(3).uniform(0.2, 0.8, (16, 8, 8, 1)).astype(np.float32)
    y = (x.reshape(16, -1) @ weights + bias).argmax(1)
    _, size = fab.fab_minimum_norm(model, x, y, steps=30)
    eps = float(np.median(size.numpy()))
    x_adv = fab.fab_targeted(model, x, y, eps=eps, steps=30).numpy()
    assert np.abs(x_adv - x).max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    fooled = (x_adv.reshape(16, -1) @ weights + bias).argmax(1) != y
    np.testing.assert_array_equal(fooled, size.numpy() <= eps)
    np.testing.assert_array_equal(fab.fab_targeted(model, x, y, eps=0.0, steps=5).numpy(), x)


def test_fooled_points_leave_the_target_loop():
    """FAB-T runs a target only on the points not yet fooled within eps, and never on points
    misclassified at x (fab_base.py:303-323): counted by the rows the model receives."""
    model, weights, bias = _linear_model(4)
    rows = tf.Variable(0, dtype=tf.int64)

    def counting(images):
        rows.assign_add(tf.cast(tf.shape(images)[0], tf.int64))
        return model(images)

    x = np.random.default_rng(6).uniform(0.3, 0.7, (20, 8, 8, 1)).astype(np.float32)
    y = (x.reshape(20, -1) @ weights + bias).argmax(1)
    y[:4] = (y[:4] + 1) % 10  # misclassified at x: never attacked
    steps, correct = 10, 16

    def received(**kwargs):
        rows.assign(0)
        x_adv = fab.fab_targeted(counting, x, y, steps=steps, num_target_classes=9, **kwargs)
        return int(rows.numpy()), x_adv.numpy()

    # Per attacked row and iteration: a gradient pass and a forward pass; plus the shape probe
    # (1 row) and the clean pass (20 rows).
    per_target = 2 * steps * correct
    # eps = the whole box: the first target fools every correct point, the other 8 run on none.
    count, x_adv = received(eps=1.0)
    assert count == 1 + 20 + per_target
    assert np.all((x_adv.reshape(20, -1) @ weights + bias).argmax(1) != y)
    # eps = 0: nothing is ever fooled within eps, so every target runs on the 16 correct rows.
    count, _ = received(eps=0.0)
    assert count == 1 + 20 + 9 * per_target


def test_the_model_is_traced_as_often_for_nine_targets_as_for_two():
    """The targets run in a graph loop, so tracing does not grow with their number: a probe, the
    clean pass, the gradient's function and the loop body's forward pass (a Python loop over the
    targets traced the last two once per target: 6 calls for 2 targets, 20 for 9)."""
    model, weights, bias = _linear_model(5)
    x = np.random.default_rng(7).uniform(0.3, 0.7, (8, 8, 8, 1)).astype(np.float32)
    y = (x.reshape(8, -1) @ weights + bias).argmax(1)
    python_calls = {}
    for targets in (2, 9):
        calls = []

        def counting(images, calls=calls):
            calls.append(None)  # Python runs this only while tracing (and for the eager probe)
            return model(images)

        fab.fab_targeted(counting, x, y, eps=0.1, steps=3, num_target_classes=targets)
        python_calls[targets] = len(calls)
    assert python_calls == {2: 4, 9: 4}


def test_bad_arguments_raise():
    model, _, _ = _linear_model(0)
    x, y = np.full((2, 8, 8, 1), 0.5, np.float32), np.array([0, 1])
    with pytest.raises(ValueError, match="norm"):
        fab.fab_minimum_norm(model, x, y, norm="l1")
    with pytest.raises(ValueError, match="num_target_classes must be <= 9"):
        fab.fab_minimum_norm(model, x, y, num_target_classes=10)
    with pytest.raises(ValueError, match="0-255 pixels"):
        fab.fab_targeted(model, x * 255, y, eps=0.3)


def test_autoattack_standard_runs_fab_t_and_it_only_adds_strength(trained_small_cnn):
    """The standard suite lists FAB-T (the reference's order) and, on a trained CNN,
    adding it after APGD-CE and APGD-T never raises robust accuracy (same seeds per member)."""
    from tf_metric_robust.attacks import autoattack
    from tf_metric_robust.attacks.autoattack import VERSIONS

    network, x, y = trained_small_cnn
    model_fn = lambda images: network(images, training=False)["logits"]  # noqa: E731
    x, y = x[:60], y[:60]
    common = dict(eps=0.15, steps=10, num_target_classes=3, seed=0, batch_size=60)
    without = autoattack(model_fn, x, y, attacks=("apgd_ce", "apgd_t"), **common)
    with_fab = autoattack(model_fn, x, y, attacks=("apgd_ce", "apgd_t", "fab_t"), **common)
    assert with_fab.attack_accuracy["apgd_t"] == without.attack_accuracy["apgd_t"]
    assert with_fab.robust_accuracy <= without.robust_accuracy
    fooled_by_fab = with_fab.fooled_by == "fab_t"
    np.testing.assert_array_equal(fooled_by_fab, (with_fab.fooled_by != without.fooled_by))
    assert VERSIONS["standard"] == ("apgd_ce", "apgd_t", "fab_t", "square")


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_untargeted_fab_reaches_the_closest_class_of_a_linear_classifier(norm):
    """Untargeted FAB picks the closest linearised boundary among all classes (fab_base.py:
    169-189): on logits W^T x + b it fools every point whose closed-form minimum (over all
    classes, dual norm) lies 1% inside eps, and none whose minimum lies 1% outside; the random
    restarts are seeded."""
    model, weights, bias = _linear_model(0)
    x = np.random.default_rng(1).uniform(0.45, 0.55, (32, 8, 8, 1)).astype(np.float32)
    logits = x.reshape(32, -1) @ weights + bias
    y = logits.argmax(1)
    closed_form = _closed_form_minimum(logits, y, weights, norm)
    eps = float(np.median(closed_form))
    x_adv = fab.fab_untargeted(model, x, y, eps=eps, norm=norm, steps=50, restarts=2, seed=3)
    x_adv = x_adv.numpy()
    delta = (x_adv - x).reshape(32, -1)
    size = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert size.max() <= eps + 1e-5 and x_adv.min() >= 0 and x_adv.max() <= 1
    fooled = (x_adv.reshape(32, -1) @ weights + bias).argmax(1) != y
    np.testing.assert_array_equal(fooled[closed_form < eps * 0.99], True)
    np.testing.assert_array_equal(fooled[closed_form > eps * 1.01], False)
    assert 8 <= fooled.sum() <= 24
    again = fab.fab_untargeted(model, x, y, eps=eps, norm=norm, steps=50, restarts=2, seed=3)
    np.testing.assert_array_equal(again.numpy(), x_adv)
    with pytest.raises(ValueError, match="restarts"):
        fab.fab_untargeted(model, x, y, eps=eps, restarts=0)


def test_untargeted_fab_follows_the_closest_boundary_not_the_closest_logit():
    """Class 1 trails the true class by the smaller logit gap (1 vs 2) but its boundary lies at
    L-inf distance 0.3, class 2's at 0.1 (disjoint supports): at eps 0.2 only the distance
    rule |f_c - f_y| / ||grad||_1 of fab_base.py:171-184 fools the point."""
    v1 = np.r_[np.ones(32), np.zeros(32)] / (0.3 * 32)  # ||w1||_1 = 1 / 0.3
    v2 = np.r_[np.zeros(32), np.ones(32)] * 2 / (0.1 * 32)  # ||w2||_1 = 2 / 0.1
    weights = tf.constant(np.stack([np.zeros(64), v1, v2], 1), tf.float32)

    def model(images):
        flat = tf.reshape(images, [tf.shape(images)[0], -1]) - 0.5
        return flat @ weights + tf.constant([0.0, -1.0, -2.0])

    x = np.full((3, 8, 8, 1), 0.5, np.float32)
    y = np.zeros(3, np.int64)
    x_adv = fab.fab_untargeted(model, x, y, eps=0.2, steps=20, restarts=1, seed=0)
    assert np.all(np.argmax(model(x_adv), 1) == 2)
    assert np.abs(x_adv.numpy() - x).max() <= 0.2 + 1e-6
