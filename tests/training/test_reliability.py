"""Reliability of a training run: kills anywhere resume to the same weights, SIGTERM saves first,
damaged checkpoints are skipped, NaN stops before a checkpoint, bad input fails in one line.

The subprocess tests drive bin/train (or tests/train_with_fault.py, bin/train with a SIGKILL,
SIGTERM or NaN injected at an exact point) on the real mnist5k digits with tiny settings.
"""

import contextlib
import glob
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf

import support
from tf_metric_robust import atomic_io, run_folder
from tf_metric_robust.config import UserError
from tf_metric_robust.training import stopping

pytestmark = pytest.mark.slow  # end to end: bin/ subprocesses or full runs (make test-fast skips)

TINY = [
    "--flagfile=configs/mnist5k.flags",
    "--train_steps=8",
    "--eval_every=4",
    "--checkpoint_every=2",
    "--steps=1",
    "--eval_steps=1",
    "--eval_examples=50",
    "--final_eval_examples=50",
    "--batch_size=16",
    "--deterministic",
]


def _train(model_dir, data_dir, *extra, fault=None):
    script, env = "bin/train", None
    if fault:
        script, env = "tests/train_with_fault.py", dict(os.environ, TFMR_FAULT=fault)
    return support.run(
        script,
        f"--model_dir={model_dir}",
        f"--data_dir={data_dir}",
        *TINY,
        *extra,
        env=env,
        timeout=900,
    )


def _steps(model_dir):
    """Steps of the checkpoints on disk, oldest first."""
    paths = run_folder.checkpoint_paths(run_folder.checkpoint_dir(str(model_dir)))
    return sorted(int(p.rsplit("-", 1)[1]) for p in paths)


def _variables(path):
    """Every value a checkpoint holds but its save counter (how many saves one process made)."""
    reader = tf.train.load_checkpoint(path)
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
        if name != "_CHECKPOINTABLE_OBJECT_GRAPH" and not name.startswith("save_counter")
    }


@contextlib.contextmanager
def _reference_run(reference_dir, data_dir, *extra):
    """The same command run uninterrupted beside the block; waited for (exit 0) at its end."""
    reference = support.start(
        "bin/train", f"--model_dir={reference_dir}", f"--data_dir={data_dir}", *TINY, *extra
    )
    try:
        yield
        _, reference_stderr = reference.communicate(timeout=900)
        assert reference.returncode == 0, reference_stderr[-3000:]
    finally:
        if reference.poll() is None:
            reference.kill()


def _assert_same_values(reference_dir, resumed_checkpoint, step=8):
    """The resumed run's last checkpoint holds exactly the reference run's values at `step`;
    returns them."""
    expected = _variables(str(reference_dir / "checkpoints" / f"ckpt-{step}"))
    resumed = _variables(str(resumed_checkpoint))
    assert sorted(expected) == sorted(resumed)
    for name, value in expected.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)
    return expected


def _last_line(text):
    return [line for line in text.splitlines() if line.strip()][-1]


