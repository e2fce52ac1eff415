"""Keras fit under OneDeviceStrategy("/cpu:0") / under TF's default strategy, same TLA demo step.

Why it exists: until 2026-11-25 `--strategy=auto` on a CPU-only host built OneDeviceStrategy, and
the demo step took 318 ms in `bin/train` against 160 ms for the same compiled step called
directly. The cause: under a real strategy Keras feeds batches through a MultiDeviceIterator, and
once one exists in a process every CPU op of that process runs about 2x slower in wall time, with
kernel (sys) time about as large as user time. The slowdown outlives the iterator, so each variant
runs in its own fresh process; variants alternate round by round and ratios are medians.

Variants (small_cnn, batch 50, TLA with PGD-5, Adam, constant batch repeated by tf.data):
  default       Keras fit, TF's default strategy (what `--strategy=auto` now gives on a CPU);
  one_device    Keras fit, trainer built in OneDeviceStrategy("/cpu:0").scope() (the old 'auto');
  default+mdi   (with --isolate) as default, after creating and dropping a MultiDeviceIterator
                over another dataset: isolates the cause.

    .venv/bin/python bench/strategy_overhead.py [--steps 15] [--rounds 1] [--isolate]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = ("default", "one_device", "default+mdi")


def child(variant, steps):
    """Runs `steps` timed fit steps of the demo TLA step in this process; prints one JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import contextlib

    import keras
    import numpy as np
    import tensorflow as tf

    from tf_metric_robust import models
    from tf_metric_robust.config import AttackConfig, TripletConfig
    from tf_metric_robust.training import AdversarialTrainer

    rng = np.random.default_rng(0)
    images = rng.uniform(size=(50, 28, 28, 1)).astype(np.float32)
    labels = rng.integers(0, 10, 50)
    batches = tf.data.Dataset.from_tensors((images, labels)).repeat()
    if variant == "default+mdi":
        from tensorflow.python.data.ops import multi_device_iterator_ops

        iterator = multi_device_iterator_ops.OwnedMultiDeviceIterator(
            tf.data.Dataset.range(10), ["/cpu:0"]
        )
        iterator.get_next()
        del iterator
    scope = (
        tf.distribute.OneDeviceStrategy("/cpu:0").scope()
        if variant == "one_device"
        else contextlib.nullcontext()
    )
    keras.utils.set_random_seed(0)
    with scope:
        trainer = AdversarialTrainer(
            models.build("small_cnn", 10, (28, 28, 1)),
            mode="tla",
            triplet=TripletConfig(),
            attack=AttackConfig(eps=0.3, step_size=0.1, steps=5),
            seed=0,
        )
        trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    trainer.fit(batches, steps_per_epoch=3, epochs=1, verbose=0)  # tracing excluded
    wall, times = time.perf_counter(), os.times()
    trainer.fit(batches, steps_per_epoch=steps, epochs=1, verbose=0)
    wall, end = time.perf_counter() - wall, os.times()
    print(
        json.dumps(
            {
                "ms_per_step": 1000 * wall / steps,
                "user_ms": 1000 * (end.user - times.user) / steps,
                "sys_ms": 1000 * (end.system - times.system) / steps,
            }
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15, help="timed fit steps per process")
    parser.add_argument("--rounds", type=int, default=1, help="fresh processes per variant")
    parser.add_argument("--isolate", action="store_true", help="add the default+mdi variant")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.steps)
    variants = VARIANTS if args.isolate else VARIANTS[:2]
    results = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name in variants:
            output = subprocess.run(
                [
                    sys.executable,
                    os.path.abspath(__file__),
                    "--child",
                    name,
                    "--steps",
                    str(args.steps),
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results[name].append(json.loads(output.strip().splitlines()[-1]))
    print(
        f"small_cnn TLA step (PGD-5, batch 50) in Keras fit, {args.steps} steps x "
        f"{args.rounds} fresh processes per variant, medians"
    )
    print(f"{'variant':12s} {'ms/step':>8s} {'user ms':>8s} {'sys ms':>8s} {'/ default':>10s}")
    base = statistics.median(r["ms_per_step"] for r in results["default"])
    for name, runs in results.items():
        row = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        print(
            f"{name:12s} {row['ms_per_step']:8.1f} {row['user_ms']:8.1f} {row['sys_ms']:8.1f} "
            f"{row['ms_per_step'] / base:10.2f}"
        )


if __name__ == "__main__":
    main()
