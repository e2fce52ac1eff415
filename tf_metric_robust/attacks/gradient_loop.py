"""The gradient attacks' loop: projected ascent steps from a start, restarts, worst case kept.

One loop serves FGSM, PGD, MI-FGSM and the fast training attacks (gradient.py, fast.py) and the
adaptive detector attack (adaptive.py). PGD: Madry et al., ICLR 2018; MI-FGSM's momentum on
L1-normalised gradients: Dong et al., CVPR 2018; N-FGSM's box-only steps: de Jorge et al., NeurIPS
2022.

Compile cost: the steps run as a graph loop (tf.while_loop) whose body unrolls UNROLL steps, plus
a loop of single steps for the remainder, so a trace holds UNROLL + 1 steps whatever the step
count: PGD-100 compiles like PGD-5. Every step calls one separate graph function holding the
model's forward and backward pass (_plumbing.separate_function: traced once, and oneDNN's kernels
whatever the process). A fully unrolled Python loop costs the same per step on CPU but its tracing
and graph optimisation grow with the step count (bench/pgd_overhead.py measures both). The step
count, the restarts, eps, the step size and the random start's on/off switch are tensors:
changing them reuses the compiled graph.
"""

import tensorflow as tf

from tf_metric_robust.attacks import _plumbing, objectives

# Steps unrolled per iteration of the step loop: amortises the loop's per-iteration cost while the
# trace stays small (bench/pgd_overhead.py).
UNROLL = 4


def _clip_to_box(x_adv, clip_min, clip_max):
    """x_adv clipped to [clip_min, clip_max] only (N-FGSM: no eps-ball), dtype kept."""
    dtype = x_adv.dtype
    return tf.clip_by_value(x_adv, tf.cast(clip_min, dtype), tf.cast(clip_max, dtype))


def _repeat(body, count, state, unroll):
    """state after `count` (int32 scalar, or a Python int) applications of `body`.

    A count known while tracing runs its whole blocks of `unroll` applications in a
    tf.while_loop (unrolled in place when there is one block) and the rest unrolled: at most
    2 unroll - 1 applications traced. An unknown count adds a tf.while_loop of single
    applications for the rest: unroll + 1 traced.
    """

    def times(k):
        def run(state):
            for _ in range(k):
                state = body(state)
            return state

        return run

    def loop(state, block, iterations):
        _, state = tf.while_loop(
            lambda i, _: i < iterations,
            lambda i, s: (i + 1, times(block)(s)),
            (tf.constant(0), state),
            parallel_iterations=1,
        )
        return state

    known = tf.get_static_value(count)
    if known is None:
        count = tf.cast(count, tf.int32)
        return loop(loop(state, unroll, count // unroll), 1, count % unroll)
    blocks, rest = divmod(int(known), unroll)
    if blocks == 1:
        state = times(unroll)(state)
    elif blocks > 1:
        state = loop(state, unroll, blocks)
    return times(rest)(state)


def attack_graph(
    model_fn,
    x,
    y,
    threat,
    seed,
    step_size,
    decay,
    start_size,
    start_on,
    steps,
    restarts,
    *,
    norm,
    loss,
    targeted,
    start,
    momentum,
    keep_best,
    project_to_ball=True,
    unroll=UNROLL,
):
    """The shared loop: `restarts` runs of `steps` projected ascent steps, worst case per example.

    Tensors (changing them never retraces): threat (eps, clip_min, clip_max), step_size, decay,
    start_size float32 scalars; seed None or int [2]; start_on bool scalar (start at a random
    point, or at x); steps, restarts int32 scalars. Graph shape: norm, loss, targeted, start
    ('uniform': a uniform point of the ball of radius start_size * eps, projected; 'gaussian':
    x + start_size * N(0, 1), unprojected, trades.py:31-33), momentum, keep_best (restarts may be
    > 1: keep per example the successful, else highest-objective run), project_to_ball (False
    clips the start and every step to [clip_min, clip_max] only, N-FGSM, never to the eps-ball),
    unroll (steps per loop iteration, see _repeat).
    """
    eps, clip_min, clip_max = threat

    def constrain(x_adv):
        if project_to_ball:
            return objectives.project(x_adv, x, eps, norm, clip_min, clip_max)
        return _clip_to_box(x_adv, clip_min, clip_max)

    @_plumbing.separate_function
    def objective_gradient(x_adv):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            total = tf.reduce_sum(
                objectives.objective(objectives.logits_of(model_fn, x_adv), y, loss, targeted)
            )
        # No gradient path (a stop_gradient quantiser, logits that ignore the input) is a zero
        # gradient, never None: the step below then leaves x_adv where it is.
        return tf.cast(
            tape.gradient(total, x_adv, unconnected_gradients=tf.UnconnectedGradients.ZERO),
            tf.float32,
        )

    def step(state):
        x_adv, accumulated = state
        grad = objective_gradient(x_adv)
        if momentum:
            accumulated = decay * accumulated + objectives.l1_normalize(grad)
            grad = accumulated
        direction = step_size * objectives.step_direction(grad, norm)
        return constrain(x_adv + tf.cast(direction, x.dtype)), accumulated

    def start_point(run_seed):
        if start == "gaussian":
            return objectives.gaussian_start(x, start_size, run_seed)
        return constrain(objectives.random_start(x, eps * start_size, norm, run_seed))

    def one_run(restart):
        run_seed = None if seed is None else tf.random.experimental.stateless_fold_in(seed, restart)
        known = tf.get_static_value(start_on)
        if known is None:  # a branch draws only when taken: a stateful generator's state as before
            x_adv = tf.cond(start_on, lambda: start_point(run_seed), lambda: tf.identity(x))
        else:
            x_adv = start_point(run_seed) if known else x
        accumulated = tf.zeros(tf.shape(x), tf.float32)
        x_adv, _ = _repeat(step, steps, (x_adv, accumulated), unroll)
        return x_adv

    if not keep_best:
        return one_run(0)

    # Keep per example the run that succeeds, ties broken by the higher objective; the first run
    # is always taken.
    def restart_body(restart, best, best_success, best_objective):
        x_adv = one_run(restart)
        logits = objectives.logits_of(model_fn, x_adv)
        hit = objectives.success(logits, y, targeted)
        value = objectives.objective(logits, y, loss, targeted)
        better = (
            tf.equal(restart, 0)
            | (hit & ~best_success)
            | (tf.equal(hit, best_success) & (value > best_objective))
        )
        best = tf.where(tf.reshape(better, [-1] + [1] * (x.shape.rank - 1)), x_adv, best)
        best_objective = tf.where(better, value, best_objective)
        return restart + 1, best, best_success | hit, best_objective

    rows = tf.shape(x)[:1]
    _, best, _, _ = tf.while_loop(
        lambda restart, *_: restart < tf.cast(restarts, tf.int32),
        restart_body,
        (tf.constant(0), x, tf.zeros(rows, tf.bool), tf.zeros(rows, tf.float32)),
        parallel_iterations=1,
    )
    return best
