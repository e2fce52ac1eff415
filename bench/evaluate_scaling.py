"""Evaluation throughput on 1 and 2 replicas (2 logical CPU devices): images/s, ratio, and the
per-replica overhead a multi-GPU machine would see.

The evaluation's attacks run shard by shard (tf_metric_robust/evaluation/shards.py); this times
the same PGD-k evaluation run (small_cnn, 28x28x1, L-inf eps 0.3, step 0.01) through
shards.ShardRunner on TF's default strategy (1 replica) and on MirroredStrategy over 2 logical
CPUs (one shard per replica per step), each variant in a fresh process (a strategy can slow a
whole CPU process; bench/strategy_overhead.py), after a warm-up run that traces.

On 2 cores one replica already uses both (intra-op threads), so the 2-replica speed-up is bounded
by the cores. The `1 thread` variants give each op one thread, so 2 replicas work like 2 devices
of one core each, as GPUs would: per-replica time per example = wall x replicas / examples, and
its ratio to one replica's is the overhead of distributing (1.0 = none). Process CPU time per
example is printed too: on a shared machine other processes stretch wall time, not the CPU time
this one spends, so its 2-replica / 1-replica ratio is the firmer overhead figure.

    .venv/bin/python bench/evaluate_scaling.py [--examples 512] [--shard 64] [--steps 20]
"""

import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = (
    ("1 replica", 1, 0),
    ("2 replicas", 2, 0),
    ("1 replica, 1 thread", 1, 1),
    ("2 replicas, 1 thread", 2, 1),
)


def child(replicas, threads, examples, shard, steps, repeats):
    """Times `repeats` PGD runs over `examples` images in this process; prints one JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    import keras
    import numpy as np

    from tf_metric_robust import attacks, distribute, models
    from tf_metric_robust.evaluation.evidence import attack_fn
    from tf_metric_robust.evaluation.model_fns import ModelFns
    from tf_metric_robust.evaluation.shards import ShardRunner

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(examples, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, examples)
    strategy = distribute.mirrored_strategy(["/cpu:0", "/cpu:1"]) if replicas == 2 else None
    scope = strategy.scope() if strategy else tf.distribute.get_strategy().scope()
    with scope:
        fns = ModelFns(models.build("small_cnn", 10, (28, 28, 1)))
    runner = ShardRunner(shard, seed=0, strategy=strategy)
    static = dict(steps=steps, norm="linf", loss="ce", random_start=True, restarts=1)
    fn = attack_fn(fns, attacks.pgd, static, takes_seed=True, keep_embedding=False, norm="linf")
    params = dict(eps=0.3, step_size=0.01)
    runner.run(
        "warm-up", fn, x[: shard * replicas], y[: shard * replicas], params=params, trace_key="pgd"
    )
    seconds, cpu = [], []
    for r in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        runner.run(f"pgd{r}", fn, x, y, params=params, trace_key="pgd")
        seconds.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    middle = len(seconds) // 2
    print(json.dumps({"seconds": sorted(seconds)[middle], "cpu": sorted(cpu)[middle]}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--shard", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    settings = [args.examples, args.shard, args.steps, args.repeats]
    if args.child:
        child(*args.child, *settings)
        return
    times, cpu = {}, {}
    for label, replicas, threads in VARIANTS:
        command = [
            sys.executable,
            __file__,
            "--child",
            str(replicas),
            str(threads),
            "--examples",
            str(args.examples),
            "--shard",
            str(args.shard),
            "--steps",
            str(args.steps),
            "--repeats",
            str(args.repeats),
        ]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        times[label], cpu[label] = result["seconds"], result["cpu"]
    print(
        f"PGD-{args.steps} on {args.examples} images, shards of {args.shard}, small_cnn, "
        f"median of {args.repeats}"
    )
    print(f"{'variant':<22} {'images/s':>9} {'wall ms/example/replica':>24} {'CPU ms/example':>15}")
    for label, replicas, _ in VARIANTS:
        per_replica = 1000 * times[label] * replicas / args.examples
        print(
            f"{label:<22} {args.examples / times[label]:>9.1f} {per_replica:>24.2f} "
            f"{1000 * cpu[label] / args.examples:>15.2f}"
        )
    for suffix in ("", ", 1 thread"):
        one, two = "1 replica" + suffix, "2 replicas" + suffix
        print(
            f"2 replicas / 1 replica{suffix}: speed-up {times[one] / times[two]:.2f}x, "
            f"per-replica wall time per example {2 * times[two] / times[one]:.2f}x one "
            f"device's, CPU time per example {cpu[two] / cpu[one]:.2f}x"
        )


if __name__ == "__main__":
    main()