# --------------------------------------------------------------------- kill -9 anywhere, resume
def test_killed_anywhere_then_resumed_ends_with_the_uninterrupted_weights(
    tmp_path, mnist5k_data_dir
):
    """One run killed six ways in a row ends bit-identical to a run never interrupted."""
    reference_dir, model_dir = tmp_path / "reference", tmp_path / "run"
    checkpoints = run_folder.checkpoint_dir(str(model_dir))
    with _reference_run(reference_dir, mnist5k_data_dir):
        # 1. kill -9 right after the first checkpoint.
        run = _train(model_dir, mnist5k_data_dir, fault="kill_after_checkpoint:2")
        assert run.returncode == -signal.SIGKILL, run.stderr[-3000:]
        assert _steps(model_dir) == [2]

        # 2. SIGTERM (preemption) at step 3: checkpoint of step 3, exit 143, one line naming it.
        run = _train(model_dir, mnist5k_data_dir, fault="sigterm_at_step:3")
        assert run.returncode == 128 + signal.SIGTERM, run.stderr[-3000:]
        assert "Resumed from" in run.stdout and "ckpt-2" in run.stdout
        assert _last_line(run.stderr) == (
            f"stopped: SIGTERM received: stopped at step 3, checkpoint {checkpoints}/ckpt-3; "
            "re-run the same command to resume"
        )
        assert _steps(model_dir) == [2, 3] and "Traceback" not in run.stderr

        # 3. kill -9 mid-segment (end of step 5; checkpoints at 2, 3, 4).
        run = _train(model_dir, mnist5k_data_dir, fault="kill_at_step:5")
        assert run.returncode == -signal.SIGKILL, run.stderr[-3000:]
        assert "Steps 4-4 of 8" in run.stdout and _steps(model_dir) == [2, 3, 4]

        # 4. kill -9 inside the save of ckpt-6: its files are complete, the state file is not.
        run = _train(model_dir, mnist5k_data_dir, fault="kill_in_checkpoint:6")
        assert run.returncode == -signal.SIGKILL, run.stderr[-3000:]
        assert tf.train.latest_checkpoint(checkpoints).endswith("ckpt-4")
        assert 6 in _steps(model_dir)
        # ... and a machine crash cut ckpt-6's data short: it must be skipped, not trusted.
        data_file = glob.glob(os.path.join(checkpoints, "ckpt-6.data-*"))[0]
        with open(data_file, "r+b") as f:
            f.truncate(os.path.getsize(data_file) // 2)

        # 5. kill -9 during the export, after metrics.json.
        run = _train(model_dir, mnist5k_data_dir, fault="kill_in_export")
        assert run.returncode == -signal.SIGKILL, run.stderr[-3000:]
        assert "ckpt-6 is unreadable" in run.stderr
        assert f"Resumed from {checkpoints}/ckpt-4" in run.stdout
        assert os.path.exists(os.path.join(checkpoints, "corrupt", "ckpt-6.index"))
        with open(model_dir / "metrics.json") as f:
            assert json.load(f)["step"] == 8
        saved_model = model_dir / "saved_model"
        assert not [name for name in os.listdir(saved_model) if name.isdigit()]

        # 6. The same command once more: nothing to train, the export is redone.
        run = _train(model_dir, mnist5k_data_dir)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "already finished at step 8" in run.stdout
        assert os.path.exists(saved_model / "1" / "saved_model.pb")
    _assert_same_values(reference_dir, os.path.join(checkpoints, "ckpt-8"))


def test_resume_is_exact_with_awp_and_ema(tmp_path, mnist5k_data_dir):
    """TLA with AWP (from step 3) and a weight EMA: killed at step 5, resumed from ckpt-4, ends
    bit-identical to an uninterrupted run, the averages included."""
    extra = ("--awp_gamma=0.01", "--awp_warmup_steps=3", "--ema_decay=0.9", "--noexport")
    reference_dir, model_dir = tmp_path / "reference", tmp_path / "run"
    with _reference_run(reference_dir, mnist5k_data_dir, *extra):
        run = _train(model_dir, mnist5k_data_dir, *extra, fault="kill_at_step:5")
        assert run.returncode == -signal.SIGKILL, run.stderr[-3000:]
        assert _steps(model_dir) == [2, 4]
        run = _train(model_dir, mnist5k_data_dir, *extra)
        assert run.returncode == 0, run.stderr[-3000:]
    expected = _assert_same_values(reference_dir, model_dir / "checkpoints" / "ckpt-8")
    assert any(name.startswith("ema/") for name in expected)
    with open(model_dir / "metrics.json") as f:
        assert json.load(f)["weights"] == "ema"


def test_a_run_that_prepares_its_dataset_starts_from_the_same_weights(tmp_path, mnist5k_data_dir):
    """Preparing mnist5k inside the run (tfds draws from Python's random) leaves the seeded
    weights as they are: the same checkpoint as a run that finds the data prepared."""
    extra = ("--train_steps=2", "--eval_every=2", "--noexport")
    for name, data_dir in (("prepares", tmp_path / "empty_data_dir"), ("finds", mnist5k_data_dir)):
        run = _train(tmp_path / name, data_dir, *extra)
        assert run.returncode == 0, run.stderr[-3000:]
    _assert_same_values(
        tmp_path / "finds", tmp_path / "prepares" / "checkpoints" / "ckpt-2", step=2
    )


# ------------------------------------------------------------------------------- the NaN guard
def test_nan_loss_stops_with_one_line_and_saves_nothing_after_it(tmp_path, mnist5k_data_dir):
    run = _train(tmp_path, mnist5k_data_dir, "--mode=natural", fault="nan_loss_at_step:5")
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    checkpoints = run_folder.checkpoint_dir(str(tmp_path))
    assert _last_line(run.stderr) == (
        "error: non-finite loss (nan) at step 5: training stopped, nothing saved after it; last "
        f"good checkpoint: {checkpoints}/ckpt-4, where a re-run resumes (lower --learning_rate "
        "or check the data first)"
    )
    assert _steps(tmp_path) == [2, 4]
    for value in _variables(os.path.join(checkpoints, "ckpt-4")).values():
        if value.dtype.kind == "f":
            assert np.isfinite(value).all()


def test_saver_never_writes_a_non_finite_state(tmp_path):
    weights = tf.Variable([1.0, 2.0])
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(w=weights), str(tmp_path), 3)
    saver = stopping.Saver(manager, [weights], None, str(tmp_path))
    saver.save(1)
    weights.assign([1.0, np.inf])
    with pytest.raises(stopping.TrainingDiverged, match=r"at step 2: .*ckpt-1"):
        saver.save(2)
    assert manager.latest_checkpoint.endswith("ckpt-1") and saver.step == 1


