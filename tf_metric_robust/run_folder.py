"""A training run's folder (model_dir) as bin/train, bin/evaluate and bin/export read it: the
record (recipe.json, flags.txt, history.jsonl), checkpoints/, and the network back from them.

The record says what produced the checkpoints: recipe.json and flags.txt are written once; a
resume with other settings is refused unless named (--allow_changes) and then logged in
history.jsonl. A checkpoint that cannot be read is moved to checkpoints/corrupt/ and the previous
one restored. TensorFlow is imported only inside the functions that need it, so the flag layer
checks a run's record before paying for that import.
"""

import dataclasses
import glob
import json
import os
import re
import time

from absl import logging

from tf_metric_robust import atomic_io
from tf_metric_robust.config import RECIPE_KEYS, UserError

RECIPE_FILE = "recipe.json"
HISTORY_FILE = "history.jsonl"
FLAGS_FILE = "flags.txt"
CHECKPOINT_DIR = "checkpoints"
# The weight EMA's entry in a run's checkpoint: EMA_CHECKPOINT_KEY/average_<i> holds the average
# of the i-th weight of ema_weights(network) (training/ema.py writes it, load_network reads it).
EMA_CHECKPOINT_KEY = "ema"
EMA_AVERAGE = "average_{}"


def read_recipe(model_dir):
    """The recipe.json of a run: {'dataset', 'model', 'model_kwargs', 'mode', 'settings'}.

    'settings' (every result-changing flag, by name) is absent in runs written before it existed.
    """
    path = os.path.join(model_dir, RECIPE_FILE)
    if not os.path.exists(path):
        raise UserError(
            f"{model_dir} is not a training run (no {RECIPE_FILE}); pass the "
            "--model_dir of bin/train or --saved_model"
        )
    with open(path) as f:
        return json.load(f)


def read_history(model_dir):
    """The entries of history.jsonl, oldest first (a line cut short by a crash is skipped)."""
    path = os.path.join(model_dir, HISTORY_FILE)
    if not os.path.exists(path):
        return []
    entries = []
    with open(path) as f:
        for line in f:
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                logging.warning("skipped an unreadable line of %s", path)
    return entries


def recorded_settings(model_dir):
    """The settings a run trains with now: recipe.json's, updated by history.jsonl in order.

    None for a run whose record predates settings and holds none yet.
    """
    settings = read_recipe(model_dir).get("settings")
    for entry in read_history(model_dir):
        if "settings" in entry:  # recorded at the first resume of an old run
            settings = dict(entry["settings"])
        for name, change in entry.get("changes", {}).items():
            settings[name] = change["to"]
    return settings


@dataclasses.dataclass(frozen=True)
class RecipeCheck:
    """What starting a run will record: a new run, accepted changes, or (old run dirs) the
    settings their recipe.json lacks. Computed before anything is written."""

    new: bool
    changes: dict = dataclasses.field(default_factory=dict)
    record_settings: bool = False


def _plain(value):
    return json.loads(json.dumps(value))


def check_recipe(model_dir, recipe, allow_changes=()):
    """Compares a run's recipe with what model_dir recorded; writes nothing.

    The network-defining keys (RECIPE_KEYS) can never change. Every other setting (recipe's
    'settings': each result-changing flag) may change only if named in `allow_changes`; the
    error lists every difference in one line. Settings absent from the record (a flag added
    later) are not compared.

    Returns:
      RecipeCheck for record_start().
    """
    recipe = _plain(recipe)
    if not os.path.exists(os.path.join(model_dir, RECIPE_FILE)):
        _check_not_foreign(model_dir)
        return RecipeCheck(new=True)
    saved = read_recipe(model_dir)
    fixed = [
        k for k in RECIPE_KEYS if saved.get(k, {} if k == "model_kwargs" else None) != recipe.get(k)
    ]
    if fixed:
        details = ", ".join(f"{k}: {saved.get(k)!r} there vs {recipe.get(k)!r} now" for k in fixed)
        raise UserError(f"{model_dir} holds a different recipe ({details}); use a new --model_dir")
    settings, before = recipe.get("settings") or {}, recorded_settings(model_dir)
    if before is None:
        logging.warning(
            f"{model_dir}/{RECIPE_FILE} predates the full recipe (it holds only "
            f"{', '.join(RECIPE_KEYS)}): the other settings cannot be checked; this "
            f"run's are recorded in {HISTORY_FILE} and checked from now on"
        )
        return RecipeCheck(new=False, record_settings=True)
    changes = {
        name: {"from": before[name], "to": value}
        for name, value in settings.items()
        if name in before and name not in RECIPE_KEYS and before[name] != value
    }
    refused = [name for name in changes if name not in allow_changes]
    if refused:
        details = ", ".join(
            f"--{name} {_show(changes[name]['from'])} -> {_show(changes[name]['to'])}"
            for name in refused
        )
        raise UserError(
            f"{model_dir} was trained with other settings: {details}; re-run with the recorded "
            f"values (see {FLAGS_FILE} and {HISTORY_FILE}), use a new --model_dir, or pass "
            f"--allow_changes={','.join(refused)} to continue with the new ones (recorded in "
            f"{HISTORY_FILE})"
        )
    return RecipeCheck(new=False, changes=changes)


