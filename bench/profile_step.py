"""Where one TLA train step spends its time: TF profiler trace, summarised by role of each op.

Command: `.venv/bin/python bench/profile_step.py [--pool batch] [--steps 10] [--logdir DIR]`.
Demo recipe (configs/mnist5k.flags): small_cnn, batch 50, TLA with PGD-10, other-image positive.
Traces `--repeats` compiled steps with `tf.profiler.experimental` into `--logdir` (open it with
TensorBoard's profile plugin for the timeline), then reads the XPlane trace itself and sums op
time by role:

  * attack forward / attack input-gradient: network calls differentiated w.r.t. the input only;
  * training forward / training backward: the network call(s) differentiated w.r.t. weights;
  * inference-only forward: network calls with no gradient (the 'extra' pool's retrieval);
  * optimizer; everything else (losses, mining, projection, metrics), top ops listed.

Also prints the number of network calls executed per step (repeated forwards show up
there), the host work outside the step function, and the tracing counts of Keras' fit/evaluate
functions over two segments (retracing). Op times are wall durations on the worker threads: on a
loaded machine they include preemption, so read the shares, not the milliseconds.
"""

import argparse
import collections
import glob
import os
import re
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

from tf_metric_robust import models  # noqa: E402
from tf_metric_robust.config import AttackConfig, TripletConfig  # noqa: E402
from tf_metric_robust.training import AdversarialTrainer  # noqa: E402

BATCH = 50
# "small_cnn_12/conv1_1/Relu:_FusedConv2D" -> the network call scope and the op type.
_CALL = re.compile(r"^(?:gradient_tape/)?(small_cnn(?:_\d+)?)/")


def build(pool, steps, mode="tla"):
    keras.utils.set_random_seed(0)
    network = models.build("small_cnn", 10, (28, 28, 1))
    triplet = TripletConfig(
        negative_pool=pool,
        positive="other",
        margin=0.05,
        lambda_triplet=0.5,
        lambda_norm=1e-4,
        bank_size=2048,
    )
    trainer = AdversarialTrainer(
        network,
        mode=mode,
        triplet=triplet,
        seed=0,
        attack=AttackConfig(eps=0.3, step_size=0.05, steps=steps),
    )
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    # As training.run.build_trainer: slots built up front, else the first trace creates variables
    # and tf.function traces the step twice.
    trainer.optimizer.build(network.trainable_variables)
    rows = BATCH * (1 + triplet.pool_multiplier) if mode == "tla" and pool == "extra" else BATCH
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(rows, 28, 28, 1)).astype(np.float32)
    labels = rng.integers(0, 10, rows)
    return trainer, images, labels


def call_roles(totals):
    """Network-call scope -> role, from the gradients the trace shows were computed through it.

    The step graph holds weight-gradient ops for the attack's calls too (the symbolic Conv2D
    gradient emits both); TF prunes them at run time, so the executed trace is what tells.
    """
    roles, weight_grads, input_grads = {}, set(), set()
    for name in totals:
        op_name, _, op_type = name.rpartition(":")
        match = _CALL.match(op_name)
        if not match:
            continue
        scope = match.group(1)
        roles.setdefault(scope, "inference-only forward")
        if op_name.startswith("gradient_tape/"):
            (
                weight_grads if op_type in ("Conv2DBackpropFilter", "BiasAddGrad") else input_grads
            ).add(scope)
    for scope in roles:
        if scope in weight_grads:
            roles[scope] = "training"
        elif scope in input_grads:
            roles[scope] = "attack"
    return roles


def op_times(logdir):
    """{op name: total picoseconds} over the TF op events of the newest trace in `logdir`."""
    path = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    totals, host = collections.Counter(), collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if line.name == "python":
                    host[name] += event.duration_ps
                elif ":" in name and "::" not in name:  # "scope/op:OpType" executor events
                    totals[name] += event.duration_ps
    return totals, host


