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
gradient at --batch_size, measured before and after each plan (their mean; the spread shows the
load). Printed per plan (the default bin/evaluate plan; the same with
--suite=autoattack): wall seconds, the report's compile_seconds, the limit, wall / limit with
compile and without it ((wall - compile) / limit). Goal: <= 1.3 without compile for the whole plan
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

    def counts(self):
        """(forward rows, backward rows) so far."""
        return int(self.forward.numpy()), int(self.backward.numpy())


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


def _per_row_seconds(network, x, y, repeats=7):
    """(forward, forward + input gradient) steady-state seconds per row at x's batch size."""

    @tf.function
    def forward(images):
        return network(images, training=False)["logits"]

    @tf.function
    def forward_backward(images, labels):
        with tf.GradientTape() as tape:
            tape.watch(images)
            logits = network(images, training=False)["logits"]
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        return tape.gradient(loss, images)

    def timed(fn, *args):
        fn(*args).numpy()  # trace
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn(*args).numpy()
            times.append(time.perf_counter() - started)
        return statistics.median(times) / len(x)

    return timed(forward, x), timed(forward_backward, x, y)


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
    batch = tf.constant(x[: args.batch_size])
    unit = lambda: _per_row_seconds(network, batch, tf.constant(y[: args.batch_size]))  # noqa: E731
    print(f"Evaluation cost: {len(y)} MNIST-5k digits, shards of {args.batch_size}")
    print("plan        wall s  compile s  limit s  fwd rows  bwd rows  wall/limit  (no compile)")
    plans = {"default": EvalConfig(), "autoattack": EvalConfig(suite="autoattack")}
    for name in args.plans.split(","):
        counting = CountingModel(network)
        before = unit()
        marks = []  # (progress line, time, forward rows, backward rows) at the end of each part

        def progress(line, counting=counting, marks=marks):
            if not line.startswith(" ") and not line.startswith("Evaluation plan"):
                marks.append((line, time.perf_counter(), *counting.counts()))

        started = time.perf_counter()
        marks.append(("start", started, 0, 0))
        report = evaluate(
            counting,
            (x, y),
            plans[name],
            dataset="mnist5k",
            batch_size=args.batch_size,
            progress=progress,
        ).report
        wall = time.perf_counter() - started
        after = unit()
        t_forward, t_both = ((a + b) / 2 for a, b in zip(before, after))
        forward, backward = counting.counts()
        limit = forward * t_forward + backward * (t_both - t_forward)
        steady = (wall - report["compile_seconds"]) / limit
        verdict = "OK" if steady <= GOAL else "MISSED"
        print(
            f"{name:10s}  {wall:6.1f}  {report['compile_seconds']:9.1f}  {limit:7.1f}  "
            f"{forward:8d}  {backward:8d}  {wall / limit:10.2f}  {steady:.2f} (goal <= {GOAL}) "
            f"{verdict}"
        )
        print(
            "    per row, before / after the plan: forward "
            f"{1e3 * before[0]:.3f} / {1e3 * after[0]:.3f} ms, forward + input gradient "
            f"{1e3 * before[1]:.3f} / {1e3 * after[1]:.3f} ms; clean accuracy "
            f"{report['clean_accuracy']:.3f}, robust {report['robust_accuracy']:.3f}"
        )
        print(
            "    part (its progress line)                    wall s  wall/limit  first call s"
            "  steady call s  calls"
        )
        for (_, then, f0, b0), (line, now, f1, b1) in zip(marks, marks[1:]):
            part_limit = (f1 - f0) * t_forward + (b1 - b0) * (t_both - t_forward)
            if part_limit <= 0:
                continue
            run = line.split()[1] if line.startswith("[") else None
            entry = report["attacks"].get(run, {})
            print(
                f"    {line[:44]:44s} {now - then:6.1f}  {(now - then) / part_limit:10.2f}  "
                f"{entry.get('first_call_seconds', ''):>12}  {entry.get('steady_call_seconds', ''):>13}"
                f"  {entry.get('calls', ''):>5}"
            )
        if report["suite"]:
            print(
                f"    AutoAttack members' seconds: {report['suite']['seconds']}, robust "
                f"{report['suite']['robust_accuracy']:.3f}"
            )


if __name__ == "__main__":
    main()
