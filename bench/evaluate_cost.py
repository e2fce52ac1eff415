"""Evaluation cost against its physical limit: wall time / the same model calls made alone.

Command: `.venv/bin/python bench/evaluate_cost.py [--examples=1000] [--batch_size=200]
[--model_dir=DIR] [--plans=default,autoattack] [--repeats=1]`. Model: a run's network from
--model_dir (e.g. `bin/train --flagfile=configs/mnist5k.flags --model_dir=/tmp/evalcost_demo`),
else small_cnn after 125 natural Adam steps on the other MNIST-5k digits (seconds to train). Data:
every 5th MNIST-5k digit (1000, 100 per class; the file is sorted by class), the first --examples
of them (with --model_dir they may include the run's training digits: the cost, not the accuracy,
is measured).

The model is wrapped so that, in every compiled graph, it records each call it receives: its
number of rows, and whether a backward pass through its input followed (an identity with a
custom gradient). The limit of a part of the plan (one per progress line: each attack run, each
AutoAttack member) is the time of exactly those calls made again, right after the part, as
steady-state compiled calls one after another (`Replay`): the passes and nothing else. Measured
in the same minute as the part, the limit sees the machine as the part did: on this VM two
identical 20-second FAB-T runs in a row took 18.5 and 25.2 s, a drift that per-row unit times
measured before and after the plan could not follow. Printed per plan (the default bin/evaluate
plan; the same with --suite=autoattack) and per part: wall / limit with compile and without it
(the plan: wall - the report's compile_seconds; a part: wall - (its first call - its steady
call), from the report's call times), and process CPU time / the limit's CPU time. With
--repeats > 1 the plan runs again (each evaluation traces its own step functions) and each
ratio is the median over the runs, their range beside it. Goal: <= 1.3 without compile for the
whole plan on 1000 digits.
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
    """network's {'logits', 'embedding'}, recording in-graph the calls it receives: per number
    of rows, how many forward passes and how many backward passes through the input."""

    def __init__(self, network, max_rows):
        self.network = network
        self.max_rows = max_rows
        self.forward = tf.Variable(tf.zeros([max_rows + 1], tf.int64), trainable=False)
        self.backward = tf.Variable(tf.zeros([max_rows + 1], tf.int64), trainable=False)

    def __call__(self, images):
        rows = tf.shape(images)[0]
        fits = tf.debugging.assert_less_equal(
            rows, self.max_rows, message="a call has more rows than CountingModel's max_rows"
        )
        one = tf.constant([1], tf.int64)

        @tf.custom_gradient
        def counted(x):
            def grad(upstream):
                with tf.control_dependencies([self.backward.scatter_nd_add([[rows]], one)]):
                    return tf.identity(upstream)

            with tf.control_dependencies([fits, self.forward.scatter_nd_add([[rows]], one)]):
                return tf.identity(x), grad

        return self.network(counted(images), training=False)

    def calls(self):
        """(forward calls, backward calls) so far, each an array indexed by rows."""
        return self.forward.numpy().copy(), self.backward.numpy().copy()


class Replay:
    """The limit of a set of model calls: the same calls (rows, forward or forward + input
    gradient) made one after another as steady-state compiled calls of the bare network, on
    rows of the evaluation's images. One trace each (the batch dimension is dynamic, as in the
    attacks' loops)."""

    def __init__(self, network, x, y, max_rows):
        repeats = -(-max_rows // len(x))
        self.x = tf.constant(np.concatenate([x] * repeats)[:max_rows])
        self.y = tf.constant(np.concatenate([y] * repeats)[:max_rows])
        images = tf.TensorSpec([None, *x.shape[1:]], tf.float32)
        labels = tf.TensorSpec([None], tf.int64)

        @tf.function(input_signature=[images])
        def forward(images):
            return network(images, training=False)["logits"]

        @tf.function(input_signature=[images, labels])
        def forward_backward(images, labels):
            with tf.GradientTape() as tape:
                tape.watch(images)
                logits = network(images, training=False)["logits"]
                loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
            return tape.gradient(loss, images)

        self.forward, self.forward_backward = forward, forward_backward
        forward(self.x), forward_backward(self.x, self.y)  # the traces

    def seconds(self, forward_calls, backward_calls):
        """(wall, process CPU) seconds of the calls: forward_calls[r] passes of r rows, of which
        backward_calls[r] with the input gradient (arrays indexed by rows)."""

        def run():
            out = tf.zeros([])
            for rows in np.flatnonzero(forward_calls):
                images, labels = self.x[:rows], self.y[:rows]
                for _ in range(backward_calls[rows]):
                    out = self.forward_backward(images, labels)
                for _ in range(forward_calls[rows] - backward_calls[rows]):
                    out = self.forward(images)
            out.numpy()

        return seconds(run)


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


def _timed_plan(counting, replay, x, y, config, batch_size):
    """One evaluation of (x, y) under `config`: (its report, its parts). A part is what ran up
    to a progress line: (the line, its (wall, CPU) seconds, its limit's (wall, CPU) seconds,
    its (forward rows, backward rows)); its limit is replayed as the line arrives, before the
    next part starts, and its seconds exclude the replays."""
    parts = []
    last = {"calls": counting.calls(), "clock": (time.perf_counter(), time.process_time())}

    def close_part(line):
        clock = (time.perf_counter(), time.process_time())
        calls = counting.calls()
        forward, backward = (now - before for now, before in zip(calls, last["calls"]))
        rows = tuple(int(np.dot(np.arange(len(c)), c)) for c in (forward, backward))
        spent = tuple(now - before for now, before in zip(clock, last["clock"]))
        parts.append((line, spent, replay.seconds(forward, backward), rows))
        last["calls"], last["clock"] = calls, (time.perf_counter(), time.process_time())

    def progress(line):
        if not line.startswith(" ") and not line.startswith("Evaluation plan"):
            close_part(line)

    report = evaluate(
        counting, (x, y), config, dataset="mnist5k", batch_size=batch_size, progress=progress
    ).report
    close_part("(after the last line: the report)")
    return report, parts


def _ratio_text(values):
    """The median of `values`, with their range when there are several."""
    middle = f"{statistics.median(values):.2f}"
    return middle if len(values) == 1 else f"{middle} ({min(values):.2f}-{max(values):.2f})"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=200)
    parser.add_argument("--model_dir", default=None)
    parser.add_argument("--plans", default="default,autoattack")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    network = _network(args.model_dir)
    images, labels = data.read_mnist5k()
    held_out = np.arange(len(labels)) % 5 == 0
    x = images[held_out][: args.examples].astype(np.float32) / 255.0
    y = labels[held_out][: args.examples].astype(np.int64)
    print(f"Evaluation cost: {len(y)} MNIST-5k digits, shards of {args.batch_size}")
    plans = {"default": EvalConfig(), "autoattack": EvalConfig(suite="autoattack")}
    replay = Replay(network, x, y, args.batch_size)
    for name in args.plans.split(","):
        counting = CountingModel(network, args.batch_size)
        runs = [
            _timed_plan(counting, replay, x, y, plans[name], args.batch_size)
            for _ in range(args.repeats)
        ]
        report, parts = runs[0]
        totals = []  # per repeat: wall, CPU, limit wall, limit CPU, compile
        for run_report, run_parts in runs:
            sums = [sum(part[i][clock] for part in run_parts) for i in (1, 2) for clock in (0, 1)]
            totals.append((*sums, run_report["compile_seconds"]))
        rows = tuple(sum(part[3][i] for part in parts) for i in (0, 1))
        wall, cpu, limit_wall, limit_cpu, compile_s = totals[0]
        steady = [(t[0] - t[4]) / t[2] for t in totals]
        repeats = f" over {len(runs)} runs of the plan" if len(runs) > 1 else ""
        print(f"{name}: {rows[0]} forward rows, {rows[1]} backward rows per run{repeats}")
        print(
            f"  first run: wall {wall:.1f} s (compile {compile_s:.1f} s), limit {limit_wall:.1f} s;"
            f" CPU {cpu:.1f} s, limit {limit_cpu:.1f} s; clean accuracy "
            f"{report['clean_accuracy']:.3f}, robust {report['robust_accuracy']:.3f}"
        )
        print(
            f"  wall / limit {_ratio_text([t[0] / t[2] for t in totals])}, without compile "
            f"{_ratio_text(steady)} ({'OK' if statistics.median(steady) <= GOAL else 'MISSED'}, "
            f"goal <= {GOAL}); CPU / limit {_ratio_text([t[1] / t[3] for t in totals])}"
        )
        print(
            "  part (its progress line)                     wall s  wall/lim          "
            "without compile   CPU/lim           first call s  steady call s"
        )
        for index, (line, spent, _, part_rows) in enumerate(parts):
            if not any(part_rows):
                continue
            ratios = {"wall": [], "steady": [], "cpu": []}
            for run_report, run_parts in runs:
                _, (wall, cpu), (limit_wall, limit_cpu), _ = run_parts[index]
                ratios["wall"].append(wall / limit_wall)
                ratios["steady"].append((wall - _compile(line, run_report)) / limit_wall)
                ratios["cpu"].append(cpu / limit_cpu)
            times = _call_times(line, report)
            print(
                f"  {line[:44]:44s} {spent[0]:6.1f}  {_ratio_text(ratios['wall']):16s}  "
                f"{_ratio_text(ratios['steady']):16s}  {_ratio_text(ratios['cpu']):16s}  "
                f"{_text(times.get('first_call_seconds')):>12}"
                f"  {_text(times.get('steady_call_seconds')):>13}"
            )


def _call_times(line, report):
    """The report's call times of the run or AutoAttack member a progress line ends ({} if
    none): '[k/n] name (...)' lines are plan runs, 'AutoAttack name: ...' lines members."""
    words = line.split()
    if line.startswith("["):
        return report["attacks"].get(words[1], {})
    if line.startswith("AutoAttack "):
        return report["suite"]["call_times"].get(words[1].rstrip(":"), {})
    return {}


def _compile(line, report):
    """Seconds of tracing in a part: its first call minus its steady call, where both exist."""
    times = _call_times(line, report)
    if times.get("steady_call_seconds") is None:
        return 0.0
    return max(0.0, times["first_call_seconds"] - times["steady_call_seconds"])


def _text(value):
    return "" if value is None else str(value)


if __name__ == "__main__":
    main()
