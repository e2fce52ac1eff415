"""TLA, TRADES, MART train-step time / PGD-AT's (same model, batch, PGD-7); TLA separate vs joint.

TLA's authors run the adversarial, clean, negative and other-positive images through the network
in separate forward passes, each with its own batch-norm statistics (train_update_fast_triplet.py
:252-273); that is our default (TripletConfig.separate_passes). One joint pass over the
concatenated batches is the cheaper option (--noseparate_bn_passes): on a model without BN both
compute the same loss. Steps of all variants are interleaved round by round so machine noise hits
them alike; each ratio is the median of per-round ratios, in wall time and in process-CPU time
(the fairer one on a shared machine).

Expected: a TLA step is the PGD-AT step plus one more weight-gradient pass over the clean batch
(plus the negatives with the extra pool); the two natural steps (batch B and 2B) measure that
pass, so the script also prints the predicted ratio (PGD-AT - natural(B) + natural(2B)) / PGD-AT.

TRADES and MART: a clean and an adversarial pass in the weight gradient, so about
the TLA/batch cost; TRADES' attack also runs one clean forward pass for its KL target. Both run
the same PGD-7 here (their references use 10 steps: scale the attack part by 10/7).

Fast AT: FGSM-RS (Wong et al. 2020) and N-FGSM (de Jorge et al. 2022) replace PGD-7 by
one input gradient, so a step costs about 2 gradient passes instead of 8 (expected ~0.25-0.3 of
PGD-AT). AWP (Wu et al. 2020) adds a weight-ascent forward/backward pass on the adversarial batch;
the EMA of the weights one assign per variable.

    .venv/bin/python bench/train_step.py [--model small_cnn] [--batch_size 50] [--rounds 10]
        [--variants trades,mart]

Recipes (--recipes cifar_trades_generated,cifar_tla_trades_generated): each recipe's step as
bin/train builds it from its flagfile (mode, attack, loss terms, optimizer and schedule, EMA), on
one small network for all (--recipe_network, default the Swish WRN-10-1) and batch B, against
configs/cifar_pgd_at.flags' step (PGD-7, BN in train mode) on the same network and batch.
"""

import argparse
import os
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


def _tla(separate, **kwargs):
    return ("tla", TripletConfig(separate_passes=separate, **kwargs))


VARIANTS = {
    "natural (batch B)": ("natural", None),
    "natural (batch 2B)": ("natural", None),
    "pgd": ("pgd", None),
    "tla/batch separate": _tla(True, negative_pool="batch"),
    "tla/batch joint": _tla(False, negative_pool="batch"),
    "tla/bank separate": _tla(True, negative_pool="bank", bank_size=2048),
    "tla/bank joint": _tla(False, negative_pool="bank", bank_size=2048),
    "tla/extra x10 separate": _tla(True, negative_pool="extra", pool_multiplier=10),
    "tla/extra x10 joint": _tla(False, negative_pool="extra", pool_multiplier=10),
    "tla/semihard (TFA)": _tla(True, mining="semihard", distance="l2", margin=0.5),
    # A clean and an adversarial pass (TRADES adds the clean logits of its KL attack).
    "trades": ("trades", None),
    "mart": ("mart", None),
    # Fast AT: one-step training attacks (--train_attack), eps 8/255.
    "pgd fgsm_rs": ("pgd", None, dict(method="fgsm_rs", steps=1, step_size=10 / 255)),
    "pgd n_fgsm": ("pgd", None, dict(method="n_fgsm", steps=1, step_size=8 / 255)),
    "trades fgsm_rs": ("trades", None, dict(method="fgsm_rs", steps=1, step_size=10 / 255)),
    "tla/batch fgsm_rs": (
        "tla",
        TripletConfig(negative_pool="batch"),
        dict(method="fgsm_rs", steps=1, step_size=10 / 255),
    ),
    # AWP (gamma 5e-3, the CIFAR value), the weight EMA, and TLA on the TRADES objective.
    "pgd awp": ("pgd", None, {}, dict(awp_gamma=5e-3)),
    "trades awp": ("trades", None, {}, dict(awp_gamma=5e-3)),
    "mart awp": ("mart", None, {}, dict(awp_gamma=5e-3)),
    "pgd ema": ("pgd", None, {}, dict(ema_decay=0.999)),
    "tla/batch base trades": ("tla", TripletConfig(negative_pool="batch"), {}, dict(base="trades")),
}


