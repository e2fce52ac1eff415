"""Evaluation cost against its physical limit: wall time / the passes the model really receives.

Command: `.venv/bin/python bench/evaluate_cost.py [--examples=1000] [--batch_size=200]
[--model_dir=DIR]`. Model: a run's network from --model_dir (e.g. `bin/train
--flagfile=configs/mnist5k.flags --model_dir=/tmp/evalcost_demo`), else small_cnn after 125
natural Adam steps on the other MNIST-5k digits (seconds to train). Data: every 5th MNIST-5k digit
(1000, 100 per class; the file is sorted by class), the first --examples of them (with
--model_dir they may include the run's training digits: the cost, not the accuracy, is measured).

The model is wrapped so that, in every compiled graph, it counts the rows of each forward pass
and of each backward pass through its input (an identity with a custom gradient). The limit of
an evaluation is forward_rows x t_forward + backward_rows x (t_forward_backward - t_forward),
with t_* the steady-state seconds per row of one compiled forward pass and one forward + input
gradient at --batch_size through the same wrapper, measured before and after each plan (their
mean; the spread shows the load). Printed per plan (the default bin/evaluate plan; the same with
--suite=autoattack) and per part of it (one per progress line: each attack run, each AutoAttack
member): wall / limit with compile and without it ((wall - the report's compile_seconds) /
limit), and process CPU time / the same limit in CPU time (steadier on a shared machine). Goal: <= 1.3 without compile for the whole plan
on 1000 digits.
"""

import argparse
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from tf_metric_robust import data, models
from tf_metric_robust.config import EvalConfig
from tf_metric_robust.evaluation.evaluate import evaluate
from timing import seconds

GOAL = 1.3


class CountingModel:
    """network's {'logits', 'embedding'}, counting forward rows and backward rows in-graph."""

    def __init__(self, network):
        self.network = network
        self.forward = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.backward = tf.Variable(0, dtype=tf.int64, trainable=False)

    def __call__(self, images):
        rows = tf.cast(tf.shape(images)[0], tf.int64)

        @tf.custom_gradient
        def counted(x):
            def grad(upstream):
                with tf.control_dependencies([self.backward.assign_add(rows)]):
                    return tf.identity(upstream)

            with tf.control_dependencies([self.forward.assign_add(rows)]):
                return tf.identity(x), grad

        return self.network(counted(images), training=False)

    def counts(self, reset=False):
        """(forward rows, backward rows) so far; reset: then back to 0."""
        rows = int(self.forward.numpy()), int(self.backward.numpy())
        if reset:
            self.forward.assign(0)
            self.backward.assign(0)
        return rows