def test_stop_signals_set_a_flag_and_restore_the_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with stopping.StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs at the next bytecode boundary
        assert signals.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    error = stopping.Interrupted(signal.SIGTERM, 3, "/run/checkpoints/ckpt-3")
    assert error.exit_code == 143 and "step 3" in str(error)


def test_a_second_signal_quits_at_once():
    script = (
        "import os, signal, time\n"
        "from tf_metric_robust.training import stopping\n"
        "with stopping.StopSignals():\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(0.1)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(60)\n"
    )
    result = support.run_python(script)
    assert result.returncode == -signal.SIGINT, result.stderr[-3000:]
    assert "send it again to quit without saving" in result.stderr


# ------------------------------------------------------------------------- damaged checkpoints
def _saved_run(directory, steps=(2, 4, 6)):
    """A checkpoint directory whose ckpt-N holds a variable equal to N."""
    value = tf.Variable(0.0)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(value=value), str(directory), 5)
    for step in steps:
        value.assign(float(step))
        manager.save(checkpoint_number=step)
    return value


@pytest.mark.parametrize("damage", ["truncated_data", "garbage_index", "missing_data"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage, caplog):
    value = _saved_run(tmp_path)
    prefix = str(tmp_path / "ckpt-6")
    data_file = glob.glob(prefix + ".data-*")[0]
    if damage == "truncated_data":
        with open(data_file, "r+b") as f:
            f.truncate(4)
    elif damage == "garbage_index":
        with open(prefix + ".index", "wb") as f:
            f.write(b"not a checkpoint index" * 8)
    else:
        os.remove(data_file)
    value.assign(-1.0)
    restored = run_folder.restore_newest_readable(
        tf.train.Checkpoint(value=value), str(tmp_path), repair=True
    )
    assert restored == str(tmp_path / "ckpt-4") and float(value.numpy()) == 4.0
    assert "ckpt-6 is unreadable" in caplog.text
    # Moved aside, and the state file now makes CheckpointManager continue from ckpt-4.
    assert os.path.exists(tmp_path / "corrupt" / "ckpt-6.index")
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(value=value), str(tmp_path), 2)
    assert manager.latest_checkpoint == str(tmp_path / "ckpt-4")
    assert run_folder.checkpoint_paths(str(tmp_path)) == [
        str(tmp_path / f"ckpt-{s}") for s in (4, 2)
    ]
    manager.save(checkpoint_number=6)  # rotation still works: keeps 2, deletes ckpt-2
    assert run_folder.checkpoint_paths(str(tmp_path)) == [
        str(tmp_path / f"ckpt-{s}") for s in (6, 4)
    ]


def test_unreadable_state_file_does_not_restart_the_run(tmp_path):
    value = _saved_run(tmp_path)
    (tmp_path / "checkpoint").write_text("garbage {{{")
    assert tf.train.latest_checkpoint(str(tmp_path)) is None  # what TF alone would conclude
    restored = run_folder.restore_newest_readable(
        tf.train.Checkpoint(value=value), str(tmp_path), repair=True
    )
    assert restored.endswith("ckpt-6") and float(value.numpy()) == 6.0
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-6")


def test_no_readable_or_a_foreign_checkpoint_is_a_user_error(tmp_path):
    value = _saved_run(tmp_path, steps=(2,))
    with open(tmp_path / "ckpt-2.index", "wb") as f:
        f.write(b"\0" * 64)
    with pytest.raises(UserError, match="no readable checkpoint"):
        run_folder.restore_newest_readable(tf.train.Checkpoint(value=value), str(tmp_path))
    other = tmp_path / "other"
    _saved_run(other, steps=(1,))
    foreign = tf.train.Checkpoint(weights=tf.Variable(tf.zeros([3])))
    with pytest.raises(UserError, match="does not fit this model"):
        run_folder.restore_newest_readable(foreign, str(other))