def summarise(totals, roles, repeats):
    by_role, op_types = collections.Counter(), collections.defaultdict(collections.Counter)
    for name, picoseconds in totals.items():
        op_name, _, op_type = name.rpartition(":")
        match = _CALL.match(op_name)
        if match and match.group(1) in roles:
            role = roles[match.group(1)]
            if role != "inference-only forward":
                backward = op_name.startswith("gradient_tape/")
                role += {
                    "attack": (" input-gradient" if backward else " forward"),
                    "training": (" backward" if backward else " forward"),
                }[role]
        elif re.sub(r"_\d+$", "", op_name.split("/")[0]) in ("adam", "sgd", "loss_scale_optimizer"):
            role = "optimizer"
        else:
            role = "other"
        by_role[role] += picoseconds
        op_types[role][op_type or op_name] += picoseconds
    total = sum(by_role.values())
    print(f"{'role':28s} {'ms/step':>9s} {'share':>7s}  top op types (share of the step)")
    for role, picoseconds in by_role.most_common():
        top = ", ".join(f"{op} {ps / total:.1%}" for op, ps in op_types[role].most_common(3))
        print(f"{role:28s} {picoseconds / 1e9 / repeats:9.1f} {picoseconds / total:7.1%}  {top}")


def retracing(pool, steps, mode):
    """Traces of train_step / test_step over two fit + evaluate segments (Python runs per trace)."""
    trainer, images, labels = build(pool, steps, mode)
    counts = collections.Counter()
    for name in ("train_step", "test_step"):
        method = getattr(trainer, name)

        def counted(data, method=method, name=name):
            counts[name] += 1
            return method(data)

        setattr(trainer, name, counted)
    rows = len(labels)
    for _ in range(2):
        trainer.fit(images, labels, batch_size=rows, epochs=1, verbose=0, shuffle=False)
        # 2 full batches of 20 and a partial one of 10: the last batch of an eval split.
        try:
            trainer.evaluate(images[:BATCH], labels[:BATCH], batch_size=20, verbose=0)
        except tf.errors.InvalidArgumentError as error:
            print(
                f"evaluate failed ({error.message.splitlines()[0]}); test_step treats part of "
                f"each eval batch as the extra pool, so a small batch leaves no examples"
            )
            counts["test_step"] = -1
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mode", default="tla", choices=("tla", "pgd"), help="pgd: the PGD-AT step, for comparison"
    )
    parser.add_argument("--pool", default="batch", choices=("batch", "bank", "extra"))
    parser.add_argument("--steps", type=int, default=10, help="PGD steps of the training attack")
    parser.add_argument("--repeats", type=int, default=3, help="profiled train steps")
    parser.add_argument("--logdir", default=None)
    args = parser.parse_args()
    logdir = args.logdir or tempfile.mkdtemp(prefix="tla_profile_")

    trainer, images, labels = build(args.pool, args.steps, args.mode)
    step = tf.function(trainer.train_step)
    data = (tf.constant(images), tf.constant(labels, tf.int64))
    for _ in range(2):  # trace and warm up outside the profile
        float(step(data)["loss"])
    tf.profiler.experimental.start(logdir)
    for _ in range(args.repeats):
        float(step(data)["loss"])
    tf.profiler.experimental.stop()
    totals, host = op_times(logdir)
    roles = call_roles(totals)

    what = f"TLA step, negative pool {args.pool}" if args.mode == "tla" else "PGD-AT step"
    print(
        f"{what}, small_cnn, batch {BATCH}, PGD-{args.steps}; "
        f"{args.repeats} steps profiled into {logdir}"
    )
    calls = collections.Counter(roles.values())
    print("network calls executed per step: " + ", ".join(f"{n} {r}" for r, n in calls.items()))
    summarise(totals, roles, args.repeats)
    function_ps = sum(ps for name, ps in host.items() if name.startswith("EagerLocalExecute"))
    outside = host.get("train_step", 0) - function_ps
    print(
        f"host time outside the compiled step: {outside / 1e9 / args.repeats:.2f} ms/step; "
        f"host->device copies: {host.get('EagerCopyToDevice', 0) / 1e9 / args.repeats:.2f} "
        f"ms/step"
    )
    counts = retracing(args.pool, args.steps, args.mode)
    print(
        "tracings after 2 x (fit + evaluate with a partial last batch): "
        + ", ".join(f"{name} {count}" for name, count in counts.items())
    )


if __name__ == "__main__":
    main()