def _check_not_foreign(model_dir):
    """UserError if model_dir holds visible files but no recipe.json: a run writes recipe.json
    before anything else, so such a folder belongs to something else and a run would mix in."""
    if "://" in model_dir or not os.path.isdir(model_dir):
        return
    entries = sorted(name for name in os.listdir(model_dir) if not name.startswith("."))
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise UserError(
            f"--model_dir {model_dir} holds other files ({shown}) and no {RECIPE_FILE}, so it "
            "is not a bin/train run; pass a new or empty folder"
        )


def _show(value):
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "''"
    return str(value)


def check_writable(model_dir):
    """UserError unless model_dir is (or can be created as) a writable folder."""
    if "://" in model_dir:  # gs://, hdfs://: checked by TensorFlow's file system on write
        return
    path = os.path.abspath(model_dir)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise UserError(f"--model_dir {model_dir}: {path} is a file, not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"--model_dir {model_dir}: {path} is not writable")


def record_start(model_dir, recipe, check, step, flags_text=None):
    """Writes what check_recipe() decided, once the run has passed every check.

    A new run gets recipe.json and flags.txt (never rewritten afterwards); accepted changes and
    the settings of an old run dir are appended to history.jsonl with the time and step.
    """
    os.makedirs(model_dir, exist_ok=True)
    if check.new:
        atomic_io.write_json_atomic(os.path.join(model_dir, RECIPE_FILE), _plain(recipe))
        if flags_text is not None:
            atomic_io.write_text_atomic(os.path.join(model_dir, FLAGS_FILE), flags_text)
        return
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "step": int(step)}
    if check.record_settings:
        entry["settings"] = _plain(recipe.get("settings") or {})
        if flags_text is not None:
            entry["flags"] = flags_text
    elif check.changes:
        entry["changes"] = check.changes
    else:
        return
    with open(os.path.join(model_dir, HISTORY_FILE), "a") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    if check.changes:
        logging.info(
            "Continuing with changed settings (recorded in "
            f"{os.path.join(model_dir, HISTORY_FILE)}): "
            + ", ".join(
                f"--{n} {_show(c['from'])} -> {_show(c['to'])}" for n, c in check.changes.items()
            )
        )


def checkpoint_dir(model_dir):
    """Where a run keeps its checkpoints."""
    return os.path.join(model_dir, CHECKPOINT_DIR)


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
    import tensorflow as tf

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
    import tensorflow as tf

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
    import tensorflow as tf

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


def build_network(recipe, weight_decay=0.0):
    """The network of a recipe, freshly initialised."""
    from tf_metric_robust import data, models

    info = data.dataset_info(recipe["dataset"])
    return models.build(
        recipe["model"],
        info.num_classes,
        info.image_shape,
        weight_decay=weight_decay,
        **recipe.get("model_kwargs", {}),
    )


def load_network(model_dir):
    """(network with the latest checkpoint's weights, recipe, checkpoint path) of a run; a run
    trained with --ema_decay gives its averaged weights, the ones its own evaluation and export
    use (restore_averaged)."""
    import tensorflow as tf

    recipe = read_recipe(model_dir)
    network = build_network(recipe)
    # Only the network: the optimizer (and memory bank) values in the checkpoint stay unread.
    latest = restore_newest_readable(
        tf.train.Checkpoint(network=network), checkpoint_dir(model_dir)
    )
    if latest is None:
        raise UserError(f"no checkpoint in {checkpoint_dir(model_dir)}")
    if restore_averaged(network, latest):
        logging.info("%s: the weight EMA of %s", model_dir, latest)
    return network, recipe, latest


def ema_weights(network):
    """The weights a run's EMA averages, in order: every floating-point weight of the network
    (batch-norm statistics included, as timm's ModelEmaV2 averages the whole state_dict)."""
    import tensorflow as tf

    return [w for w in network.weights if tf.as_dtype(w.dtype).is_floating]


def restore_averaged(network, checkpoint_path):
    """Loads the EMA weights of a run's checkpoint into `network`; False if it holds none.

    For tools that read a run's checkpoint for evaluation or export (the network's own weights
    there are the raw training weights).
    """
    import tensorflow as tf

    names = [name for name, _ in tf.train.list_variables(checkpoint_path)]
    if not any(name.startswith(EMA_CHECKPOINT_KEY + "/") for name in names):
        return False
    weights = ema_weights(network)
    averages = tf.Module()  # the checkpoint entry's layout: one variable per average
    for i, weight in enumerate(weights):
        setattr(averages, EMA_AVERAGE.format(i), tf.Variable(tf.convert_to_tensor(weight)))
    tf.train.Checkpoint(**{EMA_CHECKPOINT_KEY: averages}).restore(checkpoint_path).expect_partial()
    for i, weight in enumerate(weights):
        weight.assign(tf.convert_to_tensor(getattr(averages, EMA_AVERAGE.format(i))))
    return True
