"""PGD-k cost over k input gradients: does the one-tf.function unrolled loop add overhead?

Command: `.venv/bin/python bench/pgd_overhead.py` (or `make bench`). Model: small_cnn, MNIST shape
(28, 28, 1), batch 128, random weights and images (cost does not depend on them). Per k, prints
(PGD-k wall time) / (k x one input-gradient time): the median over 5 repeats of the ratio of
adjacent runs (robust to load from other processes), after a warm-up that includes tracing; the
same ratio in process CPU time is printed alongside. Goal <= 1.03 (an unrolled PGD
costs k gradients). The baseline is a tf.function returning d CE / d x, i.e. one PGD step's work.
"""

import statistics

import tensorflow as tf

from tf_metric_robust import attacks, models
from timing import interleaved

BATCH = 128
REPEATS = 5
GOAL = 1.03


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

    print(f"PGD overhead: small_cnn, batch {BATCH}, median of {REPEATS} repeats")
    for steps in (10, 40):
        run_grad = lambda: [input_gradient(x, y).numpy() for _ in range(steps)]  # noqa: E731
        run_pgd = lambda: attacks.pgd(
            model_fn,
            x,
            y,
            eps=0.3,
            step_size=0.01,  # noqa: E731
            steps=steps,
        ).numpy()
        times = interleaved({"grad": run_grad, "pgd": run_pgd}, REPEATS)
        grad_times, pgd_times = times["grad"], times["pgd"]
        # Ratio per adjacent (gradients, PGD) pair, then the median: robust to load drifting.
        ratio = statistics.median(p[0] / g[0] for g, p in zip(grad_times, pgd_times))
        cpu_ratio = statistics.median(p[1] / g[1] for g, p in zip(grad_times, pgd_times))
        grad_ms = 1e3 * statistics.median(g[0] for g in grad_times) / steps
        pgd_ms = 1e3 * statistics.median(p[0] for p in pgd_times)
        verdict = "OK" if ratio <= GOAL else "MISSED"
        print(
            f"PGD-{steps}: {pgd_ms:.1f} ms vs {steps} x {grad_ms:.2f} ms input gradient -> "
            f"ratio {ratio:.3f} (goal <= {GOAL}) {verdict}; CPU-time ratio {cpu_ratio:.3f}"
        )


if __name__ == "__main__":
    main()
