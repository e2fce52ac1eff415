"""A run's checkpoints: where they live, which are readable, falling back past damaged ones, and
a run's resume (its newest readable checkpoint, else --init_checkpoint's network weights).

A checkpoint that cannot be read (truncated by a crash, a half-copied file) is moved aside to
checkpoints/corrupt/ and the previous readable one becomes the latest, so a resume continues
instead of failing; one that does not fit the model is a user error, never skipped.
"""

import glob
import os
import re

import tensorflow as tf
from absl import logging

from tf_metric_robust.config import UserError


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
            found.append((int(match.group(1)), index[: -len(".index")]))
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
            raise UserError(
                f"checkpoint {path} does not fit this model: {_first_line(error)}"
            ) from None
        except Exception as error:  # OpError, or IndexError('Read less bytes than requested')
            logging.warning(
                f"checkpoint {path} is unreadable ({type(error).__name__}: "
                f"{_first_line(error)}); trying the previous one"
            )
            damaged.append((path, error))
            continue
        if repair and (damaged or tf.train.latest_checkpoint(directory) != path):
            _set_latest(directory, path, [prefix for prefix, _ in damaged])
        return path
    if damaged:
        details = "; ".join(f"{os.path.basename(p)}: {_first_line(e)}" for p, e in damaged)
        raise UserError(
            f"no readable checkpoint in {directory} ({details}); move the folder "
            "away to start over, or restore a backup"
        )
    return None


def restore_run(checkpoint, config, repair, report=logging.info):
    """Restores the newest readable checkpoint of the run (True), else --init_checkpoint's
    network weights if given (False); `report` gets the line saying which."""
    latest = restore_newest_readable(checkpoint, checkpoint_dir(config.model_dir), repair=repair)
    if latest:
        report(f"Resumed from {latest}")
        return True
    if config.init_checkpoint:
        source = config.init_checkpoint
        network_only = tf.train.Checkpoint(network=checkpoint.network)
        if os.path.isdir(source):
            found = None
            for folder in (checkpoint_dir(source), source):
                if checkpoint_paths(folder):
                    found = restore_newest_readable(network_only, folder)
                    break
            if not found:
                raise UserError(f"--init_checkpoint {source}: no checkpoint found")
            source = found
        else:
            try:
                network_only.restore(source).assert_existing_objects_matched().expect_partial()
            except (tf.errors.OpError, AssertionError, ValueError) as error:
                raise UserError(
                    f"--init_checkpoint {source}: cannot restore the network "
                    f"({type(error).__name__}: {error})"
                ) from None
        report(f"Initialised network weights from {source}")
    return False


def _set_latest(directory, path, damaged):
    """Moves `damaged` checkpoints to directory/corrupt/ and makes `path` the latest one."""
    if damaged:
        aside = os.path.join(directory, "corrupt")
        os.makedirs(aside, exist_ok=True)
        for prefix in damaged:
            for name in glob.glob(glob.escape(prefix) + ".*"):
                os.replace(name, os.path.join(aside, os.path.basename(name)))
        logging.warning(
            f"moved {len(damaged)} unreadable checkpoint(s) to {aside}; resuming from {path}"
        )
    kept = checkpoint_paths(directory)
    kept = kept[kept.index(path) :][::-1]  # oldest first, up to `path`
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
        directory,
        os.path.basename(path),
        all_model_checkpoint_paths=[os.path.basename(p) for p in kept],
        all_model_checkpoint_timestamps=[max(t, preserved + 1e-3) for t in times],
        last_preserved_timestamp=preserved,
    )


def _first_line(error):
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
