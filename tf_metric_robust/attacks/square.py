"""Square Attack: score-based black-box random search in the linf or l2 eps-ball.

Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box adversarial
attack via random search", ECCV 2020 (arXiv 1912.00049). Gradient-free, so it is the part of
AutoAttack that gradient masking cannot fool. Each iteration changes one random square window per
example (linf: a +-eps vertex per channel; l2: moves perturbation mass from a second window into
the first as a centre-surround pattern) and keeps it if the margin z_y - max_{i!=y} z_i drops.
The window area is p * H * W with p halved at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000,
8000 of a 10000-query run, rescaled to `queries` (paper, Sec. 3 and appendix).

One tf.function per call (cached per model_fn); the query loop is a tf.while_loop that queries
only the examples still classified correctly and stops once all are fooled.
"""

import math
import numbers

import numpy as np
import tensorflow as tf

from tf_metric_robust.attacks import _plumbing, objectives

_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # of a 10000-query schedule
_TINY = 1e-12


def p_schedule(iteration, queries, p_init):
    """Fraction p of the image the window covers at `iteration` (0-based) of a `queries` run."""
    rescaled = int(iteration / queries * 10000)
    return p_init / 2 ** sum(rescaled > t for t in _HALVINGS)


def _window_sides(queries, p_init, height, width, norm):
    """Window side per search iteration (Python ints): round(sqrt(p * H * W)), within the image;
    odd and >= 3 for l2 (its pattern has a centre)."""
    sides, largest = [], min(height, width)
    for i in range(max(queries - 1, 1)):
        side = int(round(math.sqrt(p_schedule(i, queries, p_init) * height * width)))
        if norm == "linf":
            side = min(max(side, 1), max(largest - 1, 1))
        else:
            side = max(side, 3)
            side = min(side + 1 - side % 2, largest - 1 + largest % 2)
        sides.append(max(side, 1))
    return sides


