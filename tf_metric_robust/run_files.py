"""What a training run leaves in its model_dir, and how to read it back (recipe, network).

Every file is replaced atomically (written aside, then renamed), so a crash mid-write leaves the
previous version. Checkpoints are TF's own: tf.train.CheckpointManager writes the ckpt-N files
first and the 'checkpoint' state file last, itself through a rename; a checkpoint that is damaged
anyway (a disk or filesystem fault, a copy cut short) is detected when it is read and skipped.
"""

import glob
import json
import os
import re
import sys

import tensorflow as tf

from tf_metric_robust import data, models
from tf_metric_robust.config import UserError

RECIPE_FILE = "recipe.json"
# Settings that define the network and its variables: a model_dir cannot change them on resume.
RECIPE_KEYS = ("dataset", "model", "model_kwargs", "mode")


def write_text_atomic(path, text):
    """Writes text through a temporary file and a rename: a crash never leaves half a file."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def write_json_atomic(path, payload):
    """Writes JSON atomically (see write_text_atomic)."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True))


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


def checkpoint_paths(directory):
    """Prefixes of the checkpoints in `directory` (CheckpointManager's ckpt-<step>), newest first.

    Read from the files on disk, not only from the 'checkpoint' state file: if that file is
    damaged, tf.train.latest_checkpoint returns None and a run would silently start over.
    """
    found = []
    for index in glob.glob(os.path.join(glob.escape(directory), "ckpt-*.index")):
        match = re.fullmatch(r"ckpt-(\d+)\.index", os.path.basename(index))
        if match:
            found.append((int(match.group(1)), index[:-len(".index")]))
    return [prefix for _, prefix in sorted(found, reverse=True)]


def restore_newest_readable(checkpoint, directory, *, repair=False):
    """Restores the newest checkpoint of `directory` that reads back; returns its path or None.

    A checkpoint whose files fail to read (truncated, garbled, missing a shard) is reported on
    stderr and skipped for the previous one. With `repair` (the run's writer), skipped ones are
    moved to directory/corrupt/ and the state file is rewritten, so tf.train.CheckpointManager
    continues from the restored one. A checkpoint that reads but does not fit `checkpoint` (another
    model) raises UserError: that is a different run, not damage. So does finding none readable.
    """
    damaged = []
    for path in checkpoint_paths(directory):
        try:
            status = checkpoint.restore(path)
            status.expect_partial()  # values of other objects (the optimizer) may stay unread
            status.assert_existing_objects_matched()
        except (AssertionError, ValueError) as error:
            raise UserError(f"checkpoint {path} does not fit this model: {_first_line(error)}") \
                from None
        except Exception as error:  # OpError, or IndexError('Read less bytes than requested')
            print(f"warning: checkpoint {path} is unreadable ({type(error).__name__}: "
                  f"{_first_line(error)}); trying the previous one", file=sys.stderr)
            damaged.append((path, error))
            continue
        if repair and (damaged or tf.train.latest_checkpoint(directory) != path):
            _set_latest(directory, path, [prefix for prefix, _ in damaged])
        return path
    if damaged:
        details = "; ".join(f"{os.path.basename(p)}: {_first_line(e)}" for p, e in damaged)
        raise UserError(f"no readable checkpoint in {directory} ({details}); move the folder "
                        "away to start over, or restore a backup")
    return None


def _set_latest(directory, path, damaged):
    """Moves `damaged` checkpoints to directory/corrupt/ and makes `path` the latest one."""
    if damaged:
        aside = os.path.join(directory, "corrupt")
        os.makedirs(aside, exist_ok=True)
        for prefix in damaged:
            for name in glob.glob(glob.escape(prefix) + ".*"):
                os.replace(name, os.path.join(aside, os.path.basename(name)))
        print(f"warning: moved {len(damaged)} unreadable checkpoint(s) to {aside}; resuming "
              f"from {path}", file=sys.stderr)
    kept = checkpoint_paths(directory)
    kept = kept[kept.index(path):][::-1]  # oldest first, up to `path`
    # Timestamps newer than last_preserved_timestamp keep them under CheckpointManager's
    # max_to_keep rotation (without them it would keep them forever). Relative names, as the
    # manager writes them, so that a model_dir can be moved.
    times = [os.path.getmtime(p + ".index") for p in kept]
    try:
        previous = tf.train.get_checkpoint_state(directory)
    except Exception:  # noqa: BLE001 (an unreadable state file is being replaced)
        previous = None
    preserved = previous.last_preserved_timestamp if previous else min(times) - 1.0
    tf.compat.v1.train.update_checkpoint_state(
        directory, os.path.basename(path),
        all_model_checkpoint_paths=[os.path.basename(p) for p in kept],
        all_model_checkpoint_timestamps=[max(t, preserved + 1e-3) for t in times],
        last_preserved_timestamp=preserved)


def _first_line(error):
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def build_network(recipe, weight_decay=0.0):
    """The network of a recipe, freshly initialised."""
    info = data.dataset_info(recipe["dataset"])
    return models.build(recipe["model"], info.num_classes, info.image_shape,
                        weight_decay=weight_decay, **recipe.get("model_kwargs", {}))


def load_network(model_dir):
    """(network with the latest checkpoint's weights, recipe, checkpoint path) of a run."""
    recipe = read_recipe(model_dir)
    network = build_network(recipe)
    # Only the network: the optimizer (and memory bank) values in the checkpoint stay unread.
    latest = restore_newest_readable(tf.train.Checkpoint(network=network),
                                     checkpoint_dir(model_dir))
    if latest is None:
        raise UserError(f"no checkpoint in {checkpoint_dir(model_dir)}")
    return network, recipe, latest
