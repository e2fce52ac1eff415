"""What many test files share: starting bin/ entry points and Python snippets in a subprocess
from the clone's root, and writing a minimal run folder (recipe.json + one checkpoint).

Importable as `support` (pyproject's pytest `pythonpath`); fixtures live in conftest.py.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NATURAL_RECIPE = {"dataset": "mnist5k", "model": "small_cnn", "model_kwargs": {}, "mode": "natural"}


def command(script, *args):
    """[python, <root>/<script>, *args] for a bin/ entry point or a test script."""
    return [sys.executable, os.path.join(ROOT, script), *map(str, args)]


def run(script, *args, env=None, timeout=600, stdin=None):
    """Runs bin/<name> (or any script path below the root) to completion from the clone's root;
    returns the CompletedProcess with text stdout and stderr."""
    return _complete(command(script, *args), env, timeout, stdin)


def _complete(argv, env, timeout, stdin):
    return subprocess.run(
        argv, cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=timeout
    )


def start(script, *args, env=None):
    """Starts bin/<name> from the clone's root without waiting; returns the Popen (text pipes)."""
    return subprocess.Popen(
        command(script, *args),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_python(code, *args, env=None, timeout=300, stdin=None):
    """Runs `python -c code *args` from the clone's root; returns the CompletedProcess."""
    return _complete([sys.executable, "-c", code, *map(str, args)], env, timeout, stdin)


def write_run_folder(model_dir, network=None, *, step=1, recipe=None, **checkpoint_items):
    """A run folder as bin/train leaves it for bin/evaluate and bin/export: recipe.json (a natural
    small_cnn on mnist5k unless `recipe`) and, with `network`, one checkpoint at `step` holding
    it (and `checkpoint_items`, e.g. the weight EMA). Returns model_dir."""
    import tensorflow as tf

    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "recipe.json"), "w") as f:
        json.dump(NATURAL_RECIPE if recipe is None else recipe, f)
    if network is not None:
        checkpoint = tf.train.Checkpoint(network=network, **checkpoint_items)
        manager = tf.train.CheckpointManager(checkpoint, os.path.join(model_dir, "checkpoints"), 1)
        manager.save(checkpoint_number=step)
    return model_dir
