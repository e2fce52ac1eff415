"""What a gradient attack maximises and where it may move: losses, steps and eps-ball projections.

Losses: cross-entropy, the Carlini-Wagner margin (Carlini & Wagner, S&P 2017, as used for PGD by
Madry et al., ICLR 2018) and TRADES' KL(p(x) || p(x')) (Zhang et al. 2019, trades.py:36-37).
Geometry: L-inf (sign step, box clip) and L2 (normalised step, ball projection) as in Madry et
al.; the momentum accumulator is MI-FGSM's (Dong et al., CVPR 2018).
Per-example statistics are float32 whatever the image dtype; images keep their own dtype.
"""

import functools

import tensorflow as tf

LOSSES = ("ce", "cw", "kl")  # 'kl': the labels are the clean logits [N, C] (TRADES)
TRADES_START_STD = 0.001  # TRADES/MART start x + 0.001 N(0, 1) (trades.py:31, mart.py:20)
NORMS = ("linf", "l2")

# Guards divisions by a zero gradient or zero perturbation norm (the step/projection become 0).
_TINY = 1e-12


def margin(logits, labels):
    """CW margin max_{j != y} z_j - z_y per example, float32 [N]; > 0 iff y is not the argmax."""
    logits = tf.cast(logits, tf.float32)
    true_mask = tf.one_hot(labels, tf.shape(logits)[-1], on_value=True, off_value=False)
    true_logit = tf.reduce_max(tf.where(true_mask, logits, -float("inf")), axis=-1)
    other_logit = tf.reduce_max(tf.where(true_mask, -float("inf"), logits), axis=-1)
    return other_logit - true_logit


def objective(logits, labels, loss, targeted):
    """Per-example quantity the attack maximises, float32 [N].

    Untargeted: CE(z, y) or the CW margin (push y down). Targeted (`labels` are the targets): the
    negated CE toward the target, or the negated margin (push the target above every other class).
    'kl' (TRADES' inner maximisation, trades.py:36-37): `labels` are the clean logits [N, C] and
    the value is KL(softmax(labels) || softmax(z)). A callable `loss(outputs, labels) -> [N]` is a
    custom objective of whatever model_fn returns (attacks/adaptive.py: logits and embedding).
    """
    if callable(loss):
        value = tf.cast(loss(logits, labels), tf.float32)
    elif loss == "ce":
        value = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=tf.cast(logits, tf.float32)
        )
    elif loss == "cw":
        value = margin(logits, labels)
    elif loss == "kl":
        clean = tf.cast(labels, tf.float32)
        value = tf.reduce_sum(
            tf.nn.softmax(clean)
            * (tf.nn.log_softmax(clean) - tf.nn.log_softmax(tf.cast(logits, tf.float32))),
            axis=-1,
        )
    else:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return -value if targeted else value


def success(logits, labels, targeted):
    """Bool [N]: misclassified (untargeted) or classified as the target (targeted)."""
    predicted = tf.argmax(logits, axis=-1, output_type=labels.dtype)
    return tf.equal(predicted, labels) if targeted else tf.not_equal(predicted, labels)


def _per_example_norm(v, order):
    """L1 or L2 norm over every axis but the batch one, shaped [N, 1, ..., 1] for broadcasting."""
    axes = list(range(1, v.shape.rank))
    if order == 1:
        return tf.reduce_sum(tf.abs(v), axis=axes, keepdims=True)
    return tf.sqrt(tf.reduce_sum(tf.square(v), axis=axes, keepdims=True))


def l1_normalize(grad):
    """grad / ||grad||_1 per example (MI-FGSM's accumulator input, Dong et al. 2018, eq. 6)."""
    return grad / tf.maximum(_per_example_norm(grad, 1), _TINY)


def step_direction(grad, norm):
    """Unit-size ascent direction: sign(grad) (linf) or grad / ||grad||_2 (l2); float32 in/out."""
    if norm == "linf":
        return tf.sign(grad)
    if norm == "l2":
        return grad / tf.maximum(_per_example_norm(grad, 2), _TINY)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def random_start(x, eps, norm, seed=None):
    """A uniform random point of the eps-ball around x (before the [clip_min, clip_max] clip).

    linf: i.i.d. U(-eps, eps) per pixel. l2: uniform in the ball (Gaussian direction, radius
    eps * U^(1/d)). `seed` None uses stateful ops, else a [2] int tensor for stateless ops.
    Returns x.dtype.
    """
    shape = tf.shape(x)
    batch_shape = tf.concat([shape[:1], tf.ones([x.shape.rank - 1], tf.int32)], axis=0)
    if seed is None:
        uniform, normal = tf.random.uniform, tf.random.normal
    else:
        seeds = tf.random.experimental.stateless_split(seed, 2)
        uniform = functools.partial(tf.random.stateless_uniform, seed=seeds[0])
        normal = functools.partial(tf.random.stateless_normal, seed=seeds[1])
    if norm == "linf":
        noise = uniform(shape, minval=-1.0, maxval=1.0) * eps
    elif norm == "l2":
        direction = step_direction(normal(shape), "l2")
        dims = tf.cast(tf.reduce_prod(shape[1:]), tf.float32)
        radius = eps * uniform(batch_shape, minval=0.0, maxval=1.0) ** (1.0 / dims)
        noise = direction * radius
    else:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return x + tf.cast(noise, x.dtype)


