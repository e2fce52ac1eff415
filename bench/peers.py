"""Our PGD-10 throughput vs CleverHans v4 (TF2) and IBM ART (TF2) on the same Keras model.

Command: `make bench` installs the peers; alone: `pip install -e .[cpu,bench]` then
`pip install --no-deps cleverhans==4.0.0`, and `.venv/bin/python bench/peers.py [--batch_size 128]
[--rounds 5]`. Settings shared by all: small_cnn on 28x28x1, random weights and images, L-inf
eps 0.3, step 0.01, 10 steps, random start, CE loss on the given labels, clip to [0, 1].

  * ours: `attacks.pgd` (one cached tf.function: a graph loop over blocks of 4 unrolled steps);
  * cleverhans: `cleverhans.tf2.attacks.projected_gradient_descent` called eagerly as its docs
    show (a Python loop over a tf.function gradient), and the same call wrapped by the user in
    one tf.function;
  * art: `ProjectedGradientDescent` on `TensorFlowV2Classifier` (eager tape per step, NumPy in
    between), batch_size = our batch.

Variants run round by round (interleaved) after a warm-up; prints images/s from median wall time
and each peer's time / ours in wall and in process-CPU time (the CPU ratio is the fairer one on a
shared machine). Goals: >= 3x CleverHans, >= 10x ART. A peer that is not installed is
skipped with a message.
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

from tf_metric_robust import attacks, models  # noqa: E402
from timing import interleaved  # noqa: E402

EPS, STEP_SIZE, STEPS = 0.3, 0.01, 10
# The same settings in ART's words (ProjectedGradientDescent's keywords), random start included.
ART_PGD = dict(norm=np.inf, eps=EPS, eps_step=STEP_SIZE, max_iter=STEPS, num_random_init=1)
GOALS = {"cleverhans": 3.0, "art": 10.0}


def _ours(model_fn, x, y):
    return lambda: attacks.pgd(model_fn, x, y, eps=EPS, step_size=STEP_SIZE, steps=STEPS).numpy()


def _cleverhans(model_fn, x, y):
    """(eager call, user-compiled call) of CleverHans' PGD, or None when it is not installed."""
    try:
        from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent
    except ImportError as error:
        print(f"cleverhans: skipped ({error}); install: pip install --no-deps cleverhans==4.0.0")
        return None

    def attack(images, labels):
        return projected_gradient_descent(
            model_fn,
            images,
            EPS,
            STEP_SIZE,
            STEPS,
            np.inf,
            clip_min=0.0,
            clip_max=1.0,
            y=labels,
            rand_init=True,
        )

    compiled = tf.function(attack)
    return (lambda: attack(x, y).numpy()), (lambda: compiled(x, y).numpy())


def _art(logits_model, x, y, batch_size, num_classes):
    """ART's PGD on TensorFlowV2Classifier, or None when it is not installed."""
    try:
        from art.attacks.evasion import ProjectedGradientDescent
        from art.estimators.classification import TensorFlowV2Classifier
    except ImportError as error:
        print(f"art: skipped ({error}); install: pip install -e .[bench]")
        return None
    classifier = TensorFlowV2Classifier(
        logits_model,
        nb_classes=num_classes,
        input_shape=tuple(x.shape[1:]),
        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        clip_values=(0.0, 1.0),
    )
    attack = ProjectedGradientDescent(classifier, batch_size=batch_size, verbose=False, **ART_PGD)
    x_np = x.numpy()
    one_hot = np.eye(num_classes, dtype=np.float32)[y.numpy()]
    return lambda: attack.generate(x_np, y=one_hot)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    network = models.build("small_cnn", 10, (28, 28, 1))
    # Same layers and weights, logits only: what CleverHans' model_fn and ART's model expect.
    logits_model = keras.Model(network.input, network.output["logits"])
    model_fn = lambda images: network(images, training=False)["logits"]  # noqa: E731
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(args.batch_size, 28, 28, 1)).astype(np.float32))
    y = tf.constant(rng.integers(0, 10, args.batch_size), tf.int64)

    runs = {"ours": _ours(model_fn, x, y)}
    cleverhans = _cleverhans(lambda images: logits_model(images, training=False), x, y)
    if cleverhans is not None:
        runs["cleverhans (eager, as documented)"] = cleverhans[0]
        runs["cleverhans (user tf.function)"] = cleverhans[1]
    art = _art(logits_model, x, y, args.batch_size, 10)
    if art is not None:
        runs["art"] = art
    times = interleaved(runs, args.rounds)

    print(
        f"PGD-{STEPS} L-inf, small_cnn 28x28x1, batch {args.batch_size}, median of "
        f"{args.rounds} interleaved rounds"
    )
    print(f"{'attack':36s} {'images/s':>9s} {'wall / ours':>12s} {'CPU / ours':>11s}")
    for name, values in times.items():
        # Per-round ratios against ours of the same round, then the median (robust to load).
        wall = statistics.median(v[0] / o[0] for v, o in zip(values, times["ours"]))
        cpu = statistics.median(v[1] / o[1] for v, o in zip(values, times["ours"]))
        rate = args.batch_size / statistics.median(v[0] for v in values)
        goal = next((g for peer, g in GOALS.items() if name.startswith(peer)), None)
        verdict = (
            ""
            if goal is None
            else f"  goal >= {goal:g} (wall): {'OK' if wall >= goal else 'MISSED'}"
        )
        print(f"{name:36s} {rate:9.0f} {wall:12.2f} {cpu:11.2f}{verdict}")


if __name__ == "__main__":
    main()
