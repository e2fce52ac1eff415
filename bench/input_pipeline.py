"""Input pipeline throughput vs what the train step consumes (goal: pipeline >= 5x the step).

Command: `.venv/bin/python bench/input_pipeline.py [--batches 200] [--rounds 3]`.
Two datasets through `data.train_dataset` (shuffle, decode to float, pad-4 crop + flip where the
recipe augments, prefetch):

  * mnist5k (the real offline digits, prepared into a temporary tfds data_dir), batch 50;
  * cifar10-shaped data from `tfds.testing.mock_data` (random 32x32x3 uint8 examples, tfds'
    `is_prepared` patched as the `mock_tfds` test fixture does), batch 50, augmented. Mock reads
    skip the TFRecord decoding of the real files, so this rate is an upper bound of the real one.

The consumer is the compiled TLA train step of the demo recipe (small_cnn, PGD-10, batch 50) on
the same shape, in the same process, interleaved with the pipeline round by round. Its rate on
this CPU is far below a GPU's; the pipeline rate is also the number to hold against a GPU's
images/s. The pipeline is timed alone, so its threads have both cores; during training they share
them with the step (prefetch overlaps the two).
"""

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from tf_metric_robust import data, models  # noqa: E402
from tf_metric_robust.config import AttackConfig, TripletConfig  # noqa: E402
from tf_metric_robust.training import AdversarialTrainer  # noqa: E402

BATCH = 50
GOAL = 5.0


@contextlib.contextmanager
def mock_cifar(num_examples):
    """tfds reads served by mock_data (as tests/conftest.py's mock_tfds fixture)."""
    with (
        tfds.testing.mock_data(num_examples=num_examples),
        mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True),
    ):
        yield


def pipeline_run(dataset, batches):
    """A callable pulling `batches` batches from one long-lived iterator (epochs wrap around)."""
    iterator = iter(dataset)

    def run():
        for _ in range(batches):
            images, _ = next(iterator)
        images.numpy()  # the last batch is materialised on the host

    return run


def step_run(shape, steps):
    """A callable running one compiled TLA train step of the demo recipe on a fixed batch."""
    keras.utils.set_random_seed(0)
    network = models.build("small_cnn", 10, shape)
    trainer = AdversarialTrainer(
        network,
        mode="tla",
        seed=0,
        attack=AttackConfig(eps=0.3, step_size=0.05, steps=steps),
        triplet=TripletConfig(positive="other", margin=0.05, lambda_triplet=0.5, lambda_norm=1e-4),
    )
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    trainer.optimizer.build(network.trainable_variables)
    rng = np.random.default_rng(0)
    batch = (
        tf.constant(rng.uniform(size=(BATCH, *shape)).astype(np.float32)),
        tf.constant(rng.integers(0, 10, BATCH), tf.int64),
    )
    step = tf.function(trainer.train_step)
    return lambda: float(step(batch)["loss"])


def measure(name, dataset, shape, args):
    pull = pipeline_run(dataset, args.batches)
    train = step_run(shape, args.steps)
    pull(), train(), train()  # warm-up: caches filled, tracing done
    pipe_rates, step_rates = [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        pull()
        pipe_rates.append(args.batches * BATCH / (time.perf_counter() - start))
        start = time.perf_counter()
        train()
        step_rates.append(BATCH / (time.perf_counter() - start))
    ratio = statistics.median(p / s for p, s in zip(pipe_rates, step_rates))
    verdict = "OK" if ratio >= GOAL else "MISSED"
    print(
        f"{name:34s} {statistics.median(pipe_rates):10.0f} {statistics.median(step_rates):10.1f} "
        f"{ratio:9.0f}x  (goal >= {GOAL:g}x) {verdict}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200, help="batches per pipeline timing")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="PGD steps of the TLA step")
    args = parser.parse_args()
    tfds.disable_progress_bar()
    print(
        f"batch {BATCH}; pipeline: median images/s over {args.rounds} rounds of "
        f"{args.batches} batches; step: TLA small_cnn PGD-{args.steps} images/s"
    )
    print(f"{'dataset':34s} {'pipeline':>10s} {'step':>10s} {'ratio':>10s}")
    with tempfile.TemporaryDirectory() as data_dir:
        mnist = data.train_dataset("mnist5k", batch_size=BATCH, seed=0, data_dir=data_dir)
        measure("mnist5k (real, cached)", mnist, (28, 28, 1), args)
    with mock_cifar(num_examples=args.batches * BATCH):
        cifar = data.train_dataset("cifar10", batch_size=BATCH, seed=0)
        measure("cifar10 mock (crop + flip)", cifar, (32, 32, 3), args)


if __name__ == "__main__":
    main()
