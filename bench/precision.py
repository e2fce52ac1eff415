"""TLA train-step time under mixed precision and XLA, relative to float32 graph mode, in one run.

Command: `.venv/bin/python bench/precision.py [--model small_cnn] [--steps 5] [--rounds 3]`.
Variants (same network architecture, batch, data and TLA step; each network is built under its own
Keras dtype policy, then the global policy is restored to float32):

  * float32: the default (`--mixed_precision=none --nojit_compile`);
  * mixed_bfloat16 / mixed_float16: `--mixed_precision=...` (float32 variables, logits and
    losses; LossScaleOptimizer for float16, added by compile());
  * float32 + XLA: `--jit_compile` (the whole step, attack included, compiled by XLA).

Steps run round by round (interleaved) after a warm-up that includes tracing and XLA compilation;
prints each variant's median step time and median per-round ratio to float32, in wall and in
process-CPU time. Expect all ratios > 1 on CPU: x86 CPUs without AMX/AVX512-BF16 have no fast
low-precision matmuls, and XLA's CPU code is slower here than TF's default kernels. The flags are
for GPUs and TPUs (see bench/README.md).
"""

import argparse
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf_metric_robust import models  # noqa: E402
from tf_metric_robust.config import AttackConfig, TripletConfig  # noqa: E402
from tf_metric_robust.training import AdversarialTrainer  # noqa: E402
from timing import interleaved  # noqa: E402

VARIANTS = {  # name -> (Keras dtype policy, jit_compile)
    "float32": ("float32", False),
    "mixed_bfloat16": ("mixed_bfloat16", False),
    "mixed_float16": ("mixed_float16", False),
    "float32 + XLA (jit_compile)": ("float32", True),
}


def make_step(policy, jit_compile, model, shape, batch_size, steps):
    """A zero-argument callable running one compiled TLA train step (demo recipe's loss)."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        network = models.build(model, 10, shape)
        trainer = AdversarialTrainer(
            network,
            mode="tla",
            seed=0,
            attack=AttackConfig(eps=0.3, step_size=0.05, steps=steps),
            triplet=TripletConfig(
                positive="other", margin=0.05, lambda_triplet=0.5, lambda_norm=1e-4
            ),
        )
        trainer.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
        trainer.optimizer.build(network.trainable_variables)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(size=(batch_size, *shape)).astype(np.float32))
    labels = tf.constant(rng.integers(0, 10, batch_size), tf.int64)
    step = tf.function(trainer.train_step, jit_compile=jit_compile)

    def run():
        loss = float(step((images, labels))["loss"])  # blocks until the step is done
        if not np.isfinite(loss):
            raise FloatingPointError(f"{policy} jit={jit_compile}: non-finite loss {loss}")

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--batch_size", type=int, default=50)
    parser.add_argument("--steps", type=int, default=5, help="PGD steps of the training attack")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    shape = (28, 28, 1) if args.model in ("small_cnn", "madry_mnist") else (32, 32, 3)
    runs = {
        name: make_step(*VARIANTS[name], args.model, shape, args.batch_size, args.steps)
        for name in VARIANTS
    }
    times = interleaved(runs, args.rounds, warmups=2)  # warm-up includes XLA compilation
    base = times["float32"]
    print(
        f"TLA step, {args.model} {shape}, batch {args.batch_size}, PGD-{args.steps}, median of "
        f"{args.rounds} interleaved rounds"
    )
    print(f"{'variant':30s} {'step ms':>9s} {'wall / f32':>11s} {'CPU / f32':>10s}")
    for name, values in times.items():
        wall = statistics.median(v[0] / b[0] for v, b in zip(values, base))
        cpu = statistics.median(v[1] / b[1] for v, b in zip(values, base))
        step_ms = 1e3 * statistics.median(v[0] for v in values)
        print(f"{name:30s} {step_ms:9.1f} {wall:11.2f} {cpu:10.2f}")


if __name__ == "__main__":
    main()