def test_text_is_replaced_atomically(tmp_path, monkeypatch):
    path = str(tmp_path / "flags.txt")
    atomic_io.write_text_atomic(path, "--seed=1\n")

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        atomic_io.write_text_atomic(path, "--seed=2\n")
    assert open(path).read() == "--seed=1\n"


# ------------------------------------------------------------------------ bad input, one line
def test_flag_layer_names_match_the_registries():
    from tf_metric_robust import cli, data, models

    assert sorted(cli.DATASETS) == data.dataset_names()
    assert sorted(cli.MODELS) == sorted(models.MODELS)


def _assert_one_line_error(result, expected):
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr
    assert _last_line(result.stderr).startswith(expected), result.stderr[-3000:]


def test_bad_files_and_data_are_rejected_in_one_line(tmp_path, mnist5k_data_dir):
    """Errors that need TensorFlow (and checks of bin/evaluate, bin/export), run side by side."""
    corrupt = tmp_path / "corrupt"
    os.makedirs(corrupt / "checkpoints")
    (corrupt / "recipe.json").write_text(
        json.dumps({"dataset": "mnist5k", "model": "small_cnn", "model_kwargs": {}, "mode": "tla"})
    )
    (corrupt / "checkpoints" / "ckpt-2.index").write_bytes(os.urandom(300))
    (corrupt / "checkpoints" / "ckpt-2.data-00000-of-00001").write_bytes(os.urandom(3000))
    other = tmp_path / "other"
    os.makedirs(other)
    (other / "recipe.json").write_text(
        json.dumps(
            {"dataset": "mnist5k", "model": "madry_mnist", "model_kwargs": {}, "mode": "tla"}
        )
    )
    if os.geteuid() == 0:  # root writes anywhere a permission allows; sysfs refuses new folders
        read_only = "/sys/tf_metric_robust_tfds"
    else:
        read_only = str(tmp_path / "read_only")
        os.makedirs(read_only, mode=0o555)
    train = ["bin/train", "--flagfile=configs/mnist5k.flags"]
    cases = {
        "unreadable checkpoint": (
            train + [f"--model_dir={corrupt}", f"--data_dir={mnist5k_data_dir}"],
            "error: no readable checkpoint in",
        ),
        "model_dir of another recipe": (
            train + [f"--model_dir={other}", f"--data_dir={mnist5k_data_dir}"],
            "error: " + str(other) + " holds a different recipe",
        ),
        # 50 x (1 + 100) = 5050 examples per step (batch + TLA's extra pool): 4000 in the split.
        "batch and pool larger than the split": (
            train
            + [
                f"--model_dir={tmp_path / 'c'}",
                f"--data_dir={mnist5k_data_dir}",
                "--negative_pool=extra",
                "--pool_multiplier=100",
            ],
            "error: ",
        ),
        "dataset absent offline": (
            train
            + [
                f"--model_dir={tmp_path / 'a'}",
                "--dataset=cifar10",
                f"--data_dir={tmp_path / 'empty'}",
            ],
            "error: Dataset 'cifar10' is not prepared",
        ),
        "data_dir not writable": (
            train + [f"--model_dir={tmp_path / 'b'}", f"--data_dir={read_only}"],
            "error: cannot prepare dataset 'mnist5k' in --data_dir",
        ),
    }
    cases["export: unreadable checkpoint"] = (
        ["bin/export", f"--model_dir={corrupt}"],
        "error: no readable checkpoint in",
    )
    cases["export: missing model_dir"] = (
        ["bin/export", f"--model_dir={tmp_path / 'none'}"],
        "error: --model_dir",
    )
    cases["evaluate: eps > 1"] = (
        ["bin/evaluate", f"--model_dir={corrupt}", "--eps=2"],
        "error: --eps must be in [0, 1]",
    )
    cases["evaluate: unknown attack"] = (
        ["bin/evaluate", f"--model_dir={corrupt}", "--attacks=foo"],
        "error: unknown attack 'foo'",
    )
    started = time.time()
    processes = {name: support.start(*command) for name, (command, _) in cases.items()}
    try:
        for name, process in processes.items():
            stdout, stderr = process.communicate(timeout=900)
            result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
            _assert_one_line_error(result, cases[name][1])
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
    print(f"{len(cases)} TensorFlow-side rejections in {time.time() - started:.0f} s together")
    # A failed start leaves every folder as it was (a recipe.json and flags.txt left behind would
    # have the corrected command refused as "a different recipe").
    for name in ("a", "b", "c"):
        assert not os.path.exists(tmp_path / name), name
    assert sorted(os.listdir(other)) == ["recipe.json"]
    assert sorted(os.listdir(corrupt)) == ["checkpoints", "recipe.json"]
