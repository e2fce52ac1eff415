"""Peak resident memory (RSS) of one training step, one fresh subprocess per configuration.

Command: `.venv/bin/python bench/peak_memory.py [--wrn]`.
Each configuration runs in its own Python process: it builds the network and the compiled
AdversarialTrainer step, records ru_maxrss (the process's peak RSS so far: TF, Keras and the
model), runs `--steps` train steps on random data and records ru_maxrss again. Prints both and
their difference (what the step itself added: activations kept for the backward pass, gradients,
optimizer slots, the graph). Defaults: the demo (small_cnn, batch 50, TLA with PGD-10 on
28x28x1) and PGD-AT / natural steps for comparison. `--wrn` adds WRN-34-10 at batch 50 on 32x32x3:
a natural step, a PGD-AT step with PGD-1 and a TLA step with PGD-1 (the attack's iterations keep
no activations from one step to the next, so PGD-1 shows the same peak as PGD-7 at a fraction
of the time; one full TLA PGD-7 step is about 3 minutes on this CPU). `--wrn` takes several
minutes and about 6 GB.
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

CONFIGS = {
    # name: (model, input shape, mode, PGD steps, model kwargs)
    "demo: small_cnn TLA PGD-10": ("small_cnn", (28, 28, 1), "tla", 10, {}),
    "small_cnn PGD-AT PGD-10": ("small_cnn", (28, 28, 1), "pgd", 10, {}),
    "small_cnn natural": ("small_cnn", (28, 28, 1), "natural", 0, {}),
}
WRN_CONFIGS = {
    "WRN-34-10 natural": ("wide_resnet", (32, 32, 3), "natural", 0, {}),
    "WRN-34-10 PGD-AT PGD-1": ("wide_resnet", (32, 32, 3), "pgd", 1, {}),
    "WRN-34-10 TLA PGD-1": ("wide_resnet", (32, 32, 3), "tla", 1, {}),
}

# Runs in the child: everything it needs comes from argv as JSON.
CHILD = r"""
import json, os, resource, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, {root!r})
import keras, numpy as np, tensorflow as tf
from tf_metric_robust import models
from tf_metric_robust.config import AttackConfig, TripletConfig
from tf_metric_robust.training import AdversarialTrainer

spec = json.loads(sys.argv[1])
keras.utils.set_random_seed(0)
network = models.build(spec["model"], 10, spec["shape"], **spec["kwargs"])
eps, step_size = (0.3, 0.05) if spec["shape"][-1] == 1 else (8 / 255, 2 / 255)  # MNIST / CIFAR
attack = AttackConfig(eps=eps, step_size=step_size, steps=max(spec["steps"], 1))
trainer = AdversarialTrainer(network, mode=spec["mode"], attack=attack, seed=0,
                             triplet=TripletConfig(positive="other"))
trainer.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
trainer.optimizer.build(network.trainable_variables)
rng = np.random.default_rng(0)
batch = (tf.constant(rng.uniform(size=(spec["batch"], *spec["shape"])).astype(np.float32)),
         tf.constant(rng.integers(0, 10, spec["batch"]), tf.int64))
step = tf.function(trainer.train_step)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
for _ in range(spec["repeats"]):
    loss = float(step(batch)["loss"])
seconds = (time.perf_counter() - start) / spec["repeats"]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(before_kib=before, after_kib=after, seconds=seconds, loss=loss)))
"""


def measure(name, config, batch, repeats):
    model, shape, mode, steps, kwargs = config
    spec = dict(
        model=model,
        shape=list(shape),
        mode=mode,
        steps=steps,
        kwargs=kwargs,
        batch=batch,
        repeats=repeats,
    )
    result = subprocess.run(
        [sys.executable, "-c", CHILD.format(root=ROOT), json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        print(f"{name}: failed\n{result.stderr[-2000:]}")
        return
    values = json.loads(result.stdout.strip().splitlines()[-1])
    before, after = values["before_kib"] / 1024, values["after_kib"] / 1024
    print(
        f"{name:30s} {before:10.0f} {after:10.0f} {after - before:10.0f} {values['seconds']:9.1f}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=50)
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="train steps per configuration (the first includes tracing)",
    )
    parser.add_argument("--wrn", action="store_true", help="add the WRN-34-10 configurations")
    args = parser.parse_args()
    configs = dict(CONFIGS, **(WRN_CONFIGS if args.wrn else {}))
    print(
        f"batch {args.batch_size}; peak RSS (MiB) before the first step (TF + model) and after "
        f"{args.repeats} step(s); s/step includes the first step's tracing"
    )
    print(f"{'configuration':30s} {'before':>10s} {'peak':>10s} {'step adds':>10s} {'s/step':>9s}")
    for name, config in configs.items():
        measure(name, config, args.batch_size, args.repeats if "WRN" not in name else 1)


if __name__ == "__main__":
    main()
