"""What a training run leaves in its model_dir, and how to read it back (recipe, network).

The record of a run: recipe.json (network-defining keys plus every result-changing setting) and
flags.txt, both written once when the run starts; history.jsonl, one line per accepted change of
settings on resume (time, step, from -> to). A resume with other settings is refused unless the
user names them (--allow_changes), so the record always says what produced the checkpoints.

This module imports TensorFlow only in the functions that read networks and checkpoints, so the
flag layer checks a run's record (check_recipe) before paying for that import.

Every file is replaced atomically (written aside, then renamed), so a crash mid-write leaves the
previous version. Checkpoints are TF's own: tf.train.CheckpointManager writes the ckpt-N files
first and the 'checkpoint' state file last, itself through a rename; a checkpoint that is damaged
anyway (a disk or filesystem fault, a copy cut short) is detected when it is read and skipped.
"""

import dataclasses
import json
import os
import time

from absl import logging

from tf_metric_robust.config import RECIPE_KEYS, UserError

RECIPE_FILE = "recipe.json"
HISTORY_FILE = "history.jsonl"
FLAGS_FILE = "flags.txt"
# Settings that define the network and its variables: a model_dir can never change them.


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
        write_json_atomic(os.path.join(model_dir, RECIPE_FILE), _plain(recipe))
        if flags_text is not None:
            write_text_atomic(os.path.join(model_dir, FLAGS_FILE), flags_text)
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
    use (weight_averaging.restore_averaged)."""
    import tensorflow as tf

    from tf_metric_robust import checkpoint_files, weight_averaging

    recipe = read_recipe(model_dir)
    network = build_network(recipe)
    # Only the network: the optimizer (and memory bank) values in the checkpoint stay unread.
    latest = checkpoint_files.restore_newest_readable(
        tf.train.Checkpoint(network=network), checkpoint_files.checkpoint_dir(model_dir)
    )
    if latest is None:
        raise UserError(f"no checkpoint in {checkpoint_files.checkpoint_dir(model_dir)}")
    if weight_averaging.restore_averaged(network, latest):
        logging.info("%s: the weight EMA of %s", model_dir, latest)
    return network, recipe, latest
