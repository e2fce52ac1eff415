"""Plumbing every attack shares: argument and seed checks, the compiled-run cache, and the
separate graph function that keeps a model's gradient fast inside graph loops.

One place for what each attack module needs besides its own update rule, so the attacks agree on
what they accept (Python ValueErrors for known values, tf.debugging assertions for symbolic ones)
and compile once per (model, attack, static settings).
"""

import functools
import inspect
import math
import numbers
import types
import weakref

import numpy as np
import tensorflow as tf

from tf_metric_robust.attacks import objectives


def check_norm(norm, norms=objectives.NORMS):
    """ValueError unless norm is one of `norms`."""
    if norm not in norms:
        raise ValueError(f"norm must be one of {norms}, got {norm!r}")


def check_number(name, value, minimum, strict):
    """Python ValueError for known values; a tf.debugging assertion list for symbolic tensors."""
    known = tf.get_static_value(value) if tf.is_tensor(value) else value
    if known is None:
        check = tf.debugging.assert_greater if strict else tf.debugging.assert_greater_equal
        return [check(value, tf.cast(minimum, value.dtype), message=f"{name} out of range")]
    if np.ndim(known) != 0:
        raise ValueError(f"{name} must be a scalar, got shape {np.shape(known)}")
    if not (known > minimum if strict else known >= minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {known}")
    return []


def check_int(name, value, minimum):
    """ValueError unless value is a Python int >= minimum (it sizes a loop or the graph)."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be a Python int >= {minimum}, got {value!r}")


def _static(value):
    """A tensor's value if known at trace time (else None); other values as they are."""
    return tf.get_static_value(value) if tf.is_tensor(value) else value


def check_box(clip_min, clip_max):
    """ValueError unless clip_min < clip_max (when both are known)."""
    known = [_static(v) for v in (clip_min, clip_max)]
    if None not in known and not known[0] < known[1]:
        raise ValueError(f"clip_min must be < clip_max, got {known[0]} and {known[1]}")


def check_eps(eps, clip_min, clip_max, norm, x):
    """eps must lie in [0, the box's widest distance]: clip_max - clip_min for linf, times
    sqrt(values per example) for l2 (the box's diagonal). A larger eps constrains nothing and is
    most likely on another scale (eps 8 for 8/255 on [0, 1] images). Python ValueError for known
    values; tf.debugging assertions (returned as a list) when eps, the box or x's size are tensors
    known only at run time, e.g. inside a tf.function."""
    if norm == "linf":
        bound = "clip_max - clip_min"
    else:
        bound = "(clip_max - clip_min) * sqrt(values per example)"
    check_box(clip_min, clip_max)
    known = [_static(v) for v in (eps, clip_min, clip_max)]
    size = tf.TensorShape(x.shape[1:]).num_elements()
    if None not in known and (norm == "linf" or size is not None):
        if np.ndim(known[0]) != 0:
            raise ValueError(f"eps must be a scalar, got shape {np.shape(known[0])}")
        widest = float(known[2]) - float(known[1])
        if norm != "linf":
            widest *= math.sqrt(size)
        if not 0.0 <= known[0] <= widest:
            raise ValueError(
                f"eps must be in [0, {bound}] = [0, {widest:g}] for norm {norm!r}, got {known[0]:g}"
            )
        return []
    eps = tf.cast(eps, tf.float32)
    widest = tf.cast(clip_max, tf.float32) - tf.cast(clip_min, tf.float32)
    if norm != "linf":
        widest *= tf.sqrt(tf.cast(tf.reduce_prod(tf.shape(x)[1:]), tf.float32))
    message = f"eps must be in [0, {bound}] for norm {norm!r}"
    return [
        tf.debugging.assert_greater_equal(eps, 0.0, message=message),
        tf.debugging.assert_less_equal(eps, widest, message=message),
    ]


def prepare_inputs(x, y, eps, clip_min, clip_max, seed, loss="ce", norm="linf"):
    """Validates and converts the arguments every attack here shares.

    Returns (x, y int64 [N] (loss 'kl': the clean logits, float32 [N, C]), (eps, clip_min,
    clip_max) float32 scalars, seed None or int64 [2], eps_is_zero, run-time checks). Python
    ValueErrors for known values, tf.debugging otherwise; eps as `check_eps` for `norm`.
    """
    check_box(clip_min, clip_max)
    x, y = objectives.images_and_labels(x, y, clip_min, clip_max, loss)
    checks = check_eps(eps, clip_min, clip_max, norm, x)
    seed = stateless_seed(seed)
    scalars = tuple(tf.cast(v, tf.float32) for v in (eps, clip_min, clip_max))
    return x, y, scalars, seed, _static(eps) == 0, checks


def stateless_seed(seed):
    """None, or the attack's stateless key as int64 [2] (an int s means the key [s, 0])."""
    if seed is None:
        return None
    seed = tf.cast(seed, tf.int64)
    if seed.shape.rank == 0:
        seed = tf.stack([seed, tf.constant(0, tf.int64)])
    if seed.shape != [2]:
        raise ValueError(f"seed must be None, an int or an int tensor [2], got {seed.shape}")
    return seed


def arguments_to(worker, **fixed):
    """Decorator for an attack whose body is its docstring: the decorated function declares the
    attack's keyword API (signature and defaults, which users and evaluation.plan read); a call
    binds its arguments there, fills in the defaults and hands them by name, with `fixed`, to
    `worker`. So a variant names each argument once, however many it forwards."""

    def declare(declaration):
        signature = inspect.signature(declaration)

        @functools.wraps(declaration)  # inspect.signature shows the declaration's
        def attack(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return worker(**bound.arguments, **fixed)

        return attack

    return declare


# model_fn (or the object owning a bound method) -> {(graph_fn, method, static): tf.function}.
# Weak keys: the cache never keeps a model alive; the traced functions hold only weak references.
_COMPILED = weakref.WeakKeyDictionary()


def run_compiled(graph_fn, model_fn, static, *args):
    """Returns graph_fn(model_fn, *args, **static), compiled and cached when called eagerly.

    Inside an outer tf.function (e.g. a Keras train_step) the ops are built inline. Eagerly, one
    tf.function per (model_fn, graph_fn, static settings) is traced once and reused; `args` should
    be tensors so that new eps or step values do not retrace, and `static` should hold only what
    changes the graph (the cache keys on it). Traced without AutoGraph (faster tracing; the
    attacks build their loops with tf.while_loop themselves): a model_fn with tensor-dependent Python control flow should be
    a tf.function itself.
    """
    if tf.inside_function():
        return graph_fn(model_fn, *args, **static)
    # A bound method is a new object on every attribute access: key on its owner instead.
    owner, method = (
        (model_fn.__self__, model_fn.__func__) if inspect.ismethod(model_fn) else (model_fn, None)
    )
    key = (graph_fn, method, tuple(sorted(static.items())))
    try:
        per_owner = _COMPILED.setdefault(owner, {})
        owner_ref = weakref.ref(owner)
    except TypeError:  # not weak-referenceable or not hashable: compile for this call only
        per_owner, owner_ref = {}, lambda: owner
    compiled = per_owner.get(key)
    if compiled is None:
        # A partial, not a closure: TF's retracing warning counts closures sharing one code object.
        traced = functools.partial(_call_owner, graph_fn, owner_ref, method, static)
        compiled = per_owner[key] = tf.function(traced, autograph=False)
    return compiled(*args)


def _call_owner(graph_fn, owner_ref, method, static, *args):
    """Rebuilds model_fn from its weak reference and runs graph_fn (traced by run_compiled)."""
    owner = owner_ref()
    model_fn = owner if method is None else types.MethodType(method, owner)
    return graph_fn(model_fn, *args, **static)


def separate_function(fn):
    """fn traced once as a graph function of its own, called but never inlined into the caller.

    The attacks take the model's input gradient through it inside tf.while_loop bodies. Inlined,
    a loop body is part of a cyclic graph, and TensorFlow's oneDNN rewrite visits its nodes in an
    order that varies from process to process; it rewrites MaxPoolGrad only when its forward
    MaxPool is already rewritten (tensorflow/core/graph/mkl_layout_pass.cc, MaxpoolGradRewrite),
    so in about half the processes the loop kept the Eigen MaxPoolGrad, 10x slower (small CNN:
    PGD 1.1-1.26x slower in blocks of 4 steps, 1.5x at one step per loop iteration). A
    function's own graph has no cycle and is visited in topological order.
    """
    return tf.function(fn, autograph=False, experimental_attributes={"_noinline": True})