def make_step(name, model, shape, batch_size):
    mode, triplet, attack, extra = (*VARIANTS[name], {}, {})[:4]
    keras.utils.set_random_seed(0)
    network = models.build(model, 10, shape)
    trainer = AdversarialTrainer(
        network,
        mode=mode,
        triplet=triplet,
        seed=0,
        **extra,
        attack=AttackConfig(**{**dict(eps=8 / 255, step_size=2 / 255, steps=7), **attack}),
    )
    trainer.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    rows = (
        batch_size * (1 + triplet.pool_multiplier)
        if triplet and triplet.negative_pool == "extra"
        else batch_size
    )
    rows *= 2 if name == "natural (batch 2B)" else 1
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(size=(rows, *shape)).astype(np.float32))
    labels = tf.constant(rng.integers(0, 10, rows), tf.int64)
    step = tf.function(trainer.train_step)

    def run():
        logs = step((images, labels))
        float(logs["loss"])  # wait for the step to finish

    return run


BASELINE_RECIPE = "cifar_pgd_at"


def make_recipe_step(recipe, network, batch_size):
    """The train step of configs/<recipe>.flags parsed as bin/train parses it, with `network`
    ('<model>:<depth>:<width>') and `batch_size` in place of the recipe's."""
    from absl import flags

    from tf_metric_robust import cli
    from tf_metric_robust.training import run

    if "model" not in flags.FLAGS:
        cli.define_train_flags()
    flags.FLAGS.unparse_flags()
    model, depth, width = network.split(":")
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    flags.FLAGS(
        [
            "train_step",
            f"--flagfile={os.path.join(root, 'configs', recipe + '.flags')}",
            "--model_dir=unused",
            f"--model={model}",
            f"--wrn_depth={depth}",
            f"--wrn_width={width}",
            f"--batch_size={batch_size}",
        ]
    )
    config = cli.recipe_config()
    keras.utils.set_random_seed(0)
    trainer = run.build_trainer(config)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(size=(batch_size, 32, 32, 3)).astype(np.float32))
    labels = tf.constant(rng.integers(0, 10, batch_size), tf.int64)
    step = tf.function(trainer.train_step)

    def run_step():
        float(step((images, labels))["loss"])  # wait for the step to finish

    return run_step


def recipes_main(args):
    names = [BASELINE_RECIPE, *args.recipes.split(",")]
    steps = {name: make_recipe_step(name, args.recipe_network, args.batch_size) for name in names}
    times = interleaved(steps, args.rounds, warmups=2)
    times = {name: np.array(values) for name, values in times.items()}
    base = times[BASELINE_RECIPE]
    print(
        f"recipes' steps on {args.recipe_network}, batch {args.batch_size}, median of "
        f"{args.rounds} interleaved rounds; / {BASELINE_RECIPE}"
    )
    print(f"{'recipe':30s} {'step ms':>9s} {'/ PGD-AT':>9s} {'CPU / PGD-AT':>13s}")
    for name, values in times.items():
        ratio = np.median(values / base, axis=0)
        print(f"{name:30s} {1000 * np.median(values[:, 0]):9.1f} {ratio[0]:9.3f} {ratio[1]:13.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--batch_size", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--variants",
        default="",
        help="comma-separated subset of the variants (pgd and the natural steps are always run)",
    )
    parser.add_argument(
        "--recipes",
        default="",
        help=f"comma-separated flagfiles of configs/ (without .flags) timed against "
        f"{BASELINE_RECIPE}'s step instead of the variants",
    )
    parser.add_argument(
        "--recipe_network",
        default="wide_resnet_swish:10:1",
        help="model:depth:width every recipe's step runs on",
    )
    args = parser.parse_args()
    if args.recipes:
        recipes_main(args)
        return
    if args.variants:
        keep = {"pgd", "natural (batch B)", "natural (batch 2B)", *args.variants.split(",")}
        for name in set(VARIANTS) - keep:
            del VARIANTS[name]
    shape = (
        (28, 28, 1) if args.model in ("small_cnn", "madry_mnist", "mnist_large") else (32, 32, 3)
    )
    steps = {name: make_step(name, args.model, shape, args.batch_size) for name in VARIANTS}
    times = interleaved(steps, args.rounds, warmups=2)
    times = {name: np.array(values) for name, values in times.items()}
    ratios = {name: np.median(values / times["pgd"], axis=0) for name, values in times.items()}
    print(
        f"model {args.model}, batch B = {args.batch_size}, PGD-7, median of {args.rounds} "
        f"interleaved rounds"
    )
    print(f"{'variant':26s} {'step ms':>9s} {'/ PGD-AT':>9s} {'CPU / PGD-AT':>13s}")
    for name, values in times.items():
        print(
            f"{name:26s} {1000 * np.median(values[:, 0]):9.1f} {ratios[name][0]:9.3f} "
            f"{ratios[name][1]:13.3f}"
        )
    predicted = 1 + ratios["natural (batch 2B)"] - ratios["natural (batch B)"]
    print(
        f"predicted TLA / PGD-AT from the natural steps: {predicted[0]:.3f} "
        f"(CPU {predicted[1]:.3f})"
    )


if __name__ == "__main__":
    main()
