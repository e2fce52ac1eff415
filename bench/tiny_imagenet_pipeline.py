"""Does the Tiny ImageNet input pipeline stay ahead of the TLA train step?

Command: `.venv/bin/python bench/tiny_imagenet_pipeline.py [--train_step] [--width 64] [--steps 1]`.
Builds a synthetic miniature Tiny ImageNet (data.fake.tiny_imagenet_files: the real zip layout,
`--classes` x 50 smooth 64x64 JPEGs), prepares it with the tfds builder offline, and times, in one
run:
  * the pipeline: `data.train_dataset` batches of 40 (TLA batch 20 + extra pool 1 x 20, as
    configs/tiny_imagenet.flags), augmented, with the in-memory cache disabled because the real
    100,000-image split (1.2 GB of pixels) is too big to cache and is decoded every epoch;
  * the consumer: the TLA train step of configs/tiny_imagenet.flags, parsed as bin/train parses
    it (PGD-7, both positives, the other one from the data, extra pool), on `preact_resnet_tiny`
    of width `--width` (64 = the authors' network).
Prints images/s of each and their ratio (> 1: the pipeline keeps up). On a GPU machine the default
width is 64 and the ratio is the real answer. On a CPU-only machine the train step is timed only
with `--train_step` (width 8 by default; ~45 s, mostly tracing the PGD-7-unrolled ResNet), because
it is ~1000x slower than the pipeline (7.8 vs 5,811 images/s, bench/README.md); the pipeline rate is
the number to compare with a GPU's step rate (images/s = 40 x steps/s).
"""

import argparse
import dataclasses
import os
import tempfile
import time

import tensorflow as tf
from absl import flags

from tf_metric_robust import cli, data
from tf_metric_robust.data import catalog, fake
from tf_metric_robust.training import run

RECIPE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "configs", "tiny_imagenet.flags"
)
PER_CLASS = 50


def pipeline_rate(data_dir, batches, batch_size):
    """(images/s, longest wait for one batch in s) of the uncached, augmented training stream.

    Timed after one warm-up batch; the longest wait shows the stall where a new shuffle window
    is decoded (each window of the split is decoded whole before its first batch comes out).
    """
    catalog._CACHE_MAX_BYTES = 0  # the real train split is never cached (see the module docstring)
    ds = data.train_dataset("tiny_imagenet", batch_size=batch_size, seed=0, data_dir=data_dir)
    iterator = iter(ds)
    next(iterator)
    waits = []
    start = time.perf_counter()
    for _ in range(batches):
        before = time.perf_counter()
        next(iterator)[0].numpy()
        waits.append(time.perf_counter() - before)
    return batches * batch_size / (time.perf_counter() - start), max(waits)


def recipe_config(width):
    """configs/tiny_imagenet.flags as bin/train parses it, with the network at width `width`."""
    cli.define_train_flags()
    flags.FLAGS(["tiny_imagenet_pipeline", f"--flagfile={RECIPE}", "--model_dir=unused"])
    return dataclasses.replace(cli.train_config(), model_kwargs={"width": width})


def step_examples(config):
    """Images one TLA step reads: the batch and the extra clean pool (authors: 20 + 1 x 20)."""
    return config.batch_size * (1 + config.triplet.pool_multiplier)


def train_step_rate(config, steps):
    """Images/s the recipe's TLA train step consumes (batch + pool per step), after one traced
    step; random images stand in for the images and their other positives from the data."""
    trainer = run.build_trainer(config)
    shape = [step_examples(config), 64, 64, 3]
    images, others = tf.random.uniform(shape), tf.random.uniform(shape)
    labels = tf.random.uniform(shape[:1], maxval=200, dtype=tf.int64)
    ds = tf.data.Dataset.from_tensors(((images, others), labels)).repeat()
    trainer.fit(ds, steps_per_epoch=1, epochs=1, verbose=0)  # tracing
    start = time.perf_counter()
    trainer.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * shape[0] / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--width",
        type=int,
        default=None,
        help="network width (64 = authors'; default 64 with a GPU, else 8)",
    )
    parser.add_argument("--steps", type=int, default=1, help="timed train steps")
    parser.add_argument("--classes", type=int, default=40, help="classes of the miniature")
    parser.add_argument(
        "--train_step",
        action="store_true",
        help="also time the train step on a CPU-only machine (always on a GPU)",
    )
    args = parser.parse_args()
    gpu = bool(tf.config.list_physical_devices("GPU"))
    if args.width is None:
        args.width = 64 if gpu else 8
    config = recipe_config(args.width)
    batch_size = step_examples(config)
    with tempfile.TemporaryDirectory() as data_dir:
        manual = os.path.join(data_dir, "downloads", "manual")
        wnids = [f"n{index:08d}" for index in range(args.classes)]
        fake.write_tiny_imagenet(manual, fake.tiny_imagenet_files(wnids, PER_CLASS, 1))
        start = time.perf_counter()
        data.load_split("tiny_imagenet", "validation", data_dir=data_dir)  # prepares offline
        prepare = time.perf_counter() - start
        examples = args.classes * (PER_CLASS + 1)
        print(f"prepared {examples} images in {prepare:.1f} s ({examples / prepare:.0f} images/s)")
        batches = 2 * args.classes * PER_CLASS // batch_size  # two epochs
        supply, longest = pipeline_rate(data_dir, batches, batch_size)
    print(
        f"pipeline: {supply:.0f} images/s (uncached, decode + pad-4 crop + flip, "
        f"batches of {batch_size}); longest wait for a batch {longest:.2f} s "
        f"(a {args.classes * PER_CLASS}-image shuffle window; the real split's are 10,000)"
    )
    if not (gpu or args.train_step):
        print(
            "train step not timed on a CPU-only machine (pass --train_step): compare the "
            f"pipeline's {supply:.0f} images/s with a GPU's TLA step rate ({batch_size} x steps/s)"
        )
        return
    demand = train_step_rate(config, args.steps)
    print(
        f"TLA train step, preact_resnet_tiny width {args.width}, PGD-7: {demand:.1f} images/s "
        f"({batch_size / demand:.2f} s/step)"
    )
    print(
        f"ratio pipeline / train step: {supply / demand:.1f} "
        f"({'pipeline stays ahead' if supply > demand else 'PIPELINE IS THE BOTTLENECK'})"
    )


if __name__ == "__main__":
    main()