def _network(model_dir):
    if model_dir:
        from tf_metric_robust import run_folder

        return run_folder.load_network(model_dir)[0]
    images, labels = data.read_mnist5k()
    train = np.arange(len(labels)) % 5 != 0
    keras.utils.set_random_seed(0)
    network = models.build("small_cnn", 10, (28, 28, 1))
    classifier = keras.Model(network.input, network.output["logits"])
    classifier.compile(
        keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    classifier.fit(
        images[train].astype(np.float32) / 255.0,
        labels[train],
        batch_size=32,
        epochs=1,  # 125 steps
        verbose=0,
    )
    return network


def _per_row_seconds(model, x, y, repeats=15, warmups=3):
    """Steady-state seconds per row of one compiled forward pass and one forward + input
    gradient of `model` (the counting wrapper itself, so the instrument is on both sides of the
    ratio) at x's batch size: {'forward', 'forward_backward'} -> (wall, process CPU)."""

    @tf.function
    def forward(images):
        return model(images)["logits"]

    @tf.function
    def forward_backward(images, labels):
        with tf.GradientTape() as tape:
            tape.watch(images)
            logits = model(images)["logits"]
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        return tape.gradient(loss, images)

    def timed(fn, *args):
        for _ in range(warmups):  # the trace, then calls until the thread pools are warm
            fn(*args).numpy()
        runs = []
        for _ in range(repeats):
            runs.append(seconds(lambda: fn(*args).numpy()))
        return tuple(statistics.median(r[i] for r in runs) / len(x) for i in (0, 1))

    return {"forward": timed(forward, x), "forward_backward": timed(forward_backward, x, y)}


def _limit(rows, unit, clock):
    """The pass-count limit of (forward rows, backward rows) on `clock` (0 wall, 1 CPU)."""
    forward, backward = rows
    t_forward, t_both = unit["forward"][clock], unit["forward_backward"][clock]
    return forward * t_forward + backward * (t_both - t_forward)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=200)
    parser.add_argument("--model_dir", default=None)
    parser.add_argument("--plans", default="default,autoattack")
    args = parser.parse_args()
    network = _network(args.model_dir)
    images, labels = data.read_mnist5k()
    held_out = np.arange(len(labels)) % 5 == 0
    x = images[held_out][: args.examples].astype(np.float32) / 255.0
    y = labels[held_out][: args.examples].astype(np.int64)
    print(f"Evaluation cost: {len(y)} MNIST-5k digits, shards of {args.batch_size}")
    plans = {"default": EvalConfig(), "autoattack": EvalConfig(suite="autoattack")}
    for name in args.plans.split(","):
        counting = CountingModel(network)
        unit = (
            lambda: _per_row_seconds(  # noqa: E731
                counting, tf.constant(x[: args.batch_size]), tf.constant(y[: args.batch_size])
            )
        )
        before = unit()
        counting.counts(reset=True)
        marks = []  # (progress line, wall, CPU, forward rows, backward rows) after each part

        def progress(line, counting=counting, marks=marks):
            if not line.startswith(" ") and not line.startswith("Evaluation plan"):
                marks.append((line, time.perf_counter(), time.process_time(), counting.counts()))

        marks.append(("start", time.perf_counter(), time.process_time(), (0, 0)))
        report = evaluate(
            counting,
            (x, y),
            plans[name],
            dataset="mnist5k",
            batch_size=args.batch_size,
            progress=progress,
        ).report
        wall = time.perf_counter() - marks[0][1]
        cpu = time.process_time() - marks[0][2]
        rows = counting.counts()
        after = unit()
        unit_mean = {k: tuple((a + b) / 2 for a, b in zip(before[k], after[k])) for k in before}
        limit = [_limit(rows, unit_mean, clock) for clock in (0, 1)]
        compile_s = report["compile_seconds"]
        steady = (wall - compile_s) / limit[0]
        print(
            f"{name}: {rows[0]} forward rows, {rows[1]} backward rows; per row forward "
            f"{_ms(before['forward'])} -> {_ms(after['forward'])}, forward + input gradient "
            f"{_ms(before['forward_backward'])} -> {_ms(after['forward_backward'])} ms "
            "(wall, CPU; before -> after the plan)"
        )
        print(
            f"  wall {wall:.1f} s (compile {compile_s:.1f} s), limit {limit[0]:.1f} s: "
            f"wall / limit {wall / limit[0]:.2f}, without compile {steady:.2f} "
            f"({'OK' if steady <= GOAL else 'MISSED'}, goal <= {GOAL}); CPU {cpu:.1f} s, "
            f"limit {limit[1]:.1f} s: CPU / limit {cpu / limit[1]:.2f}; clean accuracy "
            f"{report['clean_accuracy']:.3f}, robust {report['robust_accuracy']:.3f}"
        )
        print(
            "  part (its progress line)                     wall s  wall/lim  CPU/lim  "
            "first call s  steady call s"
        )
        for (_, wall0, cpu0, rows0), (line, wall1, cpu1, rows1) in zip(marks, marks[1:]):
            part = (rows1[0] - rows0[0], rows1[1] - rows0[1])
            part_limit = [_limit(part, unit_mean, clock) for clock in (0, 1)]
            if part_limit[0] <= 0:
                continue
            run = line.split()[1] if line.startswith("[") else None
            entry = report["attacks"].get(run, {})
            print(
                f"  {line[:44]:44s} {wall1 - wall0:6.1f}  {(wall1 - wall0) / part_limit[0]:8.2f}  "
                f"{(cpu1 - cpu0) / part_limit[1]:7.2f}  {_text(entry.get('first_call_seconds')):>12}"
                f"  {_text(entry.get('steady_call_seconds')):>13}"
            )


def _text(value):
    return "" if value is None else str(value)


def _ms(pair):
    return "/".join(f"{1e3 * v:.3f}" for v in pair)


if __name__ == "__main__":
    main()