def _rectangle(rows, cols):
    """Centred pseudo-Gaussian on rows x cols: sum_{k>=d}^{K} 1/(k+1)^2, d = Chebyshev distance."""
    if rows == 0:
        return np.zeros((0, cols))
    top = max(rows // 2, cols // 2)
    tail = np.cumsum((1.0 / np.arange(1, top + 2) ** 2)[::-1])[::-1]  # tail[d] = sum_{k>=d}
    distance = np.maximum(
        np.abs(np.arange(rows)[:, None] - rows // 2), np.abs(np.arange(cols)[None, :] - cols // 2)
    )
    value = tail[distance]
    return value / np.linalg.norm(value)


def _eta(side):
    """The l2 square: two opposite-sign pseudo-Gaussian halves, unit Frobenius norm [side, side]."""
    value = np.concatenate([_rectangle(side // 2, side), -_rectangle(side - side // 2, side)])
    return value / np.linalg.norm(value)


def _offsets(top, left, height, width):
    """Row and column indices relative to each example's window corner, int32 [n, H], [n, W]."""
    return tf.range(height)[None, :] - top[:, None], tf.range(width)[None, :] - left[:, None]


def _window(top, left, side, height, width):
    """Bool [n, H, W, 1]: inside the side x side square whose corner is (top, left) per example."""
    rows, cols = _offsets(top, left, height, width)
    inside = lambda v: (v >= 0) & (v < side)
    return (inside(rows)[:, :, None] & inside(cols)[:, None, :])[..., None]


def _place(patterns, which, top, left, side, height, width):
    """patterns[which] (anchored at the origin) moved to (top, left) per example, zero outside the
    window. patterns float32 [K, H, W]; which, top, left int32 [n]. Returns [n, H, W, 1]."""
    rows, cols = _offsets(top, left, height, width)
    placed = tf.gather(patterns, which)
    placed = tf.gather(placed, tf.clip_by_value(rows, 0, height - 1), axis=1, batch_dims=1)
    placed = tf.gather(placed, tf.clip_by_value(cols, 0, width - 1), axis=2, batch_dims=1)
    return tf.where(_window(top, left, side, height, width), placed[..., None], 0.0)


def _square_graph(model_fn, x, y, eps, clip_min, clip_max, seed, *, queries, norm, p_init):
    """The random search; returns x_best [N, H, W, C] in x.dtype."""
    _, height, width, channels = x.shape
    if seed is None:
        seed = tf.random.uniform([2], maxval=tf.int64.max, dtype=tf.int64)
    n_all = tf.shape(x)[0]
    box = lambda v: tf.clip_by_value(v, tf.cast(clip_min, v.dtype), tf.cast(clip_max, v.dtype))
    expand = lambda v: tf.reshape(v, [-1, 1, 1, 1])

    def signs(key, shape):
        return tf.where(tf.random.stateless_uniform(shape, key) < 0.5, -1.0, 1.0)

    def margin_and_fooled(x_query, labels):
        logits = model_fn(x_query)
        fooled = tf.not_equal(tf.argmax(logits, axis=-1, output_type=labels.dtype), labels)
        return -objectives.margin(logits, labels), fooled

    sides_py = _window_sides(queries, p_init, height, width, norm)
    sides = tf.constant(sides_py, tf.int32)
    keys = tf.random.experimental.stateless_split(seed, 4)
    if norm == "linf":
        # Vertical stripes: one +-eps per column and channel (paper, Sec. 3.1).
        stripes = signs(keys[0], tf.stack([n_all, 1, width, channels]))
        x_init = box(x + tf.cast(eps * stripes, x.dtype))
    else:
        # A grid of l2 squares with random signs per tile and channel, scaled to norm eps.
        tile = max(height // 5, 1)
        rows, cols = height // tile, width // tile
        shapes = tf.constant(np.stack([_eta(tile), _eta(tile).T]), tf.float32)
        which = tf.random.stateless_uniform(tf.stack([n_all, rows, cols]), keys[1], 0, 2, tf.int32)
        grid = tf.gather(shapes, which)[..., None] * signs(
            keys[2], tf.stack([n_all, rows, cols, 1, 1, channels])
        )
        grid = tf.reshape(
            tf.transpose(grid, [0, 1, 3, 2, 4, 5]),
            tf.stack([n_all, rows * tile, cols * tile, channels]),
        )
        top, left = (height - rows * tile) // 2, (width - cols * tile) // 2
        delta = tf.pad(
            grid,
            [[0, 0], [top, height - top - rows * tile], [left, width - left - cols * tile], [0, 0]],
        )
        delta = delta / (
            tf.norm(tf.reshape(delta, [n_all, -1]), axis=1)[:, None, None, None] + _TINY
        )
        x_init = box(x + tf.cast(eps * delta, x.dtype))
        levels = sorted(set(sides_py))
        level_of = tf.constant([levels.index(s) for s in sides_py], tf.int32)
        padded = np.zeros((len(levels), 2, height, width), np.float32)
        for level, side in enumerate(levels):
            padded[level, 0, :side, :side] = _eta(side)
            padded[level, 1, :side, :side] = _eta(side).T
        patterns = tf.constant(padded)

    # Examples misclassified on x are left unchanged (and never queried).
    m_clean, clean_fooled = margin_and_fooled(x, y)
    m_init, init_fooled = margin_and_fooled(x_init, y)
    x_best = tf.where(expand(clean_fooled), x, x_init)
    m_best = tf.where(clean_fooled, m_clean, m_init)

    def body(i, x_best, m_best, fooled):
        idx = tf.where(~fooled)[:, 0]
        n = tf.size(idx)
        xs, xb, ys, ms = (tf.gather(v, idx) for v in (x, x_best, y, m_best))
        side = sides[i]
        k = tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(seed, i), 7
        )
        corner = lambda key, size: tf.random.stateless_uniform(
            [n], key, 0, size - side + 1, tf.int32
        )
        top, left = corner(k[0], height), corner(k[1], width)
        window = _window(top, left, side, height, width)
        if norm == "linf":
            sign = signs(k[2], tf.stack([n, 1, 1, channels]))
            x_new = tf.where(window, box(xs + tf.cast(eps * sign, x.dtype)), xb)
            # If that vertex is the current one, flip a uniform nonzero subset of channel signs:
            # the same law as resampling until the window changes, without a resampling loop.
            same = tf.reduce_all(tf.equal(x_new, xb), axis=[1, 2, 3])
            subset = tf.random.stateless_uniform([n, 1], k[3], 1, 2**channels, tf.int64)
            bits = tf.bitwise.bitwise_and(
                tf.bitwise.right_shift(subset, tf.range(channels, dtype=tf.int64)[None, :]), 1
            )
            flipped = sign * tf.reshape(1.0 - 2.0 * tf.cast(bits, tf.float32), [n, 1, 1, channels])
            sign = tf.where(expand(same), flipped, sign)
            x_new = tf.where(window, box(xs + tf.cast(eps * sign, x.dtype)), xb)
        else:
            delta = tf.cast(xb - xs, tf.float32)
            other = _window(corner(k[4], height), corner(k[5], width), side, height, width)
            norm_of = lambda v, axes: tf.sqrt(tf.reduce_sum(tf.square(v), axes, keepdims=True))
            inside = tf.where(window, delta, 0.0)
            budget = tf.sqrt(
                tf.maximum(eps**2 - norm_of(delta, [1, 2, 3]) ** 2, 0.0) / channels
                + norm_of(tf.where(window | other, delta, 0.0), [1, 2, 3]) ** 2
            )
            shape = _place(
                patterns[level_of[i]],
                tf.random.stateless_uniform([n], k[6], 0, 2, tf.int32),
                top,
                left,
                side,
                height,
                width,
            )
            fresh = shape * signs(k[2], tf.stack([n, 1, 1, channels]))
            fresh += inside / (norm_of(inside, [1, 2]) + _TINY)
            fresh = fresh / (norm_of(fresh, [1, 2]) + _TINY) * budget
            delta = tf.where(window, fresh, tf.where(other, 0.0, delta))
            delta = eps * delta / (norm_of(delta, [1, 2, 3]) + _TINY)
            x_new = box(xs + tf.cast(delta, x.dtype))
        m_new, fooled_new = margin_and_fooled(x_new, ys)
        keep = fooled_new | (m_new < ms)
        rows = idx[:, None]
        x_best = tf.tensor_scatter_nd_update(x_best, rows, tf.where(expand(keep), x_new, xb))
        m_best = tf.tensor_scatter_nd_update(m_best, rows, tf.where(keep, m_new, ms))
        return i + 1, x_best, m_best, tf.tensor_scatter_nd_update(fooled, rows, fooled_new)

    _, x_best, _, _ = tf.while_loop(
        lambda i, x_best, m_best, fooled: (i < queries - 1) & tf.reduce_any(~fooled),
        body,
        (tf.constant(0), x_best, m_best, clean_fooled | init_fooled),
    )
    # Exact by construction up to rounding; the projection makes the bounds hold bit for bit.
    return objectives.project(x_best, x, eps, norm, clip_min, clip_max)


def square(
    model_fn,
    x,
    y,
    *,
    eps,
    queries=5000,
    norm="linf",
    p_init=0.8,
    seed=None,
    clip_min=0.0,
    clip_max=1.0,
):
    """Square Attack (Andriushchenko et al. 2020), untargeted, margin loss, score-based.

    Args: model_fn maps images [N, H, W, C] to logits (only its outputs are used); x images in
    [clip_min, clip_max] (float dtype, kept); y int labels [N]; eps on the image scale; `queries`
    model evaluations per example at most (the initialisation counts as one); p_init the initial
    window area fraction (0.8: the paper's linf value, AutoAttack's for both norms); seed None
    (random), an int or an int tensor [2] (stateless, reproducible).
    Returns adversarial images of x's shape and dtype inside the ball and [clip_min, clip_max].
    """
    _plumbing.check_norm(norm)
    _plumbing.check_int("queries", queries, 1)
    if not isinstance(p_init, numbers.Real) or not 0.0 < p_init <= 1.0:
        raise ValueError(f"p_init must be in (0, 1], got {p_init!r}")
    x, y, scalars, seed, eps_is_zero, checks = _plumbing.prepare_inputs(
        x, y, eps, clip_min, clip_max, seed, norm=norm
    )
    if x.shape.rank != 4 or None in x.shape[1:]:
        raise ValueError(f"x must be images [N, H, W, C] with known H, W, C, got {x.shape}")
    if x.shape[-1] > 62:  # the channel-sign subsets are drawn as int64 bit masks
        raise ValueError(f"square supports at most 62 channels, got {x.shape[-1]}")
    if eps_is_zero:
        return tf.identity(x)
    static = dict(queries=queries, norm=norm, p_init=float(p_init))
    with tf.control_dependencies(checks):
        x_adv = _plumbing.run_compiled(_square_graph, model_fn, static, x, y, *scalars, seed)
    return tf.stop_gradient(x_adv)
