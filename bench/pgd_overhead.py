"""PGD-k cost: first call (tracing + graph optimisation) and steady state, graph loop vs unrolled.

Command: `.venv/bin/python bench/pgd_overhead.py` (or `make bench`). Model: small_cnn, MNIST shape
(28, 28, 1), batch 128, random weights and images (cost does not depend on them). Per k in
(10, 40, 100), two ways to run the same k steps (attacks/gradient_loop.py):
  loop      the library's: a tf.while_loop over blocks of UNROLL unrolled steps (+ a remainder
            loop), steps a tensor, as `attacks.pgd` runs it;
  unrolled  every step unrolled in one tf.function (the loop's `unroll` = k).
Columns: the first call's wall seconds (trace, graph optimisation, one run), the steady-state
wall seconds of one call, and the steady-state ratio to k input gradients (the median over
REPEATS of the ratio of adjacent runs, robust to load from other processes; goal <= 1.05 for the
loop). The baseline is a tf.function returning d CE / d x, i.e. one PGD step's work.
"""

import statistics
import sys
import time

import tensorflow as tf

from tf_metric_robust import models
from tf_metric_robust.attacks import gradient_loop
from timing import interleaved

BATCH = 128
REPEATS = 5
GOAL = 1.05
STEPS = (10, 40, 100)


def _pgd(model_fn, x, y, steps, unroll):
    """A fresh tf.function running `steps` PGD steps (eps 0.3, step 0.01, random start)."""
    threat = tuple(tf.constant(v) for v in (0.3, 0.0, 1.0))
    seed = tf.constant([0, 0], tf.int64)

    def graph(steps_t):
        return gradient_loop.attack_graph(
            model_fn,
            x,
            y,
            threat,
            seed,
            tf.constant(0.01),
            tf.constant(0.0),
            tf.constant(1.0),
            tf.constant(True),
            steps_t,
            tf.constant(1),
            norm="linf",
            loss="ce",
            targeted=False,
            start="uniform",
            momentum=False,
            keep_best=False,
            unroll=unroll,
        )

    if unroll >= steps:  # the step count known while tracing: one unrolled Python loop
        compiled = tf.function(lambda: graph(tf.constant(steps)), autograph=False)
        return lambda: compiled().numpy()
    compiled = tf.function(graph, autograph=False)
    count = tf.constant(steps)
    return lambda: compiled(count).numpy()


def main():
    tf.random.set_seed(0)
    model = models.build("small_cnn", 10, (28, 28, 1))
    model_fn = lambda x: model(x, training=False)["logits"]  # noqa: E731
    x = tf.random.uniform([BATCH, 28, 28, 1])
    y = tf.random.uniform([BATCH], maxval=10, dtype=tf.int64)

    @tf.function
    def input_gradient(images, labels):
        with tf.GradientTape() as tape:
            tape.watch(images)
            logits = tf.cast(model_fn(images), tf.float32)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        return tape.gradient(loss, images)

    steps_list = [int(a) for a in sys.argv[1:]] or STEPS
    print(
        f"PGD cost: small_cnn, batch {BATCH}, UNROLL {gradient_loop.UNROLL}, "
        f"median of {REPEATS} repeats"
    )
    print("steps  variant   first call s  steady s  steady / k gradients")
    for steps in steps_list:
        runs = {
            "grad": lambda: [input_gradient(x, y).numpy() for _ in range(steps)],  # noqa: B023
            "loop": _pgd(model_fn, x, y, steps, gradient_loop.UNROLL),
            "unrolled": _pgd(model_fn, x, y, steps, steps),
        }
        first = {}
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            first[name] = time.perf_counter() - started
        times = interleaved(runs, REPEATS, warmups=1)  # a second call: allocations settle
        for name in ("loop", "unrolled"):
            # Ratio per adjacent (gradients, PGD) pair, then the median: robust to load drifting.
            ratio = statistics.median(p[0] / g[0] for g, p in zip(times["grad"], times[name]))
            steady = statistics.median(p[0] for p in times[name])
            verdict = "" if name != "loop" else (" OK" if ratio <= GOAL else " MISSED")
            print(
                f"{steps:5d}  {name:8s}  {first[name]:12.2f}  {steady:8.3f}  {ratio:.3f}{verdict}"
            )
        print(
            f"{steps:5d}  ratio loop / unrolled steady: wall {_ratio(times, 0)}, "
            f"CPU {_ratio(times, 1)}"
        )


def _ratio(times, clock):
    pairs = zip(times["loop"], times["unrolled"])
    return f"{statistics.median(a[clock] / b[clock] for a, b in pairs):.3f}"


if __name__ == "__main__":
    main()
