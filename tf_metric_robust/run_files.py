"""What a training run leaves in its model_dir, and how to read it back (recipe, network)."""

import json
import os

import tensorflow as tf

from tf_metric_robust import data, models
from tf_metric_robust.config import UserError

RECIPE_FILE = "recipe.json"
# Settings that define the network and its variables: a model_dir cannot change them on resume.
RECIPE_KEYS = ("dataset", "model", "model_kwargs", "mode")


def write_json_atomic(path, payload):
    """Writes JSON through a temporary file and a rename: a crash never leaves half a file."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def read_recipe(model_dir):
    """The recipe.json of a run: {'dataset', 'model', 'model_kwargs', 'mode'}."""
    path = os.path.join(model_dir, RECIPE_FILE)
    if not os.path.exists(path):
        raise UserError(f"{model_dir} is not a training run (no {RECIPE_FILE}); pass the "
                        "--model_dir of bin/train or --saved_model")
    with open(path) as f:
        return json.load(f)


def check_or_write_recipe(model_dir, recipe):
    """Refuses to resume a model_dir trained with another dataset/model/mode."""
    recipe = json.loads(json.dumps(recipe))
    if os.path.exists(os.path.join(model_dir, RECIPE_FILE)):
        saved = read_recipe(model_dir)
        changed = [k for k in RECIPE_KEYS if saved.get(k) != recipe.get(k)]
        if changed:
            details = ", ".join(f"{k}: {saved.get(k)!r} there vs {recipe.get(k)!r} now"
                                for k in changed)
            raise UserError(f"{model_dir} holds a different recipe ({details}); use a new "
                            "--model_dir")
    else:
        write_json_atomic(os.path.join(model_dir, RECIPE_FILE), recipe)


def checkpoint_dir(model_dir):
    return os.path.join(model_dir, "checkpoints")


def build_network(recipe, weight_decay=0.0):
    """The network of a recipe, freshly initialised."""
    info = data.dataset_info(recipe["dataset"])
    return models.build(recipe["model"], info.num_classes, info.image_shape,
                        weight_decay=weight_decay, **recipe.get("model_kwargs", {}))


def load_network(model_dir):
    """(network with the latest checkpoint's weights, recipe, checkpoint path) of a run."""
    recipe = read_recipe(model_dir)
    latest = tf.train.latest_checkpoint(checkpoint_dir(model_dir))
    if latest is None:
        raise UserError(f"no checkpoint in {checkpoint_dir(model_dir)}")
    network = build_network(recipe)
    try:
        tf.train.Checkpoint(network=network).restore(latest).expect_partial()
    except (tf.errors.OpError, ValueError) as error:
        raise UserError(f"cannot read checkpoint {latest}: {error}") from None
    return network, recipe, latest
