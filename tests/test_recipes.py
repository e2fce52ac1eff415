"""Every recipe in configs/ trains one step end to end on fake data (`--dataset=fake:<name>`,
tfds.testing.mock_data with the real dataset's shapes and classes), offline, through bin/train.

What is checked here is each recipe's TRAINING settings (mode, base, AWP, EMA, training attack,
mining, pool, positives, optimizer, selection), so a recipe whose network takes minutes per step
on a CPU runs them on the demo's small CNN with a 2-step training attack (mnist_large with PGD-40
took 28 min here, Tiny ImageNet's bottleneck ResNet with PGD-7 905 s, CIFAR's PreAct ResNet-18
438 s). Every recipe's own network is parsed and built at full size by
tests/models/test_models.py::test_every_recipe_parses_and_builds_its_model, and the WideResNets
train one step here too, through cifar.flags and cifar_trades_generated.flags at depth 10, width 1,
and the authors' MNIST MLP (3M parameters) with its PGD-40 through mnist_mlp.flags.
"""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # end to end: bin/ subprocesses or full runs (make test-fast skips)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(
    os.path.basename(p)[: -len(".flags")]
    for p in glob.glob(os.path.join(ROOT, "configs", "*.flags"))
)
# Recipes that train their own network (shrunk); every other one trains SMALL_NETWORK.
OWN_NETWORK = {
    "mnist5k": [],
    "mnist_mlp": [],
    "cifar": ["--wrn_depth=10", "--wrn_width=1"],
    # The Swish WideResNet end to end, at depth 10, width 1 and a batch of 32 (the recipe's 512
    # takes minutes per step here).
    "cifar_trades_generated": ["--wrn_depth=10", "--wrn_width=1", "--batch_size=32"],
}
SMALL_NETWORK = ["--model=small_cnn"]  # and a training attack of at most 2 steps
# One step, evaluations on 8 test examples with PGD-1, --select_best's validation split of 50
# examples (the recipes hold out 1000 or 5000: the fake split has them, the test no time).
QUICK = [
    "--train_steps=1",
    "--eval_every=1",
    "--eval_examples=8",
    "--final_eval_examples=8",
    "--eval_batch_size=8",
    "--eval_steps=1",
    "--validation_examples=50",
    "--noexport",
]


def _recipe_value(recipe, name, default=None):
    """The value a flagfile sets for --name (its last setting), else `default`."""
    with open(os.path.join(ROOT, "configs", f"{recipe}.flags")) as f:
        values = re.findall(rf"^--{name}=(\S+)", f.read(), re.M)
    return values[-1] if values else default


def _network_flags(recipe):
    if recipe in OWN_NETWORK:
        return OWN_NETWORK[recipe]
    steps = min(int(_recipe_value(recipe, "steps", "40")), 2)
    return [*SMALL_NETWORK, f"--steps={steps}"]


def test_every_recipe_is_covered():
    assert {"mnist5k", "mnist", "mnist_pgd_at", "cifar", "cifar_pgd_at", "tiny_imagenet"} <= set(
        RECIPES
    )


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_one_step_on_fake_data(recipe, tmp_path):
    dataset = _recipe_value(recipe, "dataset", "mnist5k")
    model = _recipe_value(recipe, "model", "small_cnn") if recipe in OWN_NETWORK else "small_cnn"
    model_dir = tmp_path / "run"
    command = [
        sys.executable,
        "bin/train",
        f"--flagfile=configs/{recipe}.flags",
        f"--dataset=fake:{dataset}",
        f"--model_dir={model_dir}",
        f"--data_dir={tmp_path / 'no_data'}",
        *QUICK,
        *_network_flags(recipe),
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(model_dir / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["step"] == 1 and metrics["dataset"] == f"fake:{dataset}"
    assert metrics["num_examples"] == 8 and metrics["model"] == model
    assert 0.0 <= metrics["eval/clean_accuracy"] <= 1.0
    assert not os.path.exists(tmp_path / "no_data")  # nothing read or prepared: offline
    with open(model_dir / "recipe.json") as f:
        assert json.load(f)["settings"]["mode"] == _recipe_value(recipe, "mode", "tla")