def gaussian_start(x, std, seed=None):
    """x + std * N(0, 1) per pixel (TRADES' and MART's start, trades.py:31); x.dtype.

    The KL objective has a zero gradient at x itself, hence a start off x. Not projected: the
    references take their first gradient at the unclipped start. `seed` as `random_start`.
    """
    shape = tf.shape(x)
    if seed is None:
        noise = tf.random.normal(shape)
    else:
        noise = tf.random.stateless_normal(
            shape, seed=tf.random.experimental.stateless_fold_in(seed, 1)
        )
    return x + tf.cast(std * noise, x.dtype)


def project(x_adv, x, eps, norm, clip_min, clip_max):
    """Projects x_adv onto the eps-ball around x intersected with [clip_min, clip_max].

    For linf both sets are boxes, so one clip is exact; eps = 0 returns x bit for bit. For l2 the
    delta is rescaled to norm <= eps, then clipped to the box, which only shrinks it (x is inside
    the box), so the result stays in the ball. `eps`, `clip_min`, `clip_max`: float32 scalars.
    """
    dtype = x.dtype
    if norm == "linf":
        eps_d = tf.cast(eps, dtype)
        lower = tf.maximum(x - eps_d, tf.cast(clip_min, dtype))
        upper = tf.minimum(x + eps_d, tf.cast(clip_max, dtype))
        return tf.clip_by_value(x_adv, lower, upper)
    if norm == "l2":
        x32 = tf.cast(x, tf.float32)
        delta = tf.cast(x_adv, tf.float32) - x32
        scale = tf.minimum(1.0, eps / tf.maximum(_per_example_norm(delta, 2), _TINY))
        return tf.cast(tf.clip_by_value(x32 + delta * scale, clip_min, clip_max), dtype)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def logits_of(model_fn, x):
    """model_fn(x), with a clear error for models that return their output dict."""
    logits = model_fn(x)
    if isinstance(logits, dict):
        raise TypeError(
            "model_fn must return logits; for tf_metric_robust models pass "
            "lambda x: model(x, training=False)['logits']"
        )
    return logits


def _range_message(clip_min, clip_max, low, high):
    """Why images outside [clip_min, clip_max] are refused, naming the usual cause."""
    cause = (
        "images look like 0-255 pixels: divide by 255 (tf.image.convert_image_dtype on "
        "uint8 pixels)"
        if high > clip_max + 1
        else "rescale them to the box"
    )
    return (
        f"x holds values in [{low:g}, {high:g}], outside [clip_min, clip_max] = "
        f"[{clip_min:g}, {clip_max:g}]: {cause}; an eps meant for the box would attack "
        "almost nothing and the model would look robust"
    )


def _images_in_range(x, clip_min, clip_max):
    """x, refused unless every value lies in [clip_min, clip_max] (the false-robustness trap).

    Eagerly a Python ValueError; inside a graph (or with symbolic bounds) a tf.debugging.Assert
    whose result the returned x depends on, so the check cannot be scheduled after the attack.
    Costs one min and one max over the batch.
    """
    known = [tf.get_static_value(v) if tf.is_tensor(v) else v for v in (clip_min, clip_max)]
    if not tf.inside_function() and None not in known:
        if tf.size(x) == 0:
            return x
        low = float(tf.reduce_min(tf.cast(x, tf.float32)))
        high = float(tf.reduce_max(tf.cast(x, tf.float32)))
        if not (low >= known[0] and high <= known[1]):  # NaN fails too
            raise ValueError(_range_message(float(known[0]), float(known[1]), low, high))
        return x
    x32 = tf.cast(x, tf.float32)
    low, high = tf.cast(clip_min, tf.float32), tf.cast(clip_max, tf.float32)
    inside = (tf.size(x) == 0) | ((tf.reduce_min(x32) >= low) & (tf.reduce_max(x32) <= high))
    message = (
        "attack images must lie in [clip_min, clip_max]; values far above clip_max mean "
        "0-255 pixels: divide by 255 (tf.image.convert_image_dtype on uint8 pixels). "
        "x min, x max, clip_min, clip_max:"
    )
    check = tf.debugging.Assert(
        inside, [message, tf.reduce_min(x32), tf.reduce_max(x32), low, high]
    )
    with tf.control_dependencies([check]):
        return tf.identity(x)


def images_and_labels(x, y, clip_min=0.0, clip_max=1.0, loss="ce"):
    """(x as a floating tensor inside [clip_min, clip_max], y as int64 [N]).

    ValueError for integer images, dense labels, or (eagerly) images outside the box, e.g. 0-255
    pixels with the default [0, 1]; inside graphs the box check is a tf.debugging assertion.
    With loss 'kl', y are the clean logits, returned as float32 [N, C].
    """
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        raise ValueError(f"x must be a floating-point image batch, got {x.dtype}")
    if loss == "kl":
        y = tf.cast(y, tf.float32)
        if y.shape.rank != 2:
            raise ValueError(f"loss 'kl' takes the clean logits [N, C] as y, got shape {y.shape}")
        return _images_in_range(x, clip_min, clip_max), y
    y = tf.cast(y, tf.int64)
    if y.shape.rank != 1:
        raise ValueError(f"y must hold sparse int labels of shape [N], got shape {y.shape}")
    return _images_in_range(x, clip_min, clip_max), y
